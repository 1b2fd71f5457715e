"""Camera sources for camera_node: the twin's renderer (sim.py) and Intel RealSense cameras (realsense.py).

`make_camera_source(kind, config)` builds a standalone source by name (the sim cameras are built by sim_bringup,
which shares the robot's twin with them). Import paths, not classes, so pyrealsense2 loads only when used.
"""
from __future__ import annotations

import importlib

CAMERA_SOURCES: dict[str, str] = {
    "realsense": "robot_server.cameras.realsense:create",
}


def make_camera_source(kind: str, config=None, names=None):
    """The camera source registered as `kind`, from a YAML path or mapping (see config/backends/realsense.yaml);
    `names`: only these of its cameras (one camera node per camera, each opening only its own device)."""
    if kind not in CAMERA_SOURCES:
        hint = " (the sim cameras share the robot's twin: run sim_bringup)" if kind == "sim" else ""
        raise ValueError(f"unknown camera source {kind!r}; available: {sorted(CAMERA_SOURCES)}{hint}")
    module, factory = CAMERA_SOURCES[kind].split(":")
    factory = getattr(importlib.import_module(module), factory)
    return factory(config, names=tuple(names)) if names else factory(config)
