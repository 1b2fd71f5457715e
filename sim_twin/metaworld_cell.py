"""A MetaWorld cell beside the twin: MetaWorld's Sawyer tasks (its own physics, success predicate and scripted
expert policies), with our camera names, seeded episodes and the task variations of the paper's "-new" and unseen
tasks (colour, size and position of the task's object). No ROS, no contract: robot_server/metaworld_env.py puts the
control contract around it, like robot_server/gym_env.py around the twin.

MetaWorld is an optional dependency (`IREVLA_EXTRAS=metaworld bash scripts/setup.sh`, requirements/metaworld.txt).

A task's YAML entry (sim_twin/tasks/metaworld.yaml, skill `metaworld`) names the MetaWorld environment and its
variation:

    params:
      env: window-open-v3
      body: window            # the bodies recoloured / resized (their whole subtree)
      rgba: [0.2, 0.7, 0.3, 1]
      scale: 1.3              # size of the bodies' primitive geoms (visual and collision alike)
      shift: [0.05, 0.0, 0.0] # added to the object's sampled start position (first 3 entries of the reset vector)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

# our camera names -> MetaWorld's cameras: a fixed view of the table, and the view over the gripper
CAMERAS = {"front": "corner", "wrist": "gripperPOV", "top": "topview", "side": "corner2"}
FINGER_SPAN_M = 0.1  # MetaWorld reports the finger opening normalised to [0, 1]; we report metres like the twin


class MetaWorldMissing(ImportError):
    pass


def import_metaworld():
    try:
        import metaworld  # noqa: F401
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as e:
        raise MetaWorldMissing("MetaWorld is not installed: IREVLA_EXTRAS=metaworld bash scripts/setup.sh "
                               f"(or pip install -r requirements/metaworld.txt) ({e})") from e
    return ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, ENV_POLICY_MAP


@dataclass(frozen=True)
class Variation:
    """How a task differs from MetaWorld's own (the paper's "-new" and unseen tasks)."""
    bodies: tuple[str, ...] = ()
    rgba: Optional[tuple[float, float, float, float]] = None
    scale: float = 1.0
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @classmethod
    def from_params(cls, params: dict) -> "Variation":
        body = params.get("body", ())
        bodies = (body,) if isinstance(body, str) else tuple(body)
        rgba = params.get("rgba")
        return cls(bodies, tuple(float(v) for v in rgba) if rgba is not None else None,
                   float(params.get("scale", 1.0)), tuple(float(v) for v in params.get("shift", (0.0, 0.0, 0.0))))

    def check(self, task: str) -> None:
        if (self.rgba is not None or self.scale != 1.0) and not self.bodies:
            raise ValueError(f"task {task!r}: rgba / scale need `body` (the bodies to change)")
        if self.rgba is not None and (len(self.rgba) != 4 or not all(0.0 <= v <= 1.0 for v in self.rgba)):
            raise ValueError(f"task {task!r}: rgba needs 4 values in [0, 1], got {self.rgba}")
        if not 0.5 <= self.scale <= 2.0:
            raise ValueError(f"task {task!r}: scale must be in [0.5, 2], got {self.scale}")
        if len(self.shift) != 3 or max(abs(v) for v in self.shift) > 0.15:
            raise ValueError(f"task {task!r}: shift needs 3 values within 0.15 m, got {self.shift}")


@dataclass
class CellState:
    ee_pos: np.ndarray
    ee_quat: np.ndarray  # wxyz; MetaWorld's Sawyer keeps its hand orientation fixed
    ee_vel: np.ndarray
    gripper_width: float


class MetaWorldCell:
    """One MetaWorld task. `reset(seed)` draws the episode from the seed (object / goal positions), `step(a4)` runs
    `action_repeat` MetaWorld steps with MetaWorld's own 4-D action (xyz in 1 cm units, gripper effort),
    `render(camera)` our camera names, `expert()` the scripted policy's action, `success` MetaWorld's predicate."""

    def __init__(self, env_name: str, variation: Variation = Variation(), image_size: int = 128,
                 action_repeat: int = 2, render_detail: str = "fast"):
        envs, policies = import_metaworld()
        key = f"{env_name}-goal-observable"
        if key not in envs:
            known = sorted(k[:-len("-goal-observable")] for k in envs)
            raise ValueError(f"unknown MetaWorld environment {env_name!r}; known: {', '.join(known)}")
        self.env_name, self.variation, self.action_repeat = env_name, variation, int(action_repeat)
        self.env = envs[key]()
        self.env._partially_observable = False
        self.policy = policies[env_name]()
        self.model, self.data = self.env.model, self.env.data
        self._default_size = self.model.geom_size.copy()
        self._apply_variation()
        if render_detail == "fast":  # shadows and multisampling cost ~10x on a CPU (environment notes)
            self.model.vis.quality.shadowsize = 0
            self.model.vis.quality.offsamples = 0
        self.image_size = int(image_size)
        self._renderer = None  # made on the first render (a GL context): state-only runs need none
        self._obs: Optional[np.ndarray] = None
        self._prev_pos = np.zeros(3)
        self.success = False
        self.episode_seed: Optional[int] = None
        self.steps = 0

    # ------------------------------------------------------------------ variations
    def _subtree_geoms(self, body: str) -> list[int]:
        try:
            root = self.model.body(body).id
        except KeyError:
            raise ValueError(f"{self.env_name}: no body {body!r} to vary") from None
        bodies = {root}
        for b in range(self.model.nbody):  # parents come before children in MuJoCo's body order
            if self.model.body_parentid[b] in bodies and b != 0:
                bodies.add(b)
        return [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] in bodies]

    def _apply_variation(self) -> None:
        import mujoco
        from gymnasium.spaces import Box
        v = self.variation
        if any(v.shift):  # the object's start position: the first 3 entries of MetaWorld's reset vector
            space = self.env._random_reset_space
            low, high = np.array(space.low, np.float64), np.array(space.high, np.float64)
            low[:3] += v.shift
            high[:3] += v.shift
            self.env._random_reset_space = Box(low, high, dtype=np.float64)
        for body in v.bodies:
            for g in self._subtree_geoms(body):
                if v.rgba is not None:
                    self.model.geom_matid[g] = -1  # a material's colour would win over the geom's
                    self.model.geom_rgba[g] = v.rgba
                if v.scale != 1.0 and self.model.geom_type[g] != mujoco.mjtGeom.mjGEOM_MESH:
                    self.model.geom_size[g] = self._default_size[g] * v.scale
        if v.scale != 1.0:
            mujoco.mj_setConst(self.model, self.data)

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int) -> None:
        self.episode_seed = int(seed)
        # MetaWorld's own seeded sampling: some tasks resample until object and goal are apart, so a frozen vector
        # could loop forever. The shift moves the sampling box itself.
        self.env._freeze_rand_vec = False
        self.env.seeded_rand_vec = True
        self.env.seed(int(seed))
        self._obs, _ = self.env.reset()
        self._prev_pos = self.ee_pos.copy()
        self.success = False
        self.steps = 0

    def step(self, action4: np.ndarray) -> None:
        a = np.clip(np.asarray(action4, np.float64).reshape(4), -1.0, 1.0)
        self._prev_pos = self.ee_pos.copy()
        for _ in range(self.action_repeat):
            if self.env.curr_path_length >= self.env.max_path_length:
                self.env.curr_path_length = 0  # our step limit rules (MetaWorld's would refuse further steps)
            self._obs, _, _, _, info = self.env.step(a.astype(np.float32))
            self.success = self.success or bool(info["success"])
        self.steps += 1

    def expert(self, rng: Optional[np.random.Generator] = None, noise: float = 0.0) -> np.ndarray:
        """MetaWorld's scripted policy (privileged: reads the full state vector), in its own 4-D action units."""
        a = np.asarray(self.policy.get_action(self._obs), np.float64)
        if noise > 0 and rng is not None:
            a[:3] += rng.normal(0.0, noise, 3)
        return np.clip(a, -1.0, 1.0)

    # ------------------------------------------------------------------ observation
    @property
    def ee_pos(self) -> np.ndarray:
        return np.asarray(self.env.tcp_center, np.float64).copy()

    def state(self, dt: float) -> CellState:
        pos = self.ee_pos
        width = float(np.clip(self._obs[3], 0.0, 1.0)) * FINGER_SPAN_M if self._obs is not None else FINGER_SPAN_M
        return CellState(pos, np.array([1.0, 0.0, 0.0, 0.0]), np.r_[(pos - self._prev_pos) / dt, np.zeros(3)], width)

    def render(self, camera: str) -> np.ndarray:
        name = CAMERAS.get(camera, camera)
        if self._renderer is None:
            import mujoco
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        try:
            self._renderer.update_scene(self.data, camera=name)
        except (KeyError, ValueError):
            raise ValueError(f"camera {camera!r}: MetaWorld cameras are {sorted(CAMERAS)} "
                             f"(or MetaWorld's own names)") from None
        return self._renderer.render()[::-1].copy()  # MetaWorld's cameras are mounted upside down for MuJoCo

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.env.close()
