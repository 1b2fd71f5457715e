"""Successful stage-1 trajectories -> the expert-set format (one MCAP episode per trajectory + index.jsonl), written
by teleop.recorder.EpisodeRecorder exactly as `irevla collect` and the teleop recorder write theirs, so stage 2
reads them with teleop.dataset like any expert data.

Episodes are written as they succeed (crash-safe: a SIGKILL loses none already written); each carries
extra = {"source": "rl" | "vla_demo" | "expert_demo", "session_key": ..., "seed", "interventions",
"task_category"}. A key that is already in the dataset is not written again, so a resumed session that replays an
episode number (its checkpoint was older) keeps the first copy.

Action labels of RL episodes: SAC explores with a tanh-Gaussian, so an executed action is the policy's action plus
exploration noise. Measured at the end of a 7-minute press_green_button session: 0.32-0.53 rms from the actor's
mean per action dimension, against the expert data's spread of 0.19-0.25 (translation) and 0.02-0.03 (rotation).
Stage 2 regresses on these labels in the expert data's normalized units, where that noise is up to ~15 sigma: its
loss stays at 1.5-2.0 for 200 steps (and 600). `relabel_with_policy_mean` (harvest.action_label: policy_mean) keeps
the visited states (the successful trajectory itself) and labels each step with the actor's deterministic action
there; steps a human took over keep the human's action. Stage 2 then fits (loss 0.77 -> 0.41) and carries the RL
task (1.00), but in the twin it also carries the RL policy over to the other button tasks, which lose their expert
behaviour (press_button 1.00 -> 0.12-0.25 in three stage-2 variants), so `executed` stays the default (README).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from rl_agent.env import EpisodeTrace

ACTION_LABELS = ("policy_mean", "executed")
CATEGORY = "rl_harvest"  # the dataset category of harvested episodes (teleop: "expert", irevla collect: "scripted")
SOURCES = ("rl", "vla_demo", "expert_demo")


class Harvester:
    def __init__(self, root, cameras: Iterable[str], image_size: int, sources: Iterable[str] = ("rl", "vla_demo"),
                 operator: str = "irevla rl-session", robot: Optional[dict] = None):
        from teleop.episode_format import CameraConfig
        from teleop.recorder import EpisodeRecorder, RecorderConfig
        self.sources = tuple(sources)
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ValueError(f"harvest sources {bad} unknown; use some of {SOURCES}")
        self.root = Path(root)
        self.operator = operator
        cfg = RecorderConfig(root=str(self.root), cameras=tuple(CameraConfig(c, width=image_size, height=image_size)
                                                                 for c in cameras),
                             target_episodes=0, robot=dict(robot or {"backend": "sim_twin",
                                                                     "collector": "irevla rl-session"}))
        self.recorder = EpisodeRecorder(cfg)
        self._keys = {str(e.get("extra", {}).get("session_key")) for e in self.recorder.episodes}
        self.written = {s: 0 for s in SOURCES}

    def __len__(self) -> int:
        return len(self.recorder.episodes)

    def wants(self, source: str, key: str) -> bool:
        return source in self.sources and str(key) not in self._keys

    def write(self, trace: EpisodeTrace, source: str, key: str, action_label: str = "executed") -> Optional[dict]:
        """Record a successful episode; returns its index entry (None when not wanted or already there)."""
        if not trace.success or not self.wants(source, key):
            return None
        if not trace.images or len(trace.images) < len(trace.actions):
            raise ValueError(f"episode {key}: the trace has no images (LatentEnv(keep_images=True) is needed)")
        rec = self.recorder
        rec.start(task=trace.task, category=CATEGORY, instruction=trace.instruction, operator=self.operator,
                  extra={"source": source, "session_key": str(key), "seed": int(trace.seed),
                         "interventions": trace.interventions, "task_category": trace.category,
                         "action_label": action_label})
        t0_ns = time.time_ns()
        try:
            for i, action in enumerate(trace.actions):
                rec.add_step(trace.images[i], trace.robot[i], action, t0_ns + i * 100_000_000)
        except Exception:
            rec.discard()
            raise
        entry = rec.stop(success=True)
        self._keys.add(str(key))
        self.written[source] += 1
        return entry

    def close(self):
        return self.recorder.close()


def relabel_with_policy_mean(trace: EpisodeTrace, observations: Sequence[dict],
                             mean_actions: Callable[[dict], np.ndarray]) -> EpisodeTrace:
    """A copy of `trace` whose actions are `mean_actions(batch)` at its T visited observations (`observations`: the
    T+1 prepared observations the actor read), except where a human intervened."""
    n = len(trace.actions)
    if len(observations) < n:
        raise ValueError(f"relabel: {len(observations)} observations for {n} actions")
    if n == 0:
        return trace
    batch = {k: np.stack([np.asarray(o[k]) for o in observations[:n]]) for k in observations[0]}
    mean = np.asarray(mean_actions(batch), np.float32)
    if mean.shape != (n, np.asarray(trace.actions[0]).shape[-1]) or not np.isfinite(mean).all():
        raise ValueError(f"relabel: the policy gave actions of shape {mean.shape} (finite: "
                         f"{bool(np.isfinite(mean).all())}) for {n} steps")
    took = list(trace.intervened) + [False] * (n - len(trace.intervened))
    actions = [np.asarray(a, np.float32) if t else mean[i] for i, (a, t) in enumerate(zip(trace.actions, took))]
    return dataclasses.replace(trace, actions=actions)
