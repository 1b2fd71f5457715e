"""`irevla dataset`: inspect and check recorded episode datasets.

    irevla dataset validate DIR [--workers N]      exit 1 if any problem (schema, counts, stamps, NaN, images, index)
    irevla dataset stats DIR [-o stats.json] [--include-failed]
    irevla dataset view DIR EPISODE -o out.mp4     EPISODE: number (42), name (episode_000042) or a file path
    irevla dataset reindex DIR                     reconcile index.jsonl with the files (files are the truth)
    irevla dataset cache DIR [--cache-dir D]       decode every episode once into the training cache
    irevla dataset label-objects DIR [--workers N] the task object's position per twin episode, from its seed
    irevla dataset label-grasps DIR                the object's position where the hand closed on it (any robot)
    irevla dataset export DIR --format lerobot --out OUT [--include-failed]   LeRobotDataset v3.0
    irevla dataset import-lerobot LEROBOT_DIR --out DIR   a v3 dataset with 7-D ee-delta actions -> episodes

`irevla-dataset` is the deprecated spelling of `irevla dataset` (it still works, with a warning).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def _fmt(v) -> str:
    return "[" + " ".join(f"{x:+.3f}" for x in v) + "]"


def cmd_validate(args) -> int:
    from teleop.dataset import validate_dataset
    t0 = time.monotonic()
    rep = validate_dataset(args.dir, jobs=args.workers)
    print(rep.summary())
    print(f"({time.monotonic() - t0:.1f} s)")
    return 0 if rep.ok else 1


def cmd_stats(args) -> int:
    from teleop.dataset import compute_stats
    stats = compute_stats(args.dir, include_failed=args.include_failed)
    out = Path(args.output) if args.output else Path(args.dir) / "stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(stats, indent=1))
    print(f"{stats['episodes']} episodes, {stats['steps']} steps "
          f"({'all' if args.include_failed else 'successful only'})")
    for task, c in stats["per_task"].items():
        ln = c["length"]
        print(f"  {task:30s} success {c['success']:5d}  failure {c['failure']:4d}"
              + (f"  length mean {ln['mean']:.1f} [{ln['min']}, {ln['max']}]" if ln else ""))
    if stats["action"].get("count"):
        a = stats["action"]
        print(f"action min  {_fmt(a['min'])}\naction max  {_fmt(a['max'])}\naction mean {_fmt(a['mean'])}\n"
              f"action std  {_fmt(a['std'])}")
    print(f"normalization statistics written to {out}")
    return 0


def cmd_view(args) -> int:
    from teleop.dataset import render_video, resolve_episode
    path = resolve_episode(args.dir, args.episode)
    n = render_video(path, args.output, scale=args.scale)
    print(f"{path.name}: {n} frames -> {args.output}")
    return 0


def cmd_reindex(args) -> int:
    from teleop import storage
    root = Path(args.dir)
    lock = storage.DirectoryLock(root)
    lock.acquire()
    try:
        entries, rep = storage.reconcile(root)
    finally:
        lock.release()
    print(f"{root}: {len(entries)} episodes; {rep.summary()}")
    return 0


def cmd_cache(args) -> int:
    from teleop.dataset import EpisodeDataset
    t0 = time.monotonic()
    ds = EpisodeDataset(args.dir, cache_dir=args.cache_dir, include_failed=args.include_failed)
    print(f"{ds.num_episodes} episodes, {len(ds)} steps cached in {ds.cache_dir} "
          f"({ds.decoded} decoded now, {time.monotonic() - t0:.1f} s)")
    return 0


def cmd_label_objects(args) -> int:
    from teleop.object_labels import LABELS_FILE, label_dataset
    counts = label_dataset(args.dir, workers=args.workers)
    print(json.dumps({"file": str(Path(args.dir) / LABELS_FILE), **counts}))
    return 0


def cmd_label_grasps(args) -> int:
    from teleop.object_labels import LABELS_FILE, label_grasps
    counts = label_grasps(args.dir, task_files=tuple(args.task_file))
    print(json.dumps({"file": str(Path(args.dir) / LABELS_FILE), **counts}))
    return 0


def cmd_export(args) -> int:
    from teleop.lerobot_export import export_lerobot
    t0 = time.monotonic()
    s = export_lerobot(args.dir, args.out, fps=args.fps, include_failed=args.include_failed, codec=args.codec,
                       pix_fmt=args.pix_fmt, crf=args.crf, gop=args.gop, dtype=args.dtype)
    print(f"{s['episodes']} episodes, {s['frames']} frames, {s['tasks']} task(s), cameras {s['cameras']} -> "
          f"{s['out']} (LeRobotDataset v3.0, {s['fps']} fps, {s['bytes'] / 1e6:.2f} MB of which video "
          f"{s['video_bytes'] / 1e6:.2f} MB; {time.monotonic() - t0:.1f} s)")
    return 0


def cmd_import_lerobot(args) -> int:
    from teleop.lerobot_import import import_lerobot
    t0 = time.monotonic()
    s = import_lerobot(args.dir, args.out, assume_ee_delta=args.assume_ee_delta, task=args.task)
    print(f"{s['episodes']} episodes, {s['frames']} steps, cameras {s['cameras']} imported into {s['out']} "
          f"({time.monotonic() - t0:.1f} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from robot_server.usage import add_hidden_alias
    p = argparse.ArgumentParser(prog="irevla dataset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("validate", help="check every episode and the index; exit 1 on problems")
    s.add_argument("dir")
    s.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    add_hidden_alias(s, "--jobs", "--workers", dest="workers", type=int)  # the spelling before --workers everywhere
    s.set_defaults(func=cmd_validate)
    s = sub.add_parser("stats", help="per-task counts, lengths, normalization statistics (JSON)")
    s.add_argument("dir")
    s.add_argument("-o", "--output", help="JSON file (default DIR/stats.json)")
    s.add_argument("--include-failed", action="store_true", help="also use failed episodes")
    s.set_defaults(func=cmd_stats)
    s = sub.add_parser("view", help="render an episode to a video (cameras side by side, actions overlaid)")
    s.add_argument("dir")
    s.add_argument("episode", help="number, name (episode_000042) or path")
    s.add_argument("-o", "--output", required=True, help="output video, e.g. out.mp4")
    s.add_argument("--scale", type=int, default=2, help="image upscaling factor")
    s.set_defaults(func=cmd_view)
    s = sub.add_parser("reindex", help="rebuild index.jsonl from the episode files if they disagree")
    s.add_argument("dir")
    s.set_defaults(func=cmd_reindex)
    s = sub.add_parser("cache", help="build the decoded training cache")
    s.add_argument("dir")
    s.add_argument("--cache-dir")
    s.add_argument("--include-failed", action="store_true")
    s.set_defaults(func=cmd_cache)
    s = sub.add_parser("label-objects", help="privileged labels of twin episodes: the task object's position from "
                                             "each episode's seed (teleop/object_labels.py)")
    s.add_argument("dir")
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=cmd_label_objects)
    s = sub.add_parser("label-grasps", help="object labels from the recording itself: where the hand closed on the "
                                            "object in each successful pick / place (teleop/object_labels.py)")
    s.add_argument("dir")
    s.add_argument("--task-file", action="append", default=[], help="more task definitions (YAML)")
    s.set_defaults(func=cmd_label_grasps)
    s = sub.add_parser("export", help="write the episodes in another format (LeRobotDataset v3.0)")
    s.add_argument("dir")
    s.add_argument("--format", required=True, choices=["lerobot"], help="output format")
    s.add_argument("--out", required=True, help="output directory (new or empty)")
    s.add_argument("--include-failed", action="store_true", help="also export failed episodes")
    s.add_argument("--fps", type=int, default=None, help="frame rate (default: the episodes' control rate)")
    s.add_argument("--codec", default="libx264", help="PyAV video encoder (libx264, libsvtav1, mpeg4, ...)")
    s.add_argument("--pix-fmt", default="yuv444p", help="yuv444p (near-lossless, default) or yuv420p")
    s.add_argument("--crf", type=int, default=0, help="quality (x264: 0 = lossless in YUV)")
    s.add_argument("--gop", type=int, default=2, help="keyframe interval in frames")
    s.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                   help="state/action dtype (float64: exact)")
    s.set_defaults(func=cmd_export)
    s = sub.add_parser("import-lerobot", help="import a LeRobotDataset v3.0 with 7-D end-effector delta actions")
    s.add_argument("dir", metavar="LEROBOT_DIR")
    s.add_argument("--out", required=True, help="dataset directory to write (created; appended to if it exists)")
    s.add_argument("--task", default=None, help="task name for every episode (default: from the dataset, else "
                                                "a slug of the instruction)")
    s.add_argument("--assume-ee-delta", action="store_true",
                   help="accept a 7-D action whose names differ from dx..gripper as an ee delta + gripper")
    s.set_defaults(func=cmd_import_lerobot)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "validate" and not Path(args.dir).is_dir():  # validate reports it as a problem (exit 1)
        what = "LeRobot dataset" if args.command == "import-lerobot" else "dataset"
        print(f"irevla dataset {args.command}: error: no {what} directory {args.dir}", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"irevla dataset {args.command}: error: {exc}", file=sys.stderr)
        return 2


def deprecated_main() -> int:
    """The `irevla-dataset` console script: the same tool, now `irevla dataset`."""
    print("irevla-dataset: warning: deprecated, use `irevla dataset`", file=sys.stderr)
    return main()


if __name__ == "__main__":
    sys.exit(main())
