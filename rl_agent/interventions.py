"""Human interventions during RL (HIL-SERL): while the operator uses the teleop device, its action replaces the
policy's. The executed (human) action is what gets stored, in BOTH the online and the demo buffer (the session does
that), and interventions are counted per episode.

    iv = Interventions(make_teleop(TeleopConfig(device="spacemouse")))   # teleop/controller.py: device + mapper
    iv.open(); iv.reset()                         # at episode start (gripper latch back to open)
    action, intervened, events = iv.filter(policy_action)

The device read (teleop/devices.py) is the only hardware; the mapping is teleop/mapping.py. The operator's
success / failure key or button arrives in `events` (for rl_agent.rewards.OperatorReward).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from teleop.controller import TeleopConfig


@dataclass(frozen=True)
class InterventionConfig:
    enabled: bool = False
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    # Keep the human in control this many steps after the device goes idle (no motion): a human hand pauses
    # between corrections, and flipping back to the policy mid-correction would fight the operator.
    linger_steps: int = 2


class Interventions:
    def __init__(self, teleop: Any, linger_steps: int = 2):
        self.teleop = teleop  # teleop.controller.Teleop (or anything with step() -> TeleopCommand, reset, open, close)
        self.linger_steps = int(linger_steps)
        self._idle = linger_steps + 1
        self._gripper_touched = False
        self.steps = 0  # intervened steps this episode
        self.segments = 0  # takeovers this episode
        self.total_steps = 0
        self._active = False
        self.on_events = None  # called with this step's events (the operator console: a pause button)

    def open(self) -> "Interventions":
        self.teleop.open()
        return self

    def close(self) -> None:
        self.teleop.close()

    def reset(self) -> None:
        self.teleop.reset()
        self._idle = self.linger_steps + 1
        self._gripper_touched = False
        self._active = False
        self.steps = self.segments = 0

    def filter(self, policy_action: np.ndarray) -> tuple[np.ndarray, bool, tuple[str, ...]]:
        """(executed action, intervened?, operator events) for this control step."""
        cmd = self.teleop.step()
        self._gripper_touched |= bool(cmd.gripper_changed)
        self._idle = 0 if (cmd.moving or cmd.gripper_changed) else self._idle + 1
        intervened = self._idle <= self.linger_steps
        action = np.asarray(policy_action, np.float32).copy()
        if intervened:
            action[:6] = cmd.action[:6]
            if self._gripper_touched:  # the latch only means something once the operator used the gripper
                action[6] = cmd.action[6]
            self.steps += 1
            self.total_steps += 1
            if not self._active:
                self.segments += 1
        self._active = intervened
        if cmd.events and self.on_events is not None:
            self.on_events(tuple(cmd.events))
        return np.clip(action, -1.0, 1.0).astype(np.float32), intervened, tuple(cmd.events)

    def poll_events(self) -> tuple[str, ...]:
        """The device's button / key events while no episode runs (the arm holds: its motion is not used)."""
        return tuple(self.teleop.step().events)


def make_interventions(cfg: InterventionConfig, device: Optional[Any] = None) -> Optional[Interventions]:
    """None when disabled. `device` replaces the hardware device (tests fake only its read)."""
    if not cfg.enabled:
        return None
    from teleop.controller import make_teleop
    return Interventions(make_teleop(cfg.teleop, device=device), cfg.linger_steps)
