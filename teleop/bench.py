"""Recorder benchmark: can the recorder core keep up with 2 cameras x 30 fps at 224x224 plus state, on one core?

Feeds paced steps (one step = one frame of every camera + robot state + action) into EpisodeRecorder for
`--seconds`, rotating episodes every `--episode-steps` steps (so finishing episodes, fsync and rename included).
Reports: dropped frames (steps not written within their period: skipped because the loop was behind, or written
late; split into those while recording and those at episode ends, where stop() fsyncs and renames the file - in
real use an episode ends between recordings), per-step latency, CPU use of the process, bytes per 100-step episode and the projected size of 2,000
episodes. The last line is baseline-relative: write capacity (steps/s the recorder sustains, from its busy time)
divided by the rate needed (`--fps`).

Content "camera" (default) is a smooth scene with sensor noise (sigma 3): the worst case for lossless
compression, like a real camera. "flat" is noise-free, like the MuJoCo twin's renders.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def make_frames(n: int, size: int, content: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([0.6 + 0.3 * xx, 0.5 + 0.2 * yy, 0.4 + 0.1 * (xx + yy)], -1) * 255
    frames = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        img = base.copy()
        cx = int(size * (0.2 + 0.6 * i / max(n - 1, 1)))
        img[size // 3: size // 3 + size // 6, max(cx - size // 12, 0): cx + size // 12] = (200, 30, 30)
        img[2 * size // 3:, :] *= 0.7
        if content == "camera":
            img = img + rng.normal(0.0, 3.0, img.shape)
        frames[i] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def run(seconds: float, fps: float, n_cameras: int, size: int, content: str, episode_steps: int, root: Path,
        fmt: str = "raw", fsync: bool = True, cpu: Optional[int] = None) -> dict:
    from teleop.episode_format import CameraConfig
    from teleop.recorder import EpisodeRecorder, RecorderConfig

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    cams = tuple(CameraConfig(f"cam{i}", size, size, fmt) for i in range(n_cameras))
    cfg = RecorderConfig(root=str(root), cameras=cams, min_free_mb=0, fsync=fsync, target_episodes=2000)
    pools = {c.name: make_frames(32, size, content, seed=i) for i, c in enumerate(cams)}
    rng = np.random.default_rng(0)
    q = rng.normal(size=7)
    rec = EpisodeRecorder(cfg)
    period = 1.0 / fps
    total = int(round(seconds * fps))
    lat: list[float] = []
    stop_ms: list[float] = []
    busy = 0.0
    skipped = late = boundary = 0
    boundary_end = 0.0  # frames due before this instant were lost to finishing an episode (stop + start)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    t0 = w0 + 0.05
    rec.start("bench", "bench", "benchmark episode", "bench")
    in_episode = 0
    for k in range(total):
        deadline = t0 + k * period
        now = time.perf_counter()
        if now > deadline + period:  # behind by a whole period: this frame is gone
            skipped += 1
            boundary += deadline < boundary_end
            continue
        if now < deadline:
            time.sleep(deadline - now)
        t = time.perf_counter()
        state = {"q": q + 0.001 * k, "dq": np.zeros(7), "ee_pos": [0.45, 0.0, 0.25], "ee_quat": [0.0, 1.0, 0.0, 0.0],
                 "gripper_width": 0.08}
        images = {name: pool[k % len(pool)] for name, pool in pools.items()}
        rec.add_step(images, state, np.clip(rng.normal(0, 0.3, 7), -1, 1), deadline)
        in_episode += 1
        stopped = in_episode >= episode_steps
        if stopped:
            ts = time.perf_counter()
            rec.stop(success=True)
            rec.start("bench", "bench", "benchmark episode", "bench")
            in_episode = 0
            boundary_end = time.perf_counter()
            stop_ms.append((boundary_end - ts) * 1e3)
        done = time.perf_counter()
        busy += done - t
        lat.append(done - t)
        if done > deadline + period:
            late += 1
            boundary += stopped
    rec.discard()
    wall = time.perf_counter() - w0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    entries = [e for e in rec.episodes if e.get("n_steps") == episode_steps]
    rec.close()
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    written = len(lat)
    per_ep = float(np.mean([e["bytes"] for e in entries])) if entries else float("nan")
    bytes_100 = per_ep * 100.0 / episode_steps
    lat_ms = np.array(lat) * 1e3 if lat else np.zeros(1)
    capacity = written / busy if busy > 0 else float("inf")
    return {
        "steps_planned": total, "steps_written": written, "skipped": skipped, "late": late,
        "dropped": skipped + late, "dropped_fraction": (skipped + late) / max(total, 1),
        "dropped_at_episode_end": boundary, "dropped_while_recording": skipped + late - boundary,
        "stop_ms_mean": float(np.mean(stop_ms)) if stop_ms else float("nan"),
        "stop_ms_max": float(np.max(stop_ms)) if stop_ms else float("nan"),
        "latency_ms_mean": float(lat_ms.mean()), "latency_ms_p50": float(np.percentile(lat_ms, 50)),
        "latency_ms_p99": float(np.percentile(lat_ms, 99)), "latency_ms_max": float(lat_ms.max()),
        "cpu_fraction": cpu_s / wall, "wall_s": wall, "episodes": len(entries),
        "bytes_per_100_step_episode": bytes_100, "projected_2000_episodes_gb": bytes_100 * 2000 / 1e9,
        "raw_bytes_per_100_step_episode": 100 * n_cameras * size * size * 3,
        "capacity_steps_per_s": capacity, "needed_steps_per_s": fps, "ratio": capacity / fps,
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=600.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--content", choices=("camera", "flat"), default="camera")
    p.add_argument("--format", choices=("raw", "jpeg", "png"), default="raw")
    p.add_argument("--episode-steps", type=int, default=100)
    p.add_argument("--no-fsync", action="store_true")
    p.add_argument("--cpu", type=int, default=None, help="core to pin to (default: the last allowed one)")
    p.add_argument("--dir", default=None, help="dataset directory (default: a temporary one, deleted after)")
    args = p.parse_args(argv)
    cpu = args.cpu
    if cpu is None and hasattr(os, "sched_getaffinity"):
        cpu = max(os.sched_getaffinity(0))
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="irevla_bench_"))
    try:
        r = run(args.seconds, args.fps, args.cameras, args.size, args.content, args.episode_steps, root,
                args.format, not args.no_fsync, cpu)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    print(f"recorder bench: {args.cameras} cameras x {args.fps:g} fps at {args.size}x{args.size}, "
          f"content={args.content}, format={args.format}, {args.seconds:g} s, pinned to cpu {cpu}")
    print(f"steps written {r['steps_written']}/{r['steps_planned']}, dropped {r['dropped']} "
          f"({100 * r['dropped_fraction']:.2f} %: skipped {r['skipped']}, late {r['late']}); "
          f"{r['dropped_while_recording']} while recording, {r['dropped_at_episode_end']} at episode ends "
          f"(stop+start took mean {r['stop_ms_mean']:.1f} ms, max {r['stop_ms_max']:.1f} ms)")
    print(f"latency per step: mean {r['latency_ms_mean']:.2f} ms, p50 {r['latency_ms_p50']:.2f}, "
          f"p99 {r['latency_ms_p99']:.2f}, max {r['latency_ms_max']:.2f} (period {1e3 / args.fps:.1f} ms)")
    print(f"CPU: {100 * r['cpu_fraction']:.1f} % of one core")
    print(f"bytes per 100-step episode: {r['bytes_per_100_step_episode'] / 1e6:.2f} MB "
          f"(raw {r['raw_bytes_per_100_step_episode'] / 1e6:.2f} MB); 2,000 episodes: "
          f"{r['projected_2000_episodes_gb']:.1f} GB ({r['episodes']} episodes measured)")
    print(f"RATIO capacity/needed = {r['ratio']:.1f}x ({r['capacity_steps_per_s']:.0f} steps/s sustainable vs "
          f"{r['needed_steps_per_s']:g} steps/s needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
