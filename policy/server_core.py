"""The policy server's logic, with no ROS in it (policy/server_node.py is the thin rclpy shell around it).

At every control tick (the contract's 10 Hz) the node hands the core the tick's scheduled time; the core then

1. checks the observation: one frame per camera the policy reads, each fresh (`max_frame_age_s`), all taken within
   `max_frame_skew_s` of each other, of the expected size (`image_size`), plus a fresh, finite robot state;
2. encodes the observation ONCE: frames that were already encoded (same stamps, same instruction, same weights)
   reuse their latents from the latent cache, keyed by (vlm_id, observation);
3. runs the action head on the latents and the current state;
4. checks the deadline: an action ready later than tick time + `deadline_budget_s` is NOT returned for publishing
   but counted (`late_actions`); the robot's command watchdog then holds the arm, which is safer than a stale
   action.

Nothing raises out of `tick`: a bad observation or a model failure yields a result with a reason and no action,
and the core keeps serving the next tick. A command whose observation stays invalid for `max_invalid_s` ends with
an error that names the reason; one that runs past its timeout ends with "timeout".

Weights swap atomically between ticks (`load_checkpoint`: a new VLA from stage 2, new vlm_id, latent cache
cleared; `load_head`: a new action head from stage 1, same vlm_id, cache kept): the new weights are loaded and
checked outside the lock, then a reference is swapped under it.

Every newly encoded observation is also available as a `LatentRecord` (obs id, vlm_id, stamp, instruction,
float16 latents, state) for the RL actor: with a command active, or in encode-only mode (`set_latent_instruction`)
while the RL actor drives the arm itself.
"""
from __future__ import annotations

import copy
import math
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch

from policy.config import POLICY_STATE_DIM, from_dict, load_yaml
from policy.latent_cache import LatentCache, encode_cached, observation_key
from policy.model import VLA, InputError, load_vla
from robot_server.contract import DEFAULT_CONTRACT, policy_state

PathLike = Union[str, Path]


@dataclass
class PolicyServerConfig:
    control_hz: float = DEFAULT_CONTRACT.control_hz
    # An action must be ready within this many seconds of its tick's scheduled time, or it is dropped (and
    # counted). Default: one control period, since the next tick's action would overtake it anyway.
    deadline_budget_s: float = 0.1
    max_frame_age_s: float = 0.35  # a camera frame older than this at the tick is stale (a stalled stream)
    max_frame_skew_s: float = 0.15  # the cameras' frames must be taken within this of each other
    max_state_age_s: float = 0.3
    # Expected camera frame [height, width]; [] accepts any size of at least 16 px. Default: the twin's cameras.
    image_size: list[int] = field(default_factory=lambda: [224, 224])
    default_timeout_s: float = 30.0  # a command's time budget when the goal gives none
    max_timeout_s: float = 600.0
    max_instruction_chars: int = 512  # the model's own token limit (max_text_tokens) applies as well
    # A command ends with an error when no valid observation arrived for this long (missing/stalled camera, ...).
    max_invalid_s: float = 2.0
    latent_cache_mb: int = 64  # in-memory latent cache (policy/latent_cache.py)

    def __post_init__(self):
        for name in ("control_hz", "deadline_budget_s", "max_frame_age_s", "max_frame_skew_s", "max_state_age_s",
                     "default_timeout_s", "max_timeout_s", "max_invalid_s"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)!r}")
        self.image_size = [int(v) for v in self.image_size]
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 16):
            raise ValueError(f"image_size must be [height, width] (>= 16 px each) or [], got {self.image_size}")
        if self.max_instruction_chars < 1 or self.latent_cache_mb < 1:
            raise ValueError("max_instruction_chars and latent_cache_mb must be >= 1")

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_hz

    @classmethod
    def from_yaml(cls, path: PathLike, section: Optional[str] = None) -> "PolicyServerConfig":
        return load_yaml(cls, path, section)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "PolicyServerConfig":
        return from_dict(cls, data)


class ObservationError(ValueError):
    """The observation cannot be used this tick (missing/stale/unsynchronized camera, bad image, bad state)."""


@dataclass
class LatentRecord:
    obs_id: int  # increasing per server; with vlm_id it keys the latent cache
    vlm_id: str
    stamp: float  # newest camera frame's stamp (wall-clock seconds)
    instruction: str
    latents: np.ndarray  # float16 [N, d]
    state: np.ndarray  # float32 [POLICY_STATE_DIM]: ee xyz, quat wxyz, gripper width


@dataclass
class Outcome:
    outcome: str  # success | failure | timeout | canceled | error
    message: str
    steps: int  # actions published
    elapsed_s: float


@dataclass
class TickResult:
    """What one tick produced. `action` is set only when it should be published now (status "action")."""
    status: str  # idle | encoded | action | late | invalid | ended
    action: Optional[np.ndarray] = None
    deadline: float = 0.0  # tick time + budget (wall clock)
    latency_s: float = 0.0  # tick time -> action ready
    reason: str = ""
    latent: Optional[LatentRecord] = None  # set when this tick encoded a NEW observation
    ended: Optional[Outcome] = None  # set when this tick ended the command (timeout / persistent invalid input)
    command_id: int = 0


@dataclass
class CommandStatus:
    command_id: int
    instruction: str
    task: str
    started: float
    timeout_s: float
    steps: int = 0  # actions handed out for publishing
    ticks: int = 0
    late_actions: int = 0
    invalid_ticks: int = 0
    last_error: str = ""
    last_valid: float = 0.0
    last_gripper: float = -1.0  # last commanded gripper value (<= 0 open): a hold action keeps it

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started)

    def progress(self, now: float) -> float:
        return min(1.0, self.elapsed(now) / self.timeout_s)


@dataclass
class _Frame:
    image: Optional[np.ndarray]
    stamp: float
    error: str = ""


@dataclass
class _State:
    vector: np.ndarray  # float32 [8]
    stamp: float


class PolicyServerCore:
    def __init__(self, vla: VLA, config: Optional[PolicyServerConfig] = None,
                 clock: Callable[[], float] = time.time, device: Union[str, torch.device] = "cpu"):
        self.config = config or PolicyServerConfig()
        self.clock = clock
        self.device = torch.device(device)
        self._model_lock = threading.Lock()  # held by a tick while it uses the model; swaps take it briefly
        self._input_lock = threading.Lock()  # frames and state
        self._vla = self._prepare(vla)
        self._vlm_id = vla.vlm_id()
        self._head_version = 0
        self.cameras: tuple[str, ...] = tuple(vla.cfg.cameras)
        # How errors name each camera (the node adds its topic: "front (/irevla/camera/front/image_raw)").
        self.camera_labels: dict[str, str] = {c: c for c in self.cameras}
        self._frames: dict[str, _Frame] = {}
        self._state: Optional[_State] = None
        self._cache = LatentCache(memory_bytes=self.config.latent_cache_mb << 20)  # keyed (vlm_id, observation)
        self._obs_counter = 0
        self._latest_latent: Optional[LatentRecord] = None
        self._command: Optional[CommandStatus] = None
        self._command_counter = 0
        self._latent_instruction: Optional[str] = None
        # Counters over the server's life (also reported in its status).
        self.counters: dict[str, int] = {"ticks": 0, "actions": 0, "late_actions": 0, "invalid_ticks": 0,
                                         "encodes": 0, "cache_hits": 0, "model_errors": 0, "frame_errors": 0,
                                         "swaps_checkpoint": 0, "swaps_head": 0}
        self.reasons: dict[str, int] = {}  # why ticks had no action: reason (camera names kept, numbers dropped)
        self.last_latency_s = float("nan")

    # ------------------------------------------------------------------ model
    def _prepare(self, vla: VLA) -> VLA:
        vla = vla.to(self.device).eval()
        for p in vla.parameters():
            p.requires_grad_(False)
        return vla

    @property
    def vla(self) -> VLA:
        return self._vla

    @property
    def vlm_id(self) -> str:
        return self._vlm_id

    @property
    def head_version(self) -> int:
        return self._head_version

    @classmethod
    def from_checkpoint(cls, path: PathLike, config: Optional[PolicyServerConfig] = None,
                        device: Union[str, torch.device, None] = None, dtype: Optional[str] = None,
                        **kw) -> "PolicyServerCore":
        """device None or "": the checkpoint's own setting (vla_config.yaml `device`, resolved: auto -> cuda when
        available; checkpoints without one run on cpu). dtype None or "": the checkpoint's backbone.dtype."""
        from policy.config import checkpoint_device, resolve_device
        ckpt = _checkpoint_dir(path)
        device = checkpoint_device(ckpt) if device in (None, "") else resolve_device(str(device))
        return cls(load_vla(ckpt, device=device, dtype=dtype or None), config, device=device, **kw)

    def load_checkpoint(self, path: PathLike) -> str:
        """Swap in a whole new VLA (stage 2 changed the VLM): new vlm_id, latent cache cleared. Returns the vlm_id.
        Raises FileNotFoundError / ValueError with a clear message; the old weights stay in use then."""
        vla = self._prepare(load_vla(_checkpoint_dir(path), device=self.device))
        if tuple(vla.cfg.cameras) != self.cameras:
            raise ValueError(f"checkpoint {path} reads cameras {list(vla.cfg.cameras)}, this server serves "
                             f"{list(self.cameras)}: start a new server for it")
        vlm_id = vla.vlm_id()
        with self._model_lock:
            self._vla, self._vlm_id = vla, vlm_id
            self._cache.drop_memory()  # latents of the old VLM can never be hit again
            self._head_version += 1
            self.counters["swaps_checkpoint"] += 1
        return vlm_id

    def load_head(self, path: PathLike) -> str:
        """Swap in a new action head (stage 1: RL changed only the head) from head.safetensors or a checkpoint
        directory. The VLM, its vlm_id and the cached latents stay. Returns the (unchanged) vlm_id."""
        from safetensors.torch import load_file
        p = Path(path)
        if p.is_dir():
            p = p / "head.safetensors"
        if not p.is_file():
            raise FileNotFoundError(f"no head weights at {p} (expected head.safetensors or a checkpoint directory)")
        state = load_file(str(p), device=str(self.device))
        head = copy.deepcopy(self._vla.head)
        try:
            head.load_state_dict(state)
        except RuntimeError as e:  # missing/unexpected keys, shape mismatch
            first = str(e).strip().splitlines()
            raise ValueError(f"{p} does not fit this model's head: {' '.join(first[:3])[:400]}") from None
        head.eval()
        for q in head.parameters():
            q.requires_grad_(False)
        with self._model_lock:
            self._vla.head = head
            self._head_version += 1
            self.counters["swaps_head"] += 1
        return self._vlm_id

    # ------------------------------------------------------------------ inputs
    def on_frame(self, camera: str, image, stamp: float) -> None:
        """A camera frame (uint8 HxWx3 RGB, wall-clock stamp). A bad frame replaces the camera's last one, so the
        policy never acts on an old good frame after a bad one arrived."""
        if camera not in self.cameras:
            return
        err = self._check_image(camera, image, stamp)
        with self._input_lock:
            self._frames[camera] = _Frame(None if err else image, float(stamp), err)
        if err:
            self.counters["frame_errors"] += 1

    def on_frame_error(self, camera: str, reason: str, stamp: float) -> None:
        """A frame that could not even be decoded (wrong encoding, truncated data)."""
        if camera not in self.cameras:
            return
        with self._input_lock:
            self._frames[camera] = _Frame(None, float(stamp), f"camera {self.camera_labels[camera]}: {reason}")
        self.counters["frame_errors"] += 1

    def _check_image(self, cam: str, image, stamp: float) -> str:
        camera = self.camera_labels[cam]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            desc = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
            return f"camera {camera}: expected an HxWx3 uint8 RGB image, got {desc}"
        h, w = image.shape[:2]
        if self.config.image_size and [h, w] != self.config.image_size:
            return (f"camera {camera}: image is {h}x{w} (HxW), expected {self.config.image_size[0]}x"
                    f"{self.config.image_size[1]}")
        if min(h, w) < 16:
            return f"camera {camera}: image of {h}x{w} pixels is too small"
        if not math.isfinite(stamp):
            return f"camera {camera}: frame has no valid stamp"
        return ""

    def on_state(self, ee_pos, ee_quat_wxyz, gripper_width: float, stamp: float) -> None:
        v = policy_state(ee_pos, ee_quat_wxyz, gripper_width)
        with self._input_lock:
            self._state = _State(v, float(stamp))

    def _observation(self, now: float) -> tuple[dict[str, _Frame], np.ndarray]:
        """The frames and state to use at `now`, or ObservationError naming what is wrong."""
        cfg = self.config
        with self._input_lock:
            frames = {c: self._frames.get(c) for c in self.cameras}
            state = self._state
        for cam, f in frames.items():
            if f is None:
                raise ObservationError(f"camera {self.camera_labels[cam]}: no frame received yet")
            if f.error:
                raise ObservationError(f.error)
            age = now - f.stamp
            if age > cfg.max_frame_age_s:
                raise ObservationError(f"camera {self.camera_labels[cam]}: stale frame ({age:.2f} s old > max_frame_age_s "
                                       f"{cfg.max_frame_age_s:.2f}); is the stream stalled?")
        stamps = [f.stamp for f in frames.values()]
        skew = max(stamps) - min(stamps)
        if skew > cfg.max_frame_skew_s:
            raise ObservationError(f"cameras not synchronized: frames {skew:.2f} s apart > max_frame_skew_s "
                                   f"{cfg.max_frame_skew_s:.2f}")
        if state is None:
            raise ObservationError("robot state: none received yet")
        if state.vector.shape != (POLICY_STATE_DIM,):
            raise ObservationError(f"robot state: expected {POLICY_STATE_DIM} values, got {state.vector.shape}")
        if not np.isfinite(state.vector).all():
            raise ObservationError("robot state contains NaN or inf")
        age = now - state.stamp
        if age > cfg.max_state_age_s:
            raise ObservationError(f"robot state: stale ({age:.2f} s old > max_state_age_s {cfg.max_state_age_s:.2f})")
        return frames, state.vector.copy()

    # ------------------------------------------------------------------ instructions and commands
    def check_instruction(self, instruction) -> str:
        """The normalized instruction, or InputError: not a string, empty, too many characters or tokens."""
        if not isinstance(instruction, str):
            raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
        text = " ".join(instruction.split())
        if not text:
            raise InputError("instruction is empty")
        if len(text) > self.config.max_instruction_chars:
            raise InputError(f"instruction is too long: {len(text)} characters > {self.config.max_instruction_chars}")
        return self._vla.check_instructions([text])[0]  # the model's token limit

    def check_timeout(self, timeout_s: float) -> float:
        t = float(timeout_s)
        if not math.isfinite(t) or t < 0:
            raise InputError(f"timeout_s must be >= 0 (0: the default {self.config.default_timeout_s:g} s), got {t}")
        if t > self.config.max_timeout_s:
            raise InputError(f"timeout_s {t:g} s exceeds max_timeout_s {self.config.max_timeout_s:g}")
        return t or self.config.default_timeout_s

    @property
    def command(self) -> Optional[CommandStatus]:
        return self._command

    def start(self, instruction: str, timeout_s: float = 0.0, task: str = "",
              now: Optional[float] = None) -> CommandStatus:
        """Begin a command (InputError for a bad instruction/timeout, RuntimeError when one is active)."""
        text = self.check_instruction(instruction)
        timeout = self.check_timeout(timeout_s)
        with self._model_lock:
            if self._command is not None:
                raise RuntimeError(f"busy: command {self._command.command_id} ({self._command.instruction!r}) is "
                                   "active")
            now = self.clock() if now is None else now
            self._command_counter += 1
            self._command = CommandStatus(self._command_counter, text, task, now, timeout, last_valid=now)
            return self._command

    def finish(self, outcome: str, message: str = "", now: Optional[float] = None,
               command_id: Optional[int] = None) -> Optional[Outcome]:
        """End the active command (if it is `command_id`, when given). Returns its outcome, or None if no such
        command is active. After this, no tick returns an action for it."""
        with self._model_lock:
            return self._finish_locked(outcome, message, self.clock() if now is None else now, command_id)

    def _finish_locked(self, outcome: str, message: str, now: float, command_id: Optional[int]) -> Optional[Outcome]:
        c = self._command
        if c is None or (command_id is not None and c.command_id != command_id):
            return None
        self._command = None
        return Outcome(outcome, message, c.steps, c.elapsed(now))

    def set_latent_instruction(self, instruction: Optional[str]) -> Optional[str]:
        """Encode-only mode: with no command active, encode observations with this instruction each tick and hand
        out the latents (the RL actor drives the arm itself). None or "" turns it off."""
        text = self.check_instruction(instruction) if instruction and instruction.strip() else None
        self._latent_instruction = text
        return text

    def latest_latent(self) -> Optional[LatentRecord]:
        return self._latest_latent

    # ------------------------------------------------------------------ the control tick
    def tick(self, now: float) -> TickResult:
        """One control tick at scheduled wall-clock time `now`. Never raises."""
        with self._model_lock:
            self.counters["ticks"] += 1
            cmd = self._command
            instruction = cmd.instruction if cmd is not None else self._latent_instruction
            deadline = now + self.config.deadline_budget_s
            if instruction is None:
                return TickResult("idle", deadline=deadline)
            cid = cmd.command_id if cmd is not None else 0
            if cmd is not None:
                cmd.ticks += 1
                if cmd.elapsed(now) >= cmd.timeout_s:
                    ended = self._finish_locked("timeout", f"no success within {cmd.timeout_s:g} s", now, cid)
                    return TickResult("ended", deadline=deadline, reason="timeout", ended=ended, command_id=cid)
            try:
                frames, state = self._observation(now)
                if self.clock() > deadline:  # the tick itself started too late: do not even compute
                    return self._late(cmd, deadline, self.clock() - now, None, cid)
                latents, record = self._encode(frames, state, instruction)
                if cmd is None:
                    return TickResult("encoded", deadline=deadline, latent=record)
                action = self._vla.act_from_latents(latents, state[None] if self._vla.cfg.head.use_state else None)[0]
                if not np.isfinite(action).all():
                    raise FloatingPointError("the policy produced a non-finite action")
            except ObservationError as e:
                return self._invalid(cmd, now, deadline, str(e), cid)
            except InputError as e:
                return self._invalid(cmd, now, deadline, f"policy input: {e}", cid)
            except Exception as e:  # noqa: BLE001 - a model failure must not stop the server
                self.counters["model_errors"] += 1
                return self._invalid(cmd, now, deadline, f"model error: {type(e).__name__}: {e}", cid)
            cmd.last_valid = now
            done = self.clock()
            latency = done - now
            self.last_latency_s = latency
            if done > deadline:
                return self._late(cmd, deadline, latency, record, cid)
            cmd.steps += 1
            cmd.last_gripper = float(action[6])
            self.counters["actions"] += 1
            return TickResult("action", action=action.astype(np.float64), deadline=deadline, latency_s=latency,
                              latent=record, command_id=cid)

    def _late(self, cmd, deadline, latency, record, cid) -> TickResult:
        self.counters["late_actions"] += 1
        if cmd is not None:
            cmd.late_actions += 1
        self._count_reason("late: missed the deadline")
        return TickResult("late", deadline=deadline, latency_s=latency, latent=record, command_id=cid,
                          reason=f"action ready {latency * 1e3:.1f} ms after its tick > deadline budget "
                                 f"{self.config.deadline_budget_s * 1e3:.1f} ms: not published")

    def _invalid(self, cmd, now, deadline, reason, cid) -> TickResult:
        self.counters["invalid_ticks"] += 1
        self._count_reason(reason)
        if cmd is None:
            return TickResult("invalid", deadline=deadline, reason=reason)
        cmd.invalid_ticks += 1
        cmd.last_error = reason
        if now - cmd.last_valid > self.config.max_invalid_s:
            ended = self._finish_locked("error", f"no usable observation for {now - cmd.last_valid:.1f} s: {reason}",
                                        now, cid)
            return TickResult("ended", deadline=deadline, reason=reason, ended=ended, command_id=cid)
        return TickResult("invalid", deadline=deadline, reason=reason, command_id=cid)

    def _count_reason(self, reason: str) -> None:
        key = re.sub(r"\d+\.\d+", "N", reason)[:160]  # drop the measured numbers so that reasons aggregate
        self.reasons[key] = self.reasons.get(key, 0) + 1

    def _encode(self, frames: dict[str, _Frame], state: np.ndarray, instruction: str):
        """Latents [1, N, d] of this observation, encoded once: frames already encoded (same stamps, instruction and
        vlm_id) come from the latent cache. Returns (latents, LatentRecord or None when it was a cache hit)."""
        obs_key = "live:" + ":".join(repr(frames[c].stamp) for c in self.cameras)
        hit = self._cache.contains(self._vlm_id, observation_key(obs_key, instruction))
        latents = encode_cached(self._vla, self._cache, [obs_key],
                                lambda idx: np.stack([frames[c].image for c in self.cameras])[None],
                                [instruction], vlm_id=self._vlm_id)
        if hit:
            self.counters["cache_hits"] += 1
            return latents, None
        self.counters["encodes"] += 1
        self._obs_counter += 1
        # The values the head reads are the cached float16 ones, exactly what the RL actor receives.
        record = LatentRecord(self._obs_counter, self._vlm_id, max(f.stamp for f in frames.values()), instruction,
                              latents[0].to(torch.float16).cpu().numpy(), state.astype(np.float32))
        self._latest_latent = record
        return latents, record

    # ------------------------------------------------------------------ reporting
    def status(self, now: Optional[float] = None) -> dict:
        now = self.clock() if now is None else now
        c = self._command
        cmd = None if c is None else {
            "id": c.command_id, "instruction": c.instruction, "task": c.task, "steps": c.steps,
            "late_actions": c.late_actions, "invalid_ticks": c.invalid_ticks, "last_error": c.last_error,
            "elapsed_s": round(c.elapsed(now), 3), "timeout_s": c.timeout_s}
        return {"vlm_id": self._vlm_id, "head_version": self._head_version, "cameras": list(self.cameras),
                "command": cmd, "latent_instruction": self._latent_instruction,
                "counters": dict(self.counters), "reasons": dict(self.reasons),
                "last_latency_ms": None if math.isnan(self.last_latency_s) else round(self.last_latency_s * 1e3, 2),
                "deadline_budget_ms": round(self.config.deadline_budget_s * 1e3, 2)}


def _checkpoint_dir(path: PathLike) -> Path:
    if path is None or not str(path).strip():
        raise FileNotFoundError("no checkpoint given: pass a VLA checkpoint directory (written by VLA.save / "
                                "irevla train)")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint directory {p} does not exist")
    if not (p / "vla_config.yaml").is_file():
        raise FileNotFoundError(f"{p} is not a VLA checkpoint (no vla_config.yaml)")
    return p
