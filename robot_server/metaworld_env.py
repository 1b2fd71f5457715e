"""The MetaWorld cell behind the twin's Gymnasium contract (robot_server/gym_env.py's TwinEnv): camera images and
the same 14-D state in, the 7-D contract action out, reward = MetaWorld's own `info["success"]`.

The action goes through the one safety layer (robot_server/safety.py) with a workspace box around MetaWorld's mocap
range: rejected and clamped exactly like the twin's and the real arm's. MetaWorld's Sawyer keeps its hand
orientation fixed, so the rotation entries are validated and then have no effect; the gripper is binary as in the
contract (> 0 closes). One contract step (10 Hz, 2 cm at most) is two MetaWorld steps of 1 cm.

`env.twin` is a read-only view of the cell with the parts of the twin's interface the pipeline reads (state, task,
registry, instruction, episode seed), so collection, evaluation and RL run MetaWorld tasks unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from robot_server.contract import DEFAULT_CONTRACT
from robot_server.contract import obs_state
from robot_server.gym_env import contract_spaces
from robot_server.safety import SafetyConfig, SafetyLayer
from sim_twin.metaworld_cell import FINGER_SPAN_M, MetaWorldCell, Variation
from sim_twin.tasks.registry import TaskRegistry

NOMINAL_QUAT = (1.0, 0.0, 0.0, 0.0)
ACTION_REPEAT = 2  # MetaWorld steps of 1 cm per contract step of 2 cm


def metaworld_safety(cell: MetaWorldCell, margin: float = 0.06) -> SafetyConfig:
    """The contract's limits with a TCP box around MetaWorld's mocap range (the TCP sits below the mocap body)."""
    lo = np.asarray(cell.env.mocap_low, float) - margin
    hi = np.asarray(cell.env.mocap_high, float) + margin
    lo[2] = max(lo[2], -0.02)
    return SafetyConfig(pos_min=tuple(lo), pos_max=tuple(hi), rpy_min=(-0.1, -0.1, -0.1), rpy_max=(0.1, 0.1, 0.1),
                        nominal_quat=NOMINAL_QUAT, control_hz=DEFAULT_CONTRACT.control_hz,
                        max_step_m=DEFAULT_CONTRACT.max_step_m, max_step_rad=DEFAULT_CONTRACT.max_step_rad)


@dataclass
class CellView:
    """What the pipeline reads of `env.twin` (TwinEnv's Twin), for a MetaWorld cell."""
    cell: MetaWorldCell
    registry: TaskRegistry
    task: Any
    instruction: str = ""
    clutter_objects: tuple = ()
    dt: float = field(default=DEFAULT_CONTRACT.dt)

    @property
    def episode_seed(self) -> Optional[int]:
        return self.cell.episode_seed

    def state(self):
        s = self.cell.state(self.dt)
        s.q, s.dq = self.cell.data.qpos[:7].copy(), self.cell.data.qvel[:7].copy()  # the Sawyer's 7 joints
        return s


class MetaWorldEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str, cameras: tuple[str, ...] = ("front", "wrist"), image_size: int = 128,
                 render_images: bool = True, task_files: tuple[str, ...] = ("metaworld",),
                 registry: Optional[TaskRegistry] = None, render_detail: str = "fast",
                 render_mode: Optional[str] = "rgb_array"):
        files = tuple(task_files) if "metaworld" in task_files else ("metaworld", *task_files)
        self.registry = registry or TaskRegistry.load(extra_files=files)
        self.image_size, self.render_detail = image_size, render_detail
        self.cell = None
        self._load(task)
        self.cameras, self.render_images, self.render_mode = tuple(cameras), render_images, render_mode
        self.observation_space, self.action_space = contract_spaces(self.cameras, image_size, render_images)
        self._t = 0.0
        self._steps = 0
        self._expert_rng = np.random.default_rng(0)

    def _load(self, task: str) -> None:
        """The cell of `task`: each MetaWorld task is its own environment (scene, objects, success)."""
        spec = self.registry.get(task)
        if spec.skill != "metaworld":
            raise ValueError(f"task {task!r} is a twin task (skill {spec.skill!r}); use robot_server.gym_env.TwinEnv")
        if self.cell is not None:
            self.cell.close()
        self.task_name, self.spec = task, spec
        self.cell = MetaWorldCell(spec.params["env"], Variation.from_params(spec.params), self.image_size,
                                  ACTION_REPEAT, self.render_detail)
        self.twin = CellView(self.cell, self.registry, spec)
        self.safety = SafetyLayer(metaworld_safety(self.cell), nominal_quat=NOMINAL_QUAT)

    @property
    def instruction(self) -> str:
        return self.twin.instruction

    @property
    def safety_stats(self) -> dict:
        return self.safety.stats

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        task = (options or {}).get("task")
        if task and task != self.task_name:  # as TwinEnv: options={"task": ...} switches the task
            self._load(task)
        ep_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        self.cell.reset(ep_seed)
        phrasings = self.spec.phrasings(self.registry)
        self.twin.instruction = phrasings[np.random.default_rng(ep_seed).integers(len(phrasings))]
        self._expert_rng = np.random.default_rng(ep_seed + 7)
        self._steps = 0
        return self._obs(), self._info(None)

    def step(self, action):
        self._t += DEFAULT_CONTRACT.dt
        s = self.cell.state(DEFAULT_CONTRACT.dt)
        decision = self.safety.filter_delta(action, (s.ee_pos, s.ee_quat), now=self._t)
        if decision.accepted:  # the clamped goal -> MetaWorld's per-step mocap motion (1 cm units)
            dpos = np.asarray(decision.target.pos, float) - s.ee_pos
            a4 = np.r_[dpos / (0.01 * ACTION_REPEAT), 1.0 if decision.gripper > 0.5 else -1.0]
        else:  # the arm holds (a rejected command moves nothing), the gripper keeps its state
            a4 = np.r_[0.0, 0.0, 0.0, 1.0 if self._gripper_closed() else -1.0]
        self.cell.step(a4)
        self._steps += 1
        success = self.cell.success
        truncated = self._steps >= self.spec.max_steps and not success
        return self._obs(), float(success), success, truncated, self._info(decision)

    def _gripper_closed(self) -> bool:
        return self.cell.state(DEFAULT_CONTRACT.dt).gripper_width < 0.5 * FINGER_SPAN_M

    def expert_action(self, noise: float = 0.0) -> np.ndarray:
        """MetaWorld's scripted policy as a contract action (privileged: reads the full simulator state)."""
        a = self.cell.expert(self._expert_rng, noise)
        out = np.zeros(7, np.float32)
        out[:3] = np.clip(a[:3], -1.0, 1.0)  # 1 cm per MetaWorld step x 2 steps = 2 cm = one contract unit
        out[6] = 1.0 if a[3] > 0 else -1.0
        return out

    def render(self):
        return self.cell.render(self.cameras[0])

    def close(self):
        self.cell.close()

    def _obs(self) -> dict[str, Any]:
        s = self.cell.state(DEFAULT_CONTRACT.dt)
        obs: dict[str, Any] = {"state": obs_state(s.ee_pos, s.ee_quat, s.ee_vel, s.gripper_width)}
        if self.render_images:
            obs["images"] = {c: self.cell.render(c) for c in self.cameras}
        return obs

    def _info(self, decision) -> dict[str, Any]:
        info = {"task": self.task_name, "instruction": self.instruction, "success": self.cell.success,
                "category": self.spec.category, "step": self._steps}
        if decision is not None and not decision.accepted:
            info["rejected"] = decision.reason
        return info
