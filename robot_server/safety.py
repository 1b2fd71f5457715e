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
* Home / reset / recover are motions too and have their entry here: `filter_home` checks a backend's home (a TCP
  pose, or joint angles through the arm's forward kinematics) against the same limits before anything moves, and
  a Cartesian home is then streamed by `next_setpoint` like an absolute target (exempt from the watchdog while the
  server drives it; the server forgets it when the motion ends). `check_home` is the same check without counting,
  for configs at load time.

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
from robot_server.geometry import (Pose, matrix_to_quat, pos_move_towards, quat_angle, quat_conj, quat_move_towards,
                                   quat_mul, quat_normalize, quat_to_rpy, rotvec_to_quat, rpy_to_quat)
from robot_server.kinematics import franka_fk

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
R_HOME = "home outside workspace"


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
class HomeTarget:
    """Where a backend's home motion goes; `SafetyLayer.filter_home` checks it before anything moves.

    Cartesian (`pos` + `quat`, base frame, wxyz; the sim twin and franka_ros2): RobotServerCore streams it through
    the layer like an absolute target, at `speed_m_s` / `speed_rad_s` (never faster than the layer's target speed),
    until the measured TCP is within `tolerance_m` / `tolerance_rad` of it, or fails after `timeout_s`.
    Joint space (`q`, rad; libfranka and panda-python): the backend's own planned joint motion, allowed only when
    the forward kinematics of `q` (robot_server/kinematics.py, with `f_t_ee` = flange -> TCP, 16 values column
    major as libfranka reports it; None: the Franka Hand) put the TCP inside the limits.
    `source` names where the home comes from (the config field) in every message about it.
    """

    pos: Optional[tuple[float, ...]] = None
    quat: Optional[tuple[float, ...]] = None
    q: Optional[tuple[float, ...]] = None
    f_t_ee: Optional[tuple[float, ...]] = None
    source: str = "home"
    speed_m_s: float = 0.1
    speed_rad_s: float = 0.5
    tolerance_m: float = 0.005
    tolerance_rad: float = 0.02
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        cartesian = self.pos is not None or self.quat is not None
        if cartesian == (self.q is not None) or (cartesian and (self.pos is None or self.quat is None)):
            raise ValueError("a home is either a TCP pose (pos and quat) or joint angles (q)")
        for name in ("speed_m_s", "speed_rad_s", "tolerance_m", "tolerance_rad", "timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{self.source}: {name} must be a positive number, got {v!r}")

    @property
    def joint_space(self) -> bool:
        return self.q is not None


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
    homes: int = 0  # home motions allowed (filter_home accepted)
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


def _real_array(x) -> tuple[Optional[np.ndarray], str]:
    """(float array, "") for an array-like of real numbers (ints or floats), else (None, why). Never raises: strings
    that look like numbers, booleans, complex numbers, objects and ragged nests are refused, not converted."""
    try:
        raw = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - ragged lists, objects whose conversion fails, ...
        return None, f"not numeric: {type(e).__name__}: {e}"
    if raw.dtype.kind not in "iuf":
        return None, f"not real numbers (dtype {raw.dtype})"
    try:
        return raw.astype(float), ""
    except (TypeError, ValueError, OverflowError) as e:
        return None, f"not numeric: {e}"


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
        # "delta" (applied directly), "target" (absolute, rate limited) or "home" (absolute, rate limited at the
        # home speed, exempt from the watchdog while the server drives the home motion)
        self._goal_kind = "delta"
        self._goal_speed = (config.max_target_speed_m_s, config.max_target_speed_rad_s)
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
                "estops": c.estops, "homes": c.homes, "reasons": dict(c.reasons)}

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
        a, problem = _real_array(action)
        if a is None:
            return self._reject(R_SHAPE, problem)
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
        self._accept(goal, kind="delta", now=now, clamped=clamped)
        return Decision(True, clamped=clamped, target=goal, gripper=gripper)

    def filter_target(self, pos, quat, now: float) -> Decision:
        """Validate an absolute TCP target (base frame); accepted targets are approached by next_setpoint."""
        if self._estop_reason is not None:
            return self._reject(R_ESTOP, f"e-stop: {self._estop_reason}")
        p, problem = _real_array(pos)
        q, problem_q = _real_array(quat)
        if p is None or q is None:
            return self._reject(R_SHAPE, f"target {problem or problem_q}")
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
        self._accept(goal, kind="target", now=now, clamped=False)
        return Decision(True, target=goal)

    def _accept(self, goal: Pose, kind: str, now: float, clamped: bool) -> None:
        self._goal, self._goal_kind, self._last_cmd_t = goal, kind, now
        self._goal_speed = (self.config.max_target_speed_m_s, self.config.max_target_speed_rad_s)
        self._c.accepted += 1
        if clamped:
            self._c.clamped += 1

    # ------------------------------------------------------------------ home motions
    def home_pose(self, home: HomeTarget) -> Pose:
        """The TCP pose a home puts the arm at: the pose itself, or the forward kinematics of its joint angles.
        ValueError (naming home.source) when it cannot be computed (wrong length, non-finite, bad transform)."""
        try:
            if home.joint_space:
                m = franka_fk(home.q, None if home.f_t_ee is None else np.asarray(home.f_t_ee, float))
                return Pose(m[:3, 3].copy(), matrix_to_quat(m[:3, :3]))
            p, q = np.asarray(home.pos, float), np.asarray(home.quat, float)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{home.source}: {e}") from None
        if p.shape != (3,) or q.shape != (4,) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
            raise ValueError(f"{home.source}: expected a finite position (3) and quaternion (4), got {p} / {q}")
        if abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise ValueError(f"{home.source}: quaternion {q} is not unit (norm {np.linalg.norm(q):.6g})")
        return Pose(p, quat_normalize(q))

    def check_home(self, home: HomeTarget) -> str:
        """"" when the home's TCP lies inside the box and the orientation limits, else what is wrong (naming
        home.source). Counts nothing: for configs at load time; motions go through filter_home."""
        try:
            pose = self.home_pose(home)
        except ValueError as e:
            return str(e)
        where = (f"{home.source} = {np.round(np.asarray(home.q, float), 4).tolist()} puts the TCP (forward "
                 f"kinematics) at {np.round(pose.pos, 4).tolist()} m" if home.joint_space
                 else f"{home.source}: TCP {np.round(pose.pos, 4).tolist()} m")
        if np.any(pose.pos < self._lo) or np.any(pose.pos > self._hi):
            dm, _ = self.violation(pose)
            return (f"{where}, {dm * 1000:.1f} mm outside the safety workspace box "
                    f"pos_min {list(map(float, self._lo))} .. pos_max {list(map(float, self._hi))}")
        rpy = self.orientation_rpy(pose.quat)
        if np.any(rpy < self._rlo) or np.any(rpy > self._rhi):
            return (f"{where}, orientation rpy {np.round(rpy, 3).tolist()} rad (from the nominal orientation) outside "
                    f"the limits rpy_min {list(map(float, self._rlo))} .. rpy_max {list(map(float, self._rhi))}")
        return ""

    def filter_home(self, home: HomeTarget, now: float, current_pose=None) -> Decision:
        """The safety entry of a home motion (home service, reset, the server's own homing).

        Rejected (counted, R_HOME) when the home lies outside the limits; a Cartesian home also needs a usable
        measured pose (it is streamed from there). Accepted: a Cartesian home becomes the goal that next_setpoint
        approaches at the home speed; a joint-space home leaves the goal empty (the backend moves, the server
        forgets the motion afterwards). Decision.target is the home's TCP pose.
        """
        if self._estop_reason is not None:
            return self._reject(R_ESTOP, f"home refused: e-stop: {self._estop_reason}")
        problem = self.check_home(home)
        if problem:
            return self._reject(R_HOME, f"home refused: {problem}")
        goal = self.home_pose(home)
        if not home.joint_space:
            cur = self._measured(current_pose)
            if cur is None:
                return self._reject(R_STATE, "home refused: the measured pose is invalid")
            self._last_measured = cur
            if not self._usable(cur):
                return self._reject(R_STATE_OUTSIDE, f"home refused: measured pose {np.round(cur.pos, 4).tolist()} "
                                    "is outside the limits, a Cartesian home cannot be streamed from there; move "
                                    "the arm back into the workspace (guiding mode)")
            self._goal, self._goal_kind, self._last_cmd_t = goal, "home", now
            self._goal_speed = (min(home.speed_m_s, self.config.max_target_speed_m_s),
                                min(home.speed_rad_s, self.config.max_target_speed_rad_s))
        else:
            self.forget_motion()
        self._c.homes += 1
        return Decision(True, target=goal)

    def end_home(self) -> None:
        """A streamed home arrived: drop the home goal, keep the setpoint (the home pose) and hold there until a
        fresh command (the watchdog state, without re-seating on the measured pose a few mm away)."""
        self._goal, self._last_cmd_t = None, None
        self._holding = True

    def count_home(self) -> None:
        """Count a home reached without streaming (a simulator's teleport after check_home passed)."""
        self._c.homes += 1

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
                 and (self._goal_kind == "home" or now - self._last_cmd_t <= self.config.watchdog_timeout_s))
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
        if self._goal_kind != "delta":
            prev = self._setpoint if self._setpoint is not None else self.clamp(cur)[0]
            speed_m_s, speed_rad_s = self._goal_speed
            pos = pos_move_towards(prev.pos, goal.pos, speed_m_s * dt)
            quat = quat_move_towards(prev.quat, goal.quat, speed_rad_s * dt)
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
