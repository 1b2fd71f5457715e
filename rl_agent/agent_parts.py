"""Building blocks of rl_agent.agent.SACAgent: PRNG keys, validated parameter trees, run-once compilation of the
initialisers, the cached optimizer and network definitions (static metadata shared by agents built alike) and the
check of an SFT head's metadata against the agent's architecture.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState
from flax.traverse_util import flatten_dict, unflatten_dict

from rl_agent.config import SACConfig
from rl_agent.networks import CriticEnsemble, TanhGaussianActor, TokenLearner

ARCH_FIELDS = ("learned_tokens", "token_learner_hidden", "hidden_dims", "use_state", "layer_norm")


def _as_key(seed) -> jax.Array:
    if isinstance(seed, (int, np.integer)):
        return jax.random.PRNGKey(int(seed))
    return jnp.asarray(seed)


def _checked_tree(reference, given, what: str):
    """`given` with exactly `reference`'s keys and shapes (float32 jnp arrays), else a ValueError naming the path."""
    ref = flatten_dict(flax.core.unfreeze(reference), sep="/")
    got = flatten_dict(dict(given), sep="/")
    missing, extra = sorted(set(ref) - set(got)), sorted(set(got) - set(ref))
    if missing or extra:
        raise ValueError(f"{what}: parameter names differ from the agent's network (missing {missing}, "
                         f"unexpected {extra}); build the config with SACConfig.from_head_config(head.cfg)")
    out = {}
    for k, v in got.items():
        v = np.asarray(v, dtype=np.float32)
        if v.shape != tuple(ref[k].shape):
            raise ValueError(f"{what}: {k} has shape {v.shape}, the agent's network expects {tuple(ref[k].shape)}; "
                             "build the config with SACConfig.from_head_config(head.cfg) and the VLA's latent shape")
        if not np.isfinite(v).all():
            raise ValueError(f"{what}: {k} contains NaN or inf")
        out[k] = jnp.asarray(v)
    return unflatten_dict(out, sep="/")


_RUN_ONCE_CACHE: dict = {}


def _run_once(fn, *args):
    """Run a function that runs once per agent (initialisers) as one XLA computation compiled without backend
    optimisation: eager initialisation compiles every op separately and a fully optimised compile of code that
    runs once costs more than it saves (seconds on a small CPU). Compiled once per function and input shapes."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    key = (fn, treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))
    compiled = _RUN_ONCE_CACHE.get(key)
    if compiled is None:
        compiled = jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
        _RUN_ONCE_CACHE[key] = compiled
    return compiled(*args)


@lru_cache(maxsize=None)
def _adam(lr: float) -> optax.GradientTransformation:
    # One object per learning rate: the optimizer is static pytree metadata of the agent, so agents built alike
    # share jit caches (no recompilation per agent) and restore into each other.
    return optax.flatten(optax.adam(lr))  # one flat vector: far fewer ops, ~25 % less XLA compile time


def _train_state(apply_fn, params, lr: float) -> TrainState:
    tx = _adam(float(lr))
    return TrainState(step=jnp.zeros((), jnp.int32), apply_fn=apply_fn, params=params, tx=tx,
                      opt_state=_run_once(tx.init, params))


@lru_cache(maxsize=None)
def _network_defs(cfg: SACConfig, action_dim: int, state_dim: int, pixel_encoder: Optional[nn.Module]):
    # Cached for the same reason as _adam: `module.apply` is static metadata compared by identity.
    common = dict(learned_tokens=cfg.learned_tokens, token_learner_hidden=cfg.token_learner_hidden,
                  hidden_dims=tuple(cfg.hidden_dims), use_state=cfg.use_state, layer_norm=cfg.layer_norm,
                  pooled_input=cfg.latent_input == "pooled")
    actor_def = TanhGaussianActor(action_dim=action_dim, state_dim=state_dim, log_std_min=cfg.log_std_min,
                                  log_std_max=cfg.log_std_max, init_log_std=cfg.init_log_std, mean_clip=cfg.mean_clip,
                                  encoder=pixel_encoder.clone() if pixel_encoder is not None else None, **common)
    critic_def = CriticEnsemble(ensemble_size=cfg.critic_ensemble_size,
                                encoder=pixel_encoder.clone() if pixel_encoder is not None else None, **common)
    return actor_def, critic_def


@lru_cache(maxsize=None)
def _token_learner_def(num_tokens: int, hidden: int) -> TokenLearner:
    return TokenLearner(num_tokens, hidden)


def _temperature_apply(params):
    return jnp.exp(params["log_temperature"])



def _check_head_meta(meta: Optional[dict], cfg: SACConfig, latent_shape, state_dim, action_dim) -> None:
    if not meta:
        return
    problems = []
    for name in ARCH_FIELDS:
        want = meta.get(name)
        have = list(getattr(cfg, name)) if name == "hidden_dims" else getattr(cfg, name)
        if want is not None and want != have:
            problems.append(f"{name}: head {want} vs config {have}")
    if meta.get("latent_dim") is not None and meta["latent_dim"] != latent_shape[-1]:
        problems.append(f"latent dim: head {meta['latent_dim']} vs latent_shape {latent_shape}")
    if meta.get("action_dim") not in (None, action_dim):
        problems.append(f"action_dim: head {meta['action_dim']} vs {action_dim}")
    if meta.get("state_dim") not in (None, state_dim):
        problems.append(f"state_dim: head {meta['state_dim']} vs {state_dim}")
    if problems:
        raise ValueError("actor_head does not match the agent's architecture (" + "; ".join(problems) +
                         "); build the config with SACConfig.from_head_config(head.cfg)")
