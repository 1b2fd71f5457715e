"""The ROS actor's demo phase (rl_agent.actor_core.send_demos) on the real twin with a tiny random VLA: the demos
reach the learner before the failed attempts' transitions, so its first updates see demos as the in-process
session's do; a restarted actor resends its stored demos only."""
from __future__ import annotations

import threading

from rl_helpers import REACH_TASKS, shared_tiny_checkpoint


def test_demos_go_out_before_the_failed_attempts_and_only_demos_are_resent(tmp_path, tmp_path_factory):
    from policy.model import load_vla
    from rl_agent import transport as tp
    from rl_agent.actor_core import send_demos
    from rl_agent.env import LatentEncoder, LatentEnv
    from rl_agent.episodes import EpisodeRunner
    from rl_agent.rewards import RewardConfig, make_reward_source
    encoder = LatentEncoder(load_vla(shared_tiny_checkpoint(tmp_path_factory)))
    env = LatentEnv(encoder, "reach_point", task_files=[REACH_TASKS], keep_images=False, max_episode_steps=40)
    try:
        runner = EpisodeRunner(env, make_reward_source(RewardConfig()))
        sent: list[tuple[str, int]] = []

        def run():
            return send_demos(None, runner, encoder, tmp_path, 2, "mixed", 0,
                              lambda kind, chunk: sent.append((kind, len(chunk["actions"]))), threading.Event(),
                              lambda *_: None, max_attempts=3)

        assert run() == 2
        kinds = [k for k, _ in sent]
        assert kinds.count(tp.KIND_DEMOS) == 2
        failed = [n for k, n in sent if k == tp.KIND_TRANSITIONS]
        assert failed, "the random VLA's three attempts at a 40-step reach should fail"
        assert kinds.index(tp.KIND_TRANSITIONS) > max(i for i, k in enumerate(kinds) if k == tp.KIND_DEMOS)
        sent.clear()
        assert run() == 2 and [k for k, _ in sent] == [tp.KIND_DEMOS] * 2  # a restart: stored demos, no new attempts
    finally:
        env.close()
