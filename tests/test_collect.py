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
