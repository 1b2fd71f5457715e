"""rl_agent/learner_core.py: the one learning engine of both stage-1 paths. The update-to-data cap counts only
online transitions from learning_starts on, the same whether they arrive step by step (in-process) or as chunks
(over ROS); human takeovers reach the demo buffer either way; a checkpoint carries the owed updates over."""
from __future__ import annotations

import numpy as np
import pytest

from rl_agent import transport as tp
from rl_helpers import LATENT_SHAPE, small_sac_config


def _core(tmp_path, **cfg):
    from rl_agent.agent import SACAgent
    from rl_agent.buffers import LatentReplayBuffer
    from rl_agent.learner_core import LearnerConfig, LearnerCore
    return LearnerCore(SACAgent.create(0, LATENT_SHAPE, config=small_sac_config()),
                       lambda cap: LatentReplayBuffer(cap, LATENT_SHAPE), LearnerConfig(**cfg), tmp_path, log=print)


def _obs(rng):
    return {"latents": rng.standard_normal(LATENT_SHAPE).astype(np.float32),
            "state": rng.standard_normal(8).astype(np.float32)}


def test_step_by_step_and_chunked_data_owe_the_same_updates(tmp_path):
    rng = np.random.default_rng(0)
    stream = _core(tmp_path / "a", learning_starts=4, max_updates_per_transition=0.5)
    obs = _obs(rng)
    stream.start_episode(obs)
    owed = []
    for t in range(10):
        nxt = _obs(rng)
        stream.add_step(obs, rng.uniform(-1, 1, 7).astype(np.float32), 0.0, nxt, False, intervened=t in (2, 3))
        owed.append(sum(1 for _ in stream.train_owed()))
        obs = nxt
    # transitions 4..10 earn 0.5 each (7 x 0.5 = 3.5): three whole updates, the half carried
    assert sum(owed) == 3 == stream.updates and owed[:3] == [0, 0, 0]
    assert stream.credit == pytest.approx(0.5)
    assert len(stream.demo) == 2 and len(stream.online) == 10  # the two takeover steps also went to demo

    chunked = _core(tmp_path / "b", learning_starts=4, max_updates_per_transition=0.5)
    lat = np.stack([_obs(rng)["latents"] for _ in range(11)])
    chunk = {"latents": lat, "state": rng.standard_normal((11, 8)).astype(np.float32),
             "actions": rng.uniform(-1, 1, (10, 7)).astype(np.float32), "rewards": np.zeros(10, np.float32),
             "dones": np.zeros(10, bool), "intervened": np.isin(np.arange(10), (2, 3))}
    assert chunked.ingest("a0", tp.KIND_TRANSITIONS, 1, tp.FORMAT_NPZ, tp.encode_chunk(chunk))
    assert sum(1 for _ in chunked.train_owed()) == 3 and chunked.credit == pytest.approx(0.5)
    assert len(chunked.demo) == 2

    stream.save_checkpoint({"phase": "train"})
    again = _core(tmp_path / "a", learning_starts=4, max_updates_per_transition=0.5)
    state = again.restore()
    assert state["phase"] == "train" and again.updates == 3 and again.credit == pytest.approx(0.5)


def test_uncapped_learner_refuses_to_be_driven_step_by_step(tmp_path):
    core = _core(tmp_path, learning_starts=0, max_updates_per_transition=0.0)
    with pytest.raises(ValueError, match="max_updates_per_transition > 0"):
        next(core.train_owed())
