"""Builds the MuJoCo model of the cell: table, Panda (from gym-hil's shipped MJCF), cameras, fixtures, objects.

The robot model is attached from the installed gym-hil package (Panda arm + Robotiq 2F-85 parallel gripper with a
wrist camera) rather than copied, so the twin uses the registry's asset as-is.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import mujoco
import numpy as np

ROBOT_PREFIX = "panda/"
OBJECT_PREFIX = "obj/"
FIXTURE_PREFIX = "fixture/"  # the cell's fixtures (sim_twin/fixtures.py): button, drawer, bin, plate, cable clip

# Cell layout in the robot base frame (metres). The table top is z = 0.
OBJECT_REGION = ((0.38, -0.14), (0.58, 0.14))  # where pickable objects are spawned (x, y low / high)
CLUTTER_REGION = ((0.34, -0.17), (0.60, 0.17))  # training-only clutter: a little wider, still clear of the fixtures


@dataclass(frozen=True)
class ObjectSpec:
    """A movable object from the YAML catalogue."""
    name: str
    shape: str  # box | capsule | cylinder | sphere | ellipsoid
    size: tuple[float, ...]  # MuJoCo geom size (half extents / radius, half length)
    rgba: tuple[float, float, float, float]
    nouns: tuple[str, ...]
    mass: float = 0.05
    lying: bool = False  # capsules/cylinders lie on their side (axis along the body x)
    friction: float = 1.5

    @property
    def rest_height(self) -> float:
        """Height of the body centre above the table when resting."""
        s = self.size
        if self.shape == "box":
            return s[2]
        if self.shape in ("sphere",):
            return s[0]
        if self.shape == "ellipsoid":
            return s[2]
        if self.shape in ("capsule", "cylinder"):
            return s[0] if self.lying else s[1] + (s[0] if self.shape == "capsule" else 0.0)
        raise ValueError(f"unknown shape {self.shape!r}")

    @property
    def footprint_radius(self) -> float:
        s = self.size
        if self.shape in ("capsule", "cylinder") and self.lying:
            return s[1] + s[0]
        return float(np.hypot(s[0], s[1] if len(s) > 1 and self.shape in ("box", "ellipsoid") else s[0]))


def panda_mjcf_path() -> str:
    import gym_hil
    return os.path.join(os.path.dirname(gym_hil.__file__), "assets", "panda.xml")


FixtureBuilder = Callable[[mujoco.MjSpec], None]


@dataclass
class SceneSpec:
    objects: list[ObjectSpec] = field(default_factory=list)
    fixtures: list[FixtureBuilder] = field(default_factory=list)
    render_width: int = 224
    render_height: int = 224
    physics_dt: float = 0.002


def _look_at_xyaxes(pos, target) -> list[float]:
    f = np.asarray(target, float) - np.asarray(pos, float)
    f /= np.linalg.norm(f)
    z = -f
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return [*x, *y]


def add_object(spec: mujoco.MjSpec, obj: ObjectSpec) -> None:
    body = spec.worldbody.add_body(name=OBJECT_PREFIX + obj.name, pos=[0.5, 0.0, obj.rest_height])
    body.add_freejoint(name=OBJECT_PREFIX + obj.name)
    geom_type = getattr(mujoco.mjtGeom, f"mjGEOM_{obj.shape.upper()}")
    size = list(obj.size) + [0.0] * (3 - len(obj.size))
    quat = [np.cos(np.pi / 4), 0.0, np.sin(np.pi / 4), 0.0] if obj.lying else [1.0, 0.0, 0.0, 0.0]
    body.add_geom(name=OBJECT_PREFIX + obj.name, type=geom_type, size=size, rgba=list(obj.rgba), mass=obj.mass,
                  quat=quat, friction=[obj.friction, 0.01, 0.001], condim=4, solref=[0.01, 1])


def build_model(scene: SceneSpec) -> mujoco.MjModel:
    spec = mujoco.MjSpec()
    spec.compiler.degree = False  # the attached Panda MJCF is in radians
    spec.option.timestep = scene.physics_dt
    spec.option.noslip_iterations = 5
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.visual.global_.offwidth = max(640, scene.render_width)
    spec.visual.global_.offheight = max(480, scene.render_height)
    # Fast offscreen rendering: no shadows, no multisampling (about 10x faster on CPU).
    spec.visual.quality.shadowsize = 0
    spec.visual.quality.offsamples = 0
    spec.visual.headlight.ambient = [0.5, 0.5, 0.5]
    spec.visual.headlight.diffuse = [0.5, 0.5, 0.5]

    wb = spec.worldbody
    wb.add_light(pos=[0.5, 0.0, 2.0], dir=[0, 0, -1], diffuse=[0.7, 0.7, 0.7], castshadow=False)
    wb.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[3, 3, 0.01], pos=[0, 0, -0.75],
                rgba=[0.35, 0.35, 0.38, 1])
    wb.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX, size=[0.65, 0.6, 0.02], pos=[0.35, 0.0, -0.02],
                rgba=[0.72, 0.6, 0.45, 1], friction=[1.0, 0.01, 0.001])
    front = [1.05, 0.0, 0.72]
    wb.add_camera(name="front", pos=front, xyaxes=_look_at_xyaxes(front, [0.46, 0.0, 0.0]), fovy=52)

    robot = mujoco.MjSpec.from_file(panda_mjcf_path())
    for cam in list(robot.cameras):
        if cam.name == "handcam_depth":
            cam.delete()
    frame = wb.add_frame(pos=[0, 0, 0])
    spec.attach(robot, frame=frame, prefix=ROBOT_PREFIX)

    for build in scene.fixtures:
        build(spec)
    for obj in scene.objects:
        add_object(spec, obj)
    return spec.compile()
