"""Pure mapping from raw device samples to the 7-D action contract (robot_server/contract.py).

    action = [dx, dy, dz, rx, ry, rz (axis-angle), gripper]  in [-1, 1];  gripper > 0 means CLOSE.

Nothing here touches hardware or the clock: mappers take a sample (and its time) and return a `TeleopCommand`.
The only state is the gripper latch (and, for the keyboard, which motion keys are still "held").

SpaceMouse default = SERL's mapping: axes [-y, x, z, -roll, -pitch, -yaw] (pyspacemouse legacy convention), the
left button (0) closes and the right button (1) opens the gripper. Keyboard default bindings: see DEFAULT_KEYS.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from teleop.devices import AXIS_NAMES, KeyboardSample, SpaceMouseSample

ACTION_DIM = 7
MOTION_NAMES = ("x", "y", "z", "rx", "ry", "rz")  # action dims 0..5
GRIPPER_COMMANDS = ("close", "open", "toggle", "none")
SERL_AXES = ("-y", "x", "z", "-roll", "-pitch", "-yaw")

# Key -> command. Motion commands are "+x" .. "-rz" (base frame; x forward, y left, z up); gripper commands
# "gripper_close" / "gripper_open" / "gripper_toggle"; anything "event:<name>" is passed through for the node
# (start / success / failure / discard / quit; task opens the task/instruction prompt).
DEFAULT_KEYS = {
    "w": "+x", "s": "-x", "a": "+y", "d": "-y", "r": "+z", "f": "-z",
    "up": "+x", "down": "-x", "left": "+y", "right": "-y", "pageup": "+z", "pagedown": "-z",
    "j": "+rx", "l": "-rx", "i": "+ry", "k": "-ry", "u": "+rz", "o": "-rz",
    "space": "gripper_toggle", "c": "gripper_close", "v": "gripper_open",
    "n": "event:start", "enter": "event:success", "backspace": "event:failure", "x": "event:discard",
    "q": "event:quit", "ctrl-c": "event:quit", "t": "event:task",
}


@dataclass(frozen=True)
class TeleopCommand:
    action: np.ndarray  # (7,) in [-1, 1]; action[6] = +1 closed / -1 open
    events: tuple[str, ...] = ()  # e.g. ("success",) from a bound key or button
    gripper_closed: bool = False
    moving: bool = False  # any motion axis non-zero
    gripper_changed: bool = False

    @property
    def active(self) -> bool:
        """The operator did something this step (motion, gripper change or an event)."""
        return self.moving or self.gripper_changed or bool(self.events)


def _parse_signed(spec: str, names: tuple[str, ...], what: str) -> tuple[float, Optional[int]]:
    s = spec.strip()
    if s in ("0", "none", ""):
        return 0.0, None
    sign = 1.0
    if s[0] in "+-":
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s not in names:
        raise ValueError(f"{what}: {spec!r} is not one of {list(names)} (optionally signed, or '0')")
    return sign, names.index(s)


def _deadzone(v: np.ndarray, dz: float) -> np.ndarray:
    if dz <= 0:
        return v
    mag = np.maximum(np.abs(v) - dz, 0.0) / (1.0 - dz)
    return np.sign(v) * mag


def _gripper_value(closed: bool) -> float:
    return 1.0 if closed else -1.0


# ------------------------------------------------------------------------------------------------ SpaceMouse
@dataclass(frozen=True)
class SpaceMouseConfig:
    device_name: str = ""  # pyspacemouse device name ("" = first one found)
    device_index: int = 0
    # Action dims 0..5 (dx, dy, dz, rx, ry, rz) <- signed device axis (x, y, z, roll, pitch, yaw) or "0".
    axes: tuple[str, ...] = SERL_AXES
    scale: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # per action dim, after the deadzone
    deadzone: float = 0.02  # |axis| below this reads as 0 (rescaled so the output stays continuous)
    buttons: tuple[str, ...] = ("close", "open")  # per button: close/open/toggle/none or event:<name>
    initial_gripper: str = "open"

    def __post_init__(self):
        if len(self.axes) != 6:
            raise ValueError(f"axes needs 6 entries (dx, dy, dz, rx, ry, rz), got {len(self.axes)}")
        for a in self.axes:
            _parse_signed(a, AXIS_NAMES, "axes")
        if len(self.scale) != 6 or not all(np.isfinite(self.scale)):
            raise ValueError(f"scale needs 6 finite numbers, got {self.scale}")
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f"deadzone must be in [0, 1), got {self.deadzone}")
        for b in self.buttons:
            if b not in GRIPPER_COMMANDS and not b.startswith("event:"):
                raise ValueError(f"button command {b!r}: use one of {GRIPPER_COMMANDS} or 'event:<name>'")
        if self.initial_gripper not in ("open", "closed"):
            raise ValueError(f"initial_gripper must be 'open' or 'closed', got {self.initial_gripper!r}")


class SpaceMouseMapper:
    """SpaceMouseSample -> TeleopCommand. Buttons act on their press edge; the gripper state is latched."""

    def __init__(self, config: SpaceMouseConfig = SpaceMouseConfig()):
        self.config = config
        parsed = [_parse_signed(a, AXIS_NAMES, "axes") for a in config.axes]
        self._M = np.zeros((6, 6))  # action[0:6] = M @ device_axes
        for i, (sign, j) in enumerate(parsed):
            if j is not None:
                self._M[i, j] = sign
        self._scale = np.asarray(config.scale, dtype=float)
        self.reset()

    def reset(self) -> None:
        self.gripper_closed = self.config.initial_gripper == "closed"
        self._prev_buttons: tuple[int, ...] = ()

    def map(self, sample: SpaceMouseSample) -> TeleopCommand:
        raw = np.array([sample.axis(n) for n in AXIS_NAMES], dtype=float)
        raw = np.where(np.isfinite(raw), raw, 0.0)
        raw = _deadzone(np.clip(raw, -1.0, 1.0), self.config.deadzone)
        motion = np.clip((self._M @ raw) * self._scale, -1.0, 1.0)
        events, was = [], self.gripper_closed
        for i, pressed in enumerate(sample.buttons):
            before = self._prev_buttons[i] if i < len(self._prev_buttons) else 0
            if pressed and not before and i < len(self.config.buttons):
                cmd = self.config.buttons[i]
                if cmd == "close":
                    self.gripper_closed = True
                elif cmd == "open":
                    self.gripper_closed = False
                elif cmd == "toggle":
                    self.gripper_closed = not self.gripper_closed
                elif cmd.startswith("event:"):
                    events.append(cmd[len("event:"):])
        self._prev_buttons = tuple(sample.buttons)
        action = np.empty(ACTION_DIM)
        action[:6] = motion
        action[6] = _gripper_value(self.gripper_closed)
        return TeleopCommand(action, tuple(events), self.gripper_closed, bool(np.any(motion != 0.0)),
                             self.gripper_closed != was)


# ------------------------------------------------------------------------------------------------ keyboard
@dataclass(frozen=True)
class KeyboardConfig:
    mode: str = "cbreak"  # terminal mode: cbreak (Ctrl-C stays SIGINT) or raw
    bindings: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_KEYS))
    translation_speed: float = 0.5  # fraction of the contract's max step (1.0 = 2 cm per step)
    rotation_speed: float = 0.5  # fraction of the contract's max rotation (1.0 = 0.1 rad per step)
    # A press keeps its axis moving this long. Terminals send presses and auto-repeats (~30/s after ~0.5 s), never
    # releases: a tap moves 1-2 control steps, a held key moves continuously once auto-repeat starts.
    hold_s: float = 0.15
    initial_gripper: str = "open"

    def __post_init__(self):
        for key, cmd in self.bindings.items():
            if cmd.startswith("event:") or cmd in ("gripper_close", "gripper_open", "gripper_toggle", "none"):
                continue
            _parse_signed(cmd, MOTION_NAMES, f"binding {key!r}")
            if cmd[0] not in "+-":
                raise ValueError(f"binding {key!r}: motion command {cmd!r} needs a sign (+x / -x)")
        for name in ("translation_speed", "rotation_speed"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not self.hold_s > 0:
            raise ValueError(f"hold_s must be > 0, got {self.hold_s}")
        if self.mode not in ("cbreak", "raw"):
            raise ValueError(f"mode must be 'cbreak' or 'raw', got {self.mode!r}")
        if self.initial_gripper not in ("open", "closed"):
            raise ValueError(f"initial_gripper must be 'open' or 'closed', got {self.initial_gripper!r}")


class KeyboardMapper:
    """KeyboardSample -> TeleopCommand. Unbound keys are ignored (reported in `last_unbound`)."""

    def __init__(self, config: KeyboardConfig = KeyboardConfig()):
        self.config = config
        self._motion: dict[str, tuple[int, float]] = {}
        for key, cmd in config.bindings.items():
            if cmd[:1] in "+-" and not cmd.startswith("event:"):
                sign, j = _parse_signed(cmd, MOTION_NAMES, key)
                speed = config.translation_speed if j < 3 else config.rotation_speed
                self._motion[key] = (j, sign * speed)
        self.reset()

    def reset(self) -> None:
        self.gripper_closed = self.config.initial_gripper == "closed"
        self._until: dict[str, float] = {}  # motion key -> time its effect ends
        self.last_unbound: tuple[str, ...] = ()

    def map(self, sample: KeyboardSample, now: Optional[float] = None) -> TeleopCommand:
        now = sample.t if now is None else now
        events, unbound, was = [], [], self.gripper_closed
        for key in sample.keys:
            cmd = self.config.bindings.get(key)
            if cmd is None:
                unbound.append(key)
            elif key in self._motion:
                self._until[key] = sample.t + self.config.hold_s
            elif cmd == "gripper_toggle":
                self.gripper_closed = not self.gripper_closed
            elif cmd == "gripper_close":
                self.gripper_closed = True
            elif cmd == "gripper_open":
                self.gripper_closed = False
            elif cmd.startswith("event:"):
                events.append(cmd[len("event:"):])
        self.last_unbound = tuple(unbound)
        motion = np.zeros(6)
        for key, until in list(self._until.items()):
            if until > now:
                j, v = self._motion[key]
                motion[j] += v
            else:
                del self._until[key]
        motion = np.clip(motion, -1.0, 1.0)
        action = np.empty(ACTION_DIM)
        action[:6] = motion
        action[6] = _gripper_value(self.gripper_closed)
        return TeleopCommand(action, tuple(events), self.gripper_closed, bool(np.any(motion != 0.0)),
                             self.gripper_closed != was)
