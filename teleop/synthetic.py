"""Synthetic steps for tests, benchmarks and dry runs of the recorder (deterministic, no robot or camera)."""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

from teleop.episode_format import CameraConfig


def synthetic_images(cameras: Iterable[CameraConfig], k: int, noise: bool = False) -> dict[str, np.ndarray]:
    out = {}
    for ci, c in enumerate(cameras):
        yy, xx = np.mgrid[0:c.height, 0:c.width]
        img = np.stack([(xx * 255 // max(c.width - 1, 1) + 7 * k) % 256,
                        (yy * 255 // max(c.height - 1, 1) + 11 * k + 40 * ci) % 256,
                        np.full_like(xx, (13 * k + 90 * ci) % 256)], -1).astype(np.uint8)
        if noise:
            rng = np.random.default_rng(1000 * ci + k)
            img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        out[c.name] = img
    return out


def synthetic_state(k: int, n_joints: int = 7) -> dict:
    q = 0.1 * np.sin(np.arange(n_joints) + 0.05 * k)
    ang = 0.01 * k
    return {"q": q, "dq": 0.05 * np.cos(np.arange(n_joints) + 0.05 * k),
            "ee_pos": np.array([0.45 + 0.001 * k, 0.002 * k, 0.25 - 0.001 * k]),
            "ee_quat": np.array([0.0, np.cos(ang / 2), 0.0, np.sin(ang / 2)]),  # wxyz, unit
            "gripper_width": 0.08 - 0.0005 * k}


def synthetic_action(k: int) -> np.ndarray:
    a = np.array([np.sin(0.1 * k + i) for i in range(6)] + [1.0 if (k // 10) % 2 else -1.0])
    return np.clip(a, -1.0, 1.0)


def record_episode(rec, n_steps: int, task: str = "pick_red_block", success: bool = True, t0: float = 1.7e9,
                   instruction: Optional[str] = None, noise: bool = False, operator: str = "tester") -> dict:
    """Record one synthetic episode with `rec` (an EpisodeRecorder); returns its index entry."""
    rec.start(task, "expert", instruction or f"do {task}", operator)
    dt = 1.0 / rec.config.control_hz
    for k in range(n_steps):
        rec.add_step(synthetic_images(rec.config.cameras, k, noise), synthetic_state(k), synthetic_action(k),
                     t0 + k * dt)
    return rec.stop(success)
