"""Actor <-> learner transport over ROS 2 (irevla_interfaces/msg/Blob): names, QoS, payload codecs, and the pure
delivery protocol that makes each side survive the other's death. No ROS in the protocol classes (tested alone);
rl_agent/actor_node.py and learner_node.py are the thin ROS shells.

Topics (all Blob; `sender` = the node's id, `seq` increases per sender and kind):
    /irevla/rl/transitions     actor -> learner  kind "transitions" | "demos", format "npz"   (DATA_QOS)
    /irevla/rl/params          learner -> actor  kind "params", format "flax-msgpack", seq = params version
                                                 (PARAMS_QOS: latched, a restarted actor gets the newest at once)
    /irevla/rl/learner_status  learner -> actor  kind "heartbeat", format "json" (acks + counters) (HEARTBEAT_QOS)
    /irevla/rl/actor_status    actor -> learner  kind "heartbeat", format "json"                   (HEARTBEAT_QOS)
Services (std_srvs/Trigger, on the actor): /irevla/rl/mark_success, /irevla/rl/mark_failure (operator reward).

Delivery (at least once, deduplicated): the actor keeps every chunk it sent in a bounded `Outbox` until the
learner's heartbeat acknowledges it (a per-sender, per-kind watermark: every seq <= W was taken). Unacked chunks are
resent, oldest first, once the learner is heard from and the chunk's last send is `resend_after_s` old -- so
chunks sent while the learner was dead (or restarting) arrive when it is back. Demo chunks are retained even after
their ack: a learner restarted WITHOUT a checkpoint reports no demo watermark and gets all demos again. The
actor's heartbeat carries, per transition stream, the seq below which it holds nothing any more (`floors`), so a
fresh or restored learner skips what is gone instead of waiting for it. The learner's `Inbox` drops duplicates.
When the outbox is over its byte budget the oldest transitions are dropped (counted and reported), never demos.
"""
from __future__ import annotations

import io
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

NS = "/irevla/rl"
TOPIC_TRANSITIONS = f"{NS}/transitions"
TOPIC_PARAMS = f"{NS}/params"
TOPIC_LEARNER_STATUS = f"{NS}/learner_status"
TOPIC_ACTOR_STATUS = f"{NS}/actor_status"
SRV_MARK_SUCCESS = f"{NS}/mark_success"
SRV_MARK_FAILURE = f"{NS}/mark_failure"

KIND_TRANSITIONS, KIND_DEMOS, KIND_PARAMS, KIND_HEARTBEAT = "transitions", "demos", "params", "heartbeat"
FORMAT_NPZ, FORMAT_FLAX, FORMAT_JSON = "npz", "flax-msgpack", "json"
CHUNK_KEYS = ("latents", "state", "actions", "rewards", "dones", "intervened")


class TransportError(ValueError):
    """A payload that cannot be used (bad encoding, shapes, NaN/inf): rejected with this message."""


def qos_profiles(heartbeat_period_s: float = 0.5):
    """(DATA_QOS, PARAMS_QOS, HEARTBEAT_QOS). The heartbeat's deadline is 4 periods: a side that misses it gets a
    deadline event and says so (each side also measures the silence itself, so no event is needed for safety)."""
    from rclpy.duration import Duration
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    data = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=64, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)
    params = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)
    heartbeat = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.VOLATILE,
                           deadline=Duration(nanoseconds=int(4 * heartbeat_period_s * 1e9)))
    return data, params, heartbeat


# ------------------------------------------------------------------------------------------------ payloads
def encode_chunk(chunk: dict, meta: Optional[dict] = None) -> bytes:
    """A run of T consecutive transitions of one episode -> npz bytes. chunk: latents [T+1, N, d] (stored float16),
    state [T+1, 8], actions [T, 7], rewards [T], dones [T], intervened [T] (optional). Observation t+1 is the next
    observation of transition t, so T transitions carry T+1 observations (no latent is sent twice)."""
    arrays = {"latents": np.asarray(chunk["latents"], np.float16),
              "state": np.asarray(chunk["state"], np.float32),
              "actions": np.asarray(chunk["actions"], np.float32),
              "rewards": np.asarray(chunk["rewards"], np.float32),
              "dones": np.asarray(chunk["dones"], np.uint8),
              "intervened": np.asarray(chunk.get("intervened", np.zeros(len(chunk["actions"]))), np.uint8),
              "meta": np.frombuffer(json.dumps(meta or {}).encode(), np.uint8)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_chunk(data: bytes, latent_shape: Optional[tuple[int, int]] = None) -> tuple[dict, dict]:
    """npz bytes -> (chunk, meta). Raises TransportError naming the problem (format, shapes, NaN/inf)."""
    try:
        with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise TransportError(f"not an npz transition chunk ({type(exc).__name__}: {exc})") from None
    missing = [k for k in CHUNK_KEYS if k not in arrays]
    if missing:
        raise TransportError(f"transition chunk lacks {missing}")
    try:
        meta = json.loads(arrays.pop("meta").tobytes().decode()) if "meta" in arrays else {}
    except ValueError:
        raise TransportError("transition chunk metadata is not JSON") from None
    lat, st, act = arrays["latents"], arrays["state"], arrays["actions"]
    t = act.shape[0] if act.ndim == 2 else -1
    if t < 1 or act.shape != (t, 7):
        raise TransportError(f"actions must be [T>=1, 7], got {act.shape}")
    if lat.ndim != 3 or lat.shape[0] != t + 1:
        raise TransportError(f"latents must be [T+1={t + 1}, N, d], got {lat.shape}")
    if latent_shape is not None and tuple(lat.shape[1:]) != tuple(latent_shape):
        raise TransportError(f"latents are {tuple(lat.shape[1:])} per observation, this learner expects "
                             f"{tuple(latent_shape)} (a different VLA?)")
    if st.ndim != 2 or st.shape[0] != t + 1:
        raise TransportError(f"state must be [T+1={t + 1}, S], got {st.shape}")
    for k in ("rewards", "dones", "intervened"):
        if arrays[k].shape != (t,):
            raise TransportError(f"{k} must be [T={t}], got {arrays[k].shape}")
    for k in ("latents", "state", "actions", "rewards"):
        bad = ~np.isfinite(arrays[k].reshape(arrays[k].shape[0], -1)).all(axis=1)
        if bad.any():
            raise TransportError(f"{k} contain NaN/inf (rows {np.flatnonzero(bad)[:8].tolist()})")
    if np.abs(act).max() > 1.0 + 1e-5:
        raise TransportError(f"actions outside [-1, 1] (max |a| = {float(np.abs(act).max()):.3f})")
    arrays["dones"] = arrays["dones"].astype(bool)
    arrays["intervened"] = arrays["intervened"].astype(bool)
    return arrays, meta


def encode_params(params: Any) -> bytes:
    from flax import serialization
    return serialization.msgpack_serialize(_to_numpy_tree(params))


def decode_params(data: bytes) -> Any:
    from flax import serialization
    try:
        return serialization.msgpack_restore(bytes(data))
    except Exception as exc:
        raise TransportError(f"params do not decode as flax msgpack ({type(exc).__name__}: {exc})") from None


def _to_numpy_tree(tree: Any) -> Any:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_numpy_tree(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return {str(i): _to_numpy_tree(v) for i, v in enumerate(tree)}
    return np.asarray(tree)


def encode_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def decode_json(data: bytes) -> dict:
    try:
        out = json.loads(bytes(data).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise TransportError(f"heartbeat is not JSON ({exc})") from None
    if not isinstance(out, dict):
        raise TransportError("heartbeat must be a JSON object")
    return out


# ------------------------------------------------------------------------------------------------ protocol
@dataclass
class _Pending:
    kind: str
    seq: int
    payload: bytes
    last_sent: float
    sends: int = 0


class Outbox:
    """Actor side: numbered chunks kept until acknowledged (demos: kept for good), resent when due."""

    def __init__(self, max_bytes: int = 256 << 20, resend_after_s: float = 3.0, retain_kinds=(KIND_DEMOS,)):
        self.max_bytes, self.resend_after_s = int(max_bytes), float(resend_after_s)
        self.retain_kinds = tuple(retain_kinds)
        self._items: "OrderedDict[tuple[str, int], _Pending]" = OrderedDict()
        self._next: dict[str, int] = {}
        self._acked: dict[str, int] = {}
        self.bytes = 0
        self.dropped = 0  # transition chunks dropped because the outbox was full
        self.resent = 0

    def add(self, kind: str, payload: bytes, now: Optional[float] = None) -> int:
        seq = self._next.get(kind, 0) + 1
        self._next[kind] = seq
        self._items[(kind, seq)] = _Pending(kind, seq, payload, now if now is not None else time.monotonic(), 1)
        self.bytes += len(payload)
        while self.bytes > self.max_bytes:
            victim = next((k for k, p in self._items.items() if p.kind not in self.retain_kinds), None)
            if victim is None or victim == (kind, seq):
                break
            self.bytes -= len(self._items.pop(victim).payload)
            self.dropped += 1
        return seq

    def ack(self, kind: str, watermark: Optional[int]) -> None:
        """The learner holds every `kind` chunk with seq <= watermark."""
        if watermark is None:
            return
        self._acked[kind] = int(watermark)
        if kind in self.retain_kinds:
            return
        for key in [k for k in self._items if k[0] == kind and k[1] <= watermark]:
            self.bytes -= len(self._items.pop(key).payload)

    def due(self, watermarks: dict, now: Optional[float] = None, max_bytes: int = 32 << 20) -> list[_Pending]:
        """Chunks to (re)send now, oldest first: not covered by the learner's `watermarks` ({kind: W or None}) and
        last sent `resend_after_s` ago. Marks them sent."""
        now = now if now is not None else time.monotonic()
        out, budget = [], max_bytes
        for p in self._items.values():
            w = watermarks.get(p.kind)
            if w is not None and p.seq <= w:
                continue
            if now - p.last_sent < self.resend_after_s:
                continue
            if budget < len(p.payload) and out:
                break
            budget -= len(p.payload)
            p.last_sent, p.sends = now, p.sends + 1
            self.resent += 1
            out.append(p)
        return out

    def floor(self, kind: str) -> int:
        """Every `kind` chunk with seq <= floor is settled here (acknowledged or dropped): the learner may skip them."""
        held = [seq for (k, seq) in self._items if k == kind]
        return (min(held) if held else self._next.get(kind, 0) + 1) - 1

    def pending(self, kind: Optional[str] = None) -> int:
        return sum(1 for k, p in self._items.items() if (kind is None or p.kind == kind)
                   and p.seq > self._acked.get(p.kind, 0))

    def sent(self, kind: str) -> int:
        return self._next.get(kind, 0)


class Inbox:
    """Learner side: which (sender, kind, seq) were taken; the watermark per (sender, kind) is what it acks.

    Every stream starts at watermark 0. The actor's heartbeat says from which seq on it still holds its chunks
    (`floors`): whatever is below was acknowledged earlier (to this learner before a restart, or to another one) and
    will never come again, so `skip_to` moves the watermark up to it. Chunks that arrive above a gap are stored at
    once and counted when the gap closes (resends arrive oldest first). Thread-safe."""

    def __init__(self):
        self._w: dict[tuple[str, str], int] = {}
        self._above: dict[tuple[str, str], set] = {}
        self._lock = threading.Lock()
        self.duplicates = 0
        self.accepted = 0

    def _advance(self, key) -> None:
        w, above = self._w[key], self._above[key]
        while w + 1 in above:
            w += 1
            above.discard(w)
        self._w[key] = w

    def accept(self, sender: str, kind: str, seq: int) -> bool:
        """True if this chunk is new (and now counted as taken); False for a duplicate."""
        key, seq = (sender, kind), int(seq)
        with self._lock:
            self._w.setdefault(key, 0)
            above = self._above.setdefault(key, set())
            if seq <= self._w[key] or seq in above:
                self.duplicates += 1
                return False
            above.add(seq)
            self._advance(key)
            self.accepted += 1
            return True

    def skip_to(self, sender: str, kind: str, floor: int) -> None:
        """Everything of this stream with seq <= floor is settled (the sender no longer holds it)."""
        key = (sender, kind)
        with self._lock:
            self._w.setdefault(key, 0)
            above = self._above.setdefault(key, set())
            if int(floor) > self._w[key]:
                self._w[key] = int(floor)
                above.difference_update({s for s in above if s <= floor})
                self._advance(key)

    def watermarks(self, sender: Optional[str] = None) -> dict:
        """{sender: {kind: W}} (or {kind: W} for one sender)."""
        out: dict = {}
        with self._lock:
            for (s, k), w in self._w.items():
                out.setdefault(s, {})[k] = w
        return out.get(sender, {}) if sender is not None else out

    def state_dict(self) -> dict:
        with self._lock:
            return {"w": [[s, k, w] for (s, k), w in self._w.items()],
                    "above": [[s, k, sorted(v)] for (s, k), v in self._above.items()]}

    def load_state_dict(self, d: dict) -> None:
        with self._lock:
            self._w = {(s, k): int(w) for s, k, w in d.get("w", [])}
            self._above = {(s, k): set(v) for s, k, v in d.get("above", [])}
            for key in self._w:
                self._above.setdefault(key, set())


class Liveness:
    """When did we last hear from the other side; says so once when it goes silent and when it comes back."""

    def __init__(self, timeout_s: float = 3.0, clock=time.monotonic):
        self.timeout_s, self._clock = float(timeout_s), clock
        self.last: Optional[float] = None
        self.silent_reported = False
        self.outages = 0

    def heard(self) -> Optional[float]:
        """Record a message; returns the silence it ends (s) if the other side had been reported silent."""
        now = self._clock()
        ended = (now - self.last) if (self.silent_reported and self.last is not None) else None
        if self.silent_reported:
            self.silent_reported = False
        self.last = now
        return ended

    def silence(self) -> Optional[float]:
        return None if self.last is None else self._clock() - self.last

    @property
    def alive(self) -> bool:
        s = self.silence()
        return s is not None and s < self.timeout_s

    def newly_silent(self) -> bool:
        """True once per outage, when the silence first exceeds the timeout."""
        s = self.silence()
        if s is not None and s >= self.timeout_s and not self.silent_reported:
            self.silent_reported = True
            self.outages += 1
            return True
        return False


class ChunkBuilder:
    """Actor side: collects one episode's steps and cuts them into chunks of at most `chunk_steps` transitions
    (each chunk carries its T+1 observations)."""

    def __init__(self, chunk_steps: int = 10):
        self.chunk_steps = int(chunk_steps)
        self._obs: list = []
        self._rows: list = []

    def start(self, obs: dict) -> None:
        self._obs, self._rows = [obs], []

    def add(self, action, reward: float, next_obs: dict, done: bool, intervened: bool = False) -> Optional[dict]:
        """Add a step; returns a chunk when `chunk_steps` are full."""
        if not self._obs:
            raise RuntimeError("ChunkBuilder.add before start()")
        self._rows.append((np.asarray(action, np.float32), float(reward), bool(done), bool(intervened)))
        self._obs.append(next_obs)
        return self.flush() if len(self._rows) >= self.chunk_steps else None

    def flush(self) -> Optional[dict]:
        """The steps not sent yet as a chunk (None if none); the last observation starts the next chunk."""
        if not self._rows:
            return None
        chunk = {"latents": np.stack([o["latents"] for o in self._obs]).astype(np.float16),
                 "state": np.stack([o["state"] for o in self._obs]).astype(np.float32),
                 "actions": np.stack([r[0] for r in self._rows]),
                 "rewards": np.array([r[1] for r in self._rows], np.float32),
                 "dones": np.array([r[2] for r in self._rows], bool),
                 "intervened": np.array([r[3] for r in self._rows], bool)}
        self._obs, self._rows = [self._obs[-1]], []
        return chunk


def chunk_observations(chunk: dict) -> list[dict]:
    """A decoded chunk's T+1 observations as the list of {"latents", "state"} dicts the buffers take."""
    return [{"latents": chunk["latents"][i], "state": chunk["state"][i]} for i in range(len(chunk["latents"]))]
