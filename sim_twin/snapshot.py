"""A serializable snapshot of the twin's ground truth (robot state, object poses, the fixtures' bodies and joints),
for code outside the twin's process: a scripted expert driving the robot over ROS 2 reads them like from a mocap
system.

It offers the subset of the Twin API the scripted experts use (objects; the button's and the drawer's body frames
and joints), so the same expert code runs in-process on a Twin and out-of-process on a snapshot.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from sim_twin.tasks.registry import TaskRegistry, TaskSpec
from sim_twin.twin import TwinState


@dataclass
class SceneSnapshot:
    registry: TaskRegistry
    task: TaskSpec | None
    instruction: str
    robot: TwinState
    objects: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (pos, quat wxyz)
    home_pos: np.ndarray
    home_quat: np.ndarray
    success_flag: bool = False
    bodies: dict = field(default_factory=dict)  # fixture body name -> (pos, 3x3 rotation)
    joints: dict = field(default_factory=dict)  # fixture joint name -> position (button, drawer)

    # Twin-compatible accessors used by experts
    def state(self) -> TwinState:
        return self.robot

    def object_pos(self, name: str) -> np.ndarray:
        return self.objects[name][0].copy()

    def object_quat(self, name: str) -> np.ndarray:
        return self.objects[name][1].copy()

    def success(self) -> bool:
        return self.success_flag

    def body_pos(self, name: str) -> np.ndarray:
        return self.bodies[name][0].copy()

    def body_frame(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.bodies[name][0].copy(), self.bodies[name][1].copy()

    def joint_value(self, name: str) -> float:
        return float(self.joints[name])

    def update_robot(self, robot: TwinState) -> None:
        self.robot = robot

    @staticmethod
    def capture(twin) -> dict:
        """JSON-ready ground truth of a live Twin."""
        names = list(dict.fromkeys(twin.task.objects + twin.task.distractors)) if twin.task else []
        return {
            "task": twin.task.name if twin.task else None,
            "instruction": twin.instruction,
            "success": bool(twin.success()),
            "home": [list(map(float, twin.home_pos)), list(map(float, twin.home_quat))],
            "objects": {n: [list(map(float, twin.object_pos(n))), list(map(float, twin.object_quat(n)))]
                        for n in names},
            "fixtures": twin.fixture_state(),
        }

    @classmethod
    def from_json(cls, text: str, registry: TaskRegistry, robot: TwinState) -> "SceneSnapshot":
        d = json.loads(text)
        return cls(registry=registry, task=registry.get(d["task"]) if d.get("task") else None,
                   instruction=d.get("instruction", ""), robot=robot,
                   objects={n: (np.array(p), np.array(q)) for n, (p, q) in d.get("objects", {}).items()},
                   home_pos=np.array(d["home"][0]), home_quat=np.array(d["home"][1]),
                   success_flag=bool(d.get("success", False)),
                   bodies={n: (np.array(p), np.array(r).reshape(3, 3))
                           for n, (p, r) in d.get("fixtures", {}).get("bodies", {}).items()},
                   joints=dict(d.get("fixtures", {}).get("joints", {})))
