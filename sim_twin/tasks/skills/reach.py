"""Reach: move the TCP to a fixed point given relative to the home pose (no contact; a small task for RL tests).

Task params: `offset` [dx, dy, dz] (m, base frame, from the home TCP position; default [0.06, 0.04, -0.05]) and
`tolerance` (m, default 0.03): success when the TCP is within `tolerance` of home + offset. The goal does not move
between episodes, so the proprioceptive state alone tells how far away it is (what the RL learning test relies on).
"""
from __future__ import annotations

import numpy as np

from sim_twin.tasks.registry import RegistryError
from sim_twin.tasks.skill import Skill, Waypoint, WaypointExpert

DEFAULT_OFFSET = (0.06, 0.04, -0.05)
DEFAULT_TOLERANCE = 0.03


def reach_goal(twin, task) -> np.ndarray:
    return twin.home_pos + np.asarray(task.params.get("offset", DEFAULT_OFFSET), float)


class ReachSkill(Skill):
    name = "reach"

    def check_task(self, task) -> None:
        off = task.params.get("offset", DEFAULT_OFFSET)
        if not isinstance(off, (list, tuple)) or len(off) != 3 or not all(isinstance(v, (int, float)) for v in off):
            raise RegistryError(f"task {task.name!r}: params.offset must be [dx, dy, dz] in metres")
        tol = task.params.get("tolerance", DEFAULT_TOLERANCE)
        if not isinstance(tol, (int, float)) or not tol > 0:
            raise RegistryError(f"task {task.name!r}: params.tolerance must be a positive number of metres")

    def success(self, twin, task) -> bool:
        tol = float(task.params.get("tolerance", DEFAULT_TOLERANCE))
        return bool(np.linalg.norm(twin.state().ee_pos - reach_goal(twin, task)) < tol)

    def expert(self, twin, task, rng, noise: float = 0.0) -> WaypointExpert:
        goal = reach_goal(twin, task)
        tol = float(task.params.get("tolerance", DEFAULT_TOLERANCE))
        return WaypointExpert([Waypoint(goal, 0.0, 0.0, tol=0.3 * tol),
                               Waypoint(goal, 0.0, 0.0, tol=1.0, min_steps=1000)], rng, noise)
