"""Weight bridge torch ActionHead <-> Flax ActionHeadNet (rl_agent/bridge.py): exact both ways (<= 1e-5, buffers
included), clear errors on mismatched architectures, and the stage-1 round trip through a real (tiny) VLA:
VLA head -> RL actor -> updates -> back into the VLA -> VLA.save -> load_vla gives the RL actor's actions."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from policy.config import HeadConfig, TinyBlip2Config, VLAConfig
from policy.heads import ActionHead
from rl_agent.bridge import flax_to_head, head_to_flax
from rl_agent.networks import ActionHeadNet

LATENT = (6, 16)
# The tiny architecture of tests/test_rl_agent.py (same shapes -> the jitted agent functions compile once per run).
HEAD = dict(learned_tokens=2, token_learner_hidden=8, hidden_dims=[32, 32])
SAC_OVERRIDES = dict(critic_ensemble_size=4, critic_actor_ratio=2, batch_size=32, actor_lr=1e-3, critic_lr=1e-3)


def random_torch_head(seed: int, latent_dim=LATENT[1], **cfg) -> ActionHead:
    torch.manual_seed(seed)
    head = ActionHead(latent_dim, HeadConfig(**{**HEAD, **cfg}))
    with torch.no_grad():  # make every parameter matter (LayerNorm scale/bias are 1/0 at init)
        for p in head.parameters():
            p.add_(0.2 * torch.randn_like(p))
    head.set_normalization(torch.randn(7) * 0.1, torch.rand(7) * 0.5 + 0.2, torch.randn(8), torch.rand(8) + 0.5)
    return head


def inputs(seed: int, batch=16, latent=LATENT):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, *latent)).astype(np.float32) * 2.0,
            rng.standard_normal((batch, 8)).astype(np.float32))


def flax_head_def(head: ActionHead) -> ActionHeadNet:
    c = head.cfg
    return ActionHeadNet(action_dim=7, state_dim=8, learned_tokens=c.learned_tokens,
                         token_learner_hidden=c.token_learner_hidden, hidden_dims=tuple(c.hidden_dims),
                         use_state=c.use_state, layer_norm=c.layer_norm)


def torch_out(head, lat, st):
    with torch.no_grad():
        return head(torch.from_numpy(lat), torch.from_numpy(st)).numpy()


@pytest.mark.parametrize("cfg", [{}, {"layer_norm": False, "use_state": False}])
def test_torch_to_flax_exact(cfg):
    head = random_torch_head(0, **cfg)
    converted = head_to_flax(head)
    assert set(converted["buffers"]) == {"action_mean", "action_std", "state_mean", "state_std"}
    lat, st = inputs(1)
    net = flax_head_def(head)
    out, _ = jax.jit(net.apply)({"params": converted["params"], "buffers": converted["buffers"]}, lat, st)
    ref = torch_out(head, lat, st)
    assert np.abs(ref).max() > 0.5  # a non-trivial output
    assert np.abs(np.asarray(out) - ref).max() <= 1e-5
    # the normalization buffers take part: other statistics give other actions
    other = dict(converted["buffers"], action_mean=converted["buffers"]["action_mean"] + 0.3)
    out2, _ = jax.jit(net.apply)({"params": converted["params"], "buffers": other}, lat, st)
    assert np.abs(np.asarray(out2) - ref).max() > 0.1


def test_flax_to_torch_exact():
    template = random_torch_head(0)
    net = flax_head_def(template)
    lat, st = inputs(2)
    variables = jax.jit(net.init)(jax.random.PRNGKey(3), jnp.asarray(lat[:1]), jnp.asarray(st[:1]))
    rng = np.random.default_rng(4)
    params = jax.tree_util.tree_map(lambda x: np.asarray(x) + 0.2 * rng.standard_normal(x.shape).astype(np.float32),
                                    jax.device_get(variables["params"]))
    buffers = {"action_mean": rng.standard_normal(7).astype(np.float32) * 0.1,
               "action_std": rng.uniform(0.2, 0.7, 7).astype(np.float32),
               "state_mean": rng.standard_normal(8).astype(np.float32),
               "state_std": rng.uniform(0.5, 1.5, 8).astype(np.float32)}
    fresh = ActionHead(LATENT[1], HeadConfig(**HEAD))
    flax_to_head({"params": params, "buffers": buffers}, fresh)
    np.testing.assert_array_equal(fresh.state_std.numpy(), buffers["state_std"])
    ref, _ = jax.jit(net.apply)({"params": params, "buffers": buffers}, lat, st)
    assert np.abs(torch_out(fresh, lat, st) - np.asarray(ref)).max() <= 1e-5
    # and back again: identical parameters
    again = head_to_flax(fresh)
    for a, b in zip(jax.tree_util.tree_leaves(again["params"]), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_mismatched_architecture_is_refused_and_head_untouched():
    small = head_to_flax(random_torch_head(0, hidden_dims=[32]))
    target = random_torch_head(1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="architectures differ|does not have"):
        flax_to_head(small, target)
    wide = head_to_flax(random_torch_head(0, latent_dim=24))
    with pytest.raises(ValueError, match="token_learner/norm/scale"):
        flax_to_head(wide, target)
    nan = head_to_flax(random_torch_head(0))
    nan["params"]["out"]["bias"][0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        flax_to_head(nan, target)
    for k, v in target.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed although the conversion failed"


def test_vla_round_trip_through_rl_agent(tmp_path):
    """VLA -> actor (same actions) -> SAC updates -> hand back -> VLA.save -> load_vla acts like the RL actor."""
    from policy.model import build_vla, load_vla
    from rl_agent.agent import SACAgent
    from rl_agent.config import SACConfig

    cfg = VLAConfig(max_text_tokens=4, backbone_training="frozen")
    cfg.backbone.tiny = TinyBlip2Config(image_size=32, hidden=16, heads=2, num_query_tokens=1, vision_layers=1,
                                        qformer_layers=1, text_layers=1, max_positions=32)
    cfg.head = HeadConfig(**HEAD)
    vla = build_vla(cfg, seed=0, cache_root=tmp_path / "cache")
    assert (vla.num_latent_tokens, vla.latent_dim) == LATENT  # the shapes of tests/test_rl_agent.py: jit reuse
    vla.head.set_normalization(np.zeros(7), np.full(7, 0.3), np.zeros(8), np.ones(8))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 2, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        latents = vla.encode(images, ["go"] * 64).numpy()
    state = rng.standard_normal((64, 8)).astype(np.float32) * 0.1
    latent_shape = (vla.num_latent_tokens, vla.latent_dim)

    agent = SACAgent.create(0, latent_shape, config=SACConfig.from_head_config(cfg.head, **SAC_OVERRIDES),
                            actor_head=head_to_flax(vla.head))
    obs = {"latents": latents, "state": state}
    vla_actions = vla.act_from_latents(latents, state)
    assert np.abs(vla_actions).max() < 0.999
    np.testing.assert_allclose(agent.eval_actions(obs), vla_actions, atol=1e-5)

    stored = {"latents": latents.astype(np.float16), "state": state}  # as the replay buffers store them
    batch = {"observations": stored, "next_observations": stored, "actions": rng.uniform(-1, 1, (64, 7)),
             "rewards": rng.standard_normal(64), "masks": np.ones(64)}
    for _ in range(20):
        agent, info = agent.update(batch)
    rl_actions = agent.eval_actions(obs)
    assert np.abs(rl_actions - vla_actions).max() > 1e-3  # the actor did change

    flax_to_head(agent.actor_head_params(), vla.head)
    vla.save(tmp_path / "stage1")
    reloaded = load_vla(tmp_path / "stage1")
    np.testing.assert_allclose(reloaded.act_from_latents(latents, state), np.clip(rl_actions, -1, 1), atol=2e-3)
    inside = np.abs(rl_actions) < 0.99
    np.testing.assert_allclose(reloaded.act_from_latents(latents, state)[inside], rl_actions[inside], atol=1e-5)
