"""The rl_session graph as an operator runs it: `irevla launch rl_session reward:=operator auto_reset:=false` in a
terminal (a pty here), the operator's keys start each episode and mark it; the policy server streams latents, the
actor (robot mode, over the robot server) acts and sends demos and transitions, the learner takes them. Real
processes over real DDS on the twin cell."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pty_process import ProcessTerminal

pytestmark = pytest.mark.ros
REPO = Path(__file__).resolve().parents[1]


def test_operator_runs_a_session_with_keys(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "IREVLA_JOINED"}
    term = ProcessTerminal([sys.executable, "-m", "robot_server.launch_graph", "rl_session",
                     f"checkpoint:={REPO / 'policy' / 'default_model'}", "task:=press_button",
                     "instruction:=press the button", "reward:=operator", "auto_reset:=false", "demos:=1",
                     f"learner_out:={tmp_path / 'learner'}", f"actor_out:={tmp_path / 'actor'}"], env)
    try:
        at = term.expect(r"reset the scene, then press \[r\]", 240)  # the demo episode waits for the operator
        term.type("r")
        at = term.expect(r"episode 0 \| success 0/0", 30, at)
        time.sleep(2.0)  # a few steps of the VLA
        at = term.press_until("s", r"sent 1 demo episode", 60, at)  # the operator: a success -> the demo
        at = term.expect(r"reset the scene, then press \[r\]", 60, at)  # the first RL episode
        term.type("\r")
        time.sleep(2.0)
        at = term.press_until("f", r"episode 1: failure", 60, at)
        term.expect(r"episode 2 \| success 0/1", 30, at)
        term.type("p")
        term.expect(r"operator: paused", 10, at)
    finally:
        screen = term.stop()
    assert (tmp_path / "actor" / "actor_demos" / "chunk_000001.npz").is_file(), screen[-3000:]
    assert "learner" in screen and "Traceback" not in screen, screen[-3000:]
    # The demo the operator marked is harvested for stage 2: frames of both cameras, robot state, actions.
    from teleop.dataset import read_episode, validate_dataset
    from teleop import storage
    harvest = tmp_path / "actor" / "harvest"
    rep = validate_dataset(harvest)
    assert rep.ok and rep.n_files == 1, rep.summary() + screen[-5000:]
    ep = read_episode(next(iter(storage.episode_files(harvest).values())))
    assert ep.meta["extra"]["source"] == "vla_demo" and ep.meta["task"] == "press_button"
    assert ep.images["front"].shape[1:] == (128, 128, 3) and ep.images["wrist"].shape[1:] == (128, 128, 3)
    assert len(ep.action) >= 3 and ep.images["front"].shape[0] == len(ep.action)
    # What a person looks at afterwards, as in the in-process session: the actor's episode log, summary, plot and
    # TensorBoard; the learner's TensorBoard and summary.
    import json
    actor, learner = tmp_path / "actor", tmp_path / "learner"
    episodes = [json.loads(line) for line in (actor / "episodes.jsonl").read_text().splitlines()]
    assert [(e["episode"], e["success"]) for e in episodes] == [(1, False)], episodes
    summary = json.loads((actor / "summary.json").read_text())
    assert summary["episodes"] == 1 and summary["successes"] == 0 and summary["demos"] == 1, summary
    assert (actor / "success_rate.png").stat().st_size > 1000
    assert list((actor / "tb").glob("events.out.tfevents.*")) and list((learner / "tb").glob("events.out.tfevents.*"))
    learned = json.loads((learner / "summary.json").read_text())
    assert learned["demo"] > 0 and learned["received"]["demos"] >= 1, learned
