"""Pick (grasp and lift) an object."""
from __future__ import annotations

import numpy as np

from sim_twin.fixtures import jitter_fixtures
from sim_twin.tasks.skill import Skill, Waypoint, WaypointExpert, grasp_yaw

LIFT_HEIGHT = 0.06  # success: the object is this far above its resting height and held between the fingers


class PickSkill(Skill):
    name = "pick"

    def randomize(self, twin, task, rng) -> None:
        jitter_fixtures(twin.model, rng)  # the whole cell varies a little every episode, as in the other skills
        super().randomize(twin, task, rng)

    def success(self, twin, task) -> bool:
        name = task.objects[0]
        obj = twin.registry.objects[name]
        pos = twin.object_pos(name)
        near_tcp = np.linalg.norm(pos - twin.state().ee_pos) < 0.05
        return bool(pos[2] > obj.rest_height + LIFT_HEIGHT and near_tcp)

    def expert(self, twin, task, rng, noise: float = 0.0) -> WaypointExpert:
        name = task.objects[0]
        obj = twin.registry.objects[name]
        yaw = grasp_yaw(twin, name)
        start = twin.object_pos(name)
        grasp_z = max(obj.rest_height, 0.012)

        def above(t):
            p = t.object_pos(name)
            return np.array([p[0], p[1], grasp_z + 0.10])

        def at(t):
            p = t.object_pos(name)
            return np.array([p[0], p[1], grasp_z])

        lift = np.array([start[0], start[1], 0.22])
        return WaypointExpert([
            Waypoint(above, yaw, 0.0, tol=0.01),
            Waypoint(at, yaw, 0.0, tol=0.006),
            Waypoint(at, yaw, 1.0, tol=1.0, min_steps=6),
            Waypoint(lift, yaw, 1.0, tol=0.01),
            Waypoint(lift, yaw, 1.0, tol=1.0, min_steps=100),
        ], rng, noise)
