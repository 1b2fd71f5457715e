"""The ONE safety layer between every command source and every robot backend (pure numpy, no ROS).

Every backend (MuJoCo twin, real Franka) and every front end (ROS node, Gymnasium env) goes through this class, so
the sim and the real arm see exactly the same limits. It is deliberately small and stateful in only a few places:

* Validation: an action must be 7 finite numbers in [-1, 1]; an absolute target must be finite, with a (nearly)
  unit quaternion, inside the workspace. Anything else is REJECTED (never "fixed"), counted, and logged.
* Delta actions are applied to the CURRENT MEASURED pose (like SERL), not to the previous target: a blocked arm
  cannot wind a target up far away from itself. The resulting target is CLAMPED into the workspace box and the
  orientation limits; clamping is normal operation (a policy pushing against a wall) and is counted, not rejected.
* Absolute targets are approached at a bounded speed: `next_setpoint` (called at the server loop rate) moves the
  setpoint towards the target by at most max speed * dt, and never lets it lead the measured pose by more than
  one contract step (anti wind-up "leash").
* Watchdog: if no fresh accepted command arrived within `watchdog_timeout_s`, the setpoint freezes at the measured
  pose (clamped into the box) and any absolute-target approach in progress is cancelled.
* E-stop latch: `estop()` freezes the setpoint at the pose at that moment and rejects every command until
  `reset_estop()`.
* Defence in depth: `assert_in_box` is the last check on the final setpoint before it reaches a backend.

Orientation limits are roll/pitch/yaw of the rotation FROM the nominal (home, gripper-down) orientation TO the TCP
orientation, expressed in the nominal TCP frame: rel = conj(q_nominal) * q, rel = Rz(yaw) Ry(pitch) Rx(roll).
For a gripper-down nominal, yaw is the rotation about the vertical tool axis; roll/pitch tilt the gripper.

Not thread-safe: the caller (RobotServerCore) serializes access.
"""
from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

import numpy as np
import yaml

from robot_server.contract import ACTION_DIM, ActionContract
from robot_server.geometry import (Pose, pos_move_towards, quat_angle, quat_conj, quat_move_towards, quat_mul,
                                   quat_normalize, quat_to_rpy, rotvec_to_quat, rpy_to_quat)

LOG = logging.getLogger("robot_server.safety")

# Canonical rejection reasons (keys of SafetyLayer.stats["reasons"]).
R_ESTOP = "estop latched"
R_SHAPE = "wrong shape"
R_NONFINITE = "non-finite"
R_RANGE = "out of range"
R_QUAT = "bad quaternion"
R_WORKSPACE = "outside workspace"
R_ORIENTATION = "orientation limit"
R_STATE = "bad state"
R_STATE_OUTSIDE = "state outside workspace"


class SafetyViolation(RuntimeError):
    """A setpoint about to reach a backend failed the final check. Indicates a bug upstream."""


@dataclass(frozen=True)
class SafetyConfig:
    # Workspace box for the TCP position, robot base frame, metres.
    pos_min: tuple[float, float, float] = (0.25, -0.35, 0.005)
    pos_max: tuple[float, float, float] = (0.75, 0.35, 0.50)
    # Orientation limits (rad) around the nominal orientation (see module docstring for the convention).
    rpy_min: tuple[float, float, float] = (-0.5, -0.5, -1.57)
    rpy_max: tuple[float, float, float] = (0.5, 0.5, 1.57)
    # Nominal (gripper-down) orientation, wxyz. None: the home quaternion given to SafetyLayer at construction.
    nominal_quat: Optional[tuple[float, float, float, float]] = None
    # Per-step limits: the action contract (1.0 in an action -> this much per control step).
    control_hz: float = 10.0
    max_step_m: float = 0.02
    max_step_rad: float = 0.1
    # Command watchdog: hold once no fresh accepted command arrived for this long.
    watchdog_timeout_s: float = 0.150
    # Speed at which an absolute target is approached (default: one contract step per control period).
    max_target_speed_m_s: float = 0.2
    max_target_speed_rad_s: float = 1.0
    # Validation tolerances.
    action_tolerance: float = 1e-6  # |a_i| <= 1 + tol
    quat_norm_tolerance: float = 0.1  # quaternions with norm in [1 - tol, 1 + tol] are normalized, others rejected
    # If the MEASURED pose is further than this outside the limits, no pose is commanded at all (the backend holds
    # natively): clamping into the box would jump the setpoint by more than one contract step.
    state_margin_m: float = 0.02
    state_margin_rad: float = 0.15
    # Rejection logging: at most one line per reason per interval.
    log_interval_s: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.pos_min, float), np.asarray(self.pos_max, float)
        rlo, rhi = np.asarray(self.rpy_min, float), np.asarray(self.rpy_max, float)
        if lo.shape != (3,) or hi.shape != (3,) or rlo.shape != (3,) or rhi.shape != (3,):
            raise ValueError("pos_min/pos_max/rpy_min/rpy_max need 3 values each")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
            raise ValueError(f"workspace box needs finite pos_min < pos_max, got {lo} / {hi}")
        if not (np.all(rlo <= 0) and np.all(rhi >= 0)):
            raise ValueError("orientation limits must contain the nominal orientation (rpy_min <= 0 <= rpy_max)")
        if max(abs(rlo[1]), abs(rhi[1])) >= math.pi / 2 - 1e-3 or np.any(np.abs(np.r_[rlo, rhi]) > math.pi):
            raise ValueError("pitch limits must stay inside (-pi/2, pi/2) and roll/yaw inside [-pi, pi]")
        for name in ("control_hz", "max_step_m", "max_step_rad", "watchdog_timeout_s", "max_target_speed_m_s",
                     "max_target_speed_rad_s", "log_interval_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if self.nominal_quat is not None:
            q = np.asarray(self.nominal_quat, float)
            if q.shape != (4,) or abs(np.linalg.norm(q) - 1.0) > 1e-3:
                raise ValueError(f"nominal_quat must be a unit wxyz quaternion, got {self.nominal_quat}")

    @property
    def contract(self) -> ActionContract:
        return ActionContract(self.control_hz, self.max_step_m, self.max_step_rad)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SafetyConfig":
        if "safety" in d and len(d) == 1:  # allow a top-level `safety:` section
            d = d["safety"]
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown safety config keys: {sorted(unknown)}")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, (list, tuple)):
                kw[k] = tuple(float(x) for x in v)
            elif v is None:
                kw[k] = None
            else:
                kw[k] = float(v)
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str) -> "SafetyConfig":
        with open(path) as f:
            doc = yaml.safe_load(f) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a mapping")
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    """Outcome of filtering one command."""

    accepted: bool
    reason: str = "ok"  # canonical reason (R_*) when rejected
    detail: str = ""
    clamped: bool = False
    target: Optional[Pose] = None  # accepted goal, after clamping
    gripper: Optional[float] = None  # delta actions only: 0.0 open / 1.0 closed


@dataclass(frozen=True)
class Setpoint:
    """What the server sends to the backend this tick.

    pose None means no pose may be commanded (the measured state is invalid or far outside the limits); the
    server then asks the backend to hold natively.
    """

    pose: Optional[Pose]
    holding: bool
    estop: bool


@dataclass
class _Counters:
    accepted: int = 0
    rejected: int = 0
    clamped: int = 0
    holds: int = 0  # watchdog hold entries
    estops: int = 0
    reasons: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class _RateLimitedLog:
    """One log line per reason per interval; the number of suppressed repeats is reported with the next line."""

    def __init__(self, logger: logging.Logger, interval_s: float):
        self._logger, self._interval = logger, interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)

    def __call__(self, reason: str, detail: str) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            self._suppressed[reason] += 1
            return
        n = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        self._logger.warning("safety: rejected command: %s (%s)%s", reason, detail,
                             f" [{n} more suppressed]" if n else "")


def _as_pose(p) -> Pose:
    if isinstance(p, Pose):
        return p
    if hasattr(p, "ee_pos") and hasattr(p, "ee_quat"):  # RobotState / TwinState
        return Pose(np.asarray(p.ee_pos, float), np.asarray(p.ee_quat, float))
    pos, quat = p
    return Pose(np.asarray(pos, float), np.asarray(quat, float))


class SafetyLayer:
    def __init__(self, config: SafetyConfig = SafetyConfig(), nominal_quat=None,
                 logger: logging.Logger = LOG):
        self.config = config
        q = config.nominal_quat if config.nominal_quat is not None else nominal_quat
        if q is None:
            raise ValueError("SafetyLayer needs the nominal (home) orientation: pass nominal_quat or set it in config")
        self.nominal_quat = quat_normalize(np.asarray(q, float))
        self.contract = config.contract
        self._lo, self._hi = np.asarray(config.pos_min, float), np.asarray(config.pos_max, float)
        self._rlo, self._rhi = np.asarray(config.rpy_min, float), np.asarray(config.rpy_max, float)
        self._log = _RateLimitedLog(logger, config.log_interval_s)
        self._c = _Counters()
        self.last_rejection: str = ""
        self._goal: Optional[Pose] = None
        self._goal_is_target = False  # absolute target (rate limited) vs delta action (applied directly)
        self._last_cmd_t: Optional[float] = None
        self._last_tick_t: Optional[float] = None
        self._setpoint: Optional[Pose] = None
        self._holding = True  # nothing commanded yet
        self._last_measured: Optional[Pose] = None
        self._estop_reason: Optional[str] = None

    # ------------------------------------------------------------------ status
    @property
    def holding(self) -> bool:
        return self._holding or self._estop_reason is not None

    @property
    def estopped(self) -> bool:
        return self._estop_reason is not None

    @property
    def estop_reason(self) -> Optional[str]:
        return self._estop_reason

    @property
    def setpoint(self) -> Optional[Pose]:
        return None if self._setpoint is None else self._setpoint.copy()

    @property
    def stats(self) -> dict[str, Any]:
        c = self._c
        return {"accepted": c.accepted, "rejected": c.rejected, "clamped": c.clamped, "holds": c.holds,
                "estops": c.estops, "reasons": dict(c.reasons)}

    # ------------------------------------------------------------------ geometry of the limits
    def orientation_rpy(self, quat) -> np.ndarray:
        """Roll/pitch/yaw of quat relative to the nominal orientation (the quantities that are limited)."""
        return quat_to_rpy(quat_mul(quat_conj(self.nominal_quat), quat_normalize(quat)))

    def clamp(self, pose: Pose) -> tuple[Pose, bool]:
        """Nearest-by-axis pose inside the box and orientation limits; second value: whether anything changed."""
        pos = np.clip(pose.pos, self._lo, self._hi)
        quat = quat_normalize(pose.quat)
        rpy = self.orientation_rpy(quat)
        clipped_rpy = np.clip(rpy, self._rlo, self._rhi)
        changed = bool(np.any(pos != pose.pos))
        if np.any(clipped_rpy != rpy):
            quat = quat_normalize(quat_mul(self.nominal_quat, rpy_to_quat(clipped_rpy)))
            changed = True
        return Pose(pos, quat), changed

    def violation(self, pose: Pose) -> tuple[float, float]:
        """(metres outside the box, radians outside the orientation limits); (0, 0) inside."""
        clamped, _ = self.clamp(pose)
        return float(np.linalg.norm(pose.pos - clamped.pos)), quat_angle(pose.quat, clamped.quat)

    def in_box(self, pos, quat, tol_m: float = 1e-9, tol_rad: float = 1e-6) -> bool:
        pos, quat = np.asarray(pos, float), np.asarray(quat, float)
        if pos.shape != (3,) or quat.shape != (4,) or not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
            return False
        if abs(np.linalg.norm(quat) - 1.0) > 1e-6:
            return False
        if np.any(pos < self._lo - tol_m) or np.any(pos > self._hi + tol_m):
            return False
        rpy = self.orientation_rpy(quat)
        return bool(np.all(rpy >= self._rlo - tol_rad) and np.all(rpy <= self._rhi + tol_rad))

    def assert_in_box(self, pos, quat) -> None:
        """Final check on every setpoint before it reaches a backend (defence in depth)."""
        if not self.in_box(pos, quat):
            raise SafetyViolation(f"final setpoint outside the safety limits: pos={pos}, quat={quat}")

    # ------------------------------------------------------------------ commands
    def reject(self, reason: str, detail: str = "") -> Decision:
        """Count and log a rejection decided by a front end (e.g. a pose in the wrong frame), so that all
        rejections are counted in one place."""
        return self._reject(reason, detail)

    def _reject(self, reason: str, detail: str) -> Decision:
        self._c.rejected += 1
        self._c.reasons[reason] += 1
        self.last_rejection = reason
        self._log(reason, detail)
        return Decision(False, reason, detail)

    def _measured(self, current) -> Optional[Pose]:
        """Validated measured pose, or None when the state cannot be trusted."""
        try:
            p = _as_pose(current)
            pos, quat = np.asarray(p.pos, float).reshape(3), np.asarray(p.quat, float).reshape(4)
        except (TypeError, ValueError):
            return None
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(quat))):
            return None
        if abs(np.linalg.norm(quat) - 1.0) > 1e-3:
            return None
        return Pose(pos, quat_normalize(quat))

    def _usable(self, cur: Pose) -> bool:
        dm, dr = self.violation(cur)
        return dm <= self.config.state_margin_m and dr <= self.config.state_margin_rad

    def filter_delta(self, action, current_pose, now: float) -> Decision:
        """Validate a contract action and turn it into a goal relative to the CURRENT measured pose."""
        if self._estop_reason is not None:
            return self._reject(R_ESTOP, f"e-stop: {self._estop_reason}")
        try:
            a = np.asarray(action, dtype=float)
        except (TypeError, ValueError) as e:
            return self._reject(R_SHAPE, f"not numeric: {e}")
        if a.shape != (ACTION_DIM,):
            return self._reject(R_SHAPE, f"expected {ACTION_DIM} values, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            return self._reject(R_NONFINITE, f"action {a}")
        if np.any(np.abs(a) > 1.0 + self.config.action_tolerance):
            return self._reject(R_RANGE, f"max |a| = {np.max(np.abs(a)):.6g} > 1")
        cur = self._measured(current_pose)
        if cur is None:
            return self._reject(R_STATE, "measured pose is invalid")
        self._last_measured = cur
        if not self._usable(cur):
            return self._reject(R_STATE_OUTSIDE, f"measured pose {cur.pos} is outside the limits; home the arm")
        dpos, drot, gripper = self.contract.action_to_delta(a)
        raw = Pose(cur.pos + dpos, quat_normalize(quat_mul(rotvec_to_quat(drot), cur.quat)))
        goal, clamped = self.clamp(raw)
        self._accept(goal, is_target=False, now=now, clamped=clamped)
        return Decision(True, clamped=clamped, target=goal, gripper=gripper)

    def filter_target(self, pos, quat, now: float) -> Decision:
        """Validate an absolute TCP target (base frame); accepted targets are approached by next_setpoint."""
        if self._estop_reason is not None:
            return self._reject(R_ESTOP, f"e-stop: {self._estop_reason}")
        try:
            p = np.asarray(pos, dtype=float)
            q = np.asarray(quat, dtype=float)
        except (TypeError, ValueError) as e:
            return self._reject(R_SHAPE, f"not numeric: {e}")
        if p.shape != (3,) or q.shape != (4,):
            return self._reject(R_SHAPE, f"expected pos (3,) and quat (4,), got {p.shape} and {q.shape}")
        if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            return self._reject(R_NONFINITE, f"target pos={p} quat={q}")
        n = float(np.linalg.norm(q))
        if abs(n - 1.0) > self.config.quat_norm_tolerance:
            return self._reject(R_QUAT, f"quaternion norm {n:.6g} not within {self.config.quat_norm_tolerance} of 1")
        q = quat_normalize(q)
        if np.any(p < self._lo) or np.any(p > self._hi):
            return self._reject(R_WORKSPACE, f"target position {p} outside box {self._lo}..{self._hi}")
        rpy = self.orientation_rpy(q)
        if np.any(rpy < self._rlo) or np.any(rpy > self._rhi):
            return self._reject(R_ORIENTATION, f"target rpy {rpy} outside {self._rlo}..{self._rhi}")
        goal = Pose(p, q)
        self._accept(goal, is_target=True, now=now, clamped=False)
        return Decision(True, target=goal)

    def _accept(self, goal: Pose, is_target: bool, now: float, clamped: bool) -> None:
        self._goal, self._goal_is_target, self._last_cmd_t = goal, is_target, now
        self._c.accepted += 1
        if clamped:
            self._c.clamped += 1

    # ------------------------------------------------------------------ the loop
    def next_setpoint(self, current_pose, now: float) -> Setpoint:
        """Setpoint for this server tick. Runs the watchdog and the absolute-target rate limiter."""
        dt = 0.0 if self._last_tick_t is None else min(max(now - self._last_tick_t, 0.0), self.contract.dt)
        self._last_tick_t = now
        cur = self._measured(current_pose)
        if cur is not None:
            self._last_measured = cur

        if self._estop_reason is not None:
            return Setpoint(self._setpoint, holding=True, estop=True)

        if cur is None or not self._usable(cur):
            # No pose can be commanded safely; the backend must hold on its own. Cancel everything.
            self._goal, self._setpoint = None, None
            if not self._holding:
                self._c.holds += 1
            self._holding = True
            return Setpoint(None, holding=True, estop=False)

        fresh = (self._goal is not None and self._last_cmd_t is not None
                 and now - self._last_cmd_t <= self.config.watchdog_timeout_s)
        if not fresh:
            if not self._holding or self._setpoint is None:
                if not self._holding:
                    self._c.holds += 1
                self._holding = True
                self._goal = None  # cancels an absolute-target approach in progress
                self._setpoint, _ = self.clamp(cur)  # freeze at the measured pose
            return Setpoint(self._setpoint, holding=True, estop=False)

        self._holding = False
        goal = self._goal
        if self._goal_is_target:
            prev = self._setpoint if self._setpoint is not None else self.clamp(cur)[0]
            pos = pos_move_towards(prev.pos, goal.pos, self.config.max_target_speed_m_s * dt)
            quat = quat_move_towards(prev.quat, goal.quat, self.config.max_target_speed_rad_s * dt)
        else:
            pos, quat = goal.pos, goal.quat
        # Leash: never lead the measured pose by more than one contract step (no wind-up when blocked).
        pos = pos_move_towards(cur.pos, pos, self.contract.max_step_m)
        quat = quat_move_towards(cur.quat, quat, self.contract.max_step_rad)
        self._setpoint, _ = self.clamp(Pose(pos, quat))
        return Setpoint(self._setpoint, holding=False, estop=False)

    # ------------------------------------------------------------------ e-stop and external motions
    def estop(self, reason: str = "estop", current_pose=None) -> None:
        """Latch the e-stop: freeze the setpoint at the pose now; reject every command until reset_estop()."""
        cur = self._measured(current_pose) if current_pose is not None else self._last_measured
        if self._estop_reason is None:
            self._c.estops += 1
            self._setpoint = self.clamp(cur)[0] if cur is not None and self._usable(cur) else None
        self._estop_reason = str(reason) or "estop"
        self._goal = None
        self._holding = True
        LOG.error("safety: E-STOP latched: %s", self._estop_reason)

    def reset_estop(self) -> None:
        if self._estop_reason is not None:
            LOG.warning("safety: e-stop reset (was: %s)", self._estop_reason)
        self._estop_reason = None
        self.forget_motion()

    def forget_motion(self) -> None:
        """Drop goal and setpoint, e.g. after the backend moved the arm itself (home, scene reset).

        The next tick freezes at the measured pose and waits for a fresh command.
        """
        self._goal, self._setpoint, self._last_cmd_t = None, None, None
        self._holding = True
