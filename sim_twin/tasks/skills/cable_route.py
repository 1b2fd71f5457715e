"""Route a cable through a clip: the free part of a cable anchored on the table must end up in the clip's slot.

The cable and clip are the `cable` fixture (sim_twin/cable.py: an elastic MuJoCo rod from the
`mujoco.elasticity.cable` plugin, one end welded to an anchor block, and a rigid U-slot clip; the module docstring
there states the model's approximations). Per episode the anchor (position, heading), the cable's initial shape
(a smooth random bend set through its ball joints) and the clip (position, slot axis) are jittered.

Success: some point of the cable's axis (sampled about 6 mm apart) is inside the slot: within the jaws' length
along the slot axis, between the jaws' inner faces across it, and low enough that the whole cross-section is below
the top of the jaws (centre at least one cable radius below the top). A cable held above the clip, lying beside it
or perched on the jaws does not count; whether the gripper still holds it does not matter.

Scripted expert (in-process: it reads the cable's pose from the twin's MjData): grasp the cable across its axis at
the point that must end up a few cm beyond the clip; rise, drawing that point in towards the anchor (the cable is
inextensible and lies almost straight); carry it sideways to beyond the clip on the line from the cable's first
joint through the slot, turning the gripper so the held part lies along that line; lower it on the arc that keeps
the cable taut, so the part between anchor and gripper sinks into the slot (the rounded jaw edges guide it); release
and back off.

Task params: `cable_rgba` (optional): the cable's colour for this task.
"""
from __future__ import annotations

import weakref

import numpy as np

from sim_twin.cable import (ANCHOR_BODY, ANCHOR_HALF, ANCHOR_POS, ANCHOR_YAW, CABLE_LENGTH, CABLE_RADIUS,
                            CABLE_RGBA, CABLE_SEGMENTS, CLIP_BASE_H, CLIP_BODY, CLIP_GAP, CLIP_JAW_HALF_LEN,
                            CLIP_JAW_TOP, CLIP_POS, cable_body_names)
from sim_twin.fixtures import jitter_fixtures
from sim_twin.geometry import yaw_quat
from sim_twin.tasks.registry import RegistryError
from sim_twin.tasks.skill import Skill, Waypoint, WaypointExpert

SEG_LEN = CABLE_LENGTH / CABLE_SEGMENTS
PIVOT_DIST = SEG_LEN  # see CableState.pivot
GRIP_BEYOND_CLIP = 0.045  # the gripper holds the cable this far beyond the clip centre (clear of the jaws)
PULL = 0.006  # lowering: pull this much beyond the taut arc, straightening the cable into the slot
SLACK = 0.008  # cable beyond the straight anchor-to-gripper distance at the carry pose (the cable is inextensible)
GRASP_Z = 0.020  # TCP height for grasping the cable on the table: closed, the pads reach 18 mm below the TCP
CARRY_Z = 0.09  # TCP height over the goal: the cable running down to the anchor passes over the jaws
REACH_MARGIN = 0.004  # keep the held point this much inside the cable's reach from the anchor while lifting
HELD_BELOW_TCP = 0.014  # the held cable's axis is this far below the TCP (the closed pads reach 18 mm below it)
LOWER_Z = 0.022  # TCP height for lowering the held cable beside the clip (held part about 1.5 cm below the TCP)
# Per-episode jitter (uniform +-): anchor xy, anchor heading, clip xy, slot axis, cable bend (rad at each joint)
ANCHOR_JITTER, HEADING_JITTER, CLIP_JITTER, AXIS_JITTER, BEND_JITTER = 0.01, 0.10, 0.015, 0.10, 0.03


_IDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> (cable bodies, geoms, clip, anchor)


class CableState:
    """Read-only view of the cable and clip in a live twin (world frame)."""

    def __init__(self, twin):
        m = twin.model
        self.twin = twin
        if m not in _IDS:
            bodies = [m.body(n).id for n in cable_body_names(m)]
            geoms = [int(np.flatnonzero(m.geom_bodyid == b)[0]) for b in bodies]
            _IDS[m] = (bodies, geoms, m.body(CLIP_BODY).id, m.body(ANCHOR_BODY).id)
        self.bodies, self.geoms, self.clip, self.anchor = _IDS[m]

    def vertices(self) -> np.ndarray:
        """(N+1, 3) points along the cable axis, from the anchor's face to the free end."""
        d, m = self.twin.data, self.twin.model
        pts = d.xpos[self.bodies]
        last = self.bodies[-1]
        tip = d.xpos[last] + d.xmat[last].reshape(3, 3) @ np.array([m.geom_size[self.geoms[-1]][1] * 2, 0, 0])
        return np.vstack([pts, tip])

    def axis_points(self, per_segment: int = 4) -> np.ndarray:
        """Points along the cable's axis, `per_segment` per capsule (about 6 mm apart)."""
        v = self.vertices()
        f = np.arange(per_segment)[:, None, None] / per_segment
        return np.vstack([(v[:-1] + f * (v[1:] - v[:-1])).reshape(-1, 3), v[-1:]])

    def point_at(self, s: float) -> tuple[np.ndarray, float]:
        """Position of the cable's axis at arclength `s` from the anchor's face, and the cable's heading there
        (world yaw, pointing away from the anchor)."""
        v = self.vertices()
        i = int(np.clip(s // SEG_LEN, 0, len(v) - 2))
        f = float(np.clip(s / SEG_LEN - i, 0.0, 1.0))
        seg = v[i + 1] - v[i]
        return v[i] + f * seg, float(np.arctan2(seg[1], seg[0]))

    def clip_frame(self) -> tuple[np.ndarray, np.ndarray]:
        """Clip origin (slot centre on the table) and rotation (x: slot axis, z: up)."""
        d = self.twin.data
        return d.xpos[self.clip].copy(), d.xmat[self.clip].reshape(3, 3).copy()

    def exit_point(self) -> np.ndarray:
        """Where the cable leaves the anchor block."""
        return self.vertices()[0]

    def pivot(self) -> np.ndarray:
        """Where a cable pulled sideways bends away from the anchor's heading: the first capsule is welded to the
        anchor, so the first joint, PIVOT_DIST out from the face (nominally: a bent cable's joint lies elsewhere)."""
        x = self.twin.data.xmat[self.anchor].reshape(3, 3)[:, 0]
        return self.exit_point() + PIVOT_DIST * x


def points_in_slot(points: np.ndarray, clip_pos: np.ndarray, clip_rot: np.ndarray) -> np.ndarray:
    """Mask of cable-axis points inside the clip's slot (see the module docstring)."""
    local = (np.asarray(points) - clip_pos) @ clip_rot  # rows: clip-frame coordinates
    return ((np.abs(local[:, 0]) <= CLIP_JAW_HALF_LEN) & (np.abs(local[:, 1]) < CLIP_GAP / 2)
            & (local[:, 2] < CLIP_JAW_TOP - CABLE_RADIUS) & (local[:, 2] > CLIP_BASE_H - 0.5 * CABLE_RADIUS))


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class CableRouteSkill(Skill):
    name = "cable_route"
    fixtures = ("cable",)

    def check_task(self, task) -> None:
        if task.objects or task.distractors:
            raise RegistryError(f"task {task.name!r}: cable_route scenes have no loose objects (the cable and clip "
                                "use the object region); remove objects/distractors")
        rgba = task.params.get("cable_rgba")
        if rgba is not None and (not isinstance(rgba, (list, tuple)) or len(rgba) != 4):
            raise RegistryError(f"task {task.name!r}: params.cable_rgba must be [r, g, b, a]")

    def randomize(self, twin, task, rng) -> None:
        m, d = twin.model, twin.data
        jitter_fixtures(m, rng)
        cs = CableState(twin)
        # Anchor: position and heading of the cable where it leaves the block.
        heading = ANCHOR_YAW + rng.uniform(-HEADING_JITTER, HEADING_JITTER)
        anchor_xy = np.asarray(ANCHOR_POS[:2]) + rng.uniform(-ANCHOR_JITTER, ANCHOR_JITTER, 2)
        m.body_pos[cs.anchor] = [anchor_xy[0], anchor_xy[1], 0.0]
        m.body_quat[cs.anchor] = yaw_quat(heading)
        # Cable shape: a smooth bend (a random mix of a uniform curve and an S), set at the ball joints.
        n_joints = len(cs.bodies) - 1
        s = np.linspace(0.0, 1.0, n_joints)
        bend = rng.uniform(-BEND_JITTER, BEND_JITTER) + rng.uniform(-BEND_JITTER, BEND_JITTER) * np.cos(np.pi * s)
        for b, angle in zip(cs.bodies[1:], bend):
            j = m.body_jntadr[b]
            adr = m.jnt_qposadr[j]
            d.qpos[adr:adr + 4] = yaw_quat(angle)
            d.qvel[m.jnt_dofadr[j]:m.jnt_dofadr[j] + 3] = 0.0
        # Clip: jittered position; the slot axis points roughly from the cable's first joint to the clip, the way a
        # clip is mounted so that the routed cable runs through it without a kink.
        clip_xy = np.asarray(CLIP_POS[:2]) + rng.uniform(-CLIP_JITTER, CLIP_JITTER, 2)
        pivot_xy = anchor_xy + (ANCHOR_HALF[0] + PIVOT_DIST) * np.array([np.cos(heading), np.sin(heading)])
        to_clip = clip_xy - pivot_xy
        axis = np.arctan2(to_clip[1], to_clip[0]) + rng.uniform(-AXIS_JITTER, AXIS_JITTER)
        m.body_pos[cs.clip] = [clip_xy[0], clip_xy[1], 0.0]
        m.body_quat[cs.clip] = yaw_quat(axis)
        rgba = task.params.get("cable_rgba", CABLE_RGBA)
        m.geom_rgba[cs.geoms] = rgba
        # Twin.reset ran mj_forward with the previous episode's anchor/clip poses; its constraint solution would
        # warm-start the next solve and make the episode depend (chaotically, through the cable) on the history.
        d.qacc_warmstart[:] = 0.0

    def success(self, twin, task) -> bool:
        cs = CableState(twin)
        return bool(points_in_slot(cs.axis_points(), *cs.clip_frame()).any())

    def expert(self, twin, task, rng, noise: float = 0.0) -> WaypointExpert:
        cs = CableState(twin)
        clip_pos, _ = cs.clip_frame()
        # Route line: from where the cable bends away from the anchor's heading, through the slot centre. (The slot
        # axis itself is jittered a few degrees off this line; the jaws take the skew.)
        pivot = cs.pivot()
        line = (clip_pos - pivot) * [1, 1, 0]
        line /= np.linalg.norm(line)
        line_yaw = float(np.arctan2(line[1], line[0]))
        goal = clip_pos + GRIP_BEYOND_CLIP * line
        # Grasp the cable where, held over the goal at the carry height, it runs almost taut from the anchor: a taut
        # cable lies in the vertical plane through the pivot and the gripper, i.e. right over the slot, and sinks
        # into it as the gripper goes down. Any more cable between anchor and gripper would sag sideways.
        held_z = CARRY_Z - HELD_BELOW_TCP
        taut = float(np.hypot(np.linalg.norm((goal - pivot)[:2]), held_z - pivot[2]))  # pivot to held point
        s_grasp = PIVOT_DIST + taut + SLACK
        start, heading = cs.point_at(s_grasp)
        turn = _wrap(line_yaw - heading)  # the held part of the cable turns with the gripper
        # Fingers close across the cable: gripper yaw = cable heading (mod pi); pick the branch with smaller yaws.
        options = [_wrap(heading), _wrap(heading + np.pi)]
        yaw0 = min(options, key=lambda y: max(abs(y), abs(y + turn)))
        yaw1 = yaw0 + turn

        def above_grasp(t):  # tracks the cable until it is grasped
            return CableState(t).point_at(s_grasp)[0] * [1, 1, 0] + [0, 0, GRASP_Z + 0.06]

        def at_grasp(t):
            return CableState(t).point_at(s_grasp)[0] * [1, 1, 0] + [0, 0, GRASP_Z]

        # Lift: the cable is inextensible and lies nearly straight, so rise while drawing the held point in towards
        # the anchor, to a point within the cable's reach at the carry height.
        reach = float(np.sqrt(max((taut + SLACK - REACH_MARGIN) ** 2 - (held_z - pivot[2]) ** 2, 0.0)))
        out = (start - pivot)[:2]
        lift = np.r_[pivot[:2] + out * min(1.0, reach / np.linalg.norm(out)), CARRY_Z]
        # Carry sideways at that height: the cable running from the anchor up to the gripper passes above the jaws.
        over = np.array([goal[0], goal[1], CARRY_Z])
        # Lower on (a chord of) the arc that keeps the cable taut (a little more: PULL): the held point moves out.
        low_z = LOWER_Z - HELD_BELOW_TCP
        extra = float(np.sqrt((taut + PULL) ** 2 - (low_z - pivot[2]) ** 2) - np.linalg.norm((goal - pivot)[:2]))
        down = np.r_[goal[:2] + max(extra, 0.0) * line[:2], LOWER_Z]
        return WaypointExpert([
            Waypoint(above_grasp, yaw0, 0.0, tol=0.01),
            Waypoint(at_grasp, yaw0, 0.0, tol=0.005),
            Waypoint(at_grasp, yaw0, 1.0, tol=1.0, min_steps=6),
            Waypoint(lift, yaw1, 1.0, tol=0.015),
            Waypoint(over, yaw1, 1.0, tol=0.008, min_steps=3),
            Waypoint(down, yaw1, 1.0, tol=0.005, min_steps=3),
            Waypoint(down, yaw1, 0.0, tol=1.0, min_steps=5),
            Waypoint(over, yaw1, 0.0, tol=0.01),
            Waypoint(over, yaw1, 0.0, tol=1.0, min_steps=100),
        ], rng, noise)
