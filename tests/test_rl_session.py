"""Stage-1 RL session (rl_agent/jobs/session.py, `irevla rl-session`) with real parts: the MuJoCo twin, a tiny random
VLA encoding every frame, the JAX SAC agent, the replay buffers, the MCAP recorder.

- SAC learns the reach task from latents + state well above the stage-0 (random head) success.
- The session's outputs: harvest validated by teleop.dataset, TensorBoard events, plot, summary, RL head checkpoint.
- SIGKILL mid-training and rerun: resumes from the checkpoint's counters and buffers, loses <= 1,000 transitions.
- Human interventions (a SpaceMouse whose HID read is faked) replace the policy's action and go into both buffers.
- Rewards: twin predicate, operator marks/keys, a success classifier on latents.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rl_helpers import REPO, reach_session, shared_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return shared_tiny_checkpoint(tmp_path_factory)


def _tb_scalars(tb_dir: Path) -> set:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_sac_learns_reach_from_latents_and_the_session_writes_its_outputs(tiny_ckpt, tmp_path):
    from rl_agent.jobs.session import Session, SessionConfig
    from teleop.dataset import read_episode, validate_dataset

    cfg = SessionConfig.from_dict(reach_session(max_episodes=20, eval={"episodes": 6},
                                                harvest={"action_label": "policy_mean"}))
    out = tmp_path / "run"
    sess = Session(cfg, tiny_ckpt, out)
    summary = sess.run()
    before, after = summary["eval"]["before"]["success_rate"], summary["eval"]["after"]["success_rate"]
    print("reach: success before", before, "after", after, "handback", summary["eval"]["after_handback"],
          "timing", summary["timing"])
    # The random stage-0 head never reaches the point; the RL agent does, deterministically, on held-out seeds.
    assert before <= 0.2
    assert after >= 0.8 and after >= before + 0.6
    # The hand-back: the RL head inside the VLA acts like the agent (bridge + tanh-consistent actor).
    assert summary["eval"]["after_handback"]["success_rate"] >= 0.8
    # UTD 1 once the online buffer holds learning_starts = 20 transitions
    assert summary["episodes"] == 20 and summary["updates"] == summary["env_steps"] - 19
    assert summary["demos"]["expert"] == 8 and summary["demos"]["vla"] == 0

    # Harvest: the successful RL episodes, in the expert-set format stage 2 reads.
    n_rl = int(sum(sess.state["successes"]))
    assert summary["harvested"]["rl"] == n_rl > 0
    assert summary["harvested"]["expert_demo"] == 0  # expert top-ups are not harvested by default
    report = validate_dataset(out / "harvest")
    assert report.ok, report.summary()
    index = [json.loads(line) for line in (out / "harvest" / "index.jsonl").read_text().splitlines()]
    assert len(index) == n_rl and all(e["success"] and e["extra"]["source"] == "rl" for e in index)
    assert all(e["extra"]["action_label"] == "policy_mean" for e in index)  # relabelled with the actor's mean
    ep = read_episode(out / "harvest" / index[0]["file"])
    assert ep.images["front"].shape[1:] == (64, 64, 3) and ep.action.shape[1] == 7
    assert ep.instruction in ("move next to the red block", "move next to the red cube",
                              "reach towards the red block", "reach towards the red cube")

    # Progress outputs: TensorBoard scalars, the plot, progress.json, the RL head checkpoint.
    tags = _tb_scalars(out / "tb")
    assert {"train/success_last20", "perf/updates_per_s", "perf/utd", "buffer/online", "buffer/demo",
            "learner/critic_loss"} <= tags
    assert (out / "success_rate.png").stat().st_size > 5000
    assert json.loads((out / "progress.json").read_text())["episodes"] == 20
    from policy.model import load_vla
    rl_vla, base = load_vla(out / "rl_head_ckpt"), load_vla(tiny_ckpt)
    w_rl = rl_vla.head.mlp.out.weight.detach().numpy()
    assert not np.allclose(w_rl, base.head.mlp.out.weight.detach().numpy())  # the head was trained and handed back
    assert json.loads((out / "rl_head_ckpt" / "meta.json").read_text())["rl_task"] == "reach_point"


def test_relabel_keeps_the_states_and_human_actions_and_takes_the_policy_mean_elsewhere():
    from rl_agent.env import EpisodeTrace
    from rl_agent.harvest import relabel_with_policy_mean
    from rl_agent.jobs.session import HarvestConfig

    rng = np.random.default_rng(0)
    T = 6
    obs = [{"latents": rng.normal(size=(4, 8)).astype(np.float32), "state": rng.normal(size=8).astype(np.float32)}
           for _ in range(T + 1)]
    executed = [rng.uniform(-1, 1, 7).astype(np.float32) for _ in range(T)]
    took = [False, True, True, False, False, False]
    trace = EpisodeTrace("t", "do it", 3, images=["img"] * (T + 1), robot=["r"] * (T + 1), actions=executed,
                         intervened=took, success=True)
    w = rng.normal(size=(8, 7))

    def mean_actions(batch):  # a deterministic policy of the observations: tanh of a linear map of the state
        assert batch["latents"].shape == (T, 4, 8) and batch["state"].shape == (T, 8)
        return np.tanh(batch["state"] @ w)

    out = relabel_with_policy_mean(trace, obs, mean_actions)
    for i in range(T):
        want = executed[i] if took[i] else np.tanh(obs[i]["state"] @ w)
        np.testing.assert_allclose(out.actions[i], want, rtol=1e-6)
    assert out.images is trace.images and out.robot is trace.robot and out.success and out.interventions == 1
    assert trace.actions is executed  # the original trace is not changed
    with pytest.raises(ValueError, match="shape"):
        relabel_with_policy_mean(trace, obs, lambda b: np.zeros((T, 6)))
    with pytest.raises(ValueError, match="finite"):
        relabel_with_policy_mean(trace, obs, lambda b: np.full((T, 7), np.nan))
    with pytest.raises(ValueError, match="observations"):
        relabel_with_policy_mean(trace, obs[:3], mean_actions)
    with pytest.raises(ValueError, match="action_label"):
        HarvestConfig(action_label="sampled")


class FakeHand:
    """A SpaceMouse's HID report stream (the only faked layer): pushes +x for steps 1-3 of every 10 reads."""

    def __init__(self):
        self.reads = 0
        self.closed = False

    def read(self):
        n = self.reads
        self.reads += 1
        push = n % 10 in (1, 2, 3)
        # SERL axis mapping: action dx = -y on the device.
        return type("S", (), dict(t=float(n), x=0.0, y=-1.0 if push else 0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0,
                                  buttons=[0, 0]))()

    def close(self):
        self.closed = True


def test_interventions_replace_the_policy_and_go_into_both_buffers(tiny_ckpt, tmp_path):
    from rl_agent.jobs.session import Session, SessionConfig
    from teleop.devices import SpaceMouseDevice

    hand = FakeHand()
    device = SpaceMouseDevice(max_drain=0, opener=lambda **kw: hand)  # one report per control step
    cfg = SessionConfig.from_dict(reach_session(max_episodes=2, demos={"count": 2}, eval={"episodes": 0},
                                                train={"learning_starts": 10 ** 6},
                                                interventions={"enabled": True, "linger_steps": 0},
                                                log={"tensorboard": False, "plot": False},
                                                harvest={"enabled": False}))
    sess = Session(cfg, tiny_ckpt, tmp_path / "run", intervention_device=device)
    summary = sess.run()
    assert hand.closed  # the device is released at the end
    online = sess.online.all_transitions()
    human = np.all(np.isclose(online["actions"][:, :6], [1, 0, 0, 0, 0, 0]), axis=1)
    # Takeovers of 3 steps (reads 1-3 of every 10; two episodes of up to 15 steps): counted per episode ...
    assert summary["interventions"] == sum(sess.state["interventions"]) >= 2
    assert sum(sess.state["intervened_steps"]) >= 3 * summary["interventions"] - 2
    # ... the executed (stored) action is the human's, never the policy's ...
    assert human.sum() == sum(sess.state["intervened_steps"])
    # ... and the same transitions are in the demo buffer too, next to the expert demos.
    demo_after = sess.demo.all_transitions()
    demo_human = np.all(np.isclose(demo_after["actions"][:, :6], [1, 0, 0, 0, 0, 0]), axis=1)
    assert demo_human.sum() == human.sum()
    assert len(sess.demo) == human.sum() + sess.state["demo_stats"]["demo_transitions"]


def test_reward_sources_operator_and_classifier():
    from rl_agent.reward_classifier import ClassifierConfig, SuccessClassifier
    from rl_agent.rewards import ClassifierReward, OperatorReward, RewardConfig, TwinPredicateReward

    op = OperatorReward()
    obs = {"latents": np.zeros((6, 16), np.float32), "state": np.zeros(8, np.float32)}
    assert op(obs, {}).end is False
    v = op(obs, {}, events=("success",))
    assert v.success and v.end and v.reward == 1.0
    op.reset()
    op.mark(False)  # what the actor's /irevla/rl/mark_failure service calls
    v = op(obs, {})
    assert v.end and not v.success and v.reward == 0.0
    assert TwinPredicateReward()(obs, {"success": True}).success
    with pytest.raises(KeyError):
        TwinPredicateReward()(obs, {})
    with pytest.raises(ValueError, match="classifier_path"):
        RewardConfig(source="classifier")

    rng = np.random.default_rng(0)
    pos = rng.normal(1.0, 0.3, (60, 6, 16)).astype(np.float32)
    neg = rng.normal(-1.0, 0.3, (60, 6, 16)).astype(np.float32)
    clf = SuccessClassifier(16, ClassifierConfig(epochs=30, hidden_dims=[16]))
    clf.fit(np.concatenate([pos, neg]), np.r_[np.ones(60), np.zeros(60)])
    reward = ClassifierReward(clf, threshold=0.5, consecutive=2)
    first = reward({"latents": pos[0], "state": obs["state"]}, {})
    second = reward({"latents": pos[1], "state": obs["state"]}, {})
    assert not first.success and second.success and second.score > 0.5  # two frames in a row
    assert not reward({"latents": neg[0], "state": obs["state"]}, {}).success


def _wait(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.2)
    raise TimeoutError(what)


def test_session_resumes_after_sigkill_losing_at_most_1000_transitions(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    cfg_file = tmp_path / "session.yaml"
    data = reach_session(max_episodes=9, eval={"episodes": 1}, demos={"count": 2},
                         checkpoint={"every_transitions": 20})
    cfg_file.write_text(yaml.safe_dump({"session": data}))
    cmd = [sys.executable, "-m", "rl_agent.jobs.session_cli", "--checkpoint", str(tiny_ckpt), "--out", str(out),
           "--config", str(cfg_file), "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log1 = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT)
    try:
        def ready():
            if proc.poll() is not None:
                log = (tmp_path / "run1.log").read_text()
                raise AssertionError(f"session exited early ({proc.returncode}):\n{log}")
            ckpts = sorted((out / "checkpoints").glob("ckpt_*/state.json"))
            if not ckpts:
                return None
            st = json.loads(ckpts[-1].read_text())
            try:
                prog = json.loads((out / "progress.json").read_text())
            except (OSError, ValueError):
                return None
            # a training checkpoint exists and the run went on past it
            if st["phase"] == "train" and st["episodes"] >= 2 and prog["env_steps"] > st["env_steps"]:
                return st, prog
            return None
        st_kill, prog_kill = _wait(ready, 240, "no training checkpoint within 240 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log1.close()
    assert proc.returncode == -signal.SIGKILL
    prog_at_kill = json.loads((out / "progress.json").read_text())
    ckpt_state = json.loads(sorted((out / "checkpoints").glob("ckpt_*/state.json"))[-1].read_text())
    assert not (out / "summary.json").exists()

    run2 = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert run2.returncode == 0, run2.stdout + run2.stderr
    assert f"resumed from ckpt_" in run2.stderr
    summary = json.loads((out / "summary.json").read_text())
    lost = summary["lost_transitions_on_resume"]
    print("SIGKILL resume: checkpoint at", ckpt_state["env_steps"], "transitions, killed at",
          prog_at_kill["env_steps"], "-> lost", lost)
    assert summary["resumes"] == 1 and len(lost) == 1
    assert lost[0] == prog_at_kill["env_steps"] - ckpt_state["env_steps"]
    assert 0 < lost[0] <= 1000
    # The resumed run continued from the checkpoint's counters: the demo phase did not run again, the episode
    # count ends at the budget, and the online buffer holds the checkpoint's transitions plus the new ones.
    assert "demos:" not in run2.stderr
    assert summary["episodes"] == 9
    assert summary["demos"] == ckpt_state["demo_stats"]
    final = json.loads(sorted((out / "checkpoints").glob("ckpt_*/state.json"))[-1].read_text())
    assert final["phase"] == "done" and len(final["successes"]) == 9
    assert final["successes"][:ckpt_state["episodes"]] == ckpt_state["successes"]
    failed_demo_steps = summary["demos"]["failed_to_online"]
    assert summary["buffers"]["online"] == summary["env_steps"] + failed_demo_steps
    assert summary["env_steps"] == sum(final["lengths"])
    # Rerunning a finished session does nothing and returns the same summary.
    run3 = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run3.returncode == 0 and "complete" in run3.stderr


def test_latent_env_passes_out_of_range_actions_to_the_safety_layer(tiny_ckpt):
    """No clipping before the safety layer: an out-of-range action is rejected and counted there (the arm holds),
    a non-finite one is counted and then refused loudly (it would poison the buffers)."""
    from policy.model import load_vla
    from rl_agent.env import LatentEncoder, LatentEnv
    from rl_helpers import REACH_TASKS

    env = LatentEnv(LatentEncoder(load_vla(tiny_ckpt)), "reach_point", task_files=[REACH_TASKS], keep_images=False)
    try:
        env.reset(seed=0)
        p0 = env.twin.state().ee_pos.copy()
        for _ in range(5):
            _, _, _, _, info = env.step(np.array([1.5, 0, 0, 0, 0, 0, -1], np.float32))
            assert info["rejected"] == "out of range" and info["safety"]["rejected"] == "out of range"
        assert np.linalg.norm(env.twin.state().ee_pos - p0) < 0.005  # held, not clipped to a full step
        assert env.safety_rejections == 5 and env.safety_rejection_reasons == {"out of range": 5}
        assert env.safety_stats["reasons"]["out of range"] == 5 and info["safety"]["rejections"] == 5
        assert env.trace.actions[-1][0] == np.float32(1.5)  # recorded as given
        _, _, _, _, info = env.step(np.array([1.0, 0, 0, 0, 0, 0, -1], np.float32))  # the boundary is fine
        assert "rejected" not in info and info["safety"]["rejected"] == ""
        with pytest.raises(ValueError, match="non-finite"):
            env.step(np.array([np.nan, 0, 0, 0, 0, 0, -1], np.float32))
        assert env.safety_stats["reasons"]["non-finite"] == 1
    finally:
        env.close()


def test_set_overrides_any_session_setting_and_refuses_bad_ones():
    """`irevla rl-session --set sac.bc_weight=0 --set demos.count=3`: the value is read as YAML into its section;
    a malformed item or an unknown key is a clear error, not a silent default."""
    from rl_agent.jobs.session_cli import build_parser, config_from_args
    from teleop.config import ConfigError
    base = ["--checkpoint", "x", "--out", "y", "--config", str(REPO / "config" / "rl_session.yaml")]
    cfg = config_from_args(build_parser().parse_args(base + ["--set", "sac.bc_weight=0", "--set", "demos.count=3",
                                                             "--set", "minutes=2.5"]))
    assert cfg.sac["bc_weight"] == 0 and cfg.sac["prior_weight"] == 5.0 and cfg.demos.count == 3
    assert cfg.minutes == 2.5
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        config_from_args(build_parser().parse_args(base + ["--set", "sac.bc_weight"]))
    with pytest.raises((ConfigError, ValueError, TypeError), match="nonsense"):
        config_from_args(build_parser().parse_args(base + ["--set", "demos.nonsense=1"]))
