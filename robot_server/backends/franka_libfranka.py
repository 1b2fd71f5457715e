"""FR3 (robot system >= 5, libfranka >= 0.10) through franky-control, driven from a worker process of its own.

Why a worker process: franky, pylibfranka and panda-python each bundle their own libfranka with pybind11 types, and
two of them in one process clash (and libfranka 0.9 and 0.21 cannot both be loaded). The worker owns the robot
connection; robot_server talks to it over a socket pair with small pickled calls (about 100 per second: state reads
and setpoints). libfranka's 1 kHz loop runs in franky's C++ control thread inside the worker, so no Python timing
sits in the real-time path, and a busy robot_server process cannot make the robot miss a cycle.

Binding: franky-control (`pip install franky-control==2.0.0` into the project's venv; it adds only `websockets`).
It is preferred over pylibfranka because its torque-level Cartesian impedance tracker runs in C++; pylibfranka would
need the 1 kHz loop in Python. The worker imports the binding from the worker interpreter (`python`, default: the
one running robot_server) plus `extra_pythonpath` (for a binding installed outside the venv).

Control (mode "impedance", the default): franky's CartesianImpedanceTrackingMotion computes torques at 1 kHz. The
worker only replaces its reference pose whenever robot_server sends a setpoint (50 Hz, stepping towards the 10 Hz
action targets). Every 1 ms cycle the controller reads the latest reference and clips the pose error to
+-translational_error_clip / +-rotational_error_clip (SERL's recipe) before the stiffness acts, adds critical damping
and limits the torque change per cycle (max_delta_tau). The clipped error moves the equilibrium towards the target at
a bounded rate inside the 1 kHz loop: a 2 cm setpoint step becomes a smooth approach, not a torque jump.
`set_impedance(...)` retunes it at run time (e.g. stiffer for precise resets); the tracker restarts at the measured
pose with the next setpoint.

Reflexes: when the robot aborts the motion (collision, a limit, lost packets, the user stop), the worker latches
the error. `read_state` then reports ok=False with the libfranka message (robot_server holds, logs it and publishes
it as `backend_error` on the status topic), commands are refused, and nothing moves until the recover service
calls `recover()` (libfranka's automatic error recovery); the tracker restarts at the measured pose with the next
setpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

import numpy as np

from robot_server.backends import load_config
from robot_server.backends.base import RobotBackend, RobotState
from robot_server.geometry import matrix_to_quat
from robot_server.safety import HomeTarget

LOG = logging.getLogger("robot_server.backends.franka_libfranka")

REPO_ROOT = Path(__file__).resolve().parents[2]
FR3_READY_Q = (0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398)  # Franka's "ready" pose
GRIPPER_DOWN_WXYZ = (0.0, 1.0, 0.0, 0.0)  # pi about x: the tool axis points down


# ---------------------------------------------------------------------------------------------- geometry helpers
def quat_to_matrix(q_wxyz) -> np.ndarray:
    w, x, y, z = np.asarray(q_wxyz, float) / np.linalg.norm(q_wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def pose_matrix(pos, quat_wxyz) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(quat_wxyz)
    m[:3, 3] = np.asarray(pos, float)
    return m


# ---------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class ImpedanceConfig:
    """The 1 kHz Cartesian impedance tracker (defaults: SERL's controller)."""
    translational_stiffness: float = 2000.0  # N/m
    rotational_stiffness: float = 150.0  # Nm/rad
    translational_error_clip: float = 0.01  # m per axis: the pose error the stiffness ever sees
    rotational_error_clip: float = 0.05  # rad per axis
    max_delta_tau: float = 1.0  # Nm per 1 ms cycle (the FCI allows 1000 Nm/s)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"impedance.{f.name} must be a positive number, got {v!r}")


@dataclass(frozen=True)
class CollisionConfig:
    """libfranka setCollisionBehavior: contact above `lower` is flagged, above `upper` a reflex stops the arm."""
    lower_torque_thresholds: tuple[float, ...] = (20.0, 20.0, 18.0, 18.0, 16.0, 14.0, 12.0)  # Nm, per joint
    upper_torque_thresholds: tuple[float, ...] = (20.0, 20.0, 18.0, 18.0, 16.0, 14.0, 12.0)
    lower_force_thresholds: tuple[float, ...] = (20.0, 20.0, 20.0, 25.0, 25.0, 25.0)  # N, Nm: x y z rx ry rz
    upper_force_thresholds: tuple[float, ...] = (20.0, 20.0, 20.0, 25.0, 25.0, 25.0)

    def __post_init__(self):
        for name, n in (("lower_torque_thresholds", 7), ("upper_torque_thresholds", 7),
                        ("lower_force_thresholds", 6), ("upper_force_thresholds", 6)):
            v = getattr(self, name)
            if len(v) != n or not all(np.isfinite(v)) or min(v) <= 0:
                raise ValueError(f"collision.{name}: expected {n} positive numbers, got {v}")


@dataclass(frozen=True)
class GripperConfig:
    enabled: bool = True
    speed: float = 0.1  # m/s
    force: float = 40.0  # N, grasp force
    open_width: Optional[float] = None  # m; None: the hand's maximum width (after homing)
    grasp_width: float = 0.0  # m; with epsilon_outer this grasps anything narrower than the open hand
    epsilon_inner: float = 0.005
    epsilon_outer: float = 0.08
    poll_period_s: float = 0.05  # width is read in the background this often (a read takes a few ms)


@dataclass(frozen=True)
class FrankaLibfrankaConfig:
    hostname: str = "172.16.0.2"  # the robot's FCI address (a direct Ethernet link, see docs/lab_setup.md)
    arm_id: str = "fr3"  # joint names <arm_id>_joint1..7
    # Worker interpreter and extra import paths (where the binding lives if not in the venv). "" = this interpreter.
    python: str = ""
    extra_pythonpath: tuple[str, ...] = ()
    realtime: bool = True  # libfranka's RealtimeConfig: True = Enforce (needs a PREEMPT_RT kernel), False = Ignore
    relative_dynamics_factor: float = 0.2  # franky's global speed/acceleration/jerk scale for planned motions
    home_q: tuple[float, ...] = FR3_READY_Q  # rad; `home` moves here with a planned joint motion
    home_dynamics_factor: float = 0.15
    open_gripper_on_home: bool = True
    nominal_quat_wxyz: tuple[float, float, float, float] = GRIPPER_DOWN_WXYZ  # centre of the orientation limits
    ne_t_ee: Optional[tuple[float, ...]] = None  # 16 values, column major: flange -> TCP; None keeps Desk's setting
    load_mass: Optional[float] = None  # kg of an extra payload (set_load); None: none
    load_com: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_inertia: tuple[float, ...] = (1e-3, 0, 0, 0, 1e-3, 0, 0, 0, 1e-3)
    impedance: ImpedanceConfig = field(default_factory=ImpedanceConfig)
    collision: CollisionConfig = field(default_factory=CollisionConfig)
    gripper: GripperConfig = field(default_factory=GripperConfig)
    connect_timeout_s: float = 30.0
    rpc_timeout_s: float = 2.0
    home_timeout_s: float = 60.0

    def __post_init__(self):
        if len(self.home_q) != 7:
            raise ValueError(f"home_q needs 7 joint angles, got {len(self.home_q)}")
        if self.ne_t_ee is not None and len(self.ne_t_ee) != 16:
            raise ValueError("ne_t_ee needs 16 values (4x4 column major)")
        if abs(np.linalg.norm(self.nominal_quat_wxyz) - 1.0) > 1e-3:
            raise ValueError(f"nominal_quat_wxyz must be a unit quaternion, got {self.nominal_quat_wxyz}")
        if not (0.0 < self.relative_dynamics_factor <= 1.0 and 0.0 < self.home_dynamics_factor <= 1.0):
            raise ValueError("dynamics factors must lie in (0, 1]")
        if not all(np.isfinite(self.home_q)):
            raise ValueError(f"home_q must be finite, got {self.home_q}")

    def home_target(self, section: str = "franka_libfranka", f_t_ee=None) -> HomeTarget:
        """The joint-space home for the safety layer's forward-kinematics check. f_t_ee: flange -> TCP as the
        robot reports it (16 values, column major); None (config load, no robot yet): the Franka Hand, times
        ne_t_ee when that is configured."""
        if f_t_ee is None and self.ne_t_ee is not None:
            from robot_server.kinematics import as_transform, franka_hand_f_t_ee
            f_t_ee = (franka_hand_f_t_ee() @ as_transform(self.ne_t_ee)).flatten(order="F")
        return HomeTarget(q=tuple(self.home_q), f_t_ee=None if f_t_ee is None else tuple(map(float, f_t_ee)),
                          source=f"{section}.home_q", timeout_s=self.home_timeout_s)


def create(config=None, task: Optional[str] = None, seed: Optional[int] = None) -> "FrankaLibfrankaBackend":
    return FrankaLibfrankaBackend(load_config(FrankaLibfrankaConfig, config, section="franka_libfranka"))


# ---------------------------------------------------------------------------------------------- parent side
class WorkerError(RuntimeError):
    """The worker could not start, died, or did not answer."""


class WorkerBackend(RobotBackend):
    """A RobotBackend whose robot lives in a worker process running `driver` (see DRIVERS)."""

    driver: str = ""
    config_section: str = ""  # the YAML section of its config (named in messages about its fields)

    def __init__(self, config, *, joint_names: tuple[str, ...]):
        self.config = config
        self.joint_names = joint_names
        self._lock = threading.Lock()
        self._next_id = 0
        self._last: Optional[RobotState] = None
        self._closed = False
        parent_sock, child_sock = socket.socketpair()
        python = config.python or sys.executable
        env = dict(os.environ)
        paths = [str(Path(p).expanduser()) for p in config.extra_pythonpath] + [str(REPO_ROOT)]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        cmd = [python, "-m", "robot_server.backends.franka_libfranka", "--driver", self.driver,
               "--fd", str(child_sock.fileno())]
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=(child_sock.fileno(),), env=env)
        except OSError as e:
            raise WorkerError(f"{self.driver}: cannot start the worker {python!r}: {e}") from e
        finally:
            child_sock.close()
        self._conn = Connection(os.dup(parent_sock.fileno()))
        parent_sock.close()
        self._conn.send(dataclasses.asdict(config))
        try:
            hello = self._recv(config.connect_timeout_s, "connect")
        except Exception:
            self._kill()
            raise
        if hello[0] != "ready":
            self._kill()
            raise WorkerError(f"{self.driver}: {hello[1]}")
        self.info: dict = hello[1]
        LOG.info("%s worker %d connected: %s", self.driver, self._proc.pid, self.info)

    # ------------------------------------------------------------------ transport
    @property
    def worker_pid(self) -> int:
        return self._proc.pid

    @property
    def worker_exit_code(self) -> Optional[int]:
        """None while the worker runs."""
        return self._proc.poll()

    def _dead_message(self) -> Optional[str]:
        code = self._proc.poll()
        return None if code is None else f"{self.driver} worker exited with code {code} (its log is above)"

    def _recv(self, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.driver} worker did not answer {what!r} within {timeout:.1f} s")
            try:
                if self._conn.poll(min(left, 0.2)):
                    return self._conn.recv()
            except (EOFError, OSError) as e:
                raise WorkerError(self._dead_message() or f"{self.driver} worker connection lost: {e}") from e
            if (dead := self._dead_message()) is not None:
                raise WorkerError(dead)

    def call(self, method: str, *args, timeout: Optional[float] = None) -> Any:
        with self._lock:
            if self._closed:
                raise WorkerError(f"{self.driver} backend is closed")
            self._next_id += 1
            cid = self._next_id
            try:
                self._conn.send(("call", cid, method, args))
            except (OSError, ValueError) as e:
                raise WorkerError(self._dead_message() or f"{self.driver} worker connection lost: {e}") from e
            while True:  # replies to calls that timed out earlier are dropped here
                kind, rid, value = self._recv(timeout or self.config.rpc_timeout_s, method)
                if rid == cid:
                    break
            if kind == "error":
                raise RuntimeError(value)
            return value

    # ------------------------------------------------------------------ RobotBackend
    @property
    def home_quat(self) -> np.ndarray:
        return np.asarray(self.config.nominal_quat_wxyz, float)

    def read_state(self) -> RobotState:
        try:
            d = self.call("read_state")
        except Exception as e:
            if self._last is None:
                raise
            # Keep the last numbers for display, but flagged: the core commands nothing on a state that is not ok.
            self._last = dataclasses.replace(self._last, stamp=time.time(), ok=False, error=str(e))
            return self._last
        self._last = RobotState(stamp=d["stamp"], joint_names=self.joint_names, q=np.asarray(d["q"]),
                                dq=np.asarray(d["dq"]), ee_pos=np.asarray(d["ee_pos"]),
                                ee_quat=np.asarray(d["ee_quat"]), gripper_width=float(d["gripper_width"]),
                                ok=bool(d["ok"]), error=d["error"],
                                ee_vel=None if d.get("ee_vel") is None else np.asarray(d["ee_vel"]))
        return self._last

    def command_pose(self, pos, quat) -> None:
        self.call("command_pose", np.asarray(pos, float).tolist(), np.asarray(quat, float).tolist())

    def command_gripper(self, close: float) -> None:
        self.call("command_gripper", float(close))

    @property
    def home_target(self) -> HomeTarget:
        """home_q with the flange -> TCP transform the robot reports now (what its O_T_EE uses)."""
        return self.config.home_target(self.config_section, f_t_ee=self.call("flange_to_tcp"))

    def move_home(self, home: HomeTarget) -> None:
        """The planned joint motion to home.q (already allowed by the safety layer's forward-kinematics check)."""
        if home.q is None:
            raise ValueError("move_home needs a joint-space home")
        self.call("home", [float(v) for v in home.q], timeout=self.config.home_timeout_s)

    def recover(self) -> None:
        self.call("recover", timeout=max(10.0, self.config.rpc_timeout_s))

    def hold(self) -> None:
        self.call("hold")

    def status(self) -> dict:
        """Worker-side details (mode, latched fault, tracker state) for diagnostics."""
        return self.call("status")

    def set_impedance(self, **changes) -> None:
        """Retune the tracker (e.g. stiffer for precise resets); it restarts at the measured pose on the next
        setpoint. Unknown keys or invalid values raise before anything reaches the robot."""
        imp = getattr(self.config, "impedance", None)
        if imp is None:
            raise RuntimeError(f"{self.driver}: this backend has no impedance settings")
        new = dataclasses.replace(imp, **changes)
        self.call("set_impedance", dataclasses.asdict(new))
        self.config = dataclasses.replace(self.config, impedance=new)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.send(("close", 0, None, ()))
            except Exception:  # noqa: BLE001 - the worker may be gone already
                pass
        try:
            self._proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            LOG.error("%s worker %d did not exit within 10 s; killing it", self.driver, self._proc.pid)
            self._kill()
        self._conn.close()

    def _kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=5.0)


class FrankaLibfrankaBackend(WorkerBackend):
    driver = "franky"
    config_section = "franka_libfranka"

    def __init__(self, config: Optional[FrankaLibfrankaConfig] = None):
        config = config or FrankaLibfrankaConfig()
        super().__init__(config, joint_names=tuple(f"{config.arm_id}_joint{i}" for i in range(1, 8)))


# ---------------------------------------------------------------------------------------------- worker side
class GripperWorker:
    """Runs blocking gripper commands in one thread (latest command wins) and keeps the width fresh.

    Why a thread: a grasp takes about a second, and the robot loop must not wait for it; libfranka's gripper
    commands are synchronous, so one thread executes them in order while state reads continue.
    """

    def __init__(self, cfg: dict, move, grasp, read_width, max_width: float):
        self.cfg = cfg
        self._move, self._grasp, self._read_width = move, grasp, read_width
        self.width = float(read_width())
        self.max_width = float(max_width)
        self.error = ""
        self._pending: "queue.Queue[float]" = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run_commands, name="gripper-cmd", daemon=True),
                         threading.Thread(target=self._poll_width, name="gripper-width", daemon=True)]
        for t in self._threads:
            t.start()

    def command(self, close: float) -> None:
        try:
            self._pending.get_nowait()  # an older command not started yet is superseded
        except queue.Empty:
            pass
        self._pending.put_nowait(float(close))

    def _run_commands(self) -> None:
        while not self._stop.is_set():
            try:
                close = self._pending.get(timeout=0.1)
            except queue.Empty:
                continue
            c = self.cfg
            try:
                if close >= 0.5:
                    ok = self._grasp(c["grasp_width"], c["speed"], c["force"], c["epsilon_inner"], c["epsilon_outer"])
                else:
                    ok = self._move(c["open_width"] or self.max_width, c["speed"])
                # A grasp that closes on nothing reports failure on the real hand: normal, not an error.
                self.error = ""
                LOG.info("gripper %s -> %s, width %.4f", "grasp" if close >= 0.5 else "open", ok, self.width)
            except Exception as e:  # noqa: BLE001 - reported through read_state
                self.error = f"gripper command failed: {type(e).__name__}: {e}"
                LOG.error(self.error)

    def _poll_width(self) -> None:
        while not self._stop.wait(self.cfg["poll_period_s"]):
            try:
                self.width = float(self._read_width())
            except Exception as e:  # noqa: BLE001
                self.error = f"gripper state read failed: {type(e).__name__}: {e}"

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)


class FrankyDriver:
    """The robot end of the worker (runs in the worker process; imports franky)."""

    def __init__(self, cfg: dict):
        try:
            import franky
        except ImportError as e:
            raise RuntimeError(
                f"franky is not importable by {sys.executable} ({e}). For an FR3 / system >= 5 install it into "
                "the venv: `pip install franky-control==2.0.0`, or set `python` / `extra_pythonpath` in the "
                "franka_libfranka backend config") from None
        self.f = franky
        self.cfg = cfg
        rt = franky.RealtimeConfig.Enforce if cfg["realtime"] else franky.RealtimeConfig.Ignore
        self.robot = franky.Robot(cfg["hostname"], realtime_config=rt,
                                  relative_dynamics_factor=cfg["relative_dynamics_factor"])
        if self.robot.has_errors:  # e.g. left in a reflex by the last session
            LOG.warning("robot reports errors at connect (%s); running automatic error recovery",
                        self.robot.state.current_errors)
            self.robot.recover_from_errors()
        self._apply_settings()
        self.tracker = None
        self.fault = ""
        self._rate_warned = -1e9
        self.gripper = None
        if cfg["gripper"]["enabled"]:
            g = franky.Gripper(cfg["hostname"])
            self.gripper = GripperWorker(
                cfg["gripper"], move=g.move,
                grasp=lambda w, s, f, ei, eo: g.grasp(w, s, f, epsilon_inner=ei, epsilon_outer=eo),
                read_width=lambda: g.width, max_width=g.max_width)

    def hello(self) -> dict:
        s = self.robot.state
        return {"binding": f"franky {getattr(self.f, '__version__', '?')}", "robot_mode": s.robot_mode.name,
                "gripper": self.gripper is not None}

    def _apply_settings(self) -> None:
        c = self.cfg["collision"]
        self.robot.set_collision_behavior(np.asarray(c["lower_torque_thresholds"]),
                                          np.asarray(c["upper_torque_thresholds"]),
                                          np.asarray(c["lower_force_thresholds"]),
                                          np.asarray(c["upper_force_thresholds"]))
        if self.cfg["ne_t_ee"] is not None:
            self.robot.set_ee(list(self.cfg["ne_t_ee"]))
        if self.cfg["load_mass"] is not None:
            self.robot.set_load(self.cfg["load_mass"], list(self.cfg["load_com"]), list(self.cfg["load_inertia"]))

    # ------------------------------------------------------------------ faults
    def _check(self, state=None):
        """Latch a fault when the running motion ended by itself (reflex) or the robot left normal operation.

        Returns the robot state it read (one read per call: outside a motion a read waits for the next packet).
        """
        if self.tracker is not None and not self.robot.is_in_control:
            self.tracker = None
            try:
                self.robot.join_motion(0.0)
                message = "tracking motion ended unexpectedly"
            except Exception as e:  # noqa: BLE001 - franky's ControlException carries libfranka's reflex message
                message = str(e).strip().replace("\n", " ")
            self._set_fault(message)
        state = state if state is not None else self.robot.state
        mode = state.robot_mode.name
        if not self.fault and mode in ("Reflex", "UserStopped"):
            self._set_fault(f"robot mode {mode}: {state.current_errors}")
        return state

    def _set_fault(self, message: str) -> None:
        hint = ("release the user stop, then call the recover service" if "UserStopped" in message
                else "call the recover service")
        self.fault = f"reflex: {message}; {hint}"
        LOG.error(self.fault)

    def _refuse_if_faulted(self, what: str) -> None:
        self._check()
        if self.fault:
            raise RuntimeError(f"{what} refused: {self.fault}")

    # ------------------------------------------------------------------ calls
    def read_state(self) -> dict:
        s = self._check()
        if self.tracker is not None:
            rate = float(s.control_command_success_rate)
            now = time.monotonic()
            if rate < 0.95 and now - self._rate_warned > 5.0:  # lost cycles: the step before a reflex
                self._rate_warned = now
                LOG.warning("control command success rate %.3f < 0.95: the 1 kHz loop loses cycles (load, no RT "
                            "kernel, network?); see docs/lab_setup.md section 3", rate)
        m = np.array(s.O_T_EE.matrix)
        g = self.gripper
        error = self.fault or (g.error if g is not None else "")
        return {"stamp": time.time(), "q": np.array(s.q), "dq": np.array(s.dq), "ee_pos": m[:3, 3].copy(),
                "ee_quat": matrix_to_quat(m[:3, :3]), "gripper_width": g.width if g is not None else 0.0,
                "ok": not self.fault, "error": error, "ee_vel": None}

    def _affine(self, pos, quat):
        return self.f.Affine(pose_matrix(pos, quat))

    def command_pose(self, pos, quat) -> None:
        self._refuse_if_faulted("command_pose")
        if self.tracker is None:
            imp = self.cfg["impedance"]
            # Seeds its reference with the measured pose, then starts the torque loop asynchronously.
            self.tracker = self.f.CartesianImpedanceTracker(
                self.robot, translational_stiffness=imp["translational_stiffness"],
                rotational_stiffness=imp["rotational_stiffness"],
                translational_error_clip=np.full(3, imp["translational_error_clip"]),
                rotational_error_clip=np.full(3, imp["rotational_error_clip"]),
                max_delta_tau=imp["max_delta_tau"])
            LOG.info("impedance tracking started")
        self.tracker.set_target(self._affine(pos, quat))

    def hold(self) -> None:
        self._check()
        if self.tracker is not None:
            self.tracker.set_target(self.robot.current_pose.end_effector_pose)

    def command_gripper(self, close: float) -> None:
        if self.gripper is None:  # an arm without a hand: the action's gripper component means nothing
            if not getattr(self, "_warned_no_gripper", False):
                LOG.warning("gripper command ignored: no gripper configured (gripper.enabled: false)")
                self._warned_no_gripper = True
            return
        self.gripper.command(close)

    def _stop_tracker(self) -> None:
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            try:
                tracker.stop()
            except Exception as e:  # noqa: BLE001
                self._set_fault(str(e).strip().replace("\n", " "))
                raise RuntimeError(self.fault) from None

    def flange_to_tcp(self) -> list:
        """F_T_EE (flange -> TCP) as the robot uses it for O_T_EE: 16 values, column major."""
        return np.asarray(self.robot.state.F_T_EE.matrix, float).flatten(order="F").tolist()

    def home(self, q) -> None:
        """Planned joint motion to q (robot_server checked its TCP against the safety box first)."""
        self._refuse_if_faulted("home")
        self._stop_tracker()
        if self.gripper is not None and self.cfg["open_gripper_on_home"]:
            self.gripper.command(0.0)
        motion = self.f.JointMotion(self.f.JointState(np.asarray(q, float)),
                                    relative_dynamics_factor=self.f.RelativeDynamicsFactor(
                                        self.cfg["home_dynamics_factor"]))
        try:
            self.robot.move(motion)
        except Exception as e:  # noqa: BLE001
            self._set_fault(str(e).strip().replace("\n", " "))
            raise RuntimeError(self.fault) from None

    def set_impedance(self, impedance: dict) -> None:
        self._stop_tracker()
        self.cfg["impedance"] = dict(impedance)
        LOG.info("impedance settings: %s", impedance)

    def recover(self) -> None:
        self.tracker = None
        if not self.robot.recover_from_errors():
            raise RuntimeError(f"automatic error recovery failed: {self.robot.state.current_errors}")
        self.fault = ""
        LOG.warning("recovered: robot mode %s", self.robot.state.robot_mode.name)

    def status(self) -> dict:
        s = self.robot.state
        return {"robot_mode": s.robot_mode.name, "fault": self.fault, "tracking": self.tracker is not None,
                "current_errors": str(s.current_errors), "last_motion_errors": str(s.last_motion_errors),
                "control_command_success_rate": float(s.control_command_success_rate)}

    def close(self) -> None:
        try:
            self._stop_tracker()
        finally:
            if self.gripper is not None:
                self.gripper.close()


# Worker drivers by name: "module:class". The class is built from the backend config as a plain dict.
DRIVERS = {
    "franky": "robot_server.backends.franka_libfranka:FrankyDriver",
    "panda_py": "robot_server.backends.panda_py:PandaPyDriver",
}


def serve(conn: Connection, driver) -> None:
    """Answer calls until the parent says close or goes away. One call at a time, in arrival order."""
    while True:
        try:
            kind, cid, method, args = conn.recv()
        except (EOFError, OSError):
            LOG.warning("robot_server went away; stopping")
            return
        if kind == "close":
            return
        try:
            if method.startswith("_") or not callable(getattr(driver, method, None)):
                raise AttributeError(f"no worker call {method!r}")
            conn.send(("ok", cid, getattr(driver, method)(*args)))
        except Exception as e:  # noqa: BLE001 - every failure goes back to the caller as a message
            LOG.debug("%s failed:\n%s", method, traceback.format_exc())
            conn.send(("error", cid, f"{type(e).__name__}: {e}"))


def worker_main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="robot worker (started by robot_server; not for direct use)")
    ap.add_argument("--driver", required=True, choices=sorted(DRIVERS))
    ap.add_argument("--fd", type=int, required=True)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"[{a.driver}-worker %(process)d] %(levelname)s %(message)s")
    # The parent orders the shutdown (close, or EOF when it dies): a Ctrl-C aimed at robot_node's process group must
    # not kill the worker mid-call, and SIGTERM still stops the tracker gracefully.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    conn = Connection(a.fd)
    try:
        cfg = conn.recv()
    except (EOFError, OSError):
        return 1
    import importlib
    module, cls = DRIVERS[a.driver].split(":")
    try:
        driver = getattr(importlib.import_module(module), cls)(cfg)
        conn.send(("ready", driver.hello()))
    except Exception as e:  # noqa: BLE001
        what = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
        conn.send(("fail", f"cannot connect to {cfg.get('hostname')!r}: {what}"))
        return 1
    try:
        serve(conn, driver)
    finally:
        try:
            driver.close()
        except Exception as e:  # noqa: BLE001
            LOG.error("close failed: %s", e)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
