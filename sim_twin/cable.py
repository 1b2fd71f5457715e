"""The cable-routing fixture: a cable anchored to a block on the table, and a U-shaped clip it must be pressed into.

Model choice
------------
The cable is a real MuJoCo elastic rod: the `cable` composite with the `mujoco.elasticity.cable` plugin (shipped in
the mujoco wheel as plugin/libelasticity.so and loaded on `import mujoco`). The composite discretizes the rod into
`CABLE_SEGMENTS` capsule bodies joined by ball joints; the plugin adds the bending and twisting moments of a Kirchhoff
rod (Young's modulus `CABLE_BEND`, shear modulus `CABLE_TWIST`) relative to the straight rest shape, so the cable
resists bending like a real cord instead of behaving like a loose chain. Approximations, stated honestly:
  * the rod is a chain of 12 rigid capsules (2.3 cm each, kept coarse so the scene still steps at > 100 control
    steps/s: every capsule lying on the table is two contacts): it bends only at the joints, and contacts see the
    capsules, not a smooth tube;
  * it is inextensible (ball joints, no stretch), has no plasticity (it always relaxes towards straight, only
    table friction holds a curved shape), no self-collision between neighbouring segments, and cable contacts have
    sliding friction only (condim 3);
  * the clip is a rigid, open U-slot with rounded top edges as a lead-in: the cable drops (or is pulled) between
    the jaws; there is no snap-fit and no retention force beyond gravity, friction and the jaws' walls.
The first capsule has no joint: it is welded to the anchor block, so that end of the cable is fixed (clamped: the
cable leaves the block along the block's heading).

Layout (robot base frame, metres, table top z = 0): the anchor sits at the back-right of the central object region
and the cable leaves it towards the robot (-x); the clip stands left of the cable's line, so routing means carrying
the free part of the cable sideways over the clip and lowering it into the slot. Skills jitter the anchor and clip
per episode through `model.body_pos`/`model.body_quat` and bend the cable through its ball joints.
"""
from __future__ import annotations

import weakref

import mujoco
import numpy as np

CABLE_PREFIX = "fixture/cable/"
ANCHOR_BODY = "fixture/cable_anchor"
CLIP_BODY = "fixture/clip"

CABLE_RADIUS = 0.006  # a 12 mm cord
CABLE_LENGTH = 0.28  # from the anchor's face to the free end
CABLE_SEGMENTS = 12
CABLE_BEND = 2e6  # Young's modulus (Pa) -> EI = 2e-3 N m^2: a 5 cm overhang droops < 1 mm, 20 cm droops visibly
CABLE_TWIST = 1e6  # shear modulus (Pa)
CABLE_DENSITY = 1100.0  # kg/m^3 (about 35 g in all)
CABLE_RGBA = (0.12, 0.12, 0.14, 1.0)

ANCHOR_POS = (0.585, -0.07, 0.0)  # nominal; the cable leaves the anchor along the anchor frame's x axis
ANCHOR_YAW = np.pi  # nominal: the cable runs towards the robot (-x)
ANCHOR_HALF = (0.02, 0.025, 0.015)

CLIP_POS = (0.455, 0.0, 0.0)  # nominal slot centre on the table (13 cm from the anchor, 7 cm left of the cable)
# The slot: 2 cm wide (the cable is 1.2 cm thick), 1.6 cm long, 2.4 cm deep above a 4 mm floor.
CLIP_GAP = 0.020  # between the jaws' inner faces (cable diameter 0.012)
CLIP_JAW_HALF_LEN = 0.008  # half length of the jaws along the slot axis (clip frame x)
CLIP_JAW_THICK = 0.010  # across the slot
CLIP_BASE_H = 0.004  # the slot's floor
CLIP_JAW_TOP = 0.028  # height of the jaws' top above the table
CLIP_CHAMFER = 0.005  # lead-in: the jaws' top inner edges are rounded with this radius
CLIP_RGBA = (0.85, 0.55, 0.1, 1.0)


def _cable_xml() -> str:
    r = CABLE_RADIUS
    return f"""
<mujoco>
  <extension><plugin plugin="mujoco.elasticity.cable"/></extension>
  <worldbody>
    <body name="root">
      <composite prefix="c" type="cable" curve="s" count="{CABLE_SEGMENTS + 1} 1 1" size="{CABLE_LENGTH}"
                 offset="0 0 0" initial="none">
        <plugin plugin="mujoco.elasticity.cable">
          <config key="twist" value="{CABLE_TWIST:g}"/>
          <config key="bend" value="{CABLE_BEND:g}"/>
          <config key="vmax" value="0"/>
        </plugin>
        <joint kind="main" damping="0.002" armature="0.0001"/>
        <geom type="capsule" size="{r}" rgba="{' '.join(map(str, CABLE_RGBA))}" density="{CABLE_DENSITY}"
              condim="3" friction="1.0 0.01 0.001" solref="0.005 1"/>
      </composite>
    </body>
  </worldbody>
</mujoco>"""


def add_cable(spec: mujoco.MjSpec) -> None:
    """Anchor block + elastic cable (welded to the anchor) + clip, at their nominal poses."""
    # The cable's ball joints bring nv near 60, where MuJoCo's automatic choice switches to sparse Jacobians; with
    # the cell's noslip solver, sparse is ~3x slower than dense at this size. Ask for dense explicitly.
    spec.option.jacobian = mujoco.mjtJacobian.mjJAC_DENSE
    wb = spec.worldbody
    yaw = ANCHOR_YAW
    anchor = wb.add_body(name=ANCHOR_BODY, pos=list(ANCHOR_POS), quat=[np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
    hx, hy, hz = ANCHOR_HALF
    anchor.add_geom(name=ANCHOR_BODY, type=mujoco.mjtGeom.mjGEOM_BOX, size=[hx, hy, hz], pos=[0, 0, hz],
                    rgba=[0.3, 0.3, 0.32, 1])
    # The cable starts at the anchor's +x face, its axis at the height of a cable lying on the table.
    frame = anchor.add_frame(pos=[hx, 0, CABLE_RADIUS])
    cable = mujoco.MjSpec.from_string(_cable_xml())
    spec.attach(cable, frame=frame, prefix=CABLE_PREFIX)
    _keep_alive(spec, cable)

    clip = wb.add_body(name=CLIP_BODY, pos=list(CLIP_POS))
    half_gap, t, L = CLIP_GAP / 2, CLIP_JAW_THICK, CLIP_JAW_HALF_LEN
    rgba = list(CLIP_RGBA)
    clip.add_geom(name=CLIP_BODY + "_base", type=mujoco.mjtGeom.mjGEOM_BOX,
                  size=[L, half_gap + t, CLIP_BASE_H / 2], pos=[0, 0, CLIP_BASE_H / 2], rgba=rgba)
    c = CLIP_CHAMFER
    jaw_h = CLIP_JAW_TOP - CLIP_BASE_H - c
    for i, side in enumerate((1.0, -1.0)):
        # Each jaw: a wall up to (top - c), a cap over its outer part, and a rounded inner top edge (a capsule of
        # radius c along the slot axis) that guides a cable arriving slightly off-centre into the slot.
        clip.add_geom(name=f"{CLIP_BODY}_jaw{i}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[L, t / 2, jaw_h / 2],
                      pos=[0, side * (half_gap + t / 2), CLIP_BASE_H + jaw_h / 2], rgba=rgba)
        clip.add_geom(name=f"{CLIP_BODY}_cap{i}", type=mujoco.mjtGeom.mjGEOM_BOX, size=[L, (t - c) / 2, c / 2],
                      pos=[0, side * (half_gap + c + (t - c) / 2), CLIP_JAW_TOP - c / 2], rgba=rgba)
        clip.add_geom(name=f"{CLIP_BODY}_edge{i}", type=mujoco.mjtGeom.mjGEOM_CAPSULE, size=[c, L, 0],
                      pos=[0, side * (half_gap + c), CLIP_JAW_TOP - c],
                      quat=[np.cos(np.pi / 4), 0, np.sin(np.pi / 4), 0], rgba=rgba)  # capsule axis along x


# mujoco 3.3.0: an attached child spec must outlive the parent's compile(), or the plugin instance it brought is
# lost ("body_plugin out of bounds"). Keep each child alive for as long as its parent spec.
_CHILD_SPECS: dict[int, list[mujoco.MjSpec]] = {}


def _keep_alive(parent: mujoco.MjSpec, child: mujoco.MjSpec) -> None:
    key = id(parent)
    if key not in _CHILD_SPECS:
        _CHILD_SPECS[key] = []
        weakref.finalize(parent, _CHILD_SPECS.pop, key, None)
    _CHILD_SPECS[key].append(child)


def cable_body_names(model: mujoco.MjModel) -> list[str]:
    """The cable's bodies from the anchored end to the free end."""
    names = [model.body(i).name for i in range(model.nbody) if model.body(i).name.startswith(CABLE_PREFIX + "cB_")]
    first = [n for n in names if n.endswith("B_first")]
    last = [n for n in names if n.endswith("B_last")]
    mid = sorted((n for n in names if n not in first + last), key=lambda n: int(n.rsplit("_", 1)[1]))
    return first + mid + last
