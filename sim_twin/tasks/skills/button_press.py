"""Press the cell's push button (a spring-loaded cap on a slide joint) with the closed gripper."""
from __future__ import annotations

import numpy as np

from sim_twin.fixtures import BUTTON_CAP_HALF_HEIGHT, BUTTON_CAP_RGBA, BUTTON_TRAVEL, jitter_fixtures
from sim_twin.tasks.registry import RegistryError
from sim_twin.tasks.skill import Skill, Waypoint, WaypointExpert, place_objects_apart

PRESSED_FRACTION = 0.6  # success: the cap is pushed down at least this fraction of its travel
CLOSED_PAD_DEPTH = 0.018  # the closed fingertips reach this far below the TCP (Robotiq 2F-85 linkage)


def button_depth(twin) -> float:
    """How far the cap is pushed down (m, 0 at rest)."""
    return -twin.joint_value("fixture/button")


def cap_top(twin) -> np.ndarray:
    """World position of the centre of the cap's top face at rest (the cap fully up)."""
    p = twin.body_pos("fixture/button_cap")
    return p + np.array([0.0, 0.0, BUTTON_CAP_HALF_HEIGHT + button_depth(twin)])


class ButtonPressSkill(Skill):
    """Task params: `cap_rgba` (optional): colour of the cap for this task (default red)."""
    name = "button_press"

    def check_task(self, task) -> None:
        rgba = task.params.get("cap_rgba")
        if rgba is not None and (not isinstance(rgba, (list, tuple)) or len(rgba) != 4):
            raise RegistryError(f"task {task.name!r}: params.cap_rgba must be [r, g, b, a]")

    def randomize(self, twin, task, rng) -> None:
        jitter_fixtures(twin.model, rng)
        twin.model.geom_rgba[twin.model.geom("fixture/button_cap").id] = task.params.get("cap_rgba", BUTTON_CAP_RGBA)
        place_objects_apart(twin, list(task.objects) + list(task.distractors), rng)

    def success(self, twin, task) -> bool:
        return button_depth(twin) > PRESSED_FRACTION * BUTTON_TRAVEL

    def expert(self, twin, task, rng, noise: float = 0.0) -> WaypointExpert:
        top = cap_top(twin)
        above = top + np.array([0.0, 0.0, CLOSED_PAD_DEPTH + 0.04])
        # Aim 5 mm below the end stop: the cap bottoms out first and the impedance pushes with a few newtons.
        press = top + np.array([0.0, 0.0, CLOSED_PAD_DEPTH - BUTTON_TRAVEL - 0.005])
        return WaypointExpert([
            Waypoint(above, 0.0, 1.0, tol=0.008, min_steps=5),  # close the fingers on the way
            Waypoint(press, 0.0, 1.0, tol=0.006, min_steps=4, max_steps=12),
            Waypoint(above, 0.0, 1.0, tol=0.01),
            Waypoint(above, 0.0, 1.0, tol=1.0, min_steps=100),
        ], rng, noise)
