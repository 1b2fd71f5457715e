"""Latent replay buffers: shared observation storage, NaN rejection, FIFO eviction, memory budget, atomic
save/load, and the 50/50 demo/online mix (rl_agent/buffers.py). Pure numpy, no jax."""
from __future__ import annotations

import numpy as np
import pytest

from rl_agent.buffers import LatentReplayBuffer, sample_mixed

SHAPE = (6, 16)


def make_obs(rng, marker=None):
    lat = rng.standard_normal(SHAPE).astype(np.float32)
    st = rng.standard_normal(8).astype(np.float32)
    if marker is not None:
        st[0] = marker  # identifies the observation
    return {"latents": lat, "state": st}


def fill_episode(buf, rng, steps, start_marker=0.0, terminal=True, reward=0.0):
    obs = [make_obs(rng, start_marker + i) for i in range(steps + 1)]
    buf.start_episode(obs[0])
    for i in range(steps):
        buf.add(np.full(7, 0.01 * i, np.float32), reward + i, obs[i + 1], done=terminal and i == steps - 1)
    return obs


def test_observations_stored_once_and_transitions_chain():
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer(200, SHAPE)
    obs = fill_episode(buf, rng, 50, start_marker=100.0)
    assert len(buf) == 50 and buf.num_observations == 51
    # ~ one observation per transition: 51 slots for 50 transitions, not two observations each.
    obs_bytes = np.prod(SHAPE) * 2 + 8 * 4
    assert buf.bytes_per_transition < 1.2 * (obs_bytes + 7 * 4 + 4 + 2)
    assert buf.bytes_per_transition == pytest.approx(51 / 50 * buf.bytes_per_observation)
    assert buf._latents.dtype == np.float16
    batch = buf.sample(300, np.random.default_rng(1))
    assert batch["observations"]["latents"].dtype == np.float16
    assert batch["observations"]["latents"].shape == (300, *SHAPE)
    # next observation of step t is the observation of step t+1, and actions/rewards belong to step t
    step = (batch["observations"]["state"][:, 0] - 100.0).round().astype(int)
    np.testing.assert_array_equal(batch["next_observations"]["state"][:, 0] - 100.0, step + 1)
    np.testing.assert_allclose(batch["actions"][:, 0], 0.01 * step, atol=1e-6)
    np.testing.assert_allclose(batch["rewards"], step)
    np.testing.assert_array_equal(batch["masks"], (step != 49).astype(np.float32))
    for i in np.unique(step)[:5]:
        row = np.flatnonzero(step == i)[0]
        np.testing.assert_allclose(batch["observations"]["latents"][row], obs[i]["latents"], atol=1e-2)
        np.testing.assert_allclose(batch["next_observations"]["latents"][row], obs[i + 1]["latents"], atol=1e-2)


def test_nan_and_bad_shapes_rejected_nothing_stored():
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer(50, SHAPE)
    buf.start_episode(make_obs(rng))
    buf.add(np.zeros(7), 0.0, make_obs(rng), False)
    before = (len(buf), buf.num_observations, buf._latents.copy())
    bad = make_obs(rng)
    bad["latents"][2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        buf.add(np.zeros(7), 0.0, bad, False)
    huge = make_obs(rng)
    huge["latents"][0, 0] = 1e6  # overflows float16 -> inf
    with pytest.raises(ValueError, match="NaN or inf"):
        buf.add(np.zeros(7), 0.0, huge, False)
    with pytest.raises(ValueError, match="action contains NaN"):
        buf.add(np.array([0, 0, np.inf, 0, 0, 0, 0]), 0.0, make_obs(rng), False)
    with pytest.raises(ValueError, match="reward"):
        buf.add(np.zeros(7), float("nan"), make_obs(rng), False)
    with pytest.raises(ValueError, match="latents have shape"):
        buf.add(np.zeros(7), 0.0, {"latents": np.zeros((5, 16)), "state": np.zeros(8)}, False)
    with pytest.raises(ValueError, match="state"):
        buf.start_episode({"latents": np.zeros(SHAPE), "state": np.array([np.nan] * 8)})
    assert (len(buf), buf.num_observations) == before[:2]
    np.testing.assert_array_equal(buf._latents, before[2])
    # insert_episode is all-or-nothing
    obs = [make_obs(rng) for _ in range(4)]
    obs[3]["state"][1] = np.inf
    with pytest.raises(ValueError, match="step 3"):
        buf.insert_episode(obs, np.zeros((3, 7)), np.zeros(3), [False, False, True])
    assert (len(buf), buf.num_observations) == before[:2]
    # still usable afterwards
    buf.add(np.zeros(7), 1.0, make_obs(rng), True)
    assert len(buf) == 2
    with pytest.raises(RuntimeError, match="start_episode"):
        buf.add(np.zeros(7), 0.0, make_obs(rng), False)


def test_fifo_eviction_never_crosses_episodes():
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer(25, SHAPE)
    for e in range(6):  # 6 episodes x 11 observations >> 25 slots
        fill_episode(buf, rng, 10, start_marker=1000.0 * e, terminal=(e % 2 == 0))
    assert buf.num_observations == 25
    assert len(buf) <= 24
    batch = buf.sample(2000, np.random.default_rng(2))
    d = batch["next_observations"]["state"][:, 0] - batch["observations"]["state"][:, 0]
    np.testing.assert_allclose(d, 1.0)  # every sampled pair is consecutive within one episode
    # only the newest episodes survive
    assert batch["observations"]["state"][:, 0].min() >= 3000.0


def test_memory_budget():
    per_obs = LatentReplayBuffer(2, SHAPE).bytes_per_observation
    with pytest.raises(ValueError, match="exceeds the memory budget.*at most 10 observations fit"):
        LatentReplayBuffer(11, SHAPE, memory_budget_bytes=10 * per_obs + 5)
    buf = LatentReplayBuffer(None, SHAPE, memory_budget_bytes=10 * per_obs + 5)
    assert buf.capacity == 10 and buf.nbytes <= 10 * per_obs + 5


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    buf = LatentReplayBuffer(30, SHAPE)
    for e in range(4):  # wraps around
        fill_episode(buf, rng, 9, start_marker=100.0 * e)
    buf.start_episode(make_obs(rng, 7777.0))  # an open episode survives the round trip
    path = buf.save(tmp_path / "online.npz")
    assert not list(tmp_path.glob("*.tmp"))
    loaded = LatentReplayBuffer.load(path)
    assert (len(loaded), loaded.num_observations, loaded.capacity) == (len(buf), buf.num_observations, 30)
    a, b = buf.all_transitions(), loaded.all_transitions()
    assert len(a["rewards"]) == len(buf)
    for key in ("actions", "rewards", "masks"):
        np.testing.assert_array_equal(a[key], b[key])
    for key in ("observations", "next_observations"):
        for part in ("latents", "state"):
            np.testing.assert_array_equal(a[key][part], b[key][part])
    last = make_obs(rng, 7778.0)
    for b_ in (buf, loaded):  # the open episode continues the same way in both (the full ring evicts one)
        b_.add(np.zeros(7), 5.0, last, True)
    np.testing.assert_array_equal(buf.all_transitions()["rewards"], loaded.all_transitions()["rewards"])
    assert loaded.all_transitions()["observations"]["state"][-1, 0] == 7777.0
    # in-place load into a smaller buffer keeps the newest observations, no transition across the cut
    small = LatentReplayBuffer(12, SHAPE)
    assert small.load(path) is small
    assert small.num_observations == 12
    s = small.sample(400, np.random.default_rng(1))
    np.testing.assert_allclose(s["next_observations"]["state"][:, 0] - s["observations"]["state"][:, 0], 1.0)
    with pytest.raises(ValueError, match="holds latents"):
        LatentReplayBuffer(12, (3, 16)).load(path)


def test_sample_mixed_half_and_half():
    rng = np.random.default_rng(0)
    demo, online = LatentReplayBuffer(300, SHAPE), LatentReplayBuffer(300, SHAPE)
    fill_episode(demo, rng, 40, reward=1000.0)  # demo rewards >= 1000, online < 1000
    srng = np.random.default_rng(3)
    batch, is_demo = sample_mixed(demo, online, 64, srng, return_sources=True)
    assert is_demo.all() and (batch["rewards"] >= 1000).all()  # online empty -> all demo
    fill_episode(online, rng, 200)
    n_demo = n_total = 0
    first_half_demo = []
    for _ in range(200):
        batch, is_demo = sample_mixed(demo, online, 64, srng, return_sources=True)
        from_demo = batch["rewards"] >= 1000.0
        np.testing.assert_array_equal(from_demo, is_demo)
        n_demo += from_demo.sum()
        n_total += len(from_demo)
        first_half_demo.append(from_demo[:32].mean())
    assert n_demo / n_total == 0.5  # exactly half of every batch
    # rows are shuffled (the agent cuts batches into minibatches along the rows)
    assert 0.35 < np.mean(first_half_demo) < 0.65
    with pytest.raises(ValueError, match="differ in shape"):
        sample_mixed(demo, LatentReplayBuffer(10, (6, 8)), 8, srng)
