"""Open the cell's drawer: pinch the handle stem from above and pull along the slide axis."""
from __future__ import annotations

import numpy as np

from sim_twin.fixtures import DRAWER_FRONT_Y, DRAWER_HANDLE_Z, DRAWER_STEM_LENGTH, jitter_fixtures
from sim_twin.tasks.skill import Skill, Waypoint, WaypointExpert, place_objects_apart

OPEN_DISTANCE = 0.08  # success: the drawer is pulled out at least this far (m)
PULL_DISTANCE = 0.115  # the expert pulls this far (the joint stops at DRAWER_TRAVEL = 0.12)


def drawer_opening(twin) -> float:
    return twin.joint_value("fixture/drawer")


def drawer_frame(twin) -> tuple[np.ndarray, np.ndarray]:
    """Position and rotation matrix of the moving drawer body (its frame is the cabinet's, shifted by the
    opening along local +y)."""
    return twin.body_frame("fixture/drawer_box")


def handle_grasp_point(twin) -> np.ndarray:
    """Middle of the handle stem, world frame."""
    pos, rot = drawer_frame(twin)
    return pos + rot @ np.array([0.0, DRAWER_FRONT_Y + DRAWER_STEM_LENGTH / 2, DRAWER_HANDLE_Z])


class DrawerOpenSkill(Skill):
    name = "drawer_open"

    def randomize(self, twin, task, rng) -> None:
        jitter_fixtures(twin.model, rng)
        place_objects_apart(twin, list(task.objects) + list(task.distractors), rng)

    def success(self, twin, task) -> bool:
        return drawer_opening(twin) > OPEN_DISTANCE

    def expert(self, twin, task, rng, noise: float = 0.0) -> WaypointExpert:
        _, rot = drawer_frame(twin)
        axis = rot[:, 1]  # slide axis (the drawer opens along its local +y)
        # Fingers close along the gripper's y axis: yaw it so they close across the stem (along the cabinet x).
        yaw = float(np.arctan2(axis[1], axis[0]))  # = cabinet yaw + pi/2
        grasp = handle_grasp_point(twin)
        above = grasp + np.array([0.0, 0.0, 0.08])
        pulled = grasp + PULL_DISTANCE * axis
        return WaypointExpert([
            Waypoint(above, yaw, 0.0, tol=0.01),
            Waypoint(lambda t: handle_grasp_point(t), yaw, 0.0, tol=0.006),
            Waypoint(lambda t: handle_grasp_point(t), yaw, 1.0, tol=1.0, min_steps=6),
            Waypoint(pulled, yaw, 1.0, tol=0.01),
            Waypoint(pulled, yaw, 1.0, tol=1.0, min_steps=100),
        ], rng, noise)
