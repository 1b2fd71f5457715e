#!/usr/bin/env python3
"""Learner speed: SAC gradient updates/s on cached VLM latents vs the same agent re-encoding pixels, same run.

Both agents are rl_agent.agent.SACAgent with the same head architecture (token learner + LayerNorm MLP actor, critic
ensemble, critic_actor_ratio critic steps per update); the baseline puts a small conv encoder (2 cameras HxW ->
4 stride-2 3x3 conv layers of 32 channels -> one token of the latent dimension per output pixel) in front of the
actor's and the critic's token learner and re-encodes every image in every update, in two variants: "trained"
(DrQ: the agent learns its encoder end to end: the baseline the goal is measured against) and "frozen" (forward
only, as SERL's frozen pretrained ResNet; a frozen encoder's features could themselves be cached, so this is the
lower bound of what re-encoding costs). Each update samples its batch on the host (numpy replay storage, float16
latents / uint8 pixels) and moves it to the device, as the learner does; the device-only rate (batch already on the
device) is printed beside it. XLA's CPU convolution backward pass is slow (~12x its forward), which inflates the
"trained" ratio on CPU; compare on a GPU (--device gpu).

Also printed: bytes per transition of the latent buffer, and the projected replay size of a one-hour 10 Hz session at
the full BLIP-2-OPT-2.7B latent size (N = 2 cameras x 32 query tokens + 64 text tokens = 128, d = 2560) for both
buffer layouts (SACConfig.latent_input "tokens": full latents; "pooled": the frozen SFT token learner's 8 tokens).
The last line is the ratio (goal >= 10x).

    python benchmarks/bench_learner.py                  # CPU: the tiny VLA's latent size (80 x 128), batch 16 (~15 min)
    python benchmarks/bench_learner.py --seconds 3 --batch-size 16 --ensemble 2 --skip-trained   # CI-sized
    python benchmarks/bench_learner.py --device gpu --full-size   # GPU: BLIP-2-OPT-2.7B latents, SERL's batch 256
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

FULL_LATENT = (2 * 32 + 64, 2560)  # BLIP-2-OPT-2.7B: 2 cameras x 32 query tokens + 64 text tokens, OPT hidden 2560
SESSION_SECONDS, CONTROL_HZ, EPISODE_STEPS, DEMOS = 3600, 10, 100, 20


def projected_session_bytes(latent_shape, state_dim=8, action_dim=7) -> tuple[float, float]:
    """(bytes per transition, bytes of the online + demo buffers) for one hour at 10 Hz, 100-step episodes."""
    from rl_agent.buffers import LatentReplayBuffer
    per_obs = LatentReplayBuffer(2, latent_shape, state_dim, action_dim).bytes_per_observation
    transitions = SESSION_SECONDS * CONTROL_HZ + DEMOS * EPISODE_STEPS
    observations = transitions * (EPISODE_STEPS + 1) / EPISODE_STEPS
    return per_obs * (EPISODE_STEPS + 1) / EPISODE_STEPS, per_obs * observations


def fill_latent_buffers(latent_shape, transitions: int, rng):
    from rl_agent.buffers import LatentReplayBuffer
    bufs = []
    for _ in range(2):  # demo, online
        buf = LatentReplayBuffer(transitions + transitions // EPISODE_STEPS + 2, latent_shape)
        n_ep = max(1, transitions // EPISODE_STEPS)
        for _ in range(n_ep):
            t = min(EPISODE_STEPS, transitions)
            obs = {"latents": rng.standard_normal((t + 1, *latent_shape), dtype=np.float32).astype(np.float16),
                   "state": rng.standard_normal((t + 1, 8), dtype=np.float32)}
            buf.insert_episode(obs, rng.uniform(-1, 1, (t, 7)), rng.random(t), np.arange(t) == t - 1)
        bufs.append(buf)
    return bufs


class PixelReplay:
    """uint8 frames stored once per observation, as LatentReplayBuffer does for latents (baseline only)."""

    def __init__(self, n: int, cams: int, size: int, rng):
        self.pixels = rng.integers(0, 256, (n + 1, cams, size, size, 3), dtype=np.uint8)
        self.state = rng.standard_normal((n + 1, 8), dtype=np.float32)
        self.actions = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
        self.rewards = rng.random(n).astype(np.float32)
        self.n = n

    def sample(self, batch: int, rng) -> dict:
        i = rng.integers(0, self.n, batch)
        return {"observations": {"pixels": self.pixels[i], "state": self.state[i]},
                "next_observations": {"pixels": self.pixels[i + 1], "state": self.state[i + 1]},
                "actions": self.actions[i], "rewards": self.rewards[i], "masks": np.ones(batch, np.float32)}


def time_updates(agent, sample, seconds: float, min_updates: int = 3) -> tuple[float, float, float]:
    """(updates/s with host sampling, updates/s on a device-resident batch, compile seconds)."""
    import jax
    t0 = time.perf_counter()
    agent, info = agent.update(sample())  # compile
    compile_s = time.perf_counter() - t0

    def run(get_batch):
        nonlocal agent
        n, t0 = 0, time.perf_counter()
        while n < min_updates or time.perf_counter() - t0 < seconds:
            agent, info = agent.update_device(get_batch())
            n += 1
        jax.block_until_ready(info)
        return n / (time.perf_counter() - t0)

    host = run(sample)
    fixed = jax.device_put(agent._check_batch(sample()))
    device = run(lambda: fixed)
    return host, device, compile_s


def main(argv=None) -> int:
    from policy.config import VLAConfig
    tiny = VLAConfig()
    tiny_shape = (len(tiny.cameras) * tiny.backbone.tiny.num_query_tokens + tiny.max_text_tokens,
                  tiny.backbone.tiny.hidden)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=15.0, help="timing per measurement")
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--full-size", action="store_true", help=f"latents of BLIP-2-OPT-2.7B {FULL_LATENT}")
    ap.add_argument("--latent-shape", type=int, nargs=2, default=None, metavar=("N", "D"),
                    help=f"cached latent shape (default: the tiny VLA's {tiny_shape})")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="per critic step (default: SERL's 256 on GPU; 16 on CPU, where the trained-encoder "
                         "baseline takes minutes per update at 64)")
    ap.add_argument("--ensemble", type=int, default=10)
    ap.add_argument("--ratio", type=int, default=4, help="critic steps per actor step")
    ap.add_argument("--buffer-transitions", type=int, default=2000, help="per buffer (demo, online)")
    ap.add_argument("--skip-pooled", action="store_true", help="do not time the pooled-latent layout")
    ap.add_argument("--skip-trained", action="store_true", help="do not time the trained-encoder baseline")
    args = ap.parse_args(argv)

    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    if args.device == "gpu" and jax.default_backend() != "gpu":
        print(f"--device gpu: jax sees no GPU (backend {jax.default_backend()})", file=sys.stderr)
        return 2
    from rl_agent.agent import SACAgent
    from rl_agent.buffers import sample_mixed
    from rl_agent.config import SACConfig
    from rl_agent.networks import ConvTokenizer

    latent_shape = FULL_LATENT if args.full_size else tuple(args.latent_shape or tiny_shape)
    if args.batch_size is None:
        args.batch_size = 256 if args.device == "gpu" else 16
    cfg = SACConfig(batch_size=args.batch_size, critic_ensemble_size=args.ensemble,
                    critic_subsample_size=min(2, args.ensemble), critic_actor_ratio=args.ratio)
    rows = cfg.update_batch_size
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); latents {latent_shape}; batch "
          f"{args.batch_size} x {args.ratio} critic steps per update, ensemble {args.ensemble}, hidden "
          f"{cfg.hidden_dims}")
    rng = np.random.default_rng(0)

    demo, online = fill_latent_buffers(latent_shape, args.buffer_transitions, rng)
    latent_agent = SACAgent.create(0, latent_shape, config=cfg)
    lat_host, lat_dev, lat_compile = time_updates(latent_agent, lambda: sample_mixed(demo, online, rows, rng),
                                                  args.seconds)
    print(f"cached latents ({latent_shape[0]} x {latent_shape[1]}):  {lat_host:8.2f} updates/s "
          f"({lat_dev:8.2f} with the batch on the device; compile {lat_compile:.1f} s)")

    pooled_host = None
    if not args.skip_pooled:
        pcfg = SACConfig(**{**cfg.to_dict(), "latent_input": "pooled"})
        pooled_agent = SACAgent.create(0, latent_shape, config=pcfg)
        pshape = pooled_agent.stored_latent_shape
        pdemo, ponline = fill_latent_buffers(pshape, args.buffer_transitions, rng)
        pooled_host, pooled_dev, p_compile = time_updates(
            pooled_agent, lambda: sample_mixed(pdemo, ponline, rows, rng), args.seconds)
        print(f"pooled latents ({pshape[0]} x {pshape[1]}, frozen token learner): {pooled_host:8.2f} updates/s "
              f"({pooled_dev:8.2f} on the device; compile {p_compile:.1f} s)")

    pixels = PixelReplay(args.buffer_transitions, args.cameras, args.image_size, rng)
    n_tok = args.cameras * (args.image_size // 16) ** 2
    pixel_rates = {}
    for variant in ("frozen", "trained"):
        if variant == "trained" and args.skip_trained:
            continue
        encoder = ConvTokenizer(token_dim=latent_shape[1], trainable=variant == "trained")
        pixel_agent = SACAgent.create(0, (args.cameras, args.image_size, args.image_size, 3), config=cfg,
                                      pixel_encoder=encoder)
        px_host, px_dev, px_compile = time_updates(pixel_agent, lambda: pixels.sample(rows, rng), args.seconds,
                                                   min_updates=2)
        pixel_rates[variant] = px_host
        print(f"re-encoding pixels, {variant} encoder ({args.cameras} x {args.image_size}x{args.image_size} -> "
              f"{n_tok} tokens x {latent_shape[1]}): {px_host:8.2f} updates/s ({px_dev:8.2f} on the device; "
              f"compile {px_compile:.1f} s)")

    bpt = online.bytes_per_transition
    print(f"latent buffer: {bpt / 1e3:.1f} kB per transition at {latent_shape} (float16, observation stored once, "
          f"{EPISODE_STEPS}-step episodes)")
    for name, shape in (("tokens", FULL_LATENT), ("pooled", (cfg.learned_tokens, FULL_LATENT[1]))):
        per_t, total = projected_session_bytes(shape)
        verdict = "fits" if total <= 8e9 else "exceeds"
        print(f"one-hour 10 Hz session + {DEMOS} demos at BLIP-2-OPT-2.7B size, layout {name:6s} {shape}: "
              f"{per_t / 1e3:7.1f} kB/transition -> {total / 1e9:6.2f} GB ({verdict} the 8 GB goal)")
    print(f"cached latents vs re-encoding with a frozen encoder (lower bound): {lat_host / pixel_rates['frozen']:.1f}x")
    if "trained" in pixel_rates:
        print(f"cached-latent vs pixel re-encoding (trained conv encoder) updates/s ratio (goal >= 10x): "
              f"{lat_host / pixel_rates['trained']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
