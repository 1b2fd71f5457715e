"""The reach learning test through the ROS 2 nodes: the same learning as tests/test_rl_session.py's in-process
session (same cores, same small SAC settings, same demos, same UTD 1 after 20 transitions, same 20 episodes, same
bar on the same held-out seeds), with the actor (rl_actor, its own twin) and the learner (rl_learner) as separate
processes over real DDS. The learner's handed-back VLA is evaluated as the in-process session evaluates its own."""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rl_agent import transport as tp
from rl_helpers import REACH_TASKS, SMALL_SAC, NodeProcess, reach_session, shared_tiny_checkpoint

pytestmark = pytest.mark.ros


def held_out_success(checkpoint: Path, episodes: int, session_seed: int = 0) -> float:
    """The in-process session's evaluation (rl_agent.jobs.session.Session._evaluate): the VLA's head,
    deterministic, on the session's held-out evaluation seeds."""
    from policy.model import load_vla
    from rl_agent.env import LatentEncoder, LatentEnv
    from rl_agent.episodes import EVAL_SEED_BASE, EpisodeRunner, session_seed as seed_of, vla_policy
    from rl_agent.rewards import RewardConfig, make_reward_source
    encoder = LatentEncoder(load_vla(checkpoint))
    env = LatentEnv(encoder, "reach_point", task_files=[REACH_TASKS], keep_images=False)
    try:
        runner = EpisodeRunner(env, make_reward_source(RewardConfig()))
        wins = [runner.run(seed_of(session_seed, EVAL_SEED_BASE, i), vla_policy(encoder), keep_images=False)
                .trace.success for i in range(episodes)]
    finally:
        env.close()
    return float(np.mean(wins))


def test_reach_learns_through_the_ros_nodes_as_in_process(ros_context, spin_thread, tmp_path, tmp_path_factory):
    import rclpy
    from irevla_interfaces.msg import Blob

    data = reach_session(max_episodes=20)  # the in-process test's settings
    ckpt = shared_tiny_checkpoint(tmp_path_factory)
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({"session": {"sac": SMALL_SAC}}))
    common = ["-p", f"checkpoint:={ckpt}", "-p", f"config:={cfg}", "-p", f"seed:={data['seed']}"]
    learner = NodeProcess(["rl_agent.learner_node", "--ros-args", *common, "-p", f"out_dir:={tmp_path / 'learner'}",
                    "-p", f"learning_starts:={data['train']['learning_starts']}",
                    "-p", f"max_updates_per_transition:={float(data['train']['updates_per_step'])}",
                    "-p", "push_every:=5", "-p", "checkpoint_every_updates:=1000000"], tmp_path / "learner.log")
    actor = NodeProcess(["rl_agent.actor_node", "--ros-args", *common, "-p", "task:=reach_point",
                  "-p", f"task_file:={REACH_TASKS}", "-p", f"out_dir:={tmp_path / 'actor'}",
                  "-p", f"demos:={data['demos']['count']}", "-p", f"demo_source:={data['demos']['source']}",
                  "-p", f"max_episodes:={data['max_episodes']}", "-p", "rate_hz:=20.0", "-p", "chunk_steps:=5",
                  "-p", "harvest:=false", "-p", "console:=off"], tmp_path / "actor.log")

    node = rclpy.create_node("reach_probe", context=ros_context)
    learner_hb: dict = {}
    node.create_subscription(Blob, tp.TOPIC_LEARNER_STATUS, lambda m: learner_hb.update(json.loads(bytes(m.data))),
                             tp.qos_profiles()[2])
    spin_thread([node])

    def logs() -> str:
        return f"--- actor:\n{actor.text()[-3000:]}\n--- learner:\n{learner.text()[-3000:]}"

    try:
        actor.p.wait(timeout=420)  # 8 demos + 20 RL episodes, then it ends by itself
        assert actor.p.returncode == 0, logs()
        sent = json.loads((tmp_path / "actor" / "summary.json").read_text())
        starts = data["train"]["learning_starts"]
        deadline = time.monotonic() + 120
        # the learner owes one update per online transition past learning_starts (UTD 1, like in-process)
        while not (learner_hb.get("received", {}).get("transitions", 0) >= sent["env_steps"]
                   and learner_hb.get("updates", 0) >= learner_hb["received"]["transitions"] - starts + 1):
            assert time.monotonic() < deadline, f"learner did not catch up: {learner_hb}\n{logs()}"
            time.sleep(0.2)
    finally:
        actor.kill(signal.SIGINT, timeout=60)
        learner.kill(signal.SIGINT, timeout=60)  # SIGINT: final checkpoint and the RL head handed back into a VLA checkpoint
    summary = json.loads((tmp_path / "learner" / "summary.json").read_text())
    # every RL transition arrived (plus any failed demo attempt's, which go online as in-process)
    assert summary["received"]["transitions"] >= sent["env_steps"] and summary["rejected"] == 0
    assert summary["updates"] == summary["received"]["transitions"] - starts + 1  # the in-process session's count
    assert summary["demo"] > 0 and sent["episodes"] == data["max_episodes"]

    before = held_out_success(ckpt, 6)
    after = held_out_success(tmp_path / "learner" / "rl_head_ckpt", 6)
    print(f"reach over ROS 2: success before {before:.2f}, after (handed-back head) {after:.2f}; "
          f"{sent['env_steps']} transitions, {summary['updates']} updates")
    assert before <= 0.2  # the same bar as the in-process test
    assert after >= 0.8 and after >= before + 0.6, logs()
