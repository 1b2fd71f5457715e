"""Building the SACfD agent for a stage-0 VLA and moving its actor's parameters: the library part shared by the
in-process session (rl_agent/jobs/session.py) and the ROS nodes (rl_agent/actor_node.py, rl_agent/learner_node.py).

    agent, vla = build_agent("runs/stage0", load_sac_overrides("config/rl_session.yaml"), seed=0)
    params = actor_params_of(agent)                  # what the learner pushes
    agent = with_actor_params(agent, params)         # what the actor swaps in (validated)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from rl_agent import transport as tp

PathLike = Union[str, Path]


def enable_compilation_cache(directory: Optional[PathLike] = None) -> Optional[Path]:
    """Turn on JAX's persistent compilation cache (unless JAX_COMPILATION_CACHE_DIR already chose one)."""
    import jax
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    d = Path(directory or Path(os.environ.get("IREVLA_CACHE", Path.home() / ".cache" / "irevla")) / "jax")
    try:
        d.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(d))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError):  # read-only home, or a JAX without the option: compile every time
        return None
    return d


def sac_config_for(vla, overrides: dict):
    """SACConfig whose actor matches the VLA's head, with the session's overrides."""
    from rl_agent.config import SACConfig
    base = SACConfig.from_head_config(vla.cfg.head).to_dict()
    base.update(overrides or {})
    return SACConfig.from_dict(base)


def actor_params_of(agent) -> Any:
    """The part of the agent an actor needs to act: the actor network's parameters (numpy)."""
    import jax
    return jax.device_get(agent.actor.params)


def with_actor_params(agent, params: Any):
    """`agent` with the actor network's parameters replaced (validated: same names and shapes, finite)."""
    import jax
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict, unflatten_dict
    ref = flatten_dict(jax.device_get(agent.actor.params), sep="/")
    got = flatten_dict(params, sep="/")
    if set(ref) != set(got):
        raise tp.TransportError(f"params do not fit this actor (missing {sorted(set(ref) - set(got))[:4]}, "
                                f"unexpected {sorted(set(got) - set(ref))[:4]}): a different VLA head or SAC config?")
    out = {}
    for k, v in got.items():
        v = np.asarray(v, np.float32)
        if v.shape != ref[k].shape:
            raise tp.TransportError(f"params {k}: shape {v.shape}, this actor has {ref[k].shape}")
        if not np.isfinite(v).all():
            raise tp.TransportError(f"params {k} contain NaN/inf")
        out[k] = jnp.asarray(v)
    return agent.replace(actor=agent.actor.replace(params=unflatten_dict(out, sep="/")))


def load_head(checkpoint: str):
    """(torch ActionHead, latent shape (N, d)) of a VLA checkpoint, without building the VLM (the learner needs only
    the head to start its actor from)."""
    import json as _json

    from safetensors.torch import load_file

    from policy.config import VLAConfig
    from policy.heads import ActionHead
    d = Path(checkpoint)
    if not (d / "vla_config.yaml").is_file():
        raise FileNotFoundError(f"{d}: not a VLA checkpoint (no vla_config.yaml)")
    cfg = VLAConfig.from_yaml(d / "vla_config.yaml")
    meta = _json.loads((d / "meta.json").read_text())
    head = ActionHead(int(meta["latent_dim"]), cfg.head)
    head.load_state_dict(load_file(str(d / "head.safetensors")))
    return head.eval(), (int(meta["num_latent_tokens"]), int(meta["latent_dim"]))


def build_agent(checkpoint: str, sac_overrides: Optional[dict] = None, seed: int = 0, with_vla: bool = True):
    """The SACfD agent for a stage-0 VLA checkpoint (actor = its head), and the VLA (None unless with_vla)."""
    from rl_agent.agent import SACAgent
    from rl_agent.bridge import head_to_flax
    from rl_agent.config import SACConfig
    enable_compilation_cache()
    if with_vla:
        from policy.model import load_vla
        vla = load_vla(checkpoint)
        head, shape = vla.head, (int(vla.num_latent_tokens), int(vla.latent_dim))
    else:
        vla = None
        head, shape = load_head(checkpoint)
    base = SACConfig.from_head_config(head.cfg).to_dict()
    base.update(sac_overrides or {})
    agent = SACAgent.create(seed, shape, config=SACConfig.from_dict(base), actor_head=head_to_flax(head))
    return agent, vla


def load_sac_overrides(path: str) -> dict:
    """The `sac:` section of a session YAML (config/rl_session.yaml layout), {} when empty."""
    from rl_agent.session_config import session_section
    return dict(session_section(path).get("sac", {}) or {})

