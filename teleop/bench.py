"""Recorder benchmark: can the recorder core keep up with 2 cameras x 30 fps at 224x224 plus state, on one core?

A camera thread produces one step (a frame of every camera + robot state + action) every 1/`--fps` s for
`--seconds` and puts it into a bounded queue (`--queue-depth`, default 30 = 1 s: what a camera driver or a DDS
subscription's history buffers); the recorder, in the main thread, takes steps from the queue and writes them,
rotating episodes every `--episode-steps` steps (stop + start, i.e. closing, fsyncing and renaming files, included).
A frame is DROPPED when the queue is full as it arrives: it never reaches a file. Also reported: LATE frames (written
more than one period after capture; they are in the file, but show how close the recorder runs to its limit), the
deepest the queue got, per-step latency, CPU use of the whole process (saver thread included), bytes per 100-step
episode and the projected size of 2,000 episodes. The last line is baseline-relative: write capacity (steps/s the
recorder sustains, from its busy time) divided by the rate needed (`--fps`).

Episodes end with `stop_async()` (saved on the recorder's saver thread) unless `--sync-stop` (the old `stop()`,
which blocks until saved). `--queue-depth 0` runs the old single paced loop with no buffer, where every frame not
written within its period counts as dropped: the two flags reproduce the measurement before this change.

Content "camera" (default) is a smooth scene with sensor noise (sigma 3): the worst case for lossless
compression, like a real camera. "flat" is noise-free, like the MuJoCo twin's renders.
"""
from __future__ import annotations

import argparse
import os
import queue
import resource
import shutil
import sys
import tempfile
import threading
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
        fmt: str = "raw", fsync: bool = True, cpu: Optional[int] = None, queue_depth: int = 30,
        sync_stop: bool = False) -> dict:
    """Camera thread -> bounded queue -> recorder (this thread), or with queue_depth=0 one paced loop."""
    from teleop.episode_format import CameraConfig
    from teleop.recorder import EpisodeRecorder, RecorderConfig

    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    cams = tuple(CameraConfig(f"cam{i}", size, size, fmt) for i in range(n_cameras))
    cfg = RecorderConfig(root=str(root), cameras=cams, min_free_mb=0, fsync=fsync, target_episodes=2000)
    pools = {c.name: make_frames(32, size, content, seed=i) for i, c in enumerate(cams)}
    rng = np.random.default_rng(0)
    q0 = rng.normal(size=7)
    rec = EpisodeRecorder(cfg)
    period = 1.0 / fps
    total = int(round(seconds * fps))
    actions = np.clip(rng.normal(0, 0.3, (64, 7)), -1, 1)

    def step_data(k: int):
        state = {"q": q0 + 0.001 * k, "dq": np.zeros(7), "ee_pos": [0.45, 0.0, 0.25],
                 "ee_quat": [0.0, 1.0, 0.0, 0.0], "gripper_width": 0.08}
        return {name: pool[k % len(pool)] for name, pool in pools.items()}, state, actions[k % len(actions)]

    lat: list[float] = []  # capture -> written, per written step
    work: list[float] = []  # recorder time per step (add_step, plus stop+start at boundaries)
    boundary_ms: list[float] = []
    saves: list = []
    overflow = 0  # frames the full queue could not take (lost)
    overflow_boundary = 0
    skipped = 0  # queue_depth 0: frames skipped because the loop was behind
    max_queued = 0
    in_boundary = threading.Event()  # set while stop()+start() run: drops then are "at episode ends"
    t0 = time.perf_counter() + 0.1

    def boundary() -> None:
        in_boundary.set()
        ts = time.perf_counter()
        if sync_stop:
            rec.stop(success=True)
        else:
            saves.append(rec.stop_async(success=True))
        rec.start("bench", "bench", "benchmark episode", "bench")
        boundary_ms.append((time.perf_counter() - ts) * 1e3)
        in_boundary.clear()

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.perf_counter()
    rec.start("bench", "bench", "benchmark episode", "bench")
    in_episode = 0
    if queue_depth > 0:
        frames: queue.Queue = queue.Queue(maxsize=queue_depth)
        done_producing = object()

        def camera() -> None:  # the camera driver / DDS subscription: never waits for the recorder
            nonlocal overflow, overflow_boundary
            for k in range(total):
                deadline = t0 + k * period
                delay = deadline - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                try:
                    frames.put_nowait((k, deadline))
                except queue.Full:
                    overflow += 1
                    overflow_boundary += in_boundary.is_set()
            frames.put(done_producing)

        producer = threading.Thread(target=camera, name="camera", daemon=True)
        producer.start()
        while True:
            max_queued = max(max_queued, frames.qsize())
            item = frames.get()
            if item is done_producing:
                break
            k, captured = item
            t = time.perf_counter()
            images, state, action = step_data(k)
            rec.add_step(images, state, action, captured)
            in_episode += 1
            if in_episode >= episode_steps:
                boundary()
                in_episode = 0
            done = time.perf_counter()
            work.append(done - t)
            lat.append(done - captured)
        producer.join()
    else:  # the old synchronous loop: a frame not written within its period counts as dropped
        boundary_end = 0.0  # frames due before this instant were lost to an episode end
        for k in range(total):
            deadline = t0 + k * period
            now = time.perf_counter()
            if now > deadline + period:
                skipped += 1
                overflow_boundary += deadline < boundary_end
                continue
            if now < deadline:
                time.sleep(deadline - now)
            t = time.perf_counter()
            images, state, action = step_data(k)
            rec.add_step(images, state, action, deadline)
            in_episode += 1
            ended = in_episode >= episode_steps
            if ended:
                boundary()
                in_episode = 0
                boundary_end = time.perf_counter()
            done = time.perf_counter()
            work.append(done - t)
            lat.append(done - deadline)
            overflow_boundary += ended and done > deadline + period
    rec.discard()
    rec.wait_saved()
    wall = time.perf_counter() - w0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    failed_saves = sum(1 for f in saves if f.exception() is not None)
    entries = [e for e in rec.episodes if e.get("n_steps") == episode_steps]
    rec.close()
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    written = len(lat)
    lat_ms = np.array(lat) * 1e3 if lat else np.zeros(1)
    late = int(np.sum(lat_ms > period * 1e3))
    lost = overflow + skipped + (0 if queue_depth > 0 else late)
    per_ep = float(np.mean([e["bytes"] for e in entries])) if entries else float("nan")
    bytes_100 = per_ep * 100.0 / episode_steps
    busy = float(np.sum(work))
    capacity = written / busy if busy > 0 else float("inf")
    return {
        "steps_planned": total, "steps_written": written, "dropped": lost, "dropped_fraction": lost / max(total, 1),
        "dropped_at_episode_end": overflow_boundary, "queue_overflow": overflow, "skipped": skipped,
        "late": late, "late_fraction": late / max(written, 1), "max_queued": max_queued, "queue_depth": queue_depth,
        "failed_saves": failed_saves, "boundary_ms_mean": float(np.mean(boundary_ms)) if boundary_ms else float("nan"),
        "boundary_ms_max": float(np.max(boundary_ms)) if boundary_ms else float("nan"),
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
    p.add_argument("--queue-depth", type=int, default=30,
                   help="frames the camera -> recorder queue holds (0: no queue, the old paced loop)")
    p.add_argument("--sync-stop", action="store_true", help="end episodes with the blocking stop()")
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
                args.format, not args.no_fsync, cpu, max(args.queue_depth, 0), args.sync_stop)
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    period_ms = 1e3 / args.fps
    print(f"recorder bench: {args.cameras} cameras x {args.fps:g} fps at {args.size}x{args.size}, "
          f"content={args.content}, format={args.format}, {args.seconds:g} s, pinned to cpu {cpu}, "
          f"queue depth {r['queue_depth']}, episode end with {'stop()' if args.sync_stop else 'stop_async()'}")
    print(f"steps written {r['steps_written']}/{r['steps_planned']}, dropped {r['dropped']} "
          f"({100 * r['dropped_fraction']:.2f} %), {r['dropped_at_episode_end']} of them at episode ends; "
          f"late (> {period_ms:.1f} ms) {r['late']} ({100 * r['late_fraction']:.2f} %); "
          f"queue max {r['max_queued']}/{r['queue_depth']}; failed saves {r['failed_saves']}")
    print(f"episode end (stop+start) in the recording thread: mean {r['boundary_ms_mean']:.1f} ms, "
          f"max {r['boundary_ms_max']:.1f} ms")
    print(f"latency capture->written: mean {r['latency_ms_mean']:.2f} ms, p50 {r['latency_ms_p50']:.2f}, "
          f"p99 {r['latency_ms_p99']:.2f}, max {r['latency_ms_max']:.2f} (period {period_ms:.1f} ms)")
    print(f"CPU: {100 * r['cpu_fraction']:.1f} % of one core")
    print(f"bytes per 100-step episode: {r['bytes_per_100_step_episode'] / 1e6:.2f} MB "
          f"(raw {r['raw_bytes_per_100_step_episode'] / 1e6:.2f} MB); 2,000 episodes: "
          f"{r['projected_2000_episodes_gb']:.1f} GB ({r['episodes']} episodes measured)")
    print(f"RATIO capacity/needed = {r['ratio']:.1f}x ({r['capacity_steps_per_s']:.0f} steps/s sustainable vs "
          f"{r['needed_steps_per_s']:g} steps/s needed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
