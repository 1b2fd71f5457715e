"""What the stage-1 session job (rl_agent/jobs/session.py) writes besides its checkpoints: the tqdm line and
out/progress.json, TensorBoard scalars (out/tb), the harvest of successful episodes, the success-rate plot and
summary.json's content. A mixin of Session (it reads the session's attributes); part of the job, not a library.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

from rl_agent.checkpoints import atomic_write_text
from rl_agent.harvest import relabel_with_policy_mean
from rl_agent.session_log import plot_success


def _fmt_s(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"



class SessionOutputs:
    """Progress, TensorBoard, plot, harvest and summary of rl_agent.jobs.session.Session."""

    def _read_progress(self) -> dict:
        try:
            return json.loads((self.out / "progress.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write_progress(self, **extra) -> None:
        s = self.state
        succ = s["successes"][-20:]
        doc = {"phase": s["phase"], "episodes": s["episodes"], "env_steps": s["env_steps"], "updates": s["updates"],
               "success_last20": (sum(succ) / len(succ)) if succ else None, "train_s": round(s["train_s"], 2),
               "online": len(self.online), "demo": len(self.demo), "time": time.time(), **extra}
        atomic_write_text(self.out / "progress.json", json.dumps(doc))

    def _harvest(self, trace, source: str, key: str, observations=None) -> None:
        if self.harvester is None or not self.harvester.wants(source, key):
            return
        label = "executed"
        if observations is not None and self.cfg.harvest.action_label == "policy_mean":
            trace = relabel_with_policy_mean(trace, observations, self.agent.eval_actions)
            label = "policy_mean"
        self.harvester.write(trace, source, key, action_label=label)

    def _make_bar(self, total, desc: str, unit: str, initial=0):
        if not self.cfg.log.progress:
            return None
        from tqdm import tqdm
        tty = sys.stderr.isatty()
        bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5 if tty else 10.0,
                   bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n:.0f}/{total:.0f} {unit}{postfix}")
        self._bar = bar
        return bar

    def _postfix(self, last20, window, done, total, unit) -> str:
        st = self.state
        succ = f"{sum(last20) / len(last20):.2f}" if last20 else "-"
        if len(window) >= 2:
            (t0, u0, e0), (t1, u1, e1) = window[0], window[-1]
            ups = (u1 - u0) / max(t1 - t0, 1e-9)
            utd = (u1 - u0) / max(e1 - e0, 1)
        else:
            ups, utd = 0.0, self.cfg.train.updates_per_step
        if unit == "s":
            elapsed, eta = done, max(0.0, total - done)
        else:
            elapsed = st["train_s"]
            eta = elapsed / max(done, 1e-9) * max(0.0, total - done)
        return (f"ep {st['episodes']} | succ@20 {succ} | upd/s {ups:.1f} | UTD {utd:.2f} | "
                f"buf demo {len(self.demo)} online {len(self.online)} | {_fmt_s(elapsed)} ETA {_fmt_s(eta)}")

    def _open_tensorboard(self) -> None:
        if not self.cfg.log.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops events a killed run logged after its last checkpoint (their steps are replayed).
        self._tb = SummaryWriter(str(self.out / "tb"), purge_step=self.state["env_steps"] or None)

    def _log_episode(self, trace, length: int, ret: float, ep_info: dict, last20) -> None:
        st = self.state
        if self._tb is None:
            return
        step = st["env_steps"]
        tb = self._tb
        tb.add_scalar("train/episode_success", float(trace.success), step)
        tb.add_scalar("train/success_last20", sum(last20) / max(len(last20), 1), step)
        tb.add_scalar("train/episode_return", ret, step)
        tb.add_scalar("train/episode_length", length, step)
        tb.add_scalar("train/interventions", trace.interventions, step)
        tb.add_scalar("train/intervened_steps", st["intervened_steps"][-1], step)
        tb.add_scalar("train/episodes", st["episodes"], step)
        tb.add_scalar("perf/updates", st["updates"], step)
        tb.add_scalar("perf/utd", st["updates"] / max(st["env_steps"], 1), step)
        tb.add_scalar("perf/env_steps_per_s", st["env_steps"] / max(st["train_s"], 1e-9), step)
        tb.add_scalar("perf/updates_per_s", st["updates"] / max(st["train_s"], 1e-9), step)
        tb.add_scalar("buffer/online", len(self.online), step)
        tb.add_scalar("buffer/demo", len(self.demo), step)
        for k, v in ep_info.items():
            tb.add_scalar(f"learner/{k}", float(np.mean(v)), step)

    def _plot(self) -> Optional[Path]:
        st = self.state
        lines = {f"deterministic eval {key}": st["eval"][key]["success_rate"] for key in ("before", "after")
                 if st["eval"].get(key, {}).get("success_rate") is not None}
        return plot_success(st["successes"], self.out / "success_rate.png", f"stage 1 RL on {self.cfg.task}", lines)

    def _summary(self, head_dir: Path) -> dict:
        st = self.state
        succ = st["successes"]
        train_s = max(st["train_s"], 1e-9)
        steps = max(st["env_steps"], 1)
        return {
            "task": self.cfg.task, "stage0_checkpoint": str(self.checkpoint), "out": str(self.out),
            "episodes": st["episodes"], "env_steps": st["env_steps"], "updates": st["updates"],
            "utd": st["updates"] / steps,
            "success_last20": float(np.mean(succ[-20:])) if succ else None,
            "train_success_rate": float(np.mean(succ)) if succ else None,
            "eval": st["eval"], "demos": st["demo_stats"],
            "harvested": dict(self.harvester.written) if self.harvester is not None else {},
            "harvest_dir": str(self.out / "harvest") if self.harvester is not None else None,
            "harvest_episodes": len(self.harvester) if self.harvester is not None else 0,
            "rl_head_ckpt": str(head_dir),
            "interventions": int(sum(st["interventions"])),
            "safety_stops": int(st.get("safety_stops", 0)),
            # Actions the safety layer rejected (LatentEnv passes them unclipped) and its counters, this process.
            "safety": {"rejected_actions": int(self.env.safety_rejections),
                       "rejected_by_reason": dict(self.env.safety_rejection_reasons),
                       "layer": self.env.safety_stats},
            "buffers": {"online": len(self.online), "demo": len(self.demo),
                        "bytes_per_transition": round(float(self.online.bytes_per_transition), 1),
                        "online_bytes_used": int(self.online.num_observations * self.online.bytes_per_observation),
                        "online_bytes_allocated": int(self.online.nbytes)},
            "timing": {"setup_s": round(self.setup_s, 2), "demo_s": round(st["demo_s"], 2),
                       "train_s": round(st["train_s"], 2), "eval_s": round(st["eval_s"], 2),
                       "env_steps_per_s": st["env_steps"] / train_s, "updates_per_s": st["updates"] / train_s,
                       "learner_updates_per_s": st["updates"] / max(st["update_s"], 1e-9),
                       "env_step_ms": 1e3 * st["env_s"] / steps, "encode_ms": 1e3 * st["encode_s"] / steps,
                       "update_ms": 1e3 * st["update_s"] / max(st["updates"], 1)},
            "resumes": st["resumes"], "lost_transitions_on_resume": st["lost_transitions"],
        }
