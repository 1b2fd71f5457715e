"""Where the cell's frames are: camera extrinsics (a calibration YAML, or the twin's own model), the TCP frame and
pinhole intrinsics, as plain data. robot_node turns them into TF (/tf_static for the cameras, /tf for the TCP) and
camera_node into sensor_msgs/CameraInfo, for every backend and camera source alike.

Frames (REP 103/105): the robot base `panda_link0`, the TCP `irevla_tcp` (the pose robot_node reports), and one
`<name>_camera_optical_frame` per camera (z forward, x right, y down), which image headers name.

Calibration YAML (e.g. config/calibration.yaml; hand-eye results go here):

    calibration:
      cameras:
        front: {parent: base, xyz: [1.05, 0.0, 0.72], quat_wxyz: [...]}   # eye-to-hand: relative to the base
        wrist: {parent: tcp,  xyz: [0.0, 0.08, -0.05], quat_wxyz: [...]}   # eye-in-hand: relative to the TCP
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

BASE_FRAME = "panda_link0"
TCP_FRAME = "irevla_tcp"
PARENTS = {"base": BASE_FRAME, "tcp": TCP_FRAME}
# MuJoCo cameras look along -z with y up; an optical frame looks along +z with y down: a half turn about x.
_MJ_TO_OPTICAL = np.array([0.0, 1.0, 0.0, 0.0])


class CalibrationError(ValueError):
    """A calibration file that cannot be used (missing camera, bad numbers)."""


def camera_frame(name: str) -> str:
    return f"{name}_camera_optical_frame"


@dataclass(frozen=True)
class Transform:
    parent: str
    child: str
    xyz: tuple[float, float, float]
    quat_wxyz: tuple[float, float, float, float]


@dataclass(frozen=True)
class Intrinsics:
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def cropped_resized(self, crop: Optional[tuple], resize: Optional[tuple]) -> "Intrinsics":
        """The same camera after a crop box (x, y, w, h) and a resize to (w, h), as camera sources apply them."""
        out = self
        if crop is not None:
            x, y, w, h = crop
            out = Intrinsics(int(w), int(h), out.fx, out.fy, out.cx - x, out.cy - y)
        if resize is not None:
            sx, sy = resize[0] / out.width, resize[1] / out.height
            out = Intrinsics(int(resize[0]), int(resize[1]), out.fx * sx, out.fy * sy,
                             (out.cx + 0.5) * sx - 0.5, (out.cy + 0.5) * sy - 0.5)
        return out


def pinhole_from_fovy(fovy_deg: float, width: int, height: int) -> Intrinsics:
    """A MuJoCo camera: square pixels, vertical field of view fovy, principal point at the image centre."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return Intrinsics(int(width), int(height), f, f, (width - 1) / 2, (height - 1) / 2)


def _quat_mul(a, b) -> np.ndarray:
    w1, x1, y1, z1 = a
    w2, x2, y2, z2 = b
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def _quat_conj(q) -> np.ndarray:
    return np.array([q[0], -q[1], -q[2], -q[3]], float)


def _rotate(q, v) -> np.ndarray:
    return _quat_mul(_quat_mul(q, [0.0, *v]), _quat_conj(q))[1:]


def relative(parent_pos, parent_quat, child_pos, child_quat) -> tuple[np.ndarray, np.ndarray]:
    """The child's pose in the parent's frame, from both poses in a common frame."""
    inv = _quat_conj(np.asarray(parent_quat, float))
    xyz = _rotate(inv, np.asarray(child_pos, float) - np.asarray(parent_pos, float))
    q = _quat_mul(inv, child_quat)
    return xyz, q / np.linalg.norm(q)


def tcp_transform(ee_pos, ee_quat_wxyz) -> Transform:
    return Transform(BASE_FRAME, TCP_FRAME, tuple(float(v) for v in ee_pos),
                     tuple(float(v) for v in np.asarray(ee_quat_wxyz, float) / np.linalg.norm(ee_quat_wxyz)))


def load_calibration(path, cameras=None) -> list[Transform]:
    """Camera transforms from a calibration YAML; `cameras` (names) must all be there."""
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        entries = (doc.get("calibration") or {}).get("cameras") or {}
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise CalibrationError(f"cannot read calibration {path}: {e}") from e
    missing = [c for c in (cameras or ()) if c not in entries]
    if missing:
        raise CalibrationError(f"{path}: no calibration for camera(s) {missing} (has {sorted(entries)})")
    out = []
    for name, e in entries.items():
        try:
            parent = PARENTS[e.get("parent", "base")]
            xyz = np.asarray(e["xyz"], float)
            q = np.asarray(e["quat_wxyz"], float)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CalibrationError(f"{path}: camera {name!r} needs parent (base|tcp), xyz and quat_wxyz "
                                   f"({exc!r})") from exc
        if xyz.shape != (3,) or q.shape != (4,) or not (np.isfinite(xyz).all() and np.isfinite(q).all()) \
                or abs(np.linalg.norm(q) - 1.0) > 1e-3:
            raise CalibrationError(f"{path}: camera {name!r}: xyz must be 3 finite numbers and quat_wxyz a unit "
                                   "quaternion")
        out.append(Transform(parent, camera_frame(name), tuple(xyz.tolist()), tuple(q.tolist())))
    return out


def twin_calibration(model, data, camera_ids: dict[str, int], tcp_site: int) -> list[Transform]:
    """The twin's cameras as a calibration: fixed cameras relative to the base (the world origin), cameras mounted on
    the hand relative to the TCP; optical frames. `data` must be forwarded (mj_forward)."""
    import mujoco
    tcp_pos = data.site_xpos[tcp_site]
    tcp_quat = np.empty(4)
    mujoco.mju_mat2Quat(tcp_quat, data.site_xmat[tcp_site])
    out = []
    for name, cid in camera_ids.items():
        cam_quat = np.empty(4)
        mujoco.mju_mat2Quat(cam_quat, data.cam_xmat[cid])
        optical = _quat_mul(cam_quat, _MJ_TO_OPTICAL)
        if model.cam_bodyid[cid] == 0:  # fixed in the world
            xyz, q = np.asarray(data.cam_xpos[cid], float), optical / np.linalg.norm(optical)
            parent = BASE_FRAME
        else:
            xyz, q = relative(tcp_pos, tcp_quat, data.cam_xpos[cid], optical)
            parent = TCP_FRAME
        out.append(Transform(parent, camera_frame(name), tuple(float(v) for v in xyz), tuple(float(v) for v in q)))
    return out


def write_calibration(transforms: list[Transform], path) -> None:
    """The inverse of load_calibration (e.g. to start a real cell's file from the twin's layout)."""
    back = {v: k for k, v in PARENTS.items()}
    cams = {t.child.replace("_camera_optical_frame", ""): {"parent": back[t.parent], "xyz": [round(v, 6) for v in t.xyz],
                                                           "quat_wxyz": [round(v, 6) for v in t.quat_wxyz]}
            for t in transforms}
    Path(path).write_text(yaml.safe_dump({"calibration": {"cameras": cams}}, sort_keys=False))
