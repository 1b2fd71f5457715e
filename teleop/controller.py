"""Device + mapper = one teleop source: `Teleop.step()` reads the device once and returns a TeleopCommand.

The ROS teleop node (later) only calls `step()` at the control rate and publishes `command.action`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from teleop.config import from_dict, load_yaml
from teleop.devices import KeyboardDevice, SpaceMouseDevice
from teleop.mapping import KeyboardConfig, KeyboardMapper, SpaceMouseConfig, SpaceMouseMapper, TeleopCommand

DEVICES = ("spacemouse", "keyboard")


@dataclass(frozen=True)
class TeleopConfig:
    device: str = "spacemouse"
    spacemouse: SpaceMouseConfig = field(default_factory=SpaceMouseConfig)
    keyboard: KeyboardConfig = field(default_factory=KeyboardConfig)

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "TeleopConfig":
        return from_dict(cls, data)

    @classmethod
    def from_yaml(cls, path: Union[str, Path], section: Optional[str] = "teleop") -> "TeleopConfig":
        return load_yaml(cls, path, section)


class Teleop:
    """One input device and its pure mapper. `device` needs `open()`, `read()`, `close()`."""

    def __init__(self, device: Any, mapper: Union[SpaceMouseMapper, KeyboardMapper]):
        self.device = device
        self.mapper = mapper

    def open(self) -> "Teleop":
        self.device.open()
        return self

    def step(self) -> TeleopCommand:
        return self.mapper.map(self.device.read())

    def reset(self) -> None:
        """Back to the initial gripper state (call at episode start)."""
        self.mapper.reset()

    def close(self) -> None:
        self.device.close()

    def __enter__(self) -> "Teleop":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def make_teleop(config: TeleopConfig = TeleopConfig(), device: Any = None) -> Teleop:
    """Build the configured device and mapper (not opened). `device` overrides the hardware (tests, replay)."""
    if config.device == "spacemouse":
        c = config.spacemouse
        dev = device or SpaceMouseDevice(c.device_name, c.device_index)
        return Teleop(dev, SpaceMouseMapper(c))
    dev = device or KeyboardDevice(mode=config.keyboard.mode)
    return Teleop(dev, KeyboardMapper(config.keyboard))
