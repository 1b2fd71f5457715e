"""Camera sources for camera_node: the twin's renderer (sim.py) and Intel RealSense cameras (realsense.py).

`make_camera_source(kind, config)` builds a standalone source by name (the sim cameras are built by sim_bringup,
which shares the robot's twin with them). Import paths, not classes, so pyrealsense2 loads only when used.
"""
from __future__ import annotations

import importlib

CAMERA_SOURCES: dict[str, str] = {
    "realsense": "robot_server.cameras.realsense:create",
}


def make_camera_source(kind: str, config=None):
    """The camera source registered as `kind`, from a YAML path or mapping (see config/backends/realsense.yaml)."""
    if kind not in CAMERA_SOURCES:
        hint = " (the sim cameras share the robot's twin: run sim_bringup)" if kind == "sim" else ""
        raise ValueError(f"unknown camera source {kind!r}; available: {sorted(CAMERA_SOURCES)}{hint}")
    module, factory = CAMERA_SOURCES[kind].split(":")
    return getattr(importlib.import_module(module), factory)(config)
