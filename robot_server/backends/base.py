"""The interface every robot backend implements (MuJoCo twin now, a real Franka later).

A backend is deliberately dumb: it executes setpoints that already passed the safety layer and reports state.
It never decides what is safe, so the sim and the real arm cannot diverge in their limits. It does not move the arm
on its own either: home, reset and recover are driven by RobotServerCore through the safety layer. A backend only
describes its home (`home_target`: a TCP pose the core streams through the layer, or joint angles) and, for a
joint-space home, executes the planned joint motion the layer allowed (`move_home`).
"""
from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from robot_server.safety import HomeTarget

PANDA_ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))


@dataclass
class RobotState:
    stamp: float  # wall-clock time (s since the epoch) at which the state was sampled
    joint_names: tuple[str, ...]
    q: np.ndarray  # (7,) rad
    dq: np.ndarray  # (7,) rad/s
    ee_pos: np.ndarray  # (3,) m, TCP in the base frame
    ee_quat: np.ndarray  # (4,) wxyz, base frame
    gripper_width: float  # m between the fingers
    ok: bool = True
    error: str = ""
    ee_vel: Optional[np.ndarray] = field(default=None)  # (6,) linear m/s + angular rad/s, base frame, if known


class RobotBackend(abc.ABC):
    """Abstract robot. Methods may be called from several threads; implementations serialize internally."""

    @abc.abstractmethod
    def read_state(self) -> RobotState: ...

    @abc.abstractmethod
    def command_pose(self, pos: np.ndarray, quat: np.ndarray) -> None:
        """Stream a TCP setpoint (base frame, wxyz) to the Cartesian impedance controller."""

    @abc.abstractmethod
    def command_gripper(self, close: float) -> None:
        """0.0 = open, 1.0 = closed (grasp)."""

    @property
    @abc.abstractmethod
    def home_target(self) -> HomeTarget:
        """Where home is: a TCP pose (RobotServerCore streams it through the safety layer with command_pose) or
        joint angles (checked by the layer's forward kinematics, then executed by move_home)."""

    def move_home(self, home: HomeTarget) -> None:
        """Joint-space homes only: the planned joint motion to home.q, which the safety layer has just allowed;
        blocks until done. Called by RobotServerCore only."""
        raise NotImplementedError(f"{type(self).__name__} has a Cartesian home: the server streams it")

    def wait(self, seconds: float) -> None:
        """Let `seconds` of robot time pass (a hand-stepped simulation steps its physics instead)."""
        time.sleep(seconds)

    @abc.abstractmethod
    def recover(self) -> None:
        """Clear a recoverable controller error (a reflex on the real arm). Moves nothing: afterwards the server
        re-seats the setpoint through the safety layer (or holds natively when the measured pose is unusable)."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Stop and keep the current measured pose."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def home_quat(self) -> np.ndarray:
        """Nominal (gripper-down) orientation, wxyz: the centre of the safety layer's orientation limits."""
