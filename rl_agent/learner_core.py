"""The learner's pure core (no ROS): the 50/50 demo/online buffers, SAC updates, checkpoint and resume, the numbers
a learner reports. One engine for both ways of running stage 1:
- in-process (rl_agent/jobs/session.py): the session hands it each step (`start_episode`, `add_step`) and runs the
  updates it is owed (`train_owed`: `max_updates_per_transition` per online transition, like SERL's UTD ratio);
- over ROS 2 (rl_agent/learner_node.py): the node hands it actors' transition chunks (`ingest`: dedup through
  transport.Inbox, validation, NaN rejection with a clear log line) and trains as fast as it can (`train_step`).

Human takeovers (HIL-SERL) go into the demo buffer too, whichever way they arrive.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from rl_agent import transport as tp
from rl_agent.agent_setup import actor_params_of
from rl_agent.checkpoints import CheckpointStore, atomic_write_text, read_learner_files, write_learner_files


@dataclass
class LearnerConfig:
    push_every: int = 50  # updates between parameter pushes (SERL: 30-50)
    learning_starts: int = 100  # online transitions before the first update
    max_updates_per_transition: float = 0.0  # 0 = as fast as possible (SERL); else cap the update-to-data ratio
    online_capacity: int = 200_000
    demo_capacity: int = 20_000
    checkpoint_every_updates: int = 2000
    checkpoint_every_minutes: float = 3.0
    checkpoint_keep: int = 2
    seed: int = 0


def intervened_runs(flags: np.ndarray) -> Iterator[tuple[int, int]]:
    """[i, j) index ranges of consecutive True flags."""
    i, n = 0, len(flags)
    while i < n:
        if not flags[i]:
            i += 1
            continue
        j = i
        while j < n and flags[j]:
            j += 1
        yield i, j
        i = j


class LearnerCore:
    def __init__(self, agent, make_buffer: Callable[[int], Any], cfg: LearnerConfig, out_dir: Optional[Path] = None,
                 log: Callable[[str], None] = print):
        self.agent, self.cfg, self.log = agent, cfg, log
        self.online, self.demo = make_buffer(cfg.online_capacity), make_buffer(cfg.demo_capacity)
        self.inbox = tp.Inbox()
        self.rng = np.random.default_rng(cfg.seed)
        self.lock = threading.Lock()  # buffers: ingest (ROS thread or trainer) vs sample
        self.updates = 0
        self.credit = 0.0  # updates owed under the UTD cap, earned by online transitions once learning started
        self.params_version = 0
        self.rejected = 0
        self.received = {"transitions": 0, "demos": 0}
        self.last_info: dict = {}
        self.store = None if out_dir is None else CheckpointStore(Path(out_dir) / "checkpoints", cfg.checkpoint_keep)
        self._ckpt_at = (time.monotonic(), 0)
        self.batch_size = agent.config.update_batch_size
        self.latent_shape = tuple(agent.stored_latent_shape)

    # ------------------------------------------------------------------ data in
    def _earn(self, n_online: int) -> None:
        """Credit for `n_online` new online transitions (only those at or past learning_starts earn)."""
        cap = self.cfg.max_updates_per_transition
        after = len(self.online)
        if cap > 0 and after >= self.cfg.learning_starts:
            self.credit += cap * min(n_online, after - self.cfg.learning_starts + 1)

    def add_episode(self, kind: str, obs, actions, rewards, dones, intervened=None) -> None:
        """A whole episode (or chunk) of `kind` demos or transitions; intervened steps also go to the demo buffer."""
        with self.lock:
            if kind == tp.KIND_DEMOS:
                self.demo.insert_episode(obs, actions, rewards, dones)
            else:
                self.online.insert_episode(obs, actions, rewards, dones)
                self._earn(len(actions))
                if intervened is not None:
                    for i, j in intervened_runs(np.asarray(intervened, bool)):
                        self.demo.insert_episode(obs[i:j + 1], actions[i:j], rewards[i:j], dones[i:j])
        self.received[kind] += len(actions)

    def start_episode(self, obs) -> None:
        """Streaming (in-process): the first observation of an online episode."""
        with self.lock:
            self.online.start_episode(obs)

    def add_step(self, obs, action, reward: float, next_obs, done: bool, intervened: bool = False) -> None:
        """Streaming (in-process): one online transition after `start_episode` (or the previous step)."""
        with self.lock:
            if intervened:
                self.demo.insert_episode([obs, next_obs], np.asarray(action)[None],
                                         np.array([reward], np.float32), np.array([done]))
            self.online.add(action, reward, next_obs, done)
            self._earn(1)
        self.received[tp.KIND_TRANSITIONS] += 1

    def ingest(self, sender: str, kind: str, seq: int, fmt: str, data) -> bool:
        """One Blob from an actor. Returns True if it was new and stored."""
        if kind not in (tp.KIND_TRANSITIONS, tp.KIND_DEMOS):
            self.log(f"learner: ignored a Blob of kind {kind!r} from {sender} (expected transitions or demos)")
            return False
        if not self.inbox.accept(sender, kind, seq):
            return False  # a resend of something already taken
        try:
            if fmt != tp.FORMAT_NPZ:
                raise tp.TransportError(f"format {fmt!r}, expected {tp.FORMAT_NPZ!r}")
            chunk, _ = tp.decode_chunk(data, self.latent_shape)
        except tp.TransportError as exc:
            # Taken (acknowledged) anyway: a bad chunk never becomes good by resending it.
            self.rejected += 1
            self.log(f"learner: REJECTED {kind} chunk seq {seq} from {sender}: {exc} (nothing stored; "
                     f"{self.rejected} rejected so far)")
            return False
        self.add_episode(kind, tp.chunk_observations(chunk), chunk["actions"], chunk["rewards"], chunk["dones"],
                         chunk["intervened"] if kind == tp.KIND_TRANSITIONS else None)
        return True

    # ------------------------------------------------------------------ training
    def ready(self) -> bool:
        return len(self.demo) + len(self.online) > 0 and len(self.online) >= self.cfg.learning_starts

    def train_step(self) -> bool:
        """One update if there is data (and the UTD cap allows); True if it updated."""
        from rl_agent.buffers import sample_mixed
        if not self.ready():
            return False
        if self.cfg.max_updates_per_transition > 0:
            if self.credit < 1.0:
                return False
            self.credit -= 1.0
        with self.lock:
            batch, is_demo = sample_mixed(self.demo, self.online, self.batch_size, self.rng, return_sources=True)
        batch["is_demo"] = is_demo  # the actor's BC term (SACConfig.bc_weight) reads the demo rows
        self.agent, self.last_info = self.agent.update(batch)
        self.updates += 1
        return True

    def train_owed(self) -> Iterator[dict]:
        """Every update the UTD cap allows now (in-process: after each step); yields each update's info."""
        if self.cfg.max_updates_per_transition <= 0:
            raise ValueError("train_owed needs max_updates_per_transition > 0 (0 trains without end)")
        while self.train_step():
            yield self.last_info

    def due_push(self) -> bool:
        return self.updates > 0 and self.updates % self.cfg.push_every == 0

    def params_payload(self) -> tuple[int, bytes]:
        self.params_version += 1
        return self.params_version, tp.encode_params(actor_params_of(self.agent))

    def heartbeat(self, learner_id: str) -> dict:
        return {"role": "learner", "id": learner_id, "acks": self.inbox.watermarks(), "updates": self.updates,
                "latent_shape": list(self.latent_shape),
                "params_version": self.params_version, "online": len(self.online), "demo": len(self.demo),
                "rejected": self.rejected, "received": dict(self.received), "time": time.time()}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_due(self) -> bool:
        t, u = self._ckpt_at
        return self.store is not None and (self.updates - u >= self.cfg.checkpoint_every_updates
                                           or time.monotonic() - t >= 60 * self.cfg.checkpoint_every_minutes)

    def save_checkpoint(self, extra: Optional[dict] = None) -> Optional[Path]:
        """Agent, buffers and counters; `extra` is the caller's own state (the session's phase, episodes, ...),
        given back by `restore`."""
        if self.store is None:
            return None
        with self.lock:
            agent = self.agent
            state = {**(extra or {}), "updates": self.updates, "params_version": self.params_version,
                     "inbox": self.inbox.state_dict(), "received": self.received, "rejected": self.rejected,
                     "update_credit": self.credit, "sample_rng": self.rng.bit_generator.state}
            path = self.store.save(lambda d: write_learner_files(d, agent, self.online, self.demo), state)
        self._ckpt_at = (time.monotonic(), self.updates)
        return path

    def restore(self) -> Optional[dict]:
        """Load the newest checkpoint; returns its whole state (None: there is none)."""
        path = self.store.latest() if self.store is not None else None
        if path is None:
            return None
        state = json.loads((path / "state.json").read_text())
        self.agent, self.online, self.demo = read_learner_files(path, self.agent)
        self.inbox.load_state_dict(state.get("inbox", {}))
        self.updates, self.params_version = int(state["updates"]), int(state.get("params_version", 0))
        self.received = dict(state.get("received", self.received))
        self.rejected = int(state.get("rejected", 0))
        self.credit = float(state.get("update_credit", 0.0))
        if "sample_rng" in state:
            self.rng.bit_generator.state = state["sample_rng"]
        self._ckpt_at = (time.monotonic(), self.updates)
        self.log(f"learner: resumed from {path}: {self.updates} updates, params v{self.params_version}, "
                 f"online {len(self.online)}, demo {len(self.demo)}")
        state["path"] = str(path)
        return state

    # ------------------------------------------------------------------ reports
    def scalar_info(self) -> dict:
        """The last update's losses and the like, as plain floats (for TensorBoard)."""
        out = {}
        for k, v in (self.last_info or {}).items():
            try:
                out[k] = float(np.mean(np.asarray(v, dtype=float)))
            except (TypeError, ValueError):
                pass
        return out

    def write_summary(self, learner_id: str = "") -> dict:
        """out_dir/summary.json: what the learner did (a resumed run continues the counts from its checkpoint)."""
        doc = {"learner_id": learner_id, "updates": self.updates, "params_version": self.params_version,
               "online": len(self.online), "demo": len(self.demo), "received": dict(self.received),
               "rejected": self.rejected, "last_update": self.scalar_info(), "time": time.time()}
        if self.store is not None:
            atomic_write_text(self.store.root.parent / "summary.json", json.dumps(doc, indent=1))
        return doc
