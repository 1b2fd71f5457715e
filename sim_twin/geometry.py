"""Small rotation helpers on MuJoCo's own quaternion routines (wxyz convention everywhere)."""
from __future__ import annotations

import mujoco
import numpy as np


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(4)
    mujoco.mju_mulQuat(out, np.asarray(a, float), np.asarray(b, float))
    return out


def quat_conj(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, float)
    return np.array([q[0], -q[1], -q[2], -q[3]])


def axis_angle_to_quat(rotvec: np.ndarray) -> np.ndarray:
    rotvec = np.asarray(rotvec, float)
    angle = float(np.linalg.norm(rotvec))
    out = np.array([1.0, 0.0, 0.0, 0.0])
    if angle > 1e-12:
        mujoco.mju_axisAngle2Quat(out, rotvec / angle, angle)
    return out


def quat_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """Rotation vector of q, taking the short way round."""
    q = np.asarray(q, float)
    q = q / np.linalg.norm(q)
    if q[0] < 0:
        q = -q
    out = np.zeros(3)
    mujoco.mju_quat2Vel(out, q, 1.0)
    return out


def quat_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame) that rotates `current` onto `target`."""
    return quat_to_axis_angle(quat_mul(target, quat_conj(current)))


def apply_rotvec(q: np.ndarray, rotvec: np.ndarray) -> np.ndarray:
    """Rotate orientation q by a world-frame rotation vector."""
    out = quat_mul(axis_angle_to_quat(rotvec), q)
    return out / np.linalg.norm(out)


def mat_to_quat(mat: np.ndarray) -> np.ndarray:
    out = np.empty(4)
    mujoco.mju_mat2Quat(out, np.asarray(mat, float).reshape(9))
    return out


def yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quat_to_rpy(q: np.ndarray) -> np.ndarray:
    """Roll, pitch, yaw (extrinsic xyz) of a wxyz quaternion."""
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


def rpy_to_quat(rpy: np.ndarray) -> np.ndarray:
    r, p, y = np.asarray(rpy, float) / 2
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([
        cr * cp * cy + sr * sp * sy,
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
    ])
