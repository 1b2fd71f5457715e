#!/usr/bin/env python3
"""In-process stage-1 loop speed (rl_agent.jobs.session): what one env step costs on this machine, part by part.

Per step: the twin (physics at the contract's 10 Hz in simulated time + rendering the VLA's cameras), the frozen
VLA's encode (once per observation), the agent's action, and `updates_per_step` SAC updates on a 50/50 demo/online
batch. Measured for SERL's SAC settings (baseline: rl_agent.config.SACConfig defaults, ensemble of 10, batch
256 x 4) and for the CPU-sized settings of config/rl_session.yaml (pooled latents, ensemble 2, batch 64 x 2), in the
same run, on the VLA of config/policy_towers.yaml (the default model's architecture; random fusion weights: speed
only), then on the previous default (config/policy_tiny.yaml). The last line compares the two at the CPU settings.

    python benchmarks/bench_rl_session.py                 # 40 env steps, 30 updates per setting
    python benchmarks/bench_rl_session.py --steps 10 --updates 5     # CI-sized
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

FAST_SAC = {"latent_input": "pooled", "critic_ensemble_size": 2, "batch_size": 64, "critic_actor_ratio": 2}


def timed(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def measure(vla_config: str, args) -> dict:
    """env steps/s at UTD 1 for both SAC settings with the VLA of `vla_config` (random weights: speed only)."""
    import torch

    from policy.config import VLAConfig
    from policy.model import build_vla
    from rl_agent.agent import SACAgent
    from rl_agent.bridge import head_to_flax
    from rl_agent.buffers import LatentReplayBuffer, sample_mixed
    from rl_agent.env import LatentEncoder, LatentEnv
    from rl_agent.jobs.session import sac_config_for

    torch.set_num_threads(1)
    vla = build_vla(VLAConfig.from_yaml(vla_config, "vla"))
    enc = LatentEncoder(vla, torch_threads=1)
    env = LatentEnv(enc, args.task, keep_images=False)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(0)
    print(f"VLA {Path(vla_config).name}: {len(enc.cameras)} camera(s) at {enc.image_size} px, latents "
          f"{enc.latent_shape}; task {args.task}")

    e0, c0 = env.env_seconds, enc.seconds
    for i in range(args.steps):
        obs, _, term, trunc, _ = env.step(rng.uniform(-0.3, 0.3, 7))
        if term or trunc:
            env.reset(i + 1)
    env_ms = 1e3 * (env.env_seconds - e0) / args.steps
    enc_ms = 1e3 * (enc.seconds - c0) / args.steps
    print(f"  twin step (physics + render): {env_ms:.1f} ms; VLA encode: {enc_ms:.1f} ms")

    results = {}
    for name, overrides in (("SERL settings (SACConfig defaults)", {}), ("cpu-sized (pooled, E=2, 64x2)", FAST_SAC)):
        cfg = sac_config_for(vla, overrides)
        agent = SACAgent.create(0, enc.latent_shape, config=cfg, actor_head=head_to_flax(vla.head))
        prepared = agent.prepare_observations(obs)
        shape = agent.stored_latent_shape
        bufs = [LatentReplayBuffer(600, shape) for _ in range(2)]
        for b in bufs:
            for _ in range(4):
                t = 100
                b.insert_episode({"latents": np.repeat(np.asarray(prepared["latents"])[None], t + 1, 0),
                                  "state": np.repeat(prepared["state"][None], t + 1, 0)},
                                 rng.uniform(-1, 1, (t, 7)), np.zeros(t), np.zeros(t, bool))
        agent.sample_actions(prepared, 0)  # compile
        act_ms = 1e3 * timed(lambda: agent.sample_actions(prepared, int(rng.integers(1 << 30))), 20)
        prep_ms = 1e3 * timed(lambda: agent.prepare_observations(obs), 20)
        state = {"agent": agent}

        def update():
            batch = sample_mixed(bufs[0], bufs[1], cfg.update_batch_size, rng)
            state["agent"], _ = state["agent"].update(batch)
        t = time.perf_counter()
        update()
        compile_s = time.perf_counter() - t
        upd_ms = 1e3 * timed(update, args.updates)
        step_ms = env_ms + enc_ms + act_ms + prep_ms + upd_ms
        results[name] = 1e3 / step_ms
        print(f"  {name}: act {act_ms:.1f} ms, prepare {prep_ms:.1f} ms, update {upd_ms:.1f} ms "
              f"({1e3 / upd_ms:.1f} updates/s; first update with compilation {compile_s:.1f} s), bytes/transition "
              f"{bufs[1].bytes_per_transition:.0f} -> {results[name]:.2f} env steps/s at UTD 1")
    env.close()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--task", default="pick_eggplant")
    ap.add_argument("--vla-config", default=str(ROOT / "config" / "policy_towers.yaml"))
    ap.add_argument("--baseline-vla-config", default=str(ROOT / "config" / "policy_tiny.yaml"),
                    help="the previous default's architecture, measured in the same run ('none': skip)")
    args = ap.parse_args(argv)
    from rl_agent.jobs.session import enable_compilation_cache
    enable_compilation_cache()
    results = measure(args.vla_config, args)
    (b_name, b), (f_name, f) = results.items()
    print(f"env steps/s at UTD 1: {f_name} {f:.2f} vs {b_name} {b:.2f}: ratio {f / b:.2f}x")
    if args.baseline_vla_config not in ("", "none"):
        base = measure(args.baseline_vla_config, args)
        print(f"cpu-sized env steps/s, {Path(args.vla_config).name} {f:.2f} vs {Path(args.baseline_vla_config).name} "
              f"{base[f_name]:.2f}: ratio {f / base[f_name]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
