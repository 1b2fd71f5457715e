"""Pure-numpy pose helpers for the safety layer (wxyz quaternions, base frame).

Why not sim_twin.geometry: that module wraps MuJoCo's routines, and robot_server must run on a real-robot host
where MuJoCo need not be installed. These few functions are small enough to own.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pose:
    """TCP pose in the robot base frame: position in metres, orientation as a unit wxyz quaternion."""

    pos: np.ndarray
    quat: np.ndarray

    @staticmethod
    def of(pos, quat) -> "Pose":
        return Pose(np.array(pos, dtype=float).reshape(3), quat_normalize(np.array(quat, dtype=float).reshape(4)))

    def copy(self) -> "Pose":
        return Pose(self.pos.copy(), self.quat.copy())


def quat_normalize(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=float)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"cannot normalize quaternion {q}")
    q = q / n
    # Canonical sign (w >= 0) so that equal rotations compare equal and interpolation takes the short way.
    return -q if q[0] < 0 else q


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    aw, ax, ay, az = a
    bw, bx, by, bz = b
    return np.array([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ])


def quat_conj(q: np.ndarray) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]], dtype=float)


def rotvec_to_quat(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.array([1.0, 0.0, 0.0, 0.0])
    axis = v / angle
    return np.r_[np.cos(angle / 2), np.sin(angle / 2) * axis]


def quat_to_rotvec(q: np.ndarray) -> np.ndarray:
    q = quat_normalize(q)  # w >= 0: angle in [0, pi]
    s = float(np.linalg.norm(q[1:]))
    if s < 1e-12:
        return np.zeros(3)
    angle = 2.0 * np.arctan2(s, q[0])
    return q[1:] / s * angle


def quat_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (rad, in [0, pi]) of the rotation between orientations a and b."""
    d = abs(float(np.dot(quat_normalize(a), quat_normalize(b))))
    return 2.0 * float(np.arccos(min(1.0, d)))


def quat_slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    a, b = quat_normalize(a), quat_normalize(b)
    if np.dot(a, b) < 0:
        b = -b
    rel = quat_mul(quat_conj(a), b)
    return quat_normalize(quat_mul(a, rotvec_to_quat(quat_to_rotvec(rel) * t)))


def quat_move_towards(a: np.ndarray, b: np.ndarray, max_angle: float) -> np.ndarray:
    """Orientation on the short arc from a to b, at most max_angle (rad) away from a."""
    angle = quat_angle(a, b)
    if angle <= max_angle or angle < 1e-12:
        return quat_normalize(b)
    return quat_slerp(a, b, max_angle / angle)


def pos_move_towards(a: np.ndarray, b: np.ndarray, max_dist: float) -> np.ndarray:
    d = b - a
    n = float(np.linalg.norm(d))
    if n <= max_dist or n < 1e-12:
        return np.array(b, dtype=float)
    return a + d * (max_dist / n)


def quat_to_rpy(q: np.ndarray) -> np.ndarray:
    """(roll, pitch, yaw) with q = Rz(yaw) Ry(pitch) Rx(roll), i.e. extrinsic x-y-z."""
    w, x, y, z = quat_normalize(q)
    roll = np.arctan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = np.arcsin(np.clip(2 * (w * y - z * x), -1.0, 1.0))
    yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


def rpy_to_quat(rpy: np.ndarray) -> np.ndarray:
    r, p, y = np.asarray(rpy, dtype=float) / 2
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return quat_normalize(np.array([
        cr * cp * cy + sr * sp * sy,
        sr * cp * cy - cr * sp * sy,
        cr * sp * cy + sr * cp * sy,
        cr * cp * sy - sr * sp * cy,
    ]))


def matrix_to_quat(r) -> np.ndarray:
    """Rotation matrix -> unit quaternion wxyz with w >= 0 (Shepperd's method, numerically safe)."""
    r = np.asarray(r, float)
    tr = np.trace(r)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0] * 4
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q
