"""Gymnasium environment of the twin for users outside ROS.

It is the robot node's path without the messages: contract action -> RobotServerCore (the one safety layer) ->
SimTwinBackend, stepped in lock-step with simulated time instead of the wall clock. Observation: camera images and
a proprioceptive state vector; action: the 7-D contract action in [-1, 1]; reward: the task's binary success.
"""
from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robot_server.backends.sim import SimTwinBackend
from robot_server.contract import DEFAULT_CONTRACT, OBS_STATE_NAMES, obs_state
from robot_server.safety import SafetyConfig
from robot_server.server_core import RobotServerCore
from sim_twin.tasks.skills import SKILLS
from sim_twin.twin import Twin, TwinConfig

STATE_DIM = len(OBS_STATE_NAMES)  # the observation's state vector (robot_server.contract)


def contract_spaces(cameras: tuple[str, ...], image_size: int, render_images: bool = True):
    """(observation space, action space) of every cell behind the contract: images per camera + the state vector;
    the 7-D action in [-1, 1]."""
    img = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
    obs = {"state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)}
    if render_images:
        obs["images"] = spaces.Dict({c: img for c in cameras})
    return spaces.Dict(obs), spaces.Box(-1.0, 1.0, (7,), np.float32)


class TwinEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: Optional[str] = None, cameras: tuple[str, ...] = ("front", "wrist"),
                 image_size: int = 224, render_images: bool = True, task_files: tuple[str, ...] = (),
                 safety_config: Optional[SafetyConfig] = None, server_rate_hz: float = 20.0,
                 render_detail: str = "fast", render_mode: Optional[str] = "rgb_array", clutter: int = 0):
        self.twin = Twin(TwinConfig(render_width=image_size, render_height=image_size, cameras=tuple(cameras),
                                    task_files=tuple(task_files), render_detail=render_detail, clutter=clutter))
        self.task_name = task or next(iter(self.twin.registry.tasks))
        self.backend = SimTwinBackend(twin=self.twin, task=self.task_name, seed=0, realtime=False)
        self.core = RobotServerCore(self.backend, safety_config=safety_config, task=self.task_name)
        self.cameras, self.render_images, self.render_mode = tuple(cameras), render_images, render_mode
        self._tick_dt = 1.0 / server_rate_hz
        self._ticks = max(1, int(round(DEFAULT_CONTRACT.dt / self._tick_dt)))
        self.observation_space, self.action_space = contract_spaces(self.cameras, image_size, render_images)
        self._t = 0.0
        self._steps = 0
        self._expert = None

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        options = options or {}
        self.task_name = options.get("task", self.task_name)
        ep_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        # Through the server core: the twin's home is checked by the safety layer, the setpoint re-seated by it.
        ok, message = self.core.reset_scene(self.task_name, ep_seed, now=self._t)
        if not ok:
            raise RuntimeError(f"reset failed: {message}")
        self._steps, self._expert = 0, None
        return self._obs(), self._info(None)

    def step(self, action):
        decision = self.core.on_action(action, now=self._t)
        for _ in range(self._ticks):
            self.backend.step(self._tick_dt)
            self._t += self._tick_dt
            self.core.tick(now=self._t)
        self._steps += 1
        success = self.backend.success()
        truncated = self._steps >= self.twin.task.max_steps and not success
        return self._obs(), float(success), success, truncated, self._info(decision)

    def render(self):
        return self.twin.render(self.cameras[0])

    @property
    def safety_stats(self) -> dict:
        return self.core.safety.stats

    def close(self):
        self.backend.close()

    # ------------------------------------------------------------------ extras
    @property
    def instruction(self) -> str:
        return self.twin.instruction

    def expert_action(self, noise: float = 0.0) -> np.ndarray:
        """The task's scripted expert action for the current state (privileged: reads the twin directly)."""
        if self._expert is None:
            rng = np.random.default_rng(None if self.twin.episode_seed is None else self.twin.episode_seed + 7)
            self._expert = SKILLS[self.twin.task.skill].expert(self.twin, self.twin.task, rng, noise)
        d = self._expert.act(self.twin)
        return DEFAULT_CONTRACT.delta_to_action(d[:3], d[3:6], d[6]).astype(np.float32)

    def _obs(self) -> dict[str, Any]:
        s = self.twin.state()
        obs: dict[str, Any] = {"state": obs_state(s.ee_pos, s.ee_quat, s.ee_vel, s.gripper_width)}
        if self.render_images:
            obs["images"] = {c: self.twin.render(c) for c in self.cameras}
        return obs

    def _info(self, decision) -> dict[str, Any]:
        info = {"task": self.task_name, "instruction": self.instruction, "success": self.backend.success(),
                "category": self.twin.task.category, "step": self._steps}
        if decision is not None and not decision.accepted:
            info["rejected"] = decision.reason
        return info


def make_env(task: str, cameras: tuple[str, ...] = ("front", "wrist"), image_size: int = 224,
             task_files: tuple[str, ...] = (), **kwargs):
    """The cell a registry task runs in: the twin (TwinEnv), or MetaWorld for `skill: metaworld` tasks
    (robot_server/metaworld_env.py; the optional MetaWorld install). Both take the contract and give the same
    observations; keyword arguments one cell does not have (clutter, safety_config, server_rate_hz for the twin)
    must keep their defaults for the other."""
    from sim_twin.tasks.registry import TaskRegistry
    registry = TaskRegistry.load(extra_files=tuple(task_files))
    if registry.get(task).skill == "metaworld":
        from robot_server.metaworld_env import MetaWorldEnv
        unsupported = {k: v for k, v in kwargs.items() if k in ("clutter", "safety_config", "server_rate_hz") and v}
        if unsupported:
            raise ValueError(f"task {task!r} runs in the MetaWorld cell, which has no {sorted(unsupported)}")
        keep = {k: v for k, v in kwargs.items() if k in ("render_images", "render_detail", "render_mode")}
        return MetaWorldEnv(task, tuple(cameras), image_size, task_files=tuple(task_files), registry=registry, **keep)
    return TwinEnv(task=task, cameras=tuple(cameras), image_size=image_size, task_files=tuple(task_files), **kwargs)


gym.register(id="irevla/Twin-v0", entry_point="robot_server.gym_env:TwinEnv")
