"""Robot backends: everything below the safety layer. Only robot_server code calls them.

`make_backend(kind, config=...)` builds one by name. The registry holds import paths, not classes, so choosing the
twin never imports a robot binding (and a missing binding only fails for the backend that needs it):

    sim                the MuJoCo twin (backends/sim.py)
    franka_libfranka   FR3 / system >= 5 through franky-control in a worker process (backends/franka_libfranka.py)
    panda_py           Panda on system 4.x through panda-python (libfranka 0.9) in a worker process (backends/panda_py.py)
    franka_ros2        FR3 through franka_ros2 topics + a Cartesian impedance controller (backends/franka_ros2.py)

Hardware backends take a YAML config (config/backends/*.yaml); `load_config(cls, source)` turns a path or mapping
into the backend's typed dataclass, rejecting unknown keys and wrong types with the offending key in the message.
`load_backend_config(kind, source)` does that for a backend by name (without connecting to anything): its
`home_target()` is what robot_server checks against the safety box when the config loads
(robot_server/config.py: `check_backend_home`).
"""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Optional, TypeVar, Union

import yaml

# The project's typed YAML loader; its ConfigError is the one raised for backend configs too.
from robot_server.typed_config import ConfigError, from_dict

T = TypeVar("T")

# name -> "module:factory"; the factory is called as factory(config, task=..., seed=...).
BACKENDS: dict[str, str] = {
    "sim": "robot_server.backends:create_sim",
    "franka_libfranka": "robot_server.backends.franka_libfranka:create",
    "panda_py": "robot_server.backends.panda_py:create",
    "franka_ros2": "robot_server.backends.franka_ros2:create",
}

# The names a lab uses for its arm (the launch graphs' `robot` argument) -> the backend that drives it.
ROBOT_ALIASES: dict[str, str] = {"fr3": "franka_libfranka", "panda": "panda_py"}


def backend_name(name: str) -> str:
    """A backend name or a robot alias (fr3, panda) -> the backend name."""
    return ROBOT_ALIASES.get(name, name)


def default_backend_config(kind: str) -> Optional[str]:
    """The shipped YAML of a hardware backend (config/backends/<kind>.yaml), or None (sim, or not shipped)."""
    if kind == "sim":
        return None
    from robot_server.config import shipped_path
    found = shipped_path(f"config/backends/{kind}.yaml")
    return str(found) if found is not None else None


# name -> ("module:ConfigClass", YAML section)
BACKEND_CONFIGS: dict[str, tuple[str, Optional[str]]] = {
    "sim": ("robot_server.backends:SimBackendConfig", "sim"),
    "franka_libfranka": ("robot_server.backends.franka_libfranka:FrankaLibfrankaConfig", "franka_libfranka"),
    "panda_py": ("robot_server.backends.panda_py:PandaPyConfig", "panda_py"),
    "franka_ros2": ("robot_server.backends.franka_ros2:FrankaRos2Config", "franka_ros2"),
}


def load_backend_config(kind: str, config: Union[None, str, Path, dict] = None):
    """The typed config of backend `kind` from a YAML path / mapping (None: defaults), as its factory loads it."""
    if kind not in BACKEND_CONFIGS:
        raise ValueError(f"unknown backend {kind!r}; available: {sorted(BACKEND_CONFIGS)}")
    target, section = BACKEND_CONFIGS[kind]
    module, name = target.split(":")
    return load_config(getattr(importlib.import_module(module), name), config, section)


def make_backend(kind: str, config: Union[None, str, Path, dict] = None, task: Optional[str] = None,
                 seed: Optional[int] = None):
    """Build the backend registered as `kind` (see BACKENDS) from a YAML path / mapping (None: its defaults)."""
    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; available: {sorted(BACKENDS)}")
    module, factory = BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module), factory)(config, task=task, seed=seed)


@dataclasses.dataclass
class SimBackendConfig:
    image_size: int = 224  # camera render size: match what the policy was trained on (the default model: 96)
    render_detail: str = "fast"

    def home_target(self, section: str = "sim"):
        """The twin's home (sim_twin/twin.py; not configurable): checked against the safety box like the others."""
        from robot_server.safety import HomeTarget
        from sim_twin.twin import HOME_POS, HOME_QUAT
        return HomeTarget(pos=tuple(HOME_POS), quat=tuple(HOME_QUAT),
                          source="sim twin home (sim_twin/twin.py HOME_POS, HOME_QUAT)")

    @property
    def nominal_quat_wxyz(self) -> tuple[float, ...]:
        from sim_twin.twin import HOME_QUAT
        return tuple(float(v) for v in HOME_QUAT)


def create_sim(config=None, task: Optional[str] = None, seed: Optional[int] = None):
    """The real-time twin (tasks come from the registry; the config sets the camera render size)."""
    cfg = load_config(SimBackendConfig, config, "sim")
    from robot_server.backends.sim import SimTwinBackend
    from sim_twin.twin import TwinConfig
    twin_cfg = TwinConfig(render_width=cfg.image_size, render_height=cfg.image_size, render_detail=cfg.render_detail)
    return SimTwinBackend(config=twin_cfg, task=task or None, seed=seed, realtime=True)


def load_config(cls: type[T], source: Union[None, str, Path, dict], section: Optional[str] = None) -> T:
    """Typed dataclass `cls` from a YAML file path or a mapping (None: defaults).

    With `section`, a top-level key of that name is used when present (so one file may hold several sections).
    """
    where = ""
    if isinstance(source, (str, Path)):
        where = f"{source}: "
        with open(source, encoding="utf-8") as f:
            source = yaml.safe_load(f)
    data = source or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping, got {type(data).__name__}")
    if section is not None and isinstance(data.get(section), dict):
        data = data[section]
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
