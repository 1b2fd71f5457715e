"""The ROS learner's training loop (no ROS): take what the actors sent, update as fast as possible, push the
actor's parameters, checkpoint with the RL head handed back into a VLA checkpoint, log to TensorBoard.
rl_agent/learner_node.py queues messages and publishes; this runs in its training thread.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from rl_agent.learner_core import LearnerCore


class HandBack:
    """The RL head inside a whole VLA checkpoint (out_dir/rl_head_ckpt), written with every learner checkpoint: the
    policy server can load it at any time, stage 2 starts from it. A failure is logged; the next one tries again."""

    def __init__(self, core: LearnerCore, checkpoint: str, out_dir: Path, log=print, error=print):
        self.core, self.checkpoint, self.out_dir, self.log, self.error = core, checkpoint, Path(out_dir), log, error
        self._vla = None

    def __call__(self) -> None:
        core = self.core
        try:
            from rl_agent.bridge import hand_back
            if self._vla is None:
                from policy.model import load_vla
                self._vla = load_vla(self.checkpoint)
            path = hand_back(self._vla, core.agent, self.out_dir / "rl_head_ckpt",
                             {"rl_updates": core.updates, "params_version": core.params_version,
                              "stage0_checkpoint": str(self.checkpoint)})
            self.log(f"learner: RL head handed back into {path} ({core.updates} updates)")
        except Exception as exc:  # noqa: BLE001 - the session goes on; the next checkpoint tries again
            self.error(f"learner: hand-back failed: {type(exc).__name__}: {exc}")


def train_forever(core: LearnerCore, inbox: deque, wake: threading.Event, stop: threading.Event,
                  push: Callable[[int, bytes], None], checkpoint: Callable[[], None], tb, log=print) -> None:
    """Until `stop`: ingest every queued message (objects with sender, kind, seq, format, data), one update,
    a push every `push_every` updates, `checkpoint()` when due, TensorBoard every 2 s, a log line every 10 s."""
    last_report = last_tb = time.monotonic()
    u0 = tb_u0 = core.updates
    while not stop.is_set():
        while inbox:
            m = inbox.popleft()
            core.ingest(m.sender, m.kind, m.seq, m.format, m.data)
        trained = core.train_step()
        if trained and core.due_push():
            push(*core.params_payload())
        if trained and core.checkpoint_due():
            checkpoint()
        now = time.monotonic()
        if trained and now - last_tb >= 2.0:
            tb.scalars(core.updates, {**{f"learner/{k}": v for k, v in core.scalar_info().items()},
                                      "buffer/online": len(core.online), "buffer/demo": len(core.demo),
                                      "perf/updates_per_s": (core.updates - tb_u0) / (now - last_tb),
                                      "learner/params_version": core.params_version})
            last_tb, tb_u0 = now, core.updates
        if now - last_report >= 10.0:
            log(f"learner: {core.updates} updates ({(core.updates - u0) / (now - last_report):.1f}/s), params "
                f"v{core.params_version}, online {len(core.online)}, demo {len(core.demo)}, "
                f"received {core.received}, rejected {core.rejected}")
            last_report, u0 = now, core.updates  # also while waiting for data: what it has received so far
        if not trained:
            wake.wait(0.05)
            wake.clear()
