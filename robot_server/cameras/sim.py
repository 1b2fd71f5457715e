"""Cameras of the MuJoCo twin, rendered from the same twin the robot backend steps (under its lock)."""
from __future__ import annotations

from typing import Optional, Sequence

from robot_server.backends.sim import SimTwinBackend
from robot_server.cameras.base import CameraSource, Frame


class SimCameraSource(CameraSource):
    def __init__(self, backend: SimTwinBackend, names: Optional[Sequence[str]] = None):
        self.backend = backend
        self._names = tuple(names) if names else backend.cameras

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def read(self, name: str) -> Frame:
        # Stamped under the twin's lock: the stamp is the moment of the physics state the image shows.
        image, stamp = self.backend.render_stamped(name)
        return Frame(name, image, stamp)

    def intrinsics(self, name: str):
        return self.backend.camera_intrinsics(name)

    def close(self) -> None:
        # The renderers were created in this (capture) thread; free them here, not in the backend's thread.
        self.backend.release_renderers()
