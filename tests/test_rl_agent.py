"""SACfD agent (rl_agent/agent.py): pure jitted updates, finite losses, temperature toward the target entropy, actor
initialised from a torch action head, SAC learning a small latent-space task, save/load, the pooled-latent mode.

All tests share one tiny architecture and batch shape so the jitted functions compile once per test run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from policy.config import HeadConfig
from policy.heads import ActionHead
from rl_agent.agent import SACAgent
from rl_agent.bridge import head_to_flax
from rl_agent.buffers import LatentReplayBuffer
from rl_agent.config import SACConfig

LATENT = (6, 16)
BATCH = 64  # critic_actor_ratio 2 x batch_size 32
HEAD_CFG = HeadConfig(learned_tokens=2, token_learner_hidden=8, hidden_dims=[32, 32])
TINY = SACConfig.from_head_config(HEAD_CFG, critic_ensemble_size=4, critic_actor_ratio=2, batch_size=32, actor_lr=1e-3,
                                  critic_lr=1e-3)


def random_obs(rng, n=BATCH):
    return {"latents": rng.standard_normal((n, *LATENT)).astype(np.float16),
            "state": rng.standard_normal((n, 8)).astype(np.float32)}


def random_batch(rng, n=BATCH):
    return {"observations": random_obs(rng, n), "next_observations": random_obs(rng, n),
            "actions": rng.uniform(-1, 1, (n, 7)).astype(np.float32), "rewards": rng.standard_normal(n),
            "masks": (rng.random(n) > 0.1).astype(np.float32)}


def tree_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def torch_head(seed=0, action_scale=0.3) -> ActionHead:
    torch.manual_seed(seed)
    head = ActionHead(LATENT[1], HEAD_CFG)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    head.set_normalization(torch.randn(7) * 0.05, torch.full((7,), action_scale), torch.randn(8) * 0.1,
                           torch.rand(8) + 0.5)
    return head


@pytest.fixture(scope="module")
def agent():
    return SACAgent.create(0, LATENT, config=TINY)


def test_update_is_pure_and_finite(agent):
    batch = random_batch(np.random.default_rng(0))
    snapshot = jax.device_get(agent)
    a1, info1 = agent.update(batch)
    a2, info2 = agent.update(batch)
    assert tree_equal(a1, a2) and info1 == info2  # same inputs, same outputs
    assert tree_equal(agent, snapshot)  # the input agent is untouched
    assert set(info1) >= {"critic_loss", "actor_loss", "temperature", "entropy", "q_mean"}
    assert all(np.isfinite(v) for v in info1.values())
    assert not tree_equal(a1.critic.params, agent.critic.params)
    assert not tree_equal(a1.actor.params, agent.actor.params)
    # soft target update: targets move by tau, not all the way
    moved = [np.abs(t1 - t0).max() for t1, t0 in zip(jax.tree_util.tree_leaves(a1.target_critic_params),
                                                       jax.tree_util.tree_leaves(agent.target_critic_params))]
    assert max(moved) > 0
    assert not tree_equal(a1.target_critic_params, a1.critic.params)
    assert int(a1.critic.step) == TINY.critic_actor_ratio and int(a1.actor.step) == 1
    with pytest.raises(ValueError, match="multiple of critic_actor_ratio"):
        agent.update(random_batch(np.random.default_rng(0), n=BATCH - 1))
    with pytest.raises(KeyError, match="masks"):
        agent.update({k: v for k, v in batch.items() if k != "masks"})


def test_temperature_moves_toward_target_entropy(agent):
    batch = random_batch(np.random.default_rng(1))
    t0 = float(jnp.exp(agent.temperature.params["log_temperature"]))
    results = {}
    for target in (-3.5, 20.0):  # far below / far above the initial entropy
        a = agent.replace(target_entropy=jnp.float32(target))
        for _ in range(30):
            a, info = a.update(batch)
        results[target] = (info["temperature"], info["entropy"])
    (t_low, h_low), (t_high, _) = results[-3.5], results[20.0]
    assert h_low > -3.5  # the entropy is above the default target -|A|/2 ...
    assert t_low < t0 * 0.995  # ... so the temperature falls
    assert t_high > t0 * 1.005  # an unreachable high target raises it


def test_actor_from_torch_head_gives_the_heads_actions(agent):
    head = torch_head(0)
    rl = SACAgent.create(1, LATENT, config=TINY, actor_head=head_to_flax(head))
    obs = random_obs(np.random.default_rng(2))
    obs["latents"] = obs["latents"].astype(np.float32)
    with torch.no_grad():
        ref = head(torch.from_numpy(obs["latents"]), torch.from_numpy(obs["state"])).numpy()
    inside = np.abs(ref) < 0.999
    assert inside.mean() > 0.9
    got = rl.eval_actions(obs)
    np.testing.assert_allclose(got[inside], ref[inside], atol=1e-5)
    np.testing.assert_allclose(got[~inside], np.clip(ref[~inside], -0.999, 0.999), atol=1e-6)
    # saturated head outputs: the deterministic action is the clipped head action (VLA clips to +-1 itself)
    big = SACAgent.create(1, LATENT, config=TINY, actor_head=head_to_flax(torch_head(0, action_scale=1.2)))
    with torch.no_grad():
        ref_big = torch_head(0, action_scale=1.2)(torch.from_numpy(obs["latents"]),
                                                  torch.from_numpy(obs["state"])).numpy()
    assert (np.abs(ref_big) > 1).any()
    np.testing.assert_allclose(big.eval_actions(obs), np.clip(ref_big, -0.999, 0.999), atol=1e-5)
    # the critic's token learner starts from the head's; a differently built agent does not match
    np.testing.assert_array_equal(rl.critic.params["token_learner"]["fc1"]["kernel"],
                                  head.token_learner.fc1.weight.detach().numpy().T)
    assert not tree_equal(rl.actor.params["head"], agent.actor.params["head"])
    # single unbatched observation
    one = rl.eval_actions({"latents": obs["latents"][0], "state": obs["state"][0]})
    np.testing.assert_allclose(one, got[0], atol=1e-6)
    # stochastic actions scatter around it
    s = rl.sample_actions(obs, seed=3)
    assert s.shape == (BATCH, 7) and np.abs(s).max() <= 1.0 and not np.allclose(s, got)
    np.testing.assert_array_equal(s, rl.sample_actions(obs, seed=3))
    # architecture mismatch: clear error
    with pytest.raises(ValueError, match="from_head_config"):
        SACAgent.create(1, LATENT, config=SACConfig(hidden_dims=[64, 64]), actor_head=head_to_flax(head))


def test_bad_observations_are_refused(agent):
    obs = random_obs(np.random.default_rng(3), 4)
    obs["latents"][1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        agent.eval_actions(obs)
    with pytest.raises(ValueError, match="per-row shape"):
        agent.eval_actions({"latents": np.zeros((4, 5, 16)), "state": np.zeros((4, 8))})
    with pytest.raises(ValueError, match="state has 7 values"):
        agent.sample_actions({"latents": np.zeros((4, *LATENT)), "state": np.zeros((4, 7))}, 0)


def bandit_targets(latents):
    """The task: the best action's first two dimensions depend on two latent features (present in every token)."""
    f = np.asarray(latents, np.float32)[:, :, :2].mean(axis=1)
    return 0.6 * np.tanh(2.0 * f)


def bandit_reward(latents, actions):
    return -np.sum((actions[:, :2] - bandit_targets(latents)) ** 2, axis=1)


def test_sac_learns_a_latent_bandit():
    """One-step episodes: reward = -|a[:2] - g(latent feature)|^2. Online SAC must close most of the gap."""
    rng = np.random.default_rng(0)
    rl = SACAgent.create(5, LATENT, config=TINY)
    test_obs = random_obs(np.random.default_rng(99), BATCH)
    before = bandit_reward(test_obs["latents"], rl.eval_actions(test_obs)).mean()
    buf = LatentReplayBuffer(8000, LATENT)
    for it in range(60):
        obs = random_obs(rng, BATCH)
        actions = rl.sample_actions(obs, seed=it)
        rewards = bandit_reward(obs["latents"], actions)
        for i in range(BATCH):
            o = {"latents": obs["latents"][i], "state": obs["state"][i]}
            buf.insert_episode([o, o], actions[i:i + 1], rewards[i:i + 1], [True])
        for _ in range(16):
            rl, info = rl.update(buf.sample(BATCH, rng))
    after = bandit_reward(test_obs["latents"], rl.eval_actions(test_obs)).mean()
    zero_action = bandit_reward(test_obs["latents"], np.zeros((BATCH, 7))).mean()  # ignores the latents
    assert all(np.isfinite(v) for v in info.values())
    assert after > before + 0.6 * (0.0 - before), (before, after)
    assert after > 0.5 * zero_action, (after, zero_action)  # uses the latent feature, not just a constant


def test_save_and_load_round_trip(agent, tmp_path):
    batch = random_batch(np.random.default_rng(4))
    trained, _ = agent.update(batch)
    path = trained.save(tmp_path / "agent.msgpack")
    assert not list(tmp_path.glob("*.tmp"))
    for loaded in (SACAgent.load(path), SACAgent.load(path, template=agent)):
        assert tree_equal(loaded, trained)
        assert loaded.config == TINY
        n1, i1 = trained.update(batch)
        n2, i2 = loaded.update(batch)
        assert tree_equal(n1, n2) and i1 == i2
    with pytest.raises(ValueError, match="does not match the template"):
        SACAgent.load(path, template=SACAgent.create(0, (6, 8), config=TINY))


def test_pooled_latents_mode():
    """latent_input='pooled': the buffers store the frozen SFT token learner's output [S, d]; the actor still
    acts like the head, and the hand-back carries that token learner unchanged."""
    head = torch_head(1)
    cfg = SACConfig.from_head_config(HEAD_CFG, critic_ensemble_size=4, critic_actor_ratio=2, batch_size=32,
                                     latent_input="pooled")
    rl = SACAgent.create(0, LATENT, config=cfg, actor_head=head_to_flax(head))
    assert rl.stored_latent_shape == (2, 16)
    obs = random_obs(np.random.default_rng(5))
    obs["latents"] = obs["latents"].astype(np.float32)
    with pytest.raises(ValueError, match="prepare_observations"):
        rl.eval_actions(obs)
    pooled = rl.prepare_observations(obs)
    assert pooled["latents"].shape == (BATCH, 2, 16)
    with torch.no_grad():
        ref = head(torch.from_numpy(obs["latents"]), torch.from_numpy(obs["state"])).numpy()
        ref_tokens = head.token_learner(torch.from_numpy(obs["latents"])).numpy()
    np.testing.assert_allclose(pooled["latents"], ref_tokens, atol=1e-5)
    np.testing.assert_allclose(rl.eval_actions(pooled), ref, atol=1e-5)
    buf = LatentReplayBuffer(100, rl.stored_latent_shape)
    assert buf.bytes_per_observation < LatentReplayBuffer(100, LATENT).bytes_per_observation
    rl2, info = rl.update({"observations": pooled, "next_observations": pooled, "actions": np.zeros((BATCH, 7)),
                           "rewards": np.ones(BATCH), "masks": np.ones(BATCH)})
    assert np.isfinite(info["critic_loss"])
    back = rl2.actor_head_params()
    np.testing.assert_array_equal(back["params"]["token_learner"]["fc1"]["kernel"],
                                  head.token_learner.fc1.weight.detach().numpy().T)


def test_bc_term_pulls_the_actor_to_demo_actions_only_on_demo_rows():
    """bc_weight: the actor's deterministic action moves toward the demo rows' actions; rows not marked as demos
    (and a bc_weight of 0) leave that pull out."""
    rng = np.random.default_rng(3)
    target = np.array([0.5, -0.4, 0.3, 0.0, 0.0, 0.2, 0.8], np.float32)
    test_obs = random_obs(np.random.default_rng(7), BATCH)

    def train(bc_weight: float, demo_rows: bool) -> float:
        rl = SACAgent.create(1, LATENT, config=SACConfig(**{**TINY.to_dict(), "bc_weight": bc_weight}))
        for _ in range(150):
            b = random_batch(rng)
            b["rewards"] = np.zeros(BATCH)  # nothing to learn from the critic: only BC can move the mean
            b["actions"] = np.tile(target, (BATCH, 1))
            b["is_demo"] = np.full(BATCH, demo_rows)
            rl, info = rl.update(b)
        assert np.isfinite(info["bc_loss"])
        return float(np.abs(rl.eval_actions(test_obs) - target).mean())

    start = float(np.abs(SACAgent.create(1, LATENT, config=TINY).eval_actions(test_obs) - target).mean())
    with_bc = train(5.0, True)
    assert with_bc < 0.3 * start, (start, with_bc)
    assert train(5.0, False) > 0.6 * start
    assert train(0.0, True) > 0.6 * start
    with pytest.raises(ValueError, match="bc_weight"):
        SACConfig(bc_weight=-1.0)


def test_prior_term_keeps_the_actor_near_the_head_it_started_from():
    """prior_weight: with a reward that pulls every action to +1, the actor started from a head leaves the head's
    actions less far than without the prior (and the prior is the head, not the random init)."""
    rng = np.random.default_rng(4)
    head = head_to_flax(torch_head(0))
    test_obs = random_obs(np.random.default_rng(8), BATCH)
    start = SACAgent.create(1, LATENT, config=TINY, actor_head=head)

    def drift(prior_weight: float) -> float:
        rl = SACAgent.create(1, LATENT, config=SACConfig(**{**TINY.to_dict(), "prior_weight": prior_weight}),
                             actor_head=head)
        for _ in range(120):
            b = random_batch(rng)
            b["rewards"] = b["actions"].sum(axis=1)  # one-step bandit: more is better in every dimension
            b["masks"] = np.zeros(BATCH, np.float32)
            rl, info = rl.update(b)
        assert np.isfinite(info["prior_loss"])
        return float(np.abs(rl.eval_actions(test_obs) - start.eval_actions(test_obs)).mean())

    free, held = drift(0.0), drift(20.0)
    assert free > 0.05, free
    assert held < 0.5 * free, (held, free)


def _lag1(x: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(col[:-1], col[1:])[0, 1] for col in x.T]))


def test_pink_exploration_is_correlated_in_time_and_white_is_not(agent):
    """The episode policy's exploration: white noise (per step) has no lag-1 correlation; pink (beta 1, one sequence
    per episode) does, with the same per-step spread, so an episode can explore a shift of where the arm goes."""
    from rl_agent.episodes import agent_policy
    obs = {k: v[:1] for k, v in random_obs(np.random.default_rng(0)).items()}
    mean = np.arctanh(np.clip(agent.eval_actions(obs), -0.999, 0.999))

    def episode_noise(beta: float, seed: int) -> np.ndarray:
        act = agent_policy(lambda: agent, False, np.random.default_rng(seed), noise_beta=beta, horizon=200)
        pre = np.stack([np.arctanh(np.clip(act(obs, None), -0.999999, 0.999999)) for _ in range(200)])
        return (pre - mean).reshape(len(pre), -1)  # std * noise per step [T, A]
    white, pink = episode_noise(0.0, 1), episode_noise(1.0, 1)
    assert abs(_lag1(white)) < 0.2 and _lag1(pink) > 0.4, (_lag1(white), _lag1(pink))
    assert 0.6 < pink.std() / white.std() < 1.5
    same = episode_noise(1.0, 1)
    np.testing.assert_allclose(same, pink, atol=1e-5)  # one generator seed, one episode's sequence
    with pytest.raises(ValueError, match="noise of shape"):
        agent.actions_with_noise(obs, np.zeros(3))


def test_exploration_beta_is_checked():
    from rl_agent.session_config import TrainConfig
    with pytest.raises(ValueError, match="exploration_beta"):
        TrainConfig(exploration_beta=3.0)
