"""The one rollout loop. `run_steps` is the loop itself (act, step, stop on the episode's end, the step limit or a
shutdown); `rollout` runs it over a control-contract env (robot_server.gym_env: the twin's TwinEnv, MetaWorldEnv).

Evaluation (policy/evaluate.py), scripted expert collection (teleop/collect.py), `irevla experts` and PPO
(rl_agent/ppo.py) run their episodes through `rollout`; what differs is the policy and what each keeps of a step
(`on_step`). The RL episodes of the session and the ROS actor (rl_agent/episodes.py EpisodeRunner) run `run_steps`
with a step that adds a reward source and human interventions on the latent env.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class Rollout:
    task: str
    category: str
    seed: int
    instruction: str
    success: bool
    steps: int
    seconds: float
    info: dict = field(default_factory=dict, repr=False)  # the last step's info

    def record(self) -> dict:
        """The episode as evaluation results store it (JSON-ready, without the info)."""
        return {"task": self.task, "category": self.category, "seed": self.seed, "instruction": self.instruction,
                "success": self.success, "steps": self.steps, "seconds": self.seconds}


def run_steps(obs, act: Callable[[Any], Any], step: Callable[[Any], tuple[Any, bool]], limit: Optional[int] = None,
              should_stop: Optional[Callable[[], bool]] = None) -> int:
    """Act and step from `obs` until `step(action) -> (next_obs, end)` says the episode ended, `limit` steps were
    taken or `should_stop()` (a node shutting down) is true; returns the number of steps."""
    steps = 0
    while limit is None or steps < limit:
        obs, end = step(act(obs))
        steps += 1
        if end or (should_stop is not None and should_stop()):
            break
    return steps


def rollout(env, policy: Callable[[dict, str], Any], seed: int, task: Optional[str] = None,
            max_steps: Optional[int] = None, on_step: Optional[Callable[[dict, np.ndarray], None]] = None) -> Rollout:
    """One episode: reset with `seed` (and `task`, else the env's own), then `policy(obs, instruction) -> action`
    until success, the env's step limit (truncation) or `max_steps`. `on_step(obs, action)` sees each observation
    with the action taken from it, before the step."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed, options={"task": task} if task else None)
    instruction = info["instruction"]
    last = {"success": False, "info": info}

    def act(o):
        action = np.asarray(policy(o, instruction), np.float64)
        if on_step is not None:
            on_step(o, action)
        return action

    def step(action):
        o, _, success, truncated, last["info"] = env.step(action)
        last["success"] = bool(success)
        return o, success or truncated

    steps = run_steps(obs, act, step, limit=max_steps or env.twin.task.max_steps)
    success, info = last["success"], last["info"]
    return Rollout(task or info.get("task", ""), info.get("category", ""), seed, instruction, bool(success), steps,
                   time.perf_counter() - t0, info)
