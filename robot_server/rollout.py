"""The one rollout loop over a control-contract env (robot_server.gym_env: the twin's TwinEnv, MetaWorldEnv).

Evaluation (policy/evaluate.py), scripted expert collection (teleop/collect.py) and PPO (rl_agent/ppo.py) all run
their episodes here; what differs is the policy and what each keeps of a step (`on_step`). The RL actor's episodes
(rl_agent/episodes.py EpisodeRunner) add a reward source and human interventions on the latent env.
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


def rollout(env, policy: Callable[[dict, str], Any], seed: int, task: Optional[str] = None,
            max_steps: Optional[int] = None, on_step: Optional[Callable[[dict, np.ndarray], None]] = None) -> Rollout:
    """One episode: reset with `seed` (and `task`, else the env's own), then `policy(obs, instruction) -> action`
    until success, the env's step limit (truncation) or `max_steps`. `on_step(obs, action)` sees each observation
    with the action taken from it, before the step."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed, options={"task": task} if task else None)
    instruction = info["instruction"]
    limit = max_steps or env.twin.task.max_steps
    success, steps = False, 0
    while steps < limit:
        action = np.asarray(policy(obs, instruction), np.float64)
        if on_step is not None:
            on_step(obs, action)
        obs, _, success, truncated, info = env.step(action)
        steps += 1
        if success or truncated:
            break
    return Rollout(task or info.get("task", ""), info.get("category", ""), seed, instruction, bool(success), steps,
                   time.perf_counter() - t0, info)
