"""Static and articulated fixtures of the cell (plate, bin, button, drawer, cable and clip).

Every scene carries the cell's standard fixtures so the cameras always see the same cell and the instruction is what
tells tasks apart; a skill may ask for extra fixtures (the cable). Each builder adds bodies to the MjSpec at the
nominal pose below; skills jitter them per episode through `model.body_pos`.
"""
from __future__ import annotations

from typing import Callable

import mujoco

FixtureBuilder = Callable[[mujoco.MjSpec], None]

PLATE_POS = (0.40, 0.26, 0.0)
BIN_POS = (0.40, -0.27, 0.0)


def add_plate(spec: mujoco.MjSpec) -> None:
    body = spec.worldbody.add_body(name="fixture/plate", pos=list(PLATE_POS))
    body.add_geom(name="fixture/plate", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=[0.065, 0.004, 0],
                  pos=[0, 0, 0.004], rgba=[0.95, 0.95, 0.92, 1])


def add_bin(spec: mujoco.MjSpec) -> None:
    body = spec.worldbody.add_body(name="fixture/bin", pos=list(BIN_POS))
    half, wall, height = 0.07, 0.006, 0.035
    rgba = [0.2, 0.35, 0.6, 1]
    body.add_geom(name="fixture/bin_floor", type=mujoco.mjtGeom.mjGEOM_BOX, size=[half, half, 0.003],
                  pos=[0, 0, 0.003], rgba=rgba)
    for i, (x, y, sx, sy) in enumerate([(half, 0, wall, half), (-half, 0, wall, half),
                                        (0, half, half, wall), (0, -half, half, wall)]):
        body.add_geom(name=f"fixture/bin_wall{i}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[sx, sy, height / 2],
                      pos=[x, y, height / 2], rgba=rgba)


# Name -> builder. Skills name what they need; CELL_FIXTURES are in every scene.
FIXTURES: dict[str, FixtureBuilder] = {"plate": add_plate, "bin": add_bin}
CELL_FIXTURES = ["plate", "bin"]

# The cable task's fixture (anchored elastic cable + clip), defined in sim_twin/cable.py; only in cable_route scenes.
from sim_twin.cable import add_cable  # noqa: E402
FIXTURES["cable"] = add_cable


# ---------------------------------------------------------------- articulated cell fixtures: button and drawer
# Layout: both sit at the front corners of the table (the side facing the front camera), outside the object region
# (+3 cm) and the plate / bin footprints, and low (<= 6.5 cm) so the camera sees over them.
BUTTON_POS = (0.64, 0.25, 0.0)  # front left, beside the plate
BUTTON_BASE_HALF = (0.03, 0.03, 0.012)
BUTTON_CAP_RADIUS, BUTTON_CAP_HALF_HEIGHT = 0.016, 0.008
BUTTON_CAP_Z = 2 * BUTTON_BASE_HALF[2] + BUTTON_CAP_HALF_HEIGHT - 0.002  # cap centre at rest, base frame
BUTTON_TRAVEL = 0.012  # the cap slides down this far
BUTTON_CAP_RGBA = (0.85, 0.1, 0.1, 1.0)

DRAWER_POS = (0.69, -0.275, 0.0)  # cabinet centre, front right beside the bin; the drawer slides out along +y
DRAWER_CABINET_HALF = (0.055, 0.07)  # x (width), y (depth)
DRAWER_HEIGHT = 0.064
DRAWER_TRAVEL = 0.12
DRAWER_FRONT_Y = DRAWER_CABINET_HALF[1] + 0.008  # outer face of the drawer front, cabinet frame (closed)
DRAWER_HANDLE_Z = 0.035  # height of the handle stem
DRAWER_STEM_LENGTH = 0.05  # the stem sticks out of the front along the slide axis, a knob at its end


def add_button(spec: mujoco.MjSpec) -> None:
    """A push button: a fixed base box and a cap on a spring-loaded slide joint (z), pushed up against its stop."""
    base = spec.worldbody.add_body(name="fixture/button", pos=list(BUTTON_POS))
    hx, hy, hz = BUTTON_BASE_HALF
    base.add_geom(name="fixture/button_base", type=mujoco.mjtGeom.mjGEOM_BOX, size=[hx, hy, hz], pos=[0, 0, hz],
                  rgba=[0.22, 0.22, 0.25, 1])
    cap = base.add_body(name="fixture/button_cap", pos=[0, 0, BUTTON_CAP_Z])
    cap.add_joint(name="fixture/button", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[0, 0, 1],
                  limited=mujoco.mjtLimited.mjLIMITED_TRUE, range=[-BUTTON_TRAVEL, 0.0],
                  stiffness=150.0, springref=0.004, damping=2.0, armature=0.01, solref_limit=[0.005, 1.0])
    cap.add_geom(name="fixture/button_cap", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                 size=[BUTTON_CAP_RADIUS, BUTTON_CAP_HALF_HEIGHT, 0], rgba=list(BUTTON_CAP_RGBA), mass=0.02,
                 friction=[1.0, 0.01, 0.001])
    # The base is static (welded to the world), so MuJoCo's parent-child filter does not apply: exclude explicitly.
    spec.add_exclude(bodyname1="fixture/button", bodyname2="fixture/button_cap")


def add_drawer(spec: mujoco.MjSpec) -> None:
    """A low cabinet (open at +y) with a drawer on a damped slide joint; the handle is a stem along the slide axis
    with a knob at its end, so a top-down gripper pinches the stem and pulls against the knob."""
    box = mujoco.mjtGeom.mjGEOM_BOX
    cab_rgba, drawer_rgba, handle_rgba = [0.55, 0.42, 0.3, 1], [0.82, 0.72, 0.55, 1], [0.3, 0.3, 0.32, 1]
    hx, hy = DRAWER_CABINET_HALF
    h, t = DRAWER_HEIGHT, 0.005
    cab = spec.worldbody.add_body(name="fixture/drawer", pos=list(DRAWER_POS))
    for i, (size, pos) in enumerate([
            ([hx, hy, t / 2], [0, 0, t / 2]),  # bottom
            ([hx, hy, t / 2], [0, 0, h - t / 2]),  # top
            ([t / 2, hy, h / 2], [hx - t / 2, 0, h / 2]),  # sides
            ([t / 2, hy, h / 2], [-hx + t / 2, 0, h / 2]),
            ([hx, t / 2, h / 2], [0, -hy + t / 2, h / 2])]):  # back
        cab.add_geom(name=f"fixture/drawer_cabinet{i}", type=box, size=size, pos=pos, rgba=cab_rgba)
    drawer = cab.add_body(name="fixture/drawer_box", pos=[0, 0, 0])
    drawer.add_joint(name="fixture/drawer", type=mujoco.mjtJoint.mjJNT_SLIDE, axis=[0, 1, 0],
                     limited=mujoco.mjtLimited.mjLIMITED_TRUE, range=[0.0, DRAWER_TRAVEL],
                     damping=4.0, frictionloss=0.3, armature=0.05)
    dx, y0, y1, top = hx - t - 0.003, -hy + t + 0.003, hy, h - t - 0.004
    yc, dy = (y0 + y1) / 2, (y1 - y0) / 2
    for i, (size, pos) in enumerate([
            ([dx, dy, 0.002], [0, yc, t + 0.003]),  # floor
            ([0.002, dy, (top - t) / 2], [dx - 0.002, yc, (top + t) / 2]),  # sides
            ([0.002, dy, (top - t) / 2], [-dx + 0.002, yc, (top + t) / 2]),
            ([dx, 0.002, (top - t) / 2], [0, y0 + 0.002, (top + t) / 2])]):  # back
        drawer.add_geom(name=f"fixture/drawer_box{i}", type=box, size=size, pos=pos, rgba=drawer_rgba, mass=0.06)
    drawer.add_geom(name="fixture/drawer_front", type=box, size=[hx, 0.004, h / 2 - 0.001],
                    pos=[0, DRAWER_FRONT_Y - 0.004, h / 2], rgba=drawer_rgba, mass=0.1)
    stem_mid = DRAWER_FRONT_Y + DRAWER_STEM_LENGTH / 2
    drawer.add_geom(name="fixture/drawer_stem", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                    size=[0.006, DRAWER_STEM_LENGTH / 2, 0], pos=[0, stem_mid, DRAWER_HANDLE_Z],
                    quat=[0.7071068, -0.7071068, 0, 0], rgba=handle_rgba, mass=0.02, friction=[1.5, 0.01, 0.001])
    drawer.add_geom(name="fixture/drawer_knob", type=box, size=[0.02, 0.006, 0.012],
                    pos=[0, DRAWER_FRONT_Y + DRAWER_STEM_LENGTH + 0.006, DRAWER_HANDLE_Z], rgba=handle_rgba,
                    mass=0.02)
    spec.add_exclude(bodyname1="fixture/drawer", bodyname2="fixture/drawer_box")  # slides inside the cabinet


FIXTURES.update(button=add_button, drawer=add_drawer)
CELL_FIXTURES += ["button", "drawer"]

# Nominal (x, y, z) and per-episode jitter (+-xy metres, +-yaw radians) of the cell fixtures; skills call
# `jitter_fixtures` in randomize() so every episode sees the cell slightly differently.
FIXTURE_JITTER = {"fixture/plate": (PLATE_POS, 0.01, 0.0), "fixture/bin": (BIN_POS, 0.01, 0.1),
                  "fixture/button": (BUTTON_POS, 0.012, 0.0), "fixture/drawer": (DRAWER_POS, 0.008, 0.06)}


def jitter_fixtures(model: mujoco.MjModel, rng, names=None) -> None:
    """Re-draw the pose of each jittered fixture in `model` (all of FIXTURE_JITTER, or `names`) around its nominal.
    Static fixtures are moved through model.body_pos/body_quat; call mj_forward afterwards (Twin.reset does)."""
    import numpy as np
    for name, (pos, dxy, dyaw) in FIXTURE_JITTER.items():
        if names is not None and name not in names:
            continue
        try:
            bid = model.body(name).id
        except KeyError:
            continue
        d = rng.uniform(-1.0, 1.0, 3) * np.array([dxy, dxy, dyaw])
        model.body_pos[bid] = np.asarray(pos, float) + np.array([d[0], d[1], 0.0])
        model.body_quat[bid] = [np.cos(d[2] / 2), 0.0, 0.0, np.sin(d[2] / 2)]
