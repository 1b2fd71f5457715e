"""Successful stage-1 trajectories -> the expert-set format (one MCAP episode per trajectory + index.jsonl), written
by teleop.recorder.EpisodeRecorder exactly as `irevla collect` and the teleop recorder write theirs, so stage 2
reads them with teleop.dataset like any expert data.

Episodes are written as they succeed (crash-safe: a SIGKILL loses none already written); each carries
extra = {"source": "rl" | "vla_demo" | "expert_demo", "session_key": ..., "seed", "interventions",
"task_category"}. A key that is already in the dataset is not written again, so a resumed session that replays an
episode number (its checkpoint was older) keeps the first copy.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional

from rl_agent.env import EpisodeTrace

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

    def write(self, trace: EpisodeTrace, source: str, key: str) -> Optional[dict]:
        """Record a successful episode; returns its index entry (None when not wanted or already there)."""
        if not trace.success or not self.wants(source, key):
            return None
        if not trace.images or len(trace.images) < len(trace.actions):
            raise ValueError(f"episode {key}: the trace has no images (LatentEnv(keep_images=True) is needed)")
        rec = self.recorder
        rec.start(task=trace.task, category=CATEGORY, instruction=trace.instruction, operator=self.operator,
                  extra={"source": source, "session_key": str(key), "seed": int(trace.seed),
                         "interventions": trace.interventions, "task_category": trace.category})
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
