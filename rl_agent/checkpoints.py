"""Checkpoints of the learning state, shared by the in-process session (rl_agent/jobs/session.py) and the ROS learner
(rl_agent/learner_node.py): CheckpointStore (ckpt_NNNNNN directories, each complete or absent: written into a
temporary directory, then renamed; LATEST names the newest) and the files a checkpoint holds beside its state.json
(agent.msgpack, online.npz, demo.npz).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

from rl_agent.files import atomic_open


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", fsync=False) as f:
        f.write(text)


class CheckpointStore:
    """out/checkpoints/ckpt_NNNNNN directories, each complete or absent (written to a temp dir, then renamed)."""

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, int(keep))

    def _complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob("ckpt_*") if p.is_dir() and (p / "state.json").is_file()
                      and not p.name.endswith(".tmp"))

    def latest(self) -> Optional[Path]:
        done = self._complete()
        return done[-1] if done else None

    def save(self, write: Callable[[Path], None], state: dict) -> Path:
        n = int(self.latest().name.split("_")[1]) + 1 if self.latest() else 0
        final = self.root / f"ckpt_{n:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".tmp", dir=self.root))
        try:
            write(tmp)
            (tmp / "state.json").write_text(json.dumps(state))  # last: its presence marks a complete checkpoint
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.root / "LATEST", final.name + "\n")
        for old in self._complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob("*.tmp"):  # leftovers of a checkpoint interrupted by a kill
            shutil.rmtree(stale, ignore_errors=True)
        return final


def write_learner_files(directory: Path, agent, online, demo) -> None:
    """The learning state a checkpoint holds beside its state.json (the session and the ROS learner share it)."""
    agent.save(directory / "agent.msgpack")
    online.save(directory / "online.npz")
    demo.save(directory / "demo.npz")


def read_learner_files(directory: Path, template):
    """-> (agent, online buffer, demo buffer) written by write_learner_files; `template` gives the agent's shapes."""
    from rl_agent.agent import SACAgent
    from rl_agent.buffers import LatentReplayBuffer
    return (SACAgent.load(directory / "agent.msgpack", template=template),
            LatentReplayBuffer.load(directory / "online.npz"), LatentReplayBuffer.load(directory / "demo.npz"))
