"""The skill interface: what code a task family contributes (fixtures, randomization, predicate, expert)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sim_twin.scene import CLUTTER_REGION, OBJECT_REGION

if TYPE_CHECKING:
    from sim_twin.tasks.registry import TaskSpec
    from sim_twin.twin import Twin


class Expert:
    """A scripted expert. `act` returns a physical delta: [dx, dy, dz (m), rx, ry, rz (rad, axis-angle, world
    frame), gripper (0 open, 1 closed)]. The robot server's contract normalizes and limits it."""

    def act(self, twin: "Twin") -> np.ndarray:
        raise NotImplementedError


class Skill:
    name: str = ""
    fixtures: tuple[str, ...] = ()  # extra fixtures beyond the cell's standard ones

    def check_task(self, task: "TaskSpec") -> None:
        """Raise RegistryError if the task's YAML lacks what this skill needs."""

    def randomize(self, twin: "Twin", task: "TaskSpec", rng: np.random.Generator) -> None:
        """Place the task's objects (and jitter fixtures) for a new episode."""
        place_objects_apart(twin, list(task.objects) + list(task.distractors), rng)

    def success(self, twin: "Twin", task: "TaskSpec") -> bool:
        raise NotImplementedError

    def expert(self, twin: "Twin", task: "TaskSpec", rng: np.random.Generator, noise: float = 0.0) -> Expert:
        raise NotImplementedError


def place_objects_apart(twin: "Twin", names: list[str], rng: np.random.Generator,
                        region=OBJECT_REGION, min_gap: float = 0.025, yaw_range: float = np.pi) -> None:
    """Rejection-sample non-overlapping table positions and yaws for `names` inside `region`."""
    (x0, y0), (x1, y1) = region
    placed: list[tuple[np.ndarray, float]] = []
    for name in names:
        obj = twin.registry.objects[name]
        r = obj.footprint_radius
        for _ in range(200):
            xy = rng.uniform([x0, y0], [x1, y1])
            if all(np.linalg.norm(xy - p) > r + pr + min_gap for p, pr in placed):
                break
        placed.append((xy, r))
        yaw = rng.uniform(-yaw_range, yaw_range)
        twin.set_object_pose(name, np.array([xy[0], xy[1], obj.rest_height + 0.002]), yaw)


def place_clutter(twin: "Twin", names: list[str], avoid: list[str], rng: np.random.Generator,
                  region=CLUTTER_REGION, min_gap: float = 0.025, target_gap: float = 0.04) -> list[str]:
    """Put clutter objects on free spots of `region`, away from the already placed `avoid` objects (further from the
    task's target, avoid[0], so the expert's fingers never land on clutter). Returns the names placed; an object
    with no free spot after 100 draws is left out."""
    (x0, y0), (x1, y1) = region
    taken = [(twin.object_pos(n)[:2], twin.registry.objects[n].footprint_radius, min_gap + (target_gap if i == 0 else 0))
             for i, n in enumerate(avoid)]
    placed = []
    for name in names:
        obj = twin.registry.objects[name]
        r = obj.footprint_radius
        for _ in range(100):
            xy = rng.uniform([x0, y0], [x1, y1])
            if all(np.linalg.norm(xy - p) > r + pr + gap for p, pr, gap in taken):
                taken.append((xy, r, min_gap))
                placed.append(name)
                twin.set_object_pose(name, np.array([xy[0], xy[1], obj.rest_height + 0.002]), rng.uniform(-np.pi, np.pi))
                break
    return placed


class Waypoint:
    """One phase of a scripted motion: go to `pos` (callable on the twin, so it tracks moving objects) with the
    gripper yawed by `yaw` from the home orientation and the gripper command `grip`; the phase ends when the TCP is
    within `tol` of the goal and at least `min_steps` steps were spent in it (use min_steps to wait for the gripper)."""

    def __init__(self, pos, yaw: float, grip: float, tol: float = 0.008, min_steps: int = 0, max_steps: int = 60):
        self.pos, self.yaw, self.grip, self.tol = pos, yaw, grip, tol
        self.min_steps, self.max_steps = min_steps, max_steps


class WaypointExpert(Expert):
    """Follows waypoints with a clipped proportional step; Gaussian noise scaled to the step limit."""

    def __init__(self, waypoints: list[Waypoint], rng: np.random.Generator, noise: float = 0.0,
                 max_step_m: float = 0.02, max_step_rad: float = 0.1):
        self.waypoints, self.rng, self.noise = waypoints, rng, noise
        self.max_step_m, self.max_step_rad = max_step_m, max_step_rad
        self.phase, self.steps_in_phase = 0, 0

    @property
    def done(self) -> bool:
        return self.phase >= len(self.waypoints)

    def act(self, twin: "Twin") -> np.ndarray:
        from sim_twin.geometry import quat_error, quat_mul, yaw_quat
        state = twin.state()
        wp = self.waypoints[min(self.phase, len(self.waypoints) - 1)]
        goal = np.asarray(wp.pos(twin) if callable(wp.pos) else wp.pos, float)
        err = goal - state.ee_pos
        self.steps_in_phase += 1
        if not self.done and ((np.linalg.norm(err) < wp.tol and self.steps_in_phase >= wp.min_steps)
                              or self.steps_in_phase >= wp.max_steps):
            self.phase += 1
            self.steps_in_phase = 0
        dpos = _clip_norm(err, self.max_step_m)
        target_quat = quat_mul(yaw_quat(wp.yaw), twin.home_quat)
        drot = _clip_norm(quat_error(target_quat, state.ee_quat), self.max_step_rad)
        if self.noise > 0:
            dpos = dpos + self.rng.normal(0, self.noise * self.max_step_m, 3)
            drot = drot + self.rng.normal(0, self.noise * self.max_step_rad, 3)
        return np.r_[dpos, drot, wp.grip]


def _clip_norm(v: np.ndarray, limit: float) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v * (limit / n) if n > limit else v


def grasp_yaw(twin: "Twin", name: str) -> float:
    """Gripper yaw (world z rotation from the home orientation) for a top grasp of `name`, in [-pi/2, pi/2).

    At yaw 0 the fingers close along the world y axis. Lying capsules/cylinders have their long axis along the
    body x axis, so yawing the gripper by the object's yaw closes the fingers across that axis; boxes are symmetric
    under quarter turns, round objects under any turn.
    """
    from sim_twin.geometry import quat_to_rpy
    obj = twin.registry.objects[name]
    yaw = float(quat_to_rpy(twin.object_quat(name))[2])
    if obj.shape == "box":
        return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)
    if obj.lying:
        return float((yaw + np.pi / 2) % np.pi - np.pi / 2)
    return 0.0
