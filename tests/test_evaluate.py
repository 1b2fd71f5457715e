"""`irevla evaluate` with the embedded default model on the twin: progress moves per episode whatever the worker
count, with the same results as one process; and the command renders without MUJOCO_GL set by the user."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from policy.evaluate import EvalConfig, evaluate
from rl_agent.jobs.main_job import default_model_dir

ROOT = Path(__file__).resolve().parents[1]


def _outcomes(report) -> list[tuple]:
    return [(e["task"], e["seed"], e["success"], e["steps"], e["instruction"]) for e in report.episodes]


def test_workers_report_each_episode_and_match_one_process(capsys):
    cfg = EvalConfig(tasks=["press_button"], seeds=[0, 1, 2, 3], max_steps=4, videos=0)
    cfg.workers = 2
    two = evaluate(str(default_model_dir()), cfg, label="two")
    bar = capsys.readouterr().out
    # One refresh per finished episode: 1/4, 2/4, 3/4 are shown, not only the end of each worker's share.
    seen = {int(n) for n in re.findall(r"\b([0-4])/4\b", bar)}
    assert {1, 2, 3, 4} <= seen, bar[-2000:]
    cfg.workers = 1
    one = evaluate(str(default_model_dir()), cfg, label="one", progress=False)
    assert _outcomes(two) == _outcomes(one)
    assert [e["seed"] for e in two.episodes] == [0, 1, 2, 3]


def test_evaluate_renders_without_mujoco_gl_set(tmp_path):
    """The crash this guards against: mujoco.FatalError "an OpenGL platform library has not been loaded" when the
    user has not exported MUJOCO_GL (the dispatcher must choose EGL or OSMesa itself)."""
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("evaluate:\n  max_steps: 2\n  videos: 0\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    env.update(HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "robot_server.cli", "evaluate", "--checkpoint",
                          str(default_model_dir()), "--tasks", "press_button", "--seeds", "1", "--config", str(cfg),
                          "--out", str(tmp_path / "report"), "--no-progress"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    episodes = json.loads((tmp_path / "report" / "episodes.json").read_text())
    assert len(episodes) == 1 and episodes[0]["steps"] >= 1
