"""Exact weight bridge between the torch action head (policy/heads.py ActionHead) and the Flax ActionHeadNet.

    flax_head = head_to_flax(vla.head)        # {"params": ..., "buffers": ..., "meta": ...} of numpy arrays
    agent = SACAgent.create(rng, latent_shape, config=SACConfig.from_head_config(vla.cfg.head), actor_head=flax_head)
    ...                                        # stage 1 trains the actor
    flax_to_head(agent.actor_head_params(), vla.head)   # hand the RL head back (in place), then vla.save(dir)

Layout: torch Linear weight [out, in] <-> Flax Dense kernel [in, out]; LayerNorm weight/bias <-> scale/bias;
the torch MLP body (Linear[, LayerNorm], GELU)* maps to mlp/hidden_i[, mlp/norm_i]; mlp.out -> out; the four
normalization buffers (action_mean/std, state_mean/std) travel in "buffers". Both directions reproduce the head's
output to float32 rounding (<= 1e-5; tests/test_rl_bridge.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np

BUFFER_NAMES = ("action_mean", "action_std", "state_mean", "state_std")


def _np(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().copy()


def _body_layers(head):
    """Pairs (flax name, torch module) for the MLP body, in order."""
    from torch import nn
    out, i = [], 0
    for m in head.mlp.body:
        if isinstance(m, nn.Linear):
            out.append((f"hidden_{i}", m))
        elif isinstance(m, nn.LayerNorm):
            out.append((f"norm_{i}", m))  # belongs to the Linear just before it
        elif isinstance(m, nn.GELU):
            i += 1
        else:
            raise TypeError(f"unexpected module in the head's MLP body: {type(m).__name__}")
    return out


def _dense(m) -> dict:
    return {"kernel": _np(m.weight).T, "bias": _np(m.bias)}


def _norm(m) -> dict:
    return {"scale": _np(m.weight), "bias": _np(m.bias)}


def head_meta(head) -> dict:
    cfg = head.cfg
    return {"latent_dim": int(head.latent_dim), "action_dim": int(head.action_mean.shape[0]),
            "state_dim": int(head.state_mean.shape[0]), "learned_tokens": int(cfg.learned_tokens),
            "token_learner_hidden": int(cfg.token_learner_hidden), "hidden_dims": [int(h) for h in cfg.hidden_dims],
            "use_state": bool(cfg.use_state), "layer_norm": bool(cfg.layer_norm)}


def head_to_flax(head) -> dict[str, Any]:
    """torch ActionHead -> {"params": tree, "buffers": tree, "meta": architecture} (numpy float32 copies)."""
    tl = head.token_learner
    mlp = {}
    for name, m in _body_layers(head):
        mlp[name] = _dense(m) if name.startswith("hidden_") else _norm(m)
    params = {"token_learner": {"norm": _norm(tl.norm), "fc1": _dense(tl.fc1), "fc2": _dense(tl.fc2)},
              "mlp": mlp, "out": _dense(head.mlp.out)}
    buffers = {k: _np(getattr(head, k)) for k in BUFFER_NAMES}
    return {"params": params, "buffers": buffers, "meta": head_meta(head)}


def _assign(target, value: np.ndarray) -> None:
    import torch
    with torch.no_grad():
        target.copy_(torch.from_numpy(value.copy()).to(target.dtype))


def _get(tree: dict, path: str):
    node = tree
    for key in path.split("/"):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"bridge: flax head parameters have no {path!r} (keys at that level: "
                             f"{sorted(node) if isinstance(node, dict) else type(node).__name__}): the architectures "
                             "differ")
        node = node[key]
    return node


def flax_to_head(params: dict, head) -> None:
    """Write {"params", "buffers"} (as from head_to_flax or SACAgent.actor_head_params) into a torch ActionHead in
    place. Every name, shape and value (finite) is checked first; nothing is written when one does not fit."""
    p, b = params["params"], params["buffers"]
    tl = head.token_learner
    writes = [(tl.norm.weight, "token_learner/norm/scale"), (tl.norm.bias, "token_learner/norm/bias"),
              (tl.fc1.weight, "token_learner/fc1/kernel"), (tl.fc1.bias, "token_learner/fc1/bias"),
              (tl.fc2.weight, "token_learner/fc2/kernel"), (tl.fc2.bias, "token_learner/fc2/bias")]
    for name, m in _body_layers(head):
        if name.startswith("hidden_"):
            writes += [(m.weight, f"mlp/{name}/kernel"), (m.bias, f"mlp/{name}/bias")]
        else:
            writes += [(m.weight, f"mlp/{name}/scale"), (m.bias, f"mlp/{name}/bias")]
    writes += [(head.mlp.out.weight, "out/kernel"), (head.mlp.out.bias, "out/bias")]
    values = []
    for target, path in writes:
        v = np.asarray(_get(p, path), dtype=np.float32)
        if path.endswith("kernel"):
            v = v.T
        if tuple(target.shape) != v.shape:
            raise ValueError(f"bridge: {path} does not fit the torch head (torch shape {tuple(target.shape)}, "
                             f"flax value transposed to torch layout {v.shape}): the architectures differ")
        values.append((target, v, path))
    expected_mlp = {n for n, _ in _body_layers(head)}
    extra = set(p.get("mlp", {})) - expected_mlp
    if extra:
        raise ValueError(f"bridge: flax MLP has layers {sorted(extra)} that the torch head does not have")
    for k in BUFFER_NAMES:
        values.append((getattr(head, k), np.asarray(_get(b, k), dtype=np.float32), f"buffers/{k}"))
    for target, v, path in values:  # check everything before writing anything
        if tuple(target.shape) != v.shape:
            raise ValueError(f"bridge: {path} has shape {v.shape}, the torch head expects {tuple(target.shape)}")
        if not np.isfinite(v).all():
            raise ValueError(f"bridge: {path} contains NaN or inf; refusing to write it into the head")
    for target, v, path in values:
        _assign(target, v)


def hand_back(vla, agent, out_dir, extra_meta=None):
    """Stage 1's end: the agent's RL head into `vla` (in place) and the whole VLA saved to `out_dir` (atomically),
    a checkpoint the policy server, `irevla evaluate` and stage 2 take like any other. Returns the path."""
    flax_to_head(agent.actor_head_params(), vla.head)
    return vla.save(out_dir, extra_meta=dict(extra_meta or {}, stage=1))

