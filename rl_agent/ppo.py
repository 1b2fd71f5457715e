"""PPO on the whole VLA: the paper's "standard RL" baseline (PPO-Replay = this + expert replay after each task).

Unlike iRe-VLA's stage 1, nothing is frozen: every minibatch re-encodes its images through the VLM, and the policy
gradient flows into the LoRA adapter (or the whole tiny backbone) as well as the head. The paper reports that this
is unstable and degrades the tasks the model already knew; this module exists to measure that on the twin.

Policy: a Gaussian around the VLA head's action (contract units) with a learned per-dimension log-std; the env gets
the sample clipped to [-1, 1]. Value: a separate head (token learner + MLP -> 1) on the same latents.
Reward: the task's binary success at the step it happens (the episode ends there).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from robot_server.contract import policy_state_of_obs
from robot_server.rollout import rollout
from policy.heads import ActionHead
from rl_agent.session_config import DemoConfig
from sim_twin import seeds


@dataclass
class PPOConfig:
    iterations: int = 10
    episodes_per_iteration: int = 6
    # wall-clock budget: when set, it alone bounds the run (iterations is ignored), so that PPO gets the same
    # minutes as the SAC session it is compared with; it stops after the iteration that crosses it
    minutes: Optional[float] = None
    max_steps: Optional[int] = None  # per episode (default: the task's)
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    epochs: int = 3
    minibatch: int = 64
    lr: float = 1e-4
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    init_log_std: float = -1.0
    max_grad_norm: float = 1.0
    image_size: Optional[int] = None  # None: the VLA's input size
    seed: int = 0
    backbone_training: str = "lora"  # the full VLA trains ("lora" on a pretrained backbone, "full" on a tiny one)
    task_files: list[str] = field(default_factory=list)  # extra task registries (e.g. metaworld)
    # The same demonstrations SACfD gets (rl_agent/ppo_demos.py), cloned for `bc_steps` before PPO starts;
    # demos.count 0: no warm start. `irevla iterate` hands PPO-Replay its session's demo settings.
    demos: DemoConfig = field(default_factory=lambda: DemoConfig(count=0))
    bc_steps: int = 200


class PPOModel(nn.Module):
    def __init__(self, vla, init_log_std: float):
        super().__init__()
        self.vla = vla
        self.log_std = nn.Parameter(torch.full((vla.head.cfg.action_dim,), float(init_log_std)))
        self.value = ActionHead(vla.latent_dim, vla.cfg.head, out_dim=1)
        self.value.state_mean.copy_(vla.head.state_mean)
        self.value.state_std.copy_(vla.head.state_std)

    def dist_value(self, images, instructions, state):
        latents = self.vla.encode(images, instructions)
        state_t = torch.as_tensor(state, dtype=torch.float32)
        mean = self.vla.head(latents, state_t)
        value = self.value.forward_normalized(latents, state_t).squeeze(-1)
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean)), value


def policy_inputs(obs: dict, cameras) -> tuple[np.ndarray, np.ndarray]:
    """A contract observation as the VLA takes it: images [cams, H, W, 3] in the VLA's camera order, policy state."""
    return np.stack([obs["images"][c] for c in cameras]), policy_state_of_obs(obs["state"])


def _rollouts(env, model, task, n, seed0, rng, max_steps, cameras):
    """n episodes with the current stochastic policy -> flat arrays + per-episode successes."""
    buf = {"images": [], "state": [], "instr": [], "u": [], "logp": [], "value": [], "reward": [], "done": []}
    successes = []

    def act(obs, instr):
        images, st = (x[None] for x in policy_inputs(obs, cameras))
        with torch.no_grad():
            dist, value = model.dist_value(images, [instr], st)
            u = dist.mean + dist.stddev * torch.as_tensor(rng.standard_normal(dist.mean.shape), dtype=torch.float32)
            logp = dist.log_prob(u).sum(-1)
        for key, v in (("images", images[0]), ("state", st[0]), ("instr", instr), ("u", u[0].numpy()),
                       ("logp", float(logp)), ("value", float(value))):
            buf[key].append(v)
        return np.clip(u[0].numpy(), -1.0, 1.0)

    for k in range(n):
        r = rollout(env, act, int(seed0 + k), task=task, max_steps=max_steps)
        # Sparse reward: 1 at the step that reached success; the episode's last step is terminal.
        buf["reward"] += [0.0] * (r.steps - 1) + [float(r.success)]
        buf["done"] += [False] * (r.steps - 1) + [True]
        successes.append(r.success)
    return {k: (v if k == "instr" else np.asarray(v)) for k, v in buf.items()}, successes


def _gae(rewards, values, dones, gamma, lam):
    adv = np.zeros_like(rewards)
    last = 0.0
    for t in reversed(range(len(rewards))):
        nonterminal = 0.0 if dones[t] else 1.0
        next_value = values[t + 1] if t + 1 < len(rewards) and not dones[t] else 0.0
        delta = rewards[t] + gamma * next_value * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


def run_ppo(checkpoint: str, task: str, cfg: PPOConfig, out_dir: Path, progress: bool = True) -> dict:
    """PPO on the whole VLA for one task; writes out_dir/checkpoint (a VLA checkpoint) and ppo_log.json."""
    from tqdm import tqdm

    from policy.model import load_vla
    from robot_server.gym_env import make_env
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vla = load_vla(checkpoint, trainable=True, backbone_training=cfg.backbone_training)
    vla.train()
    model = PPOModel(vla, cfg.init_log_std)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    cameras = list(vla.cfg.cameras)
    env = make_env(task, tuple(cameras), cfg.image_size or vla.image_size, task_files=tuple(cfg.task_files))
    warm = _warm_start(env, model, params, opt, task, cfg, cameras, rng) if cfg.demos.count > 0 else {}
    log, t0 = [], time.perf_counter()  # the wall-clock budget counts from here, as the session's from its RL phase
    import itertools
    its = itertools.count() if cfg.minutes is not None else range(cfg.iterations)
    bar = tqdm(its, total=None if cfg.minutes is not None else cfg.iterations, desc=f"PPO {task}", unit="it",
               disable=not progress, file=sys.stdout)
    try:
        for it in bar:
            data, succ = _rollouts(env, model, task, cfg.episodes_per_iteration,
                                   seeds.seed("ppo", cfg.seed * 1_000_000 + it * cfg.episodes_per_iteration),
                                   rng, cfg.max_steps, cameras)
            adv, ret = _gae(data["reward"], data["value"], data["done"], cfg.gamma, cfg.gae_lambda)
            adv_n = (adv - adv.mean()) / (adv.std() + 1e-8)
            n = len(adv)
            stats = []
            for _ in range(cfg.epochs):
                perm = rng.permutation(n)
                for s in range(0, n, cfg.minibatch):
                    idx = perm[s:s + cfg.minibatch]
                    dist, value = model.dist_value(data["images"][idx], [data["instr"][i] for i in idx],
                                                   data["state"][idx])
                    logp = dist.log_prob(torch.as_tensor(data["u"][idx], dtype=torch.float32)).sum(-1)
                    ratio = (logp - torch.as_tensor(data["logp"][idx], dtype=torch.float32)).exp()
                    a = torch.as_tensor(adv_n[idx], dtype=torch.float32)
                    pg = -torch.min(ratio * a, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * a).mean()
                    vloss = ((value - torch.as_tensor(ret[idx], dtype=torch.float32)) ** 2).mean()
                    loss = pg + cfg.value_coef * vloss - cfg.entropy_coef * dist.entropy().sum(-1).mean()
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()
                    stats.append([pg.item(), vloss.item()])
            row = {"iteration": it, "success": float(np.mean(succ)), "steps": int(n),
                   "policy_loss": float(np.mean([s[0] for s in stats])),
                   "value_loss": float(np.mean([s[1] for s in stats])),
                   "log_std": model.log_std.detach().tolist(), "elapsed_s": time.perf_counter() - t0}
            log.append(row)
            bar.set_postfix(success=f"{row['success']:.2f}", steps=n)
            if cfg.minutes is not None and row["elapsed_s"] > cfg.minutes * 60:
                break
    finally:
        env.close()
        bar.close()
    vla.eval()
    ckpt = vla.save(out_dir / "checkpoint", extra_meta={"stage": "ppo", "task": task})
    (out_dir / "ppo_log.json").write_text(json.dumps({"warm_start": warm, "iterations": log}, indent=1))
    return {"checkpoint": str(ckpt), "log": log, "warm_start": warm}


def _warm_start(env, model, params, opt, task, cfg: PPOConfig, cameras, rng) -> dict:
    from rl_agent.ppo_demos import behaviour_clone, collect_demo_steps

    def head_action(obs, instr):
        images, st = (x[None] for x in policy_inputs(obs, cameras))
        with torch.no_grad():
            dist, _ = model.dist_value(images, [instr], st)
        return dist.mean[0].numpy()
    t0 = time.perf_counter()
    demos = collect_demo_steps(env, head_action, task, cfg.demos, cfg.seed, cameras, cfg.max_steps)
    losses = behaviour_clone(model, params, opt, demos, cfg.bc_steps, cfg.minibatch, rng)
    return {**demos["stats"], "steps": int(len(demos["action"])), "bc_steps": len(losses),
            "bc_loss_first": losses[0] if losses else None, "bc_loss_last": losses[-1] if losses else None,
            "seconds": round(time.perf_counter() - t0, 1)}
