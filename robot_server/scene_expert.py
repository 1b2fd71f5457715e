"""The twin's scripted expert over ROS 2: actions from the robot node's scene ground truth.

robot_node publishes the twin's scene (object poses, fixture bodies and joints, task, instruction) on
/irevla/robot/sim_scene when its backend is the sim (never for a real arm). With it and the robot state, a process
that sees the cell only over ROS 2 -- the scripted demo (`irevla scripted-demo`), the RL actor's expert demos -- runs
the same skill as the in-process twin.
"""
from __future__ import annotations

import time
from typing import Iterable

import numpy as np

from robot_server.contract import DEFAULT_CONTRACT


class NoSceneError(RuntimeError):
    """No scene ground truth on the topic: a real cell, or a robot node whose backend is not the sim."""


# Skills whose expert needs only what the scene topic carries: object poses, the fixtures' bodies and joints, the
# robot state (cable routing reads the cable's simulated segments, which stay inside the twin).
SKILLS_OVER_ROS = ("pick", "place", "button_press", "drawer_open", "reach")


class SceneExpert:
    def __init__(self, client, task_files: Iterable[str] = ()):
        from sim_twin.tasks.registry import TaskRegistry
        self.client = client  # robot_server.client.RobotClient
        self.registry = TaskRegistry.load(tuple(task_files))
        self.expert = None
        self.task = None
        self._scene_before = None

    def robot_state(self):
        from sim_twin.twin import TwinState
        s = self.client.state()
        return TwinState(time=s.stamp, q=np.zeros(7), dq=np.zeros(7), ee_pos=s.ee_pos, ee_quat=s.ee_quat,
                         ee_vel=np.zeros(6), gripper_width=s.gripper_width, gripper_command=0.0)

    def snapshot(self):
        from sim_twin.snapshot import SceneSnapshot
        if self.client.scene_json is None:
            raise NoSceneError("no scene on /irevla/robot/sim_scene: scripted actions need the twin behind robot_node")
        return SceneSnapshot.from_json(self.client.scene_json, self.registry, self.robot_state())

    def unavailable(self, timeout_s: float = 3.0) -> str:
        """Why scripted actions cannot run on this cell ("" when they can), after waiting for a scene."""
        deadline = time.monotonic() + timeout_s
        while self.client.scene_json is None or self.client.state() is None:
            if time.monotonic() > deadline:
                return ("no scene ground truth on /irevla/robot/sim_scene (a real cell, or a robot node without the "
                        "sim backend)")
            time.sleep(0.05)
        task = self.snapshot().task
        if task is None:
            return "the robot node's scene has no task (robot_node task:=...)"
        if task.skill not in SKILLS_OVER_ROS:
            return f"task {task.name!r} ({task.skill}) needs simulator state the scene topic does not carry"
        return ""

    def before_reset(self) -> None:
        """Call before resetting the scene: the next start() waits for a scene published after it."""
        self._scene_before = self.client.scene_json
        self.expert = None

    def start(self, seed: int, noise: float = 0.0, timeout_s: float = 5.0):
        """A new expert for the scene now on the topic (a fresh one after a reset); returns the snapshot."""
        from sim_twin.tasks.skills import SKILLS
        deadline = time.monotonic() + timeout_s
        while self._scene_before is not None and self.client.scene_json == self._scene_before:
            if time.monotonic() > deadline:
                raise NoSceneError(f"no new scene within {timeout_s:g} s of the reset")
            time.sleep(0.02)
        snap = self.snapshot()
        if snap.task is None or snap.task.skill not in SKILLS_OVER_ROS:
            raise NoSceneError(self.unavailable(0.0))
        self.task = snap.task
        self.expert = SKILLS[snap.task.skill].expert(snap, snap.task, np.random.default_rng(seed), noise)
        self._scene_before = None
        return snap

    def action(self, snap=None) -> np.ndarray:
        """The contract action for the scene now (start() first)."""
        if self.expert is None:
            raise RuntimeError("SceneExpert.action before start()")
        d = self.expert.act(snap if snap is not None else self.snapshot())
        return DEFAULT_CONTRACT.delta_to_action(d[:3], d[3:6], d[6])
