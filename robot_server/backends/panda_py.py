"""Franka Emika Panda on robot system 4.x through panda-python (it bundles libfranka 0.9.2), in a worker process.

System 4.x robots speak an older FCI protocol than libfranka >= 0.10 (franky, pylibfranka, franka_ros2), so they
need their own binding; panda-python is the maintained one on the package registry (`pip install
panda-python==1.1.1`, which adds requests and websockets). It runs in the same kind of worker process as the FR3
backend (franka_libfranka.py: same interface, same socket protocol, same fault latching), for the same reason:
libfranka builds must not share a process.

Control: panda-python's CartesianImpedance torque controller runs in its C++ thread at 1 kHz. It has no error
clipping; instead its first-order filter (`filter_coeff`, applied every 1 ms cycle) interpolates the reference from
the old to the new target, so 10 Hz target steps become smooth 1 kHz references. Home is its planned joint motion
to `home_q`, which robot_server first checks against the safety box by forward kinematics (with the robot's F_T_EE).
Reflexes: panda-python's controller thread stops on a libfranka error; the robot's mode / error flags are checked on
every state read and latched as for the FR3 until the recover service calls `recover()`.

No simulator speaks the libfranka 0.9 protocol, so beyond the import and the version check at connect
(tests/test_backend_franky_sim.py) and its home check at the safety layer with its own config
(tests/test_home_safety.py) this backend is untested here; try it on the robot in the safe first-motion setting of
docs/lab_setup.md.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from robot_server.backends import load_config
from robot_server.backends.franka_libfranka import (GRIPPER_DOWN_WXYZ, CollisionConfig, GripperConfig, GripperWorker,
                                                    WorkerBackend, matrix_to_quat)
from robot_server.safety import HomeTarget

LOG = logging.getLogger("robot_server.backends.panda_py")

PANDA_READY_Q = (0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398)


@dataclass(frozen=True)
class PandaImpedanceConfig:
    translational_stiffness: float = 2000.0  # N/m
    rotational_stiffness: float = 150.0  # Nm/rad
    damping_ratio: float = 1.0
    nullspace_stiffness: float = 0.5
    filter_coeff: float = 0.02  # per 1 ms cycle: the reference moves 2 % of the way to the target (tau ~ 50 ms)

    def __post_init__(self):
        if not (0.0 < self.filter_coeff <= 1.0):
            raise ValueError(f"impedance.filter_coeff must lie in (0, 1], got {self.filter_coeff}")
        for name in ("translational_stiffness", "rotational_stiffness", "damping_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"impedance.{name} must be positive")


@dataclass(frozen=True)
class PandaPyConfig:
    hostname: str = "172.16.0.2"
    arm_id: str = "panda"
    python: str = ""
    extra_pythonpath: tuple[str, ...] = ()
    realtime: bool = True
    home_q: tuple[float, ...] = PANDA_READY_Q
    home_speed_factor: float = 0.2  # panda-python's speed_factor for the planned joint motion
    open_gripper_on_home: bool = True
    nominal_quat_wxyz: tuple[float, float, float, float] = GRIPPER_DOWN_WXYZ
    impedance: PandaImpedanceConfig = field(default_factory=PandaImpedanceConfig)
    collision: CollisionConfig = field(default_factory=CollisionConfig)
    gripper: GripperConfig = field(default_factory=GripperConfig)
    connect_timeout_s: float = 30.0
    rpc_timeout_s: float = 2.0
    home_timeout_s: float = 60.0

    def __post_init__(self):
        if len(self.home_q) != 7:
            raise ValueError(f"home_q needs 7 joint angles, got {len(self.home_q)}")
        if not 0.0 < self.home_speed_factor <= 1.0:
            raise ValueError("home_speed_factor must lie in (0, 1]")
        if not all(np.isfinite(self.home_q)):
            raise ValueError(f"home_q must be finite, got {self.home_q}")

    def home_target(self, section: str = "panda_py", f_t_ee=None) -> HomeTarget:
        """The joint-space home for the safety layer's forward-kinematics check. f_t_ee: flange -> TCP as the
        robot reports it (16 values, column major); None (config load, no robot yet): the Franka Hand."""
        return HomeTarget(q=tuple(self.home_q), f_t_ee=None if f_t_ee is None else tuple(map(float, f_t_ee)),
                          source=f"{section}.home_q", timeout_s=self.home_timeout_s)


class PandaPyBackend(WorkerBackend):
    driver = "panda_py"
    config_section = "panda_py"

    def __init__(self, config: Optional[PandaPyConfig] = None):
        config = config or PandaPyConfig()
        super().__init__(config, joint_names=tuple(f"{config.arm_id}_joint{i}" for i in range(1, 8)))


def create(config=None, task: Optional[str] = None, seed: Optional[int] = None) -> PandaPyBackend:
    return PandaPyBackend(load_config(PandaPyConfig, config, section="panda_py"))


class PandaPyDriver:
    """The robot end of the worker for panda-python (runs in the worker process)."""

    def __init__(self, cfg: dict):
        try:
            import panda_py
            from panda_py import controllers, libfranka
        except ImportError as e:
            raise RuntimeError(
                f"panda_py is not importable by {sys.executable} ({e}). For a Panda on system 4.x install it into "
                "the venv: `pip install panda-python==1.1.1`, or set `python` / `extra_pythonpath` in the panda_py "
                "backend config") from None
        self.cfg, self.controllers, self.libfranka = cfg, controllers, libfranka
        rt = libfranka.RealtimeConfig.kEnforce if cfg["realtime"] else libfranka.RealtimeConfig.kIgnore
        try:
            self.panda = panda_py.Panda(cfg["hostname"], realtime_config=rt)
        except Exception as e:  # noqa: BLE001 - the usual cause deserves the explanation, whatever the type
            raise RuntimeError(
                f"{type(e).__name__}: {e}. panda-python bundles libfranka 0.9 (Panda, robot system 4.x); a robot on "
                "system >= 5 or an FR3 speaks a newer protocol: use the franka_libfranka backend for it "
                "(docs/lab_setup.md, 'system version -> backend')") from None
        self.robot = self.panda.get_robot()
        if self.panda.get_state().robot_mode == libfranka.RobotMode.kReflex:
            LOG.warning("robot in reflex mode at connect; running automatic error recovery")
            self.panda.recover()
        c = cfg["collision"]
        self.robot.set_collision_behavior(list(c["lower_torque_thresholds"]), list(c["upper_torque_thresholds"]),
                                          list(c["lower_force_thresholds"]), list(c["upper_force_thresholds"]))
        self.ctrl = None
        self.fault = ""
        self.gripper = None
        if cfg["gripper"]["enabled"]:
            g = libfranka.Gripper(cfg["hostname"])
            self.gripper = GripperWorker(
                cfg["gripper"], move=g.move,
                grasp=lambda w, s, f, ei, eo: g.grasp(w, s, f, ei, eo),
                read_width=lambda: g.read_once().width, max_width=g.read_once().max_width)

    def hello(self) -> dict:
        return {"binding": "panda-python (libfranka 0.9)", "robot_mode": str(self.panda.get_state().robot_mode),
                "gripper": self.gripper is not None}

    def _check(self):
        state = self.panda.get_state()  # refreshed by the controller at 1 kHz, else read once
        mode = state.robot_mode
        if self.ctrl is not None and not self.panda.is_moving():
            self.ctrl = None
            self._set_fault(f"controller stopped (robot mode {mode}, errors {state.current_errors})")
        elif not self.fault and mode in (self.libfranka.RobotMode.kReflex, self.libfranka.RobotMode.kUserStopped):
            self._set_fault(f"robot mode {mode}: {state.current_errors}")
        return state

    def _set_fault(self, message: str) -> None:
        self.fault = f"reflex: {message}; call the recover service"
        LOG.error(self.fault)

    def read_state(self) -> dict:
        s = self._check()
        m = np.asarray(s.O_T_EE, float).reshape(4, 4, order="F")  # libfranka: column major
        g = self.gripper
        return {"stamp": time.time(), "q": np.asarray(s.q), "dq": np.asarray(s.dq), "ee_pos": m[:3, 3].copy(),
                "ee_quat": matrix_to_quat(m[:3, :3]), "gripper_width": g.width if g is not None else 0.0,
                "ok": not self.fault, "error": self.fault or (g.error if g is not None else ""), "ee_vel": None}

    @staticmethod
    def _xyzw(quat_wxyz) -> np.ndarray:
        w, x, y, z = np.asarray(quat_wxyz, float)
        return np.array([x, y, z, w])

    def command_pose(self, pos, quat) -> None:
        self._check()
        if self.fault:
            raise RuntimeError(f"command_pose refused: {self.fault}")
        if self.ctrl is None:
            imp = self.cfg["impedance"]
            k = np.diag([imp["translational_stiffness"]] * 3 + [imp["rotational_stiffness"]] * 3)
            self.ctrl = self.controllers.CartesianImpedance(
                impedance=k, damping_ratio=imp["damping_ratio"], nullspace_stiffness=imp["nullspace_stiffness"],
                filter_coeff=imp["filter_coeff"])
            self.panda.start_controller(self.ctrl)
            LOG.info("impedance control started")
        self.ctrl.set_control(np.asarray(pos, float), self._xyzw(quat))

    def hold(self) -> None:
        self._check()
        if self.ctrl is not None:
            self.ctrl.set_control(self.panda.get_position(), self.panda.get_orientation())

    def command_gripper(self, close: float) -> None:
        if self.gripper is None:  # an arm without a hand: the action's gripper component means nothing
            if not getattr(self, "_warned_no_gripper", False):
                LOG.warning("gripper command ignored: no gripper configured (gripper.enabled: false)")
                self._warned_no_gripper = True
            return
        self.gripper.command(close)

    def flange_to_tcp(self) -> list:
        """F_T_EE (flange -> TCP) as the robot uses it for O_T_EE: 16 values, column major."""
        return [float(v) for v in self.panda.get_state().F_T_EE]

    def home(self, q) -> None:
        """Planned joint motion to q (robot_server checked its TCP against the safety box first)."""
        self._check()
        if self.fault:
            raise RuntimeError(f"home refused: {self.fault}")
        if self.ctrl is not None:
            self.panda.stop_controller()
            self.ctrl = None
        if self.gripper is not None and self.cfg["open_gripper_on_home"]:
            self.gripper.command(0.0)
        if not self.panda.move_to_joint_position(np.asarray(q, float), speed_factor=self.cfg["home_speed_factor"]):
            self._check()
            raise RuntimeError(f"home motion did not reach {list(q)}: {self.fault or 'no error reported'}")

    def recover(self) -> None:
        if self.ctrl is not None:
            self.panda.stop_controller()
            self.ctrl = None
        self.panda.recover()
        self.fault = ""
        LOG.warning("recovered: robot mode %s", self.panda.get_state().robot_mode)

    def status(self) -> dict:
        s = self.panda.get_state()
        return {"robot_mode": str(s.robot_mode), "fault": self.fault, "tracking": self.ctrl is not None,
                "current_errors": str(s.current_errors)}

    def close(self) -> None:
        try:
            if self.ctrl is not None:
                self.panda.stop_controller()
        finally:
            if self.gripper is not None:
                self.gripper.close()
