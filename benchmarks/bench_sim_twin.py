"""Twin speed: Gymnasium env steps/s on one core, with and without rendering one 128x128 camera.

Printed as a multiple of real time at the 10 Hz control rate (goal >= 5x); the figure is on the last line.
Run: python benchmarks/bench_sim_twin.py [--seconds 20] [--task pick_red_block] [--detail fast|full]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")


def measure(task: str, render: bool, seconds: float, detail: str) -> float:
    from robot_server.gym_env import TwinEnv
    env = TwinEnv(task=task, cameras=("front",), image_size=128, render_images=render, render_detail=detail)
    env.reset(seed=0)
    for _ in range(5):  # warm-up: renderer creation, caches
        env.step(env.expert_action(0.1))
    steps, seed, t0 = 0, 1, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, _, term, trunc, _ = env.step(env.expert_action(0.1))
        steps += 1
        if term or trunc:
            env.reset(seed=seed)
            seed += 1
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--task", default="pick_red_block")
    ap.add_argument("--detail", default="fast", choices=["fast", "full"])
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as the target says
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    control_hz = 10.0
    physics = measure(args.task, False, args.seconds, args.detail)
    print(f"no rendering:            {physics:7.1f} env steps/s = {physics / control_hz:5.1f}x real time")
    rendered = measure(args.task, True, args.seconds, args.detail)
    print(f"1 camera 128x128 ({args.detail}): {rendered:7.1f} env steps/s = {rendered / control_hz:5.1f}x real time")
    print(f"real-time factor with rendering (goal >= 5x): {rendered / control_hz:.1f}x")


if __name__ == "__main__":
    main()
