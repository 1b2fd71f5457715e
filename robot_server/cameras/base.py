"""The interface camera_node publishes from.

Threading contract: `open()`, `read()` and `close()` are all called from ONE dedicated thread (the node's capture
thread), because MuJoCo's EGL rendering context - like many camera SDK handles - is bound to the thread that made it.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Frame:
    name: str
    image: np.ndarray  # HxWx3 uint8, RGB
    stamp: float  # wall-clock seconds since the epoch at which the image was captured (rendered)


class CameraSource(abc.ABC):
    @property
    @abc.abstractmethod
    def names(self) -> tuple[str, ...]:
        """Camera names; each is published on /irevla/camera/<name>/image_raw."""

    def open(self) -> None:
        """Acquire thread-bound resources (called in the capture thread before the first read)."""

    @abc.abstractmethod
    def read(self, name: str) -> Frame: ...

    def close(self) -> None:
        """Release resources (called in the capture thread after the last read)."""

    def intrinsics(self, name: str):
        """Pinhole intrinsics of the published images (robot_server.cell_frames.Intrinsics, after any crop and
        resize), or None while unknown (a device not yet started)."""
        return None
