"""Where the shipped configuration lives, in a source checkout and in an installed (colcon / pip) package."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from robot_server.safety import SafetyConfig

PACKAGE_NAME = "irevla"


def shipped_config_path(name: str) -> Optional[str]:
    """Path of config/<name> from the source tree, else from the installed share directory, else None."""
    candidates = [Path(__file__).resolve().parent.parent / "config" / name]
    try:  # installed with colcon / ament: share/irevla/config
        from ament_index_python.packages import get_package_share_directory
        candidates.append(Path(get_package_share_directory(PACKAGE_NAME)) / "config" / name)
    except Exception:  # not installed as an ament package, or ament_index missing: fine
        pass
    for c in candidates:
        if c.is_file():
            return str(c)
    return None


def load_safety_config(path: Optional[str] = None) -> SafetyConfig:
    """The given YAML, else the shipped config/safety.yaml, else the built-in defaults (identical values)."""
    path = path or os.environ.get("IREVLA_SAFETY_CONFIG") or shipped_config_path("safety.yaml")
    return SafetyConfig.from_yaml(path) if path else SafetyConfig()
