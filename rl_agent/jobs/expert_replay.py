"""The expert replay set of an iterate run (stage 0's data and stage 2's replay): where it is, and collecting it
with the scripted experts when it is missing or short (resumable), refusing a set recorded with other settings."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


def _say(msg: str) -> None:
    print(f"[iterate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class ExpertSetConfig:
    path: Optional[str] = None  # where the expert set is (collected there when it has none); None: <run>/expert
    episodes_per_task: int = 5
    tasks: list[str] = field(default_factory=list)  # empty: every task of category "expert"
    image_size: int = 128  # the default model's input size (no resize)
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    noise: float = 0.1
    workers: int = 2
    task_files: list[str] = field(default_factory=list)  # set from IterateConfig.task_files


def ensure_expert_set(cfg: ExpertSetConfig, run_dir: Path, log=_say) -> Path:
    """The expert set at `cfg.path` (or <run>/expert), collected there with the scripted experts when it has none.
    A scripted set (`irevla collect` only) short of `episodes_per_task` for a wanted task is topped up: collection
    resumes where an interrupted run stopped. Any other set (teleop data) is used as it is."""
    from collections import Counter

    from sim_twin.tasks.registry import TaskRegistry
    from teleop import collect
    from teleop.dataset import selected_entries
    path = Path(cfg.path) if cfg.path else run_dir / "expert"
    try:
        entries = selected_entries(path)
    except Exception:
        entries = []
    reg = TaskRegistry.load(extra_files=cfg.task_files, include_default=not cfg.task_files)
    tasks = cfg.tasks or [n for n, t in reg.tasks.items() if t.category == "expert"]
    differ = collect.settings_mismatch([e for e in entries if e.get("task") in tasks], cfg.cameras, cfg.image_size,
                                       cfg.noise, 0, collect.task_definitions(tasks, cfg.task_files))
    if differ:  # never reused (or topped up) silently
        from robot_server.usage import UsageError
        raise UsageError(f"expert set {path}: its scripted episodes were recorded with other settings: "
                         f"{'; '.join(differ)}. Point expert.path elsewhere (or delete the set) to collect anew")
    have = Counter(e.get("task") for e in entries)
    short = [t for t in tasks if have[t] < cfg.episodes_per_task]
    if entries and (not short or any(e.get("category") != collect.CATEGORY for e in entries)):
        log(f"expert set: {path} ({len(entries)} successful episodes)")
        return path
    log(f"expert set: collecting {cfg.episodes_per_task} scripted episodes x {len(tasks)} tasks into {path}"
        + (f" ({len(entries)} already there)" if entries else ""))
    argv = ["--out", str(path), "--episodes-per-task", str(cfg.episodes_per_task), "--tasks", *tasks,
            "--workers", str(cfg.workers), "--image-size", str(cfg.image_size), "--noise", str(cfg.noise),
            "--cameras", *cfg.cameras, *[a for f in cfg.task_files for a in ("--task-file", f)]]
    rc = collect.main(argv)
    if rc:
        raise RuntimeError(f"expert collection failed (exit {rc})")
    return path
