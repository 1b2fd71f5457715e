"""`irevla evaluate`: seeded episodes per task in the twin, success per task and per category with confidence
intervals, as markdown + CSV + JSON tables, a plot and a few rollout videos.

Episodes run in-process through robot_server.gym_env.TwinEnv (the robot node's path: contract -> the one safety
layer -> sim backend, stepped in lock-step), so evaluation is reproducible and as fast as the CPU allows. Tasks
come from the registry plus any task files (YAML in the registry's format: tasks, instruction phrasings, object
variations), so anyone can evaluate on their own held-out variants.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from robot_server.contract import policy_state_of_obs
from robot_server.rollout import Rollout, rollout
from robot_server.usage import UsageError, require_checkpoint, require_file
from sim_twin import seeds
from teleop.config import from_dict, load_yaml, to_dict

CATEGORIES = ("expert", "rl", "unseen")
# Evaluation seeds have their own block (sim_twin/seeds.py), apart from collection, demos and online RL.
EVAL_SEED_OFFSET = seeds.BLOCKS["evaluation"][0]


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=list)  # empty -> every task (after the category filter)
    categories: list[str] = field(default_factory=list)  # empty -> all
    seeds: list[int] = field(default_factory=lambda: list(range(10)))
    task_files: list[str] = field(default_factory=list)
    # Render size of the twin's cameras; None: the policy's own input size (no resize). Another size is resized
    # by the VLA to its input size.
    image_size: Optional[int] = None
    max_steps: Optional[int] = None  # default: each task's max_steps
    videos: int = 2  # rollout videos per category (first seeds)
    workers: int = 1
    render_detail: str = "fast"


def parse_seeds(text: str) -> list[int]:
    """'0-19' -> 0..19; '1,5,9' -> [1, 5, 9]; '3' -> [0, 1, 2] (a count)."""
    text = text.strip()
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            return list(range(int(a), int(b) + 1))
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return list(range(int(text)))
    except ValueError:
        raise UsageError(f"seeds {text!r}: expected a range '0-19', a list '1,5,9' or a count '10'") from None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (sensible at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_t_interval(values: Sequence[float]) -> str:
    """'mean ± half-width' of a 95 % Student-t interval over a few runs (learning results: the mean of seeded
    runs); one run: just the mean."""
    n = len(values)
    m = sum(values) / n
    if n < 2:
        return f"{m:.2f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(n, 2.0)
    return f"{m:.2f} ± {t * sd / math.sqrt(n):.2f}"


class VLAPolicy:
    """Wraps a VLA checkpoint as obs -> action for the twin."""

    def __init__(self, checkpoint: str, device: str = "cpu"):
        import torch
        from policy.model import load_vla
        torch.set_num_threads(1)
        self.vla = load_vla(checkpoint, device=device)
        self.cameras = list(self.vla.cfg.cameras)

    def __call__(self, obs: dict, instruction: str) -> np.ndarray:
        images = {c: obs["images"][c][None] for c in self.cameras}
        return self.vla.act(images, [instruction], policy_state_of_obs(obs["state"])[None])[0]


def run_episode(env, policy: Callable, task: str, seed: int, max_steps: Optional[int] = None,
                frames: Optional[list] = None) -> Rollout:
    keep = None if frames is None else (lambda obs, action: frames.append((obs["images"], action)))
    return rollout(env, policy, seed, task=task, max_steps=max_steps, on_step=keep)


def _make_env(policy: VLAPolicy, cfg: EvalConfig, task: str):
    from robot_server.gym_env import make_env
    return make_env(task, tuple(policy.cameras), cfg.image_size or policy.vla.image_size,
                    task_files=tuple(cfg.task_files), render_detail=cfg.render_detail)


# Per worker process: the policy (loaded once, by _init_worker) and the env (made on the first episode).
_WORKER: dict = {}


def _init_worker(checkpoint: str, cfg_dict: dict, video_dir: Optional[str]) -> None:
    from multiprocessing import util
    _WORKER.update(cfg=from_dict(EvalConfig, cfg_dict), policy=VLAPolicy(checkpoint), env=None, video_dir=video_dir)
    util.Finalize(None, _close_worker_env, exitpriority=10)  # workers leave through os._exit: no atexit


def _close_worker_env() -> None:
    if _WORKER.get("env") is not None:
        _WORKER["env"].close()


def _worker_job(job: tuple) -> dict:
    """One episode in a worker process (returned as soon as it ends, so progress moves per episode)."""
    w = _WORKER
    if w["env"] is None:
        w["env"] = _make_env(w["policy"], w["cfg"], job[0])
    return _evaluate_job(w["env"], w["policy"], job, w["cfg"], w["video_dir"])


def _evaluate_job(env, policy, job: tuple, cfg: EvalConfig, video_dir: Optional[str]) -> dict:
    """One seeded episode -> its result dict (with the video path when one was recorded)."""
    task, seed, want_video = job
    frames = [] if want_video else None
    r = run_episode(env, policy, task, seeds.seed("evaluation", seed), cfg.max_steps, frames)
    d = r.record()
    if want_video and video_dir:
        path = Path(video_dir) / f"{task}_seed{seed}_{'success' if r.success else 'failure'}.mp4"
        write_rollout_video(frames, r.instruction, path)
        d["video"] = str(path)
    return d


def write_rollout_video(frames: list, instruction: str, path: Path, scale: int = 2, fps: int = 10) -> None:
    """Cameras side by side, the instruction and the action overlaid (mp4)."""
    import av
    import cv2
    if not frames:
        return
    cams = list(frames[0][0])
    h = max(frames[0][0][c].shape[0] for c in cams) * scale
    w = sum(frames[0][0][c].shape[1] * scale for c in cams)
    band = 48
    W, H = w + w % 2, h + band + (h + band) % 2
    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w")
    stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    font = cv2.FONT_HERSHEY_SIMPLEX
    try:
        for i, (images, a) in enumerate(frames):
            frame = np.zeros((H, W, 3), np.uint8)
            x = 0
            for c in cams:
                big = cv2.resize(images[c], None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
                frame[:big.shape[0], x:x + big.shape[1]] = big
                x += big.shape[1]
            cv2.putText(frame, instruction, (4, h + 18), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            cv2.putText(frame, f"{i + 1:3d} d=[{a[0]:+.2f} {a[1]:+.2f} {a[2]:+.2f}] grip={'C' if a[6] > 0 else 'O'}",
                        (4, h + 38), font, 0.4, (200, 255, 200), 1, cv2.LINE_AA)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()


def select_tasks(cfg: EvalConfig) -> list[tuple[str, str]]:
    """(task, category) pairs after the task and category filters, in registry order."""
    from sim_twin.tasks.registry import TaskRegistry
    reg = TaskRegistry.load(extra_files=cfg.task_files)
    tasks = reg.tasks
    unknown = [t for t in cfg.tasks if t not in tasks]
    if unknown:
        raise UsageError(f"unknown task(s) {unknown}; known: {sorted(tasks)}")
    bad = [c for c in cfg.categories if c not in CATEGORIES]
    if bad:
        raise UsageError(f"unknown categories {bad}; known: {CATEGORIES}")
    names = cfg.tasks or list(tasks)
    return [(n, tasks[n].category) for n in names if not cfg.categories or tasks[n].category in cfg.categories]


@dataclass
class EvalReport:
    episodes: list[dict]
    per_task: list[dict]
    per_category: list[dict]
    label: str = ""

    def category_rate(self, category: str) -> Optional[float]:
        for row in self.per_category:
            if row["category"] == category:
                return row["success_rate"]
        return None

    def task_rate(self, task: str) -> Optional[float]:
        for row in self.per_task:
            if row["task"] == task:
                return row["success_rate"]
        return None


def summarize(episodes: list[dict], label: str = "") -> EvalReport:
    def row(key, value, eps):
        k = sum(e["success"] for e in eps)
        lo, hi = wilson_interval(k, len(eps))
        return {key: value, "episodes": len(eps), "successes": k, "success_rate": k / max(1, len(eps)),
                "ci_low": lo, "ci_high": hi, "mean_steps": float(np.mean([e["steps"] for e in eps]))}
    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    per_task = [dict(row("task", t, [e for e in episodes if e["task"] == t]),
                     category=next(e["category"] for e in episodes if e["task"] == t)) for t in tasks]
    cats = [c for c in CATEGORIES if any(e["category"] == c for e in episodes)]
    per_cat = [row("category", c, [e for e in episodes if e["category"] == c]) for c in cats]
    return EvalReport(episodes, per_task, per_cat, label)


def markdown_table(reports: list[EvalReport], by: str = "category") -> str:
    """One column per report (e.g. before / after / baselines), one row per category (or task)."""
    keys = list(dict.fromkeys(r[by] for rep in reports for r in (rep.per_category if by == "category"
                                                                    else rep.per_task)))
    head = f"| {by} | " + " | ".join(rep.label or f"run {i}" for i, rep in enumerate(reports)) + " |"
    lines = [head, "|" + "---|" * (len(reports) + 1)]
    for k in keys:
        cells = []
        for rep in reports:
            rows = rep.per_category if by == "category" else rep.per_task
            r = next((x for x in rows if x[by] == k), None)
            cells.append("-" if r is None else
                         f"{r['success_rate']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] (n={r['episodes']})")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(report: EvalReport, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "episodes.json").write_text(json.dumps(report.episodes, indent=1))
    (out / "summary.json").write_text(json.dumps({"label": report.label, "per_task": report.per_task,
                                                  "per_category": report.per_category}, indent=1))
    with open(out / "per_task.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(report.per_task[0]))
        w.writeheader()
        w.writerows(report.per_task)
    with open(out / "per_category.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(report.per_category[0]))
        w.writeheader()
        w.writerows(report.per_category)
    (out / "results.md").write_text(f"# Evaluation {report.label}\n\n## Per category\n\n"
                                    f"{markdown_table([report], 'category')}\n\n## Per task\n\n"
                                    f"{markdown_table([report], 'task')}\n")
    plot_reports([report], out / "success.png")


def plot_reports(reports: list[EvalReport], path: Path, by: str = "category") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(dict.fromkeys(r[by] for rep in reports for r in (rep.per_category if by == "category"
                                                                    else rep.per_task)))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(keys) * max(1, len(reports)) / 2 + 2), 3.5))
    width = 0.8 / max(1, len(reports))
    for i, rep in enumerate(reports):
        rows = {r[by]: r for r in (rep.per_category if by == "category" else rep.per_task)}
        xs = [j + i * width for j, k in enumerate(keys) if k in rows]
        ys = [rows[k]["success_rate"] for k in keys if k in rows]
        err = [[rows[k]["success_rate"] - rows[k]["ci_low"] for k in keys if k in rows],
               [rows[k]["ci_high"] - rows[k]["success_rate"] for k in keys if k in rows]]
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=rep.label or f"run {i}")
    ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(keys))], keys,
                  rotation=30 if by == "task" else 0, ha="right" if by == "task" else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95 % CI)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(checkpoint: str, cfg: EvalConfig, out: Optional[Path] = None, label: str = "",
             progress: bool = True) -> EvalReport:
    """Run every (task, seed) episode, in `cfg.workers` processes, and write the report to `out`."""
    tasks = select_tasks(cfg)
    if not tasks:
        raise UsageError("no task matches the task/category filters")
    if not cfg.seeds:
        raise UsageError("no seeds to evaluate")
    video_budget = {c: cfg.videos for c in CATEGORIES}
    jobs = []
    for task, cat in tasks:
        for seed in cfg.seeds:
            want = video_budget.get(cat, 0) > 0 and seed == cfg.seeds[0]
            if want:
                video_budget[cat] -= 1
            jobs.append((task, seed, want))
    video_dir = str(out / "videos") if out is not None else None
    workers = max(1, min(cfg.workers, len(jobs)))
    from tqdm import tqdm
    bar = tqdm(total=len(jobs), desc=f"evaluate {label}".strip(), unit="ep", disable=not progress, file=sys.stdout)
    episodes: list[dict] = []

    def done(episode: dict) -> None:
        episodes.append(episode)
        bar.update(1)
        bar.set_postfix(success=f"{np.mean([e['success'] for e in episodes]):.2f}")

    if workers == 1:
        policy = VLAPolicy(checkpoint)
        env = _make_env(policy, cfg, jobs[0][0])
        try:
            for job in jobs:
                done(_evaluate_job(env, policy, job, cfg, video_dir))
        finally:
            env.close()
    else:
        # One future per episode (each worker loads the model once, in its initializer): progress moves as episodes
        # end, and a free worker takes the next episode. Each episode depends only on its (task, seed), so the
        # results match the one-process run; they are put back in job order below.
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(checkpoint, to_dict(cfg), video_dir)) as pool:
            futures = [pool.submit(_worker_job, job) for job in jobs]
            try:
                for f in as_completed(futures):
                    done(f.result())
            except BaseException:
                for f in futures:  # do not run the rest after a failure or Ctrl-C
                    f.cancel()
                raise
        order = {(t, s): i for i, (t, s, _) in enumerate(jobs)}
        episodes.sort(key=lambda e: order[(e["task"], e["seed"] - EVAL_SEED_OFFSET)])
    bar.close()
    for e in episodes:
        e["seed"] = int(e["seed"]) - EVAL_SEED_OFFSET
    report = summarize(episodes, label)
    if out is not None:
        write_report(report, Path(out))
    return report


def main(argv: Optional[Iterable[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="irevla evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="VLA checkpoint directory")
    p.add_argument("--config", help="EvalConfig YAML (section 'evaluate' if present)")
    p.add_argument("--tasks", nargs="+", help="task names (default: all)")
    p.add_argument("--categories", nargs="+", choices=CATEGORIES)
    p.add_argument("--task-file", action="append", default=[], help="extra task YAML (registry format)")
    p.add_argument("--seeds", default=None, help="'0-19', '1,5,9' or a count (default 10)")
    p.add_argument("--workers", type=int, default=None, help="simulation processes (default 1)")
    p.add_argument("--videos", type=int, default=None, help="rollout videos per category")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--label", default="")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = p.parse_args(list(argv) if argv is not None else None)
    # A user's mistake fails here, in a second, before any model or simulation starts (robot_server/cli.py).
    require_checkpoint(args.checkpoint)
    cfg = EvalConfig()
    if args.config:
        import yaml

        from robot_server.config import resolve_config
        path = require_file(resolve_config(args.config), "--config")
        doc = yaml.safe_load(path.read_text()) or {}
        cfg = load_yaml(EvalConfig, path, "evaluate" if "evaluate" in doc else None)
    if args.tasks:
        cfg.tasks = args.tasks
    if args.categories:
        cfg.categories = args.categories
    if args.task_file:
        cfg.task_files = cfg.task_files + args.task_file
    if args.seeds:
        cfg.seeds = parse_seeds(args.seeds)
    if args.workers:
        cfg.workers = args.workers
    if args.videos is not None:
        cfg.videos = args.videos
    select_tasks(cfg)  # unknown task or category: UsageError now
    report = evaluate(args.checkpoint, cfg, Path(args.out), args.label, progress=not args.no_progress)
    print(markdown_table([report], "category"))
    print(f"report: {args.out}/results.md")
    return 0


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("evaluate", main))  # user errors as one line, as under `irevla`
