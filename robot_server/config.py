"""Where the shipped configuration lives: the installed share directory (share/irevla: config/, config/backends/,
launch/), falling back to the source tree. Every default config path goes through `shipped_path`, so an installed
package (colcon, or pip with setup.py's data_files) uses its own files and a bare checkout still works."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional, Union

from robot_server.safety import HomeTarget, SafetyConfig, SafetyLayer
from robot_server.typed_config import ConfigError

LOG = logging.getLogger("robot_server.config")

PACKAGE_NAME = "irevla"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout (holds config/ and launch/ when run from source)


def share_dir() -> Optional[Path]:
    """share/irevla of the installed package: from the ament index (colcon / ROS 2 environments), else the
    interpreter's prefix (where pip puts data_files and scripts/setup.sh mirrors them); None when not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE_NAME))
    except Exception:  # ament_index missing, AMENT_PREFIX_PATH unset or without irevla: try the prefix
        pass
    prefix_share = Path(sys.prefix) / "share" / PACKAGE_NAME
    return prefix_share if (prefix_share / "package.xml").is_file() else None


def shipped_path(relative: Union[str, Path]) -> Optional[Path]:
    """A shipped file, e.g. "config/backends/realsense.yaml" or "launch/graphs.yaml"; None when neither the share
    directory nor the source tree has it."""
    for base in (share_dir(), SOURCE_ROOT):
        if base is not None and (base / relative).is_file():
            return base / relative
    return None


def shipped_config_path(name: str) -> Optional[str]:
    """Path of config/<name> (installed share directory first, else the source tree), else None."""
    found = shipped_path(Path("config") / name)
    return str(found) if found else None


def resolve_config(path: Union[str, Path]) -> Path:
    """A config path as written on a command line or in a YAML: as given when it exists (relative to the working
    directory), else the shipped file of that name for a `config/...` path (so `config/rl_session.yaml` works from
    any directory), else unchanged (the caller's error then names what the user wrote)."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    if p.parts and p.parts[0] == "config":
        found = shipped_path(p)
        if found:
            return found
    return p


def load_safety_config(path: Optional[str] = None) -> SafetyConfig:
    """The given YAML, else the shipped config/safety.yaml, else the built-in defaults (identical values)."""
    path = path or os.environ.get("IREVLA_SAFETY_CONFIG") or shipped_config_path("safety.yaml")
    return SafetyConfig.from_yaml(str(resolve_config(path))) if path else SafetyConfig()


def check_backend_home(kind: str, backend_config: Union[None, str, Path, dict], safety: SafetyConfig) -> HomeTarget:
    """Check the home of backend `kind`'s config against the safety limits, when the config loads (before any
    connection to a robot).

    A Cartesian home (sim twin, franka_ros2 `home_pos` / `home_quat_wxyz`) outside the workspace box or the
    orientation limits raises ConfigError naming the field. A joint-space home (libfranka / panda-python `home_q`)
    is checked by forward kinematics with the Franka Hand's TCP assumed (the robot reports its real flange -> TCP
    transform only once connected): a failure here is logged as a warning, and the home motion itself is refused
    by the safety layer, with the robot's own F_T_EE, before it would start.
    """
    from robot_server.backends import load_backend_config
    cfg = load_backend_config(kind, backend_config)
    home = cfg.home_target()
    nominal = safety.nominal_quat if safety.nominal_quat is not None else cfg.nominal_quat_wxyz
    problem = SafetyLayer(safety, nominal_quat=nominal).check_home(home)
    where = f"{backend_config}: " if isinstance(backend_config, (str, Path)) and backend_config else ""
    if problem and home.joint_space:
        LOG.warning("%s%s (assuming the Franka Hand TCP); homing will be refused unless the robot's TCP differs",
                    where, problem)
    elif problem:
        raise ConfigError(f"{where}{problem}; move the home inside the box or widen the box (config/safety.yaml)")
    return home
