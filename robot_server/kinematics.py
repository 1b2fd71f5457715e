"""Forward kinematics of the Franka arms (Panda and FR3 share the same kinematic parameters), pure numpy.

Used by the safety layer to check a joint-space home (`home_q` of the libfranka and panda-python backends) against
the workspace box BEFORE the arm is moved there: the TCP pose of a joint configuration is

    O_T_EE(q) = T_1(q1) ... T_7(q7) * T_flange * F_T_EE

with Franka's published Denavit-Hartenberg parameters (Craig's modified convention: each joint frame is
RotX(alpha_{i-1}) TransX(a_{i-1}) RotZ(theta_i) TransZ(d_i)), the flange 0.107 m along joint 7's axis, and F_T_EE
the flange -> TCP transform. libfranka reports F_T_EE in its robot state (set in Desk, or by `set_ee`); the default
below is the Franka Hand's (TCP 0.1034 m beyond the flange, rotated -45 deg about the tool axis), which gives the
well-known TCP of the "ready" pose q = (0, -pi/4, 0, -3pi/4, 0, pi/2, pi/4): (0.307, 0.0, 0.487) m, gripper down.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

# (a_{i-1}, d_i, alpha_{i-1}) per joint, metres and radians (Franka's documentation; identical for Panda and FR3).
FRANKA_DH: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.333, 0.0),
    (0.0, 0.0, -math.pi / 2),
    (0.0, 0.316, math.pi / 2),
    (0.0825, 0.0, math.pi / 2),
    (-0.0825, 0.384, -math.pi / 2),
    (0.0, 0.0, math.pi / 2),
    (0.088, 0.0, math.pi / 2),
)
FLANGE_D = 0.107  # joint 7 frame -> flange, along z
FRANKA_HAND_TCP_Z = 0.1034  # flange -> Franka Hand TCP, along z


def _rot_z(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0, 0.0], [s, c, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _modified_dh(a: float, d: float, alpha: float, theta: float) -> np.ndarray:
    ca, sa, ct, st = math.cos(alpha), math.sin(alpha), math.cos(theta), math.sin(theta)
    return np.array([[ct, -st, 0.0, a],
                     [st * ca, ct * ca, -sa, -d * sa],
                     [st * sa, ct * sa, ca, d * ca],
                     [0.0, 0.0, 0.0, 1.0]])


def franka_hand_f_t_ee() -> np.ndarray:
    """Flange -> TCP of the Franka Hand (libfranka's default F_T_EE with the hand mounted)."""
    m = _rot_z(-math.pi / 4)
    m[2, 3] = FRANKA_HAND_TCP_Z
    return m


def as_transform(t) -> np.ndarray:
    """A 4x4 homogeneous transform from a 4x4 array or 16 values in libfranka's column-major order."""
    m = np.asarray(t, dtype=float)
    if m.shape == (16,):
        m = m.reshape(4, 4, order="F")
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"expected a finite 4x4 transform (or 16 values, column major), got shape {m.shape}")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]) or not np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3),
                                                                          atol=1e-4):
        raise ValueError("not a rigid transform (bottom row must be 0 0 0 1, rotation orthonormal)")
    return m


def franka_fk(q, f_t_ee: Optional[np.ndarray] = None) -> np.ndarray:
    """O_T_EE (4x4, robot base frame) of joint angles q (7 values, rad); f_t_ee: flange -> TCP (default: the
    Franka Hand)."""
    q = np.asarray(q, dtype=float).reshape(-1)
    if q.shape != (7,) or not np.all(np.isfinite(q)):
        raise ValueError(f"expected 7 finite joint angles, got {np.asarray(q).tolist()}")
    m = np.eye(4)
    for (a, d, alpha), theta in zip(FRANKA_DH, q):
        m = m @ _modified_dh(a, d, alpha, float(theta))
    flange = np.eye(4)
    flange[2, 3] = FLANGE_D
    return m @ flange @ (franka_hand_f_t_ee() if f_t_ee is None else as_transform(f_t_ee))
