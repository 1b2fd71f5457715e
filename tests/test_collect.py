"""`irevla collect`: scripted twin experts in worker processes -> a valid dataset with the right task counts."""
from __future__ import annotations

import subprocess
import sys

from teleop.dataset import compute_stats, validate_dataset


def test_collect_writes_a_valid_dataset(tmp_path):
    out = tmp_path / "scripted"
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out),
                           "--episodes-per-task", "2", "--tasks", "pick_red_block", "--workers", "2", "--no-progress"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "episodes/minute" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out),
                           "--episodes-per-task", "1", "--tasks", "press_button", "--workers", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rep = validate_dataset(out)
    assert rep.ok and rep.n_files == 3, rep.summary()
    stats = compute_stats(out)
    assert stats["per_task"]["pick_red_block"]["success"] == 2
    assert stats["per_task"]["press_button"]["success"] == 1
    assert stats["episodes"] == 3 and stats["steps"] > 30
    # A set holds one setting: appending at another image size is refused, and nothing recorded is touched.
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out),
                           "--episodes-per-task", "1", "--tasks", "open_drawer", "--workers", "1", "--no-progress",
                           "--image-size", "96"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2 and "recorded with other settings" in proc.stderr and "96 px" in proc.stderr
    assert validate_dataset(out).n_files == 3


def test_settings_mismatch_names_each_difference():
    """What `irevla collect` (appending) and `irevla iterate` (reusing an expert set) check before using a set."""
    from teleop.collect import CATEGORY, settings_mismatch
    cams = [{"name": "front", "width": 128, "height": 128}, {"name": "wrist", "width": 128, "height": 128}]
    entry = {"task": "press_button", "category": CATEGORY, "cameras": cams,
             "extra": {"expert_noise": 0.1, "clutter": 0, "task_definition": "aaaa"}}
    same = dict(cameras=("front", "wrist"), image_size=128, noise=0.1, clutter=0,
                task_definitions={"press_button": "aaaa"})
    assert settings_mismatch([entry], **same) == []
    assert settings_mismatch([entry], **{**same, "image_size": 96})[0].startswith("cameras")
    assert "expert noise 0.1 (wanted 0.0)" in settings_mismatch([entry], **{**same, "noise": 0.0})
    moved = settings_mismatch([entry], **{**same, "task_definitions": {"press_button": "bbbb"}})
    assert moved == ["task press_button as defined then (its definition has changed since)"]
    teleop = dict(entry, category="teleop")
    assert settings_mismatch([teleop], **{**same, "noise": 0.0}) == []  # only scripted sets are compared


def test_resume_counts_continue_each_task_at_its_next_unused_seed():
    """A rerun of `irevla collect` after a kill counts what the index holds per task and starts each task after the
    highest seed it already used (seed = first + 100000 * task index + attempt), so no scene is recorded twice."""
    from teleop.collect import CATEGORY, resume_counts
    tasks = ["pick_red_block", "press_button"]
    entries = [
        {"task": "pick_red_block", "category": CATEGORY, "success": True, "extra": {"seed": 10}},
        {"task": "pick_red_block", "category": CATEGORY, "success": False, "extra": {"seed": 12}},
        {"task": "press_button", "category": CATEGORY, "success": True, "extra": {"seed": 10 + 100000 + 4}},
        {"task": "press_button", "category": "teleop", "success": True, "extra": {"seed": 10 + 100000 + 99}},
        {"task": "open_drawer", "category": CATEGORY, "success": True, "extra": {"seed": 5}},
    ]
    got, attempts = resume_counts(entries, tasks, first_seed=10)
    assert got == {"pick_red_block": 1, "press_button": 1}
    assert attempts == {"pick_red_block": 3, "press_button": 5}
    assert resume_counts([], tasks, 0) == ({t: 0 for t in tasks}, {t: 0 for t in tasks})
