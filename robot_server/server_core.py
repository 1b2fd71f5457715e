"""RobotServerCore: backend + safety layer, without ROS. The ROS node (and anything else) is a thin shell over it.

Every command path ends in `tick()`, which is the only place that sends poses to the backend, and every pose it
sends has just passed `SafetyLayer.assert_in_box`. Thread-safe: one lock serializes commands, ticks and services.

Motions the server starts itself go through the same layer:

* home: the backend's `home_target` passes `SafetyLayer.filter_home` first (refused and counted when it lies
  outside the limits; nothing moves). A Cartesian home (sim twin, franka_ros2) is then streamed by `tick()` at the
  home speed; a joint-space home (libfranka, panda-python: checked by forward kinematics) is the backend's planned
  joint motion to exactly the joint angles the layer checked.
* reset: a sim backend teleports to its home after the same check (and re-randomizes the scene); others home.
* recover: the backend clears its error without moving; the next setpoint is the layer's (the measured pose clamped
  into the box), or a native hold when the measured pose is unusable.

A Cartesian home outside the box is a configuration error: the constructor raises ConfigError naming the field.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from robot_server.backends.base import RobotBackend, RobotState
from robot_server.geometry import quat_angle
from robot_server.safety import (R_ESTOP, R_HOME, Decision, HomeTarget, SafetyConfig, SafetyLayer, SafetyViolation,
                                 Setpoint)
from robot_server.typed_config import ConfigError

LOG = logging.getLogger("robot_server.core")

R_FRAME = "wrong frame"
R_BACKEND = "backend error"


@dataclass(frozen=True)
class TickResult:
    state: RobotState
    setpoint: Setpoint
    sent: bool  # a pose was commanded this tick


class RobotServerCore:
    def __init__(self, backend: RobotBackend, safety: Optional[SafetyLayer] = None,
                 safety_config: Optional[SafetyConfig] = None, task: Optional[str] = None, seed: Optional[int] = 0,
                 base_frame: str = "panda_link0"):
        self.backend = backend
        self.safety = safety or SafetyLayer(safety_config or SafetyConfig(), nominal_quat=backend.home_quat)
        self.base_frame = base_frame
        self.task = task or None
        self.seed = seed  # seed of the current sim scene; each reset() moves to the next one
        self.final_check_failures = 0
        self.backend_errors = 0
        self._lock = threading.RLock()
        self._gripper_cmd: Optional[float] = None
        self._native_hold_sent = False
        self._last_state: Optional[RobotState] = None
        self._last_log: dict[str, float] = {}
        self._clock: Optional[float] = None  # the last `now` a caller passed: services continue the caller's clock
        self._check_home_at_start()

    def _check_home_at_start(self) -> None:
        """A Cartesian home outside the limits: ConfigError now. A joint-space home: a warning now (the layer
        refuses the motion itself before it would start)."""
        try:
            home = self.backend.home_target
        except Exception as e:  # noqa: BLE001 - e.g. the robot worker cannot answer yet: checked again at home
            LOG.warning("could not check the backend's home at start: %s", e)
            return
        problem = self.safety.check_home(home)
        if problem and not home.joint_space:
            raise ConfigError(f"{problem}; move the home inside the box or widen the box (safety config)")
        if problem:
            LOG.warning("%s: the home service will refuse to move there", problem)

    # ------------------------------------------------------------------ commands
    def on_action(self, action: Any, now: Optional[float] = None) -> Decision:
        """A contract action (7 values in [-1, 1], see contract.py). Never raises on bad input."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._clock = now
            state = self._read()
            dec = self.safety.filter_delta(action, state if state is not None and state.ok else None, now)
            if dec.accepted:
                if dec.gripper is not None and dec.gripper != self._gripper_cmd:
                    # Only on change: the real gripper runs one grasp/move action per command. A command the
                    # backend failed (e.g. franka_gripper not ready yet) is sent again with the next action.
                    if self._call(self.backend.command_gripper, dec.gripper):
                        self._gripper_cmd = dec.gripper
                self._tick_locked(now, state)  # send at once instead of waiting up to one loop period
            return dec

    def on_target_pose(self, pos: Any, quat: Any, now: Optional[float] = None,
                       frame_id: Optional[str] = None) -> Decision:
        """An absolute TCP target in the base frame (quat wxyz). frame_id "" or None means the base frame."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._clock = now
            if frame_id not in (None, "", self.base_frame):
                return self.safety.reject(R_FRAME, f"target in frame {frame_id!r}, expected {self.base_frame!r}")
            dec = self.safety.filter_target(pos, quat, now)
            if dec.accepted:
                self._tick_locked(now, None)
            return dec

    # ------------------------------------------------------------------ loop
    def tick(self, now: Optional[float] = None) -> Optional[TickResult]:
        """Run watchdog / rate limiting and send this tick's setpoint. Call at the server loop rate."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._clock = now
            return self._tick_locked(now, None)

    def _tick_locked(self, now: float, state: Optional[RobotState]) -> Optional[TickResult]:
        if state is None:
            state = self._read()
        measured = state if state is not None and state.ok else None
        sp = self.safety.next_setpoint(measured, now)
        sent = False
        if sp.pose is None:
            if not self._native_hold_sent:
                self._call(self.backend.hold)
                self._native_hold_sent = True
        else:
            try:
                self.safety.assert_in_box(sp.pose.pos, sp.pose.quat)
            except SafetyViolation as e:
                # Cannot happen unless the safety layer has a bug; stop everything and say so loudly.
                self.final_check_failures += 1
                LOG.error("final setpoint check failed, latching e-stop: %s", e)
                self._call(self.backend.hold)
                self.safety.estop("final setpoint check failed", measured)
            else:
                sent = self._call(self.backend.command_pose, sp.pose.pos, sp.pose.quat)
                self._native_hold_sent = False
        return None if state is None else TickResult(state, sp, sent)

    def _log_error(self, key: str, msg: str, *args) -> None:
        # At most one line per key per second: a failing backend is called at the loop rate.
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= 1.0:
            self._last_log[key] = now
            LOG.error(msg, *args)

    def _read(self) -> Optional[RobotState]:
        try:
            self._last_state = self.backend.read_state()
        except Exception as e:  # a backend failure must not take the server down; no pose is commanded then
            self.backend_errors += 1
            self._log_error("read_state", "backend read_state failed: %s", e)
            return None
        if not self._last_state.ok:
            self._log_error("state", "backend reports an error: %s", self._last_state.error)
        return self._last_state

    def _call(self, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as e:
            self.backend_errors += 1
            name = getattr(fn, "__name__", str(fn))
            self._log_error(name, "backend %s failed: %s", name, e)
            return False

    @property
    def last_state(self) -> Optional[RobotState]:
        return self._last_state

    # ------------------------------------------------------------------ services: (ok, message)
    def _refuse_if_estopped(self, what: str) -> Optional[tuple[bool, str]]:
        if self.safety.estopped:
            self.safety.reject(R_ESTOP, f"{what} refused: e-stop latched ({self.safety.estop_reason})")
            return False, f"estop latched ({self.safety.estop_reason}); call estop_reset first"
        return None

    def home(self, now: Optional[float] = None) -> tuple[bool, str]:
        """Move home through the safety layer (see the module docstring); blocks until there."""
        with self._lock:
            if (refused := self._refuse_if_estopped("home")) is not None:
                return refused
            return self._home_locked(self._service_now(now))

    def _service_now(self, now: Optional[float]) -> float:
        """A service's time: as given, else the caller's clock so far (the last `now` passed to a command or tick,
        e.g. simulated time in the Gymnasium env), else the monotonic clock."""
        if now is not None:
            self._clock = now
            return now
        return time.monotonic() if self._clock is None else self._clock

    def _home_locked(self, now: float) -> tuple[bool, str]:
        try:
            home = self.backend.home_target
        except Exception as e:  # noqa: BLE001
            self.backend_errors += 1
            return False, f"home failed: cannot read the backend's home: {e}"
        state = self._read() if not home.joint_space else None
        dec = self.safety.filter_home(home, now, state if state is not None and state.ok else None)
        if not dec.accepted:
            LOG.error("%s", dec.detail)
            return False, dec.detail
        if home.joint_space:
            ok = self._call(self.backend.move_home, home)
            self._after_external_motion(now)
            return (True, "homed") if ok else (False, "backend home failed")
        return self._stream_home(home, now)

    def _stream_home(self, home: HomeTarget, now: float, dt: float = 0.02) -> tuple[bool, str]:
        """Drive the accepted Cartesian home goal with the server loop (next_setpoint + final check + command_pose)
        until the measured TCP is there; the goal is dropped however this ends."""
        goal = self.safety.home_pose(home)
        t = now
        arrived = False
        try:
            for _ in range(max(1, int(np.ceil(home.timeout_s / dt)))):
                state = self._read()
                res = self._tick_locked(t, state)
                if self.safety.estopped:
                    return False, f"home aborted: e-stop latched ({self.safety.estop_reason})"
                if state is None or not state.ok or res is None or res.setpoint.pose is None:
                    why = "no robot state" if state is None else (state.error or "measured pose outside the limits")
                    return False, f"home aborted: {why}"
                sp = res.setpoint.pose
                if (np.linalg.norm(sp.pos - goal.pos) < 1e-9 and quat_angle(sp.quat, goal.quat) < 1e-6
                        and np.linalg.norm(state.ee_pos - goal.pos) <= home.tolerance_m
                        and quat_angle(state.ee_quat, goal.quat) <= home.tolerance_rad):
                    arrived = True
                    return True, "homed"
                self.backend.wait(dt)
                t += dt
            s = self._last_state
            return False, (f"home not reached within {home.timeout_s:g} s"
                           + ("" if s is None else f" (TCP at {np.round(s.ee_pos, 3).tolist()})"))
        finally:
            if arrived:  # hold at the home pose until a fresh command
                self.safety.end_home()
            else:  # whatever stopped it: forget the goal, re-seat on the measured pose through the layer
                self._after_external_motion(t)

    def reset(self, now: Optional[float] = None) -> tuple[bool, str]:
        """Go home; with a sim backend teleport home and re-randomize the task scene with the next seed."""
        with self._lock:
            if (refused := self._refuse_if_estopped("reset")) is not None:
                return refused
            if getattr(self.backend, "reset_task", None) is None:
                return self._home_locked(self._service_now(now))
            seed = None if self.seed is None else int(self.seed) + 1
            return self._reset_scene_locked(self.task, seed, self._service_now(now))

    def reset_scene(self, task: Optional[str], seed: Optional[int], now: Optional[float] = None) -> tuple[bool, str]:
        """Sim only: teleport to the (checked) home and load the scene of `task` with `seed`."""
        with self._lock:
            if (refused := self._refuse_if_estopped("reset")) is not None:
                return refused
            return self._reset_scene_locked(task, seed, self._service_now(now))

    def _reset_scene_locked(self, task: Optional[str], seed: Optional[int], now: float) -> tuple[bool, str]:
        try:
            home = self.backend.home_target
        except Exception as e:  # noqa: BLE001
            self.backend_errors += 1
            return False, f"reset failed: cannot read the backend's home: {e}"
        # A teleport starts from anywhere (that is what a scene reset is for): only the home itself is checked.
        problem = self.safety.check_home(home)
        if problem:
            dec = self.safety.reject(R_HOME, f"reset refused: {problem}")
            return False, dec.detail
        self.safety.count_home()
        self.task, self.seed = task or None, seed
        ok = self._call(self.backend.reset_task, self.task, self.seed)
        self._after_external_motion(now)
        instruction = getattr(self.backend, "instruction", "")
        if not ok:
            return False, "backend reset failed"
        return True, f"reset: task={self.task or '-'} seed={self.seed} instruction={instruction!r}"

    def set_gripper(self, close: bool) -> tuple[bool, str]:
        with self._lock:
            if (refused := self._refuse_if_estopped("gripper")) is not None:
                return refused
            value = 1.0 if close else 0.0
            ok = self._call(self.backend.command_gripper, value)
            if ok:
                self._gripper_cmd = value
            return (True, "gripper closing" if close else "gripper opening") if ok else (False, "backend failed")

    def recover(self, now: Optional[float] = None) -> tuple[bool, str]:
        """Clear the backend's error (it moves nothing); the setpoint is then re-seated through the layer."""
        with self._lock:
            if (refused := self._refuse_if_estopped("recover")) is not None:
                return refused
            ok = self._call(self.backend.recover)
            self._after_external_motion(self._service_now(now))
            return (True, "recovered") if ok else (False, "backend recover failed")

    def estop(self, reason: str = "estop service") -> tuple[bool, str]:
        with self._lock:
            state = self._read()
            self.safety.estop(reason, state if state is not None and state.ok else None)
            self._call(self.backend.hold)
            return True, f"e-stop latched: {reason}"

    def estop_reset(self) -> tuple[bool, str]:
        with self._lock:
            was = self.safety.estopped
            self.safety.reset_estop()
            return True, "e-stop reset; holding until a fresh command" if was else "e-stop was not latched"

    def on_external_motion(self, now: Optional[float] = None) -> None:
        """Call after the arm moved without the server's setpoints (home, scene reset, error recovery): the old
        goal is forgotten so nothing drags the arm back, and the setpoint is re-seated through the layer (the
        measured pose, clamped into the box; a native hold when that pose is unusable) until a fresh command."""
        with self._lock:
            if not self.safety.estopped:  # a latched e-stop keeps its frozen setpoint
                self.safety.forget_motion()
            self._native_hold_sent = False
            self._gripper_cmd = None  # unknown after an external reset: the next action's gripper is sent
            if now is not None:
                self._tick_locked(now, None)

    _after_external_motion = on_external_motion  # old name, kept for callers

    # ------------------------------------------------------------------ status
    def status(self) -> dict[str, Any]:
        with self._lock:
            s = self.safety
            out: dict[str, Any] = {
                "holding": s.holding,
                "estop": s.estopped,
                "estop_reason": s.estop_reason or "",
                "counters": s.stats,
                "last_rejection": s.last_rejection,
                "final_check_failures": self.final_check_failures,
                "backend_errors": self.backend_errors,
                "backend_error": "" if self._last_state is None else self._last_state.error,
                "task": self.task or "",
                "seed": self.seed,
            }
            if hasattr(self.backend, "instruction"):
                out["instruction"] = self.backend.instruction
            if hasattr(self.backend, "slips"):
                out["sim_slips"] = self.backend.slips
            sp = s.setpoint
            out["setpoint"] = None if sp is None else {"pos": np.round(sp.pos, 5).tolist(),
                                                       "quat": np.round(sp.quat, 5).tolist()}
            return out
