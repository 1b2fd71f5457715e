"""PPO-Replay's warm start from the same demonstrations SACfD gets: the same demo settings (count, source, attempts,
noise) and the same scene seeds as the stage-1 session's (rl_agent.episodes.demo_attempts, the schedule both
share), then behaviour cloning of the whole VLA on them before the policy gradient starts. Without it the table's
PPO row would get no demonstrations while SACfD does.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from robot_server.rollout import rollout
from rl_agent.episodes import demo_attempts
from rl_agent.ppo import policy_inputs
from rl_agent.session_config import DemoConfig


def collect_demo_steps(env, head_action: Callable, task: str, cfg: DemoConfig, seed: int, cameras: list,
                       max_steps=None, log=print) -> dict:
    """The successful episodes, as steps: images [N, cams, H, W, 3], state, instruction, action executed."""
    rng = np.random.default_rng(seed + 17)
    steps = {"images": [], "state": [], "instr": [], "action": []}

    def run(episode_seed: int, policy: Callable) -> bool:
        ep = {"images": [], "state": [], "instr": [], "action": []}

        def act(obs, instr):
            a = np.clip(np.asarray(policy(obs, instr), np.float32), -1.0, 1.0)
            images, state = policy_inputs(obs, cameras)
            ep["images"].append(images)
            ep["state"].append(state)
            ep["instr"].append(instr)
            ep["action"].append(a)
            return a
        if rollout(env, act, episode_seed, task=task, max_steps=max_steps).success:
            for k in steps:
                steps[k] += ep[k]
            return True
        return False

    def noisy(obs, instr):
        return head_action(obs, instr) + rng.normal(0.0, cfg.action_noise, 7)

    stats = demo_attempts(cfg, seed, lambda episode_seed, _k: run(episode_seed, noisy),
                          lambda episode_seed, _k: run(episode_seed, lambda *_: env.expert_action(cfg.expert_noise)))
    log(f"PPO demos: {stats['vla']} from the VLA in {stats['vla_attempts']} attempts, {stats['expert']} from the "
        f"scripted expert in {stats['expert_attempts']}; {len(steps['action'])} steps")
    out = {k: (v if k == "instr" else np.asarray(v)) for k, v in steps.items()}
    out["stats"] = stats
    return out


def behaviour_clone(model, params, opt, demos: dict, steps: int, batch: int, rng: np.random.Generator) -> list:
    """`steps` supervised updates of the policy mean towards the demonstrated actions (MSE, as stage 0)."""
    n = len(demos["action"])
    losses = []
    for _ in range(steps if n else 0):
        idx = rng.integers(0, n, min(batch, n))
        dist, _ = model.dist_value(demos["images"][idx], [demos["instr"][i] for i in idx], demos["state"][idx])
        loss = ((dist.mean - torch.as_tensor(demos["action"][idx], dtype=torch.float32)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.item()))
    return losses
