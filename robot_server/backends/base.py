"""The interface every robot backend implements (MuJoCo twin now, a real Franka later).

A backend is deliberately dumb: it executes setpoints that already passed the safety layer and reports state.
It never decides what is safe, so the sim and the real arm cannot diverge in their limits.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

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

    @abc.abstractmethod
    def home(self) -> None:
        """Move to the home pose with the backend's own (joint-space / interpolated) motion; blocks until done."""

    @abc.abstractmethod
    def recover(self) -> None:
        """Clear a recoverable controller error (a reflex on the real arm)."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Stop and keep the current measured pose."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    @abc.abstractmethod
    def home_quat(self) -> np.ndarray:
        """Nominal (gripper-down) orientation, wxyz: the centre of the safety layer's orientation limits."""
