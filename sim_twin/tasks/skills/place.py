"""Place: pick an object and put it on the plate or into the bin.

Task params: `target` (plate | bin) and `target_nouns` (words for the target in the instructions).
Success: the object rests inside the target's footprint at (almost) its resting height on the target surface, the
gripper command is open and no part of the robot touches the object.
"""
from __future__ import annotations

import weakref

import numpy as np

from sim_twin.fixtures import jitter_fixtures
from sim_twin.scene import OBJECT_PREFIX, ROBOT_PREFIX
from sim_twin.tasks.registry import RegistryError
from sim_twin.tasks.skill import Skill, Waypoint, WaypointExpert, grasp_yaw, place_objects_apart

TARGETS = ("plate", "bin")
REST_TOLERANCE = 0.015  # the object's centre may be this much above its resting height on the target surface
MAX_SPEED = 0.05  # m/s: the object must have come to rest
FOOTPRINT_MARGIN = 0.005  # the bin: the centre must lie this far inside the inner walls
LONG_OBJECT = 0.09  # lying objects longer than this go into the bin along its diagonal


def target_geometry(twin, target: str) -> dict:
    """Centre, rotation, surface height and footprint of the target, read from the compiled model (so jittered
    poses and edited fixture sizes are honoured)."""
    m, d = twin.model, twin.data
    bid = m.body(f"fixture/{target}").id
    centre, rot = d.xpos[bid].copy(), d.xmat[bid].reshape(3, 3).copy()
    if target == "plate":
        g = m.geom("fixture/plate").id
        return dict(centre=centre, rot=rot, surface=float(m.geom_pos[g][2] + m.geom_size[g][1]),
                    radius=float(m.geom_size[g][0]), rim=0.0)
    floor = m.geom("fixture/bin_floor").id
    wall = m.geom("fixture/bin_wall0").id
    half_inner = float(m.geom_size[floor][0] - m.geom_size[wall][0])
    return dict(centre=centre, rot=rot, surface=float(m.geom_pos[floor][2] + m.geom_size[floor][2]),
                half_inner=half_inner, rim=float(m.geom_pos[wall][2] + m.geom_size[wall][2]))


def inside_footprint(geo: dict, pos: np.ndarray, margin: float = 0.0) -> bool:
    local = geo["rot"].T @ (np.asarray(pos, float) - geo["centre"])
    if "radius" in geo:
        return bool(np.hypot(local[0], local[1]) < geo["radius"] - margin)
    return bool(np.all(np.abs(local[:2]) < geo["half_inner"] - margin))


_ROBOT_BODIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> bool mask over bodies


def robot_touches(twin, name: str) -> bool:
    """True if any geom of the robot is in contact with the object `name`."""
    m, d = twin.model, twin.data
    is_robot = _ROBOT_BODIES.get(m)
    if is_robot is None:
        is_robot = _ROBOT_BODIES[m] = np.array([m.body(i).name.startswith(ROBOT_PREFIX) for i in range(m.nbody)])
    obj = m.body(OBJECT_PREFIX + name).id
    n = d.ncon
    if n == 0:
        return False
    b1 = m.geom_bodyid[d.contact.geom1[:n]]
    b2 = m.geom_bodyid[d.contact.geom2[:n]]
    return bool(np.any((b1 == obj) & is_robot[b2]) or np.any((b2 == obj) & is_robot[b1]))


def object_speed(twin, name: str) -> float:
    m = twin.model
    adr = m.jnt_dofadr[m.joint(OBJECT_PREFIX + name).id]
    return float(np.linalg.norm(twin.data.qvel[adr:adr + 3]))


class PlaceSkill(Skill):
    name = "place"

    def check_task(self, task) -> None:
        if task.params.get("target") not in TARGETS:
            raise RegistryError(f"task {task.name!r}: params.target must be one of {TARGETS}")
        if not task.objects:
            raise RegistryError(f"task {task.name!r}: a place task needs an object")

    def randomize(self, twin, task, rng) -> None:
        jitter_fixtures(twin.model, rng)
        place_objects_apart(twin, list(task.objects) + list(task.distractors), rng)

    def success(self, twin, task) -> bool:
        name = task.objects[0]
        obj = twin.registry.objects[name]
        geo = target_geometry(twin, task.params["target"])
        pos = twin.object_pos(name)
        margin = FOOTPRINT_MARGIN if "half_inner" in geo else 0.0
        return bool(inside_footprint(geo, pos, margin)
                    and pos[2] < geo["surface"] + obj.rest_height + REST_TOLERANCE
                    and twin.target[2] < 0.5  # gripper commanded open
                    and not robot_touches(twin, name)
                    and object_speed(twin, name) < MAX_SPEED)

    def expert(self, twin, task, rng, noise: float = 0.0) -> WaypointExpert:
        name = task.objects[0]
        obj = twin.registry.objects[name]
        target = task.params["target"]
        yaw = grasp_yaw(twin, name)
        start = twin.object_pos(name)
        # Round objects are grasped a little above their centre: closing the fingertips below it squeezes them up.
        round_ = obj.shape != "box"
        grasp_z = obj.rest_height + 0.006 if round_ else max(obj.rest_height, 0.012)
        geo = target_geometry(twin, target)
        if target == "plate":
            release_obj_z = geo["surface"] + obj.rest_height + 0.004  # set it down gently
            min_tcp_z = geo["surface"] + 0.015  # the closed fingertips reach ~1.8 cm below the TCP
        else:
            release_obj_z = geo["rim"] + obj.rest_height + 0.012  # drop it from just above the walls
            min_tcp_z = geo["rim"] + 0.005  # the open fingers reach wider than the bin: stay above the rim
        carry_z = 0.12
        place_yaw = yaw
        if target == "bin" and obj.lying and 2 * obj.footprint_radius > LONG_OBJECT:
            # The object's long axis follows the gripper's x axis: turn it onto a diagonal of the bin.
            bin_yaw = float(np.arctan2(geo["rot"][1, 0], geo["rot"][0, 0]))
            options = [bin_yaw + k * np.pi / 4 for k in (-3, -1, 1, 3)]
            options = [o for o in options if abs(o) < np.pi / 2 + 0.3]
            place_yaw = min(options, key=lambda o: abs(o - yaw))

        def above_obj(t):
            p = t.object_pos(name)
            return np.array([p[0], p[1], grasp_z + 0.10])

        def at_obj(t):
            p = t.object_pos(name)
            return np.array([p[0], p[1], grasp_z])

        def over_target(obj_z=None, tcp_z=None):
            def goal(t):
                # Aim the object, not the TCP, at the target (the grasp may sit off-centre or slip).
                offset = t.object_pos(name) - t.state().ee_pos
                n = np.linalg.norm(offset[:2])
                if n > 0.03:
                    offset[:2] *= 0.03 / n
                xy = geo["centre"][:2] - offset[:2]
                z = tcp_z if obj_z is None else max(obj_z - float(np.clip(offset[2], -0.04, 0.04)), min_tcp_z)
                return np.array([xy[0], xy[1], z])
            return goal

        lift = np.array([start[0], start[1], carry_z])
        release = over_target(obj_z=release_obj_z)
        return WaypointExpert([
            Waypoint(above_obj, yaw, 0.0, tol=0.01),
            Waypoint(at_obj, yaw, 0.0, tol=0.006),
            Waypoint(at_obj, yaw, 1.0, tol=1.0, min_steps=6),
            Waypoint(lift, yaw, 1.0, tol=0.02),
            Waypoint(over_target(tcp_z=carry_z), place_yaw, 1.0, tol=0.012),
            Waypoint(release, place_yaw, 1.0, tol=0.006, max_steps=20),
            Waypoint(release, place_yaw, 0.0, tol=1.0, min_steps=4),
            Waypoint(lambda t: t.state().ee_pos * [1, 1, 0] + [0, 0, carry_z], place_yaw, 0.0, tol=0.01),
            Waypoint(lambda t: t.state().ee_pos, place_yaw, 0.0, tol=1.0, min_steps=100),
        ], rng, noise)
