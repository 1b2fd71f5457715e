"""What a stage-1 RL session shows a person, the same in-process and over ROS 2: TensorBoard scalars (out/tb), the
success-rate plot (out/success_rate.png), summary.json, and the episode log the ROS actor resumes its counts from
(out/episodes.jsonl, one line per finished episode, so a SIGKILL loses at most the episode in progress)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from rl_agent.checkpoints import atomic_write_text

LAST_N = 20  # "success over the last 20 episodes", as SERL reports it


def success_last(successes: Sequence[bool], n: int = LAST_N) -> Optional[float]:
    s = list(successes)[-n:]
    return sum(map(bool, s)) / len(s) if s else None


def plot_success(successes: Sequence[bool], path: Path, title: str, lines: Optional[dict] = None) -> Path:
    """Per-episode success (dots) and its rolling mean over the last 20 episodes; `lines`: {label: rate} drawn
    across (e.g. the deterministic evaluations before and after)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    succ = np.asarray(list(successes), float)
    fig, ax = plt.subplots(figsize=(7, 4))
    if succ.size:
        ep = np.arange(1, succ.size + 1)
        roll = np.array([succ[max(0, i - LAST_N + 1):i + 1].mean() for i in range(succ.size)])
        ax.plot(ep, succ, ".", color="0.7", label="episode success")
        ax.plot(ep, roll, "-", color="C0", lw=2, label=f"success over the last {LAST_N} episodes")
    for (label, rate), color in zip((lines or {}).items(), ("C3", "C2", "C1", "C4")):
        ax.axhline(rate, color=color, ls="--", label=f"{label}: {rate:.2f}")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("training episode")
    ax.set_ylabel("success")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class TensorBoard:
    """A SummaryWriter on out/tb, or nothing (`enabled=False`). `purge_step` drops what a killed run logged after the
    step it resumes from (those steps are replayed)."""

    def __init__(self, out: Path, enabled: bool = True, purge_step: Optional[int] = None):
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(Path(out) / "tb"), purge_step=purge_step or None)

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if v is not None and np.isfinite(float(v)):
                self.writer.add_scalar(k, float(v), int(step))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class EpisodeLog:
    """The ROS actor's record of its finished episodes (out/episodes.jsonl), TensorBoard, plot and summary.json.
    A restarted actor reads the file back and continues the counts and the plot."""

    def __init__(self, out: Path, task: str, tensorboard: bool = True, plot_every: int = 10):
        self.out, self.task, self.plot_every = Path(out), task, int(plot_every)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "episodes.jsonl"
        self.episodes: list[dict] = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    self.episodes.append(json.loads(line))
                except ValueError:  # the last line of a run killed while writing it
                    break
        self.env_steps = sum(int(e.get("steps", 0)) for e in self.episodes)
        self.tb = TensorBoard(self.out, tensorboard, purge_step=self.env_steps)
        self.extra: dict = {}  # more for summary.json (the caller's counters: demos, harvest folder, ...)

    @property
    def successes(self) -> list[bool]:
        return [bool(e["success"]) for e in self.episodes]

    def add(self, success: bool, steps: int, interventions: int = 0, params_version: int = 0,
            ended_by: str = "", **extra) -> dict:
        rec = {"episode": len(self.episodes) + 1, "success": bool(success), "steps": int(steps),
               "interventions": int(interventions), "params_version": int(params_version), "ended_by": ended_by,
               "time": time.time(), **extra}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.episodes.append(rec)
        self.env_steps += int(steps)
        self.tb.scalars(self.env_steps, {"train/episode_success": float(success),
                                         "train/success_last20": success_last(self.successes),
                                         "train/episode_length": steps, "train/interventions": interventions,
                                         "train/episodes": len(self.episodes), "actor/params_version": params_version})
        if self.plot_every > 0 and len(self.episodes) % self.plot_every == 0:
            self.plot()
        self.summary()  # after every episode: a killed run's summary is as old as its last finished episode
        return rec

    def plot(self) -> Path:
        return plot_success(self.successes, self.out / "success_rate.png", f"stage 1 RL on {self.task} (robot)")

    def summary(self, **extra) -> dict:
        succ = self.successes
        doc = {"task": self.task, "episodes": len(succ), "successes": sum(succ),
               "success_rate": (sum(succ) / len(succ)) if succ else None, "success_last20": success_last(succ),
               "env_steps": self.env_steps,
               "interventions": sum(int(e.get("interventions", 0)) for e in self.episodes), **self.extra, **extra}
        atomic_write_text(self.out / "summary.json", json.dumps(doc, indent=1))
        return doc

    def close(self, **extra) -> dict:
        self.plot()
        doc = self.summary(**extra)
        self.tb.close()
        return doc
