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
