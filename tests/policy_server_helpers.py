"""Shared by tests/test_policy_server.py and tests/test_command.py: a tiny VLA whose head is trained in the test on
scripted expert data from the real twin, so that the policy server has something that moves purposefully.

Nothing is faked: TwinEnv (the robot server's safety layer on the MuJoCo twin) runs the task's scripted expert, the
tiny BLIP-2 encodes the rendered frames through the latent cache (policy/latent_cache.py), and the head is fitted
with plain torch (frozen backbone, as in the paper's stage 1 head-only setting), then saved with VLA.save.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

TASK = "pick_red_block"
INSTRUCTION = "pick up the red block"
CAMERAS = ("front",)
IMAGE_SIZE = 224  # what the sim camera node publishes
# Small enough to encode in a few ms on one CPU thread.
TINY_VLA = {
    "cameras": list(CAMERAS),
    "backbone_training": "frozen",
    "max_text_tokens": 48,
    "backbone": {"tiny": {"image_size": 64, "hidden": 64, "vision_layers": 1, "qformer_layers": 1, "text_layers": 1,
                          "heads": 2, "num_query_tokens": 4}},
    "head": {"learned_tokens": 4, "token_learner_hidden": 32, "hidden_dims": [128, 128]},
}


@dataclass
class ExpertData:
    images: np.ndarray  # uint8 [T, cams, H, W, 3]
    states: np.ndarray  # float32 [T, 8]: ee xyz, quat wxyz, gripper width
    actions: np.ndarray  # float32 [T, 7]
    instructions: list[str]
    obs_ids: list[str]
    successes: int
    episodes: int


def collect_expert(seeds, task: str = TASK, max_steps: int = 45) -> ExpertData:
    """The scripted expert's first `max_steps` steps of each episode (the approach matters for these tests)."""
    from robot_server.gym_env import TwinEnv
    env = TwinEnv(task=task, cameras=CAMERAS, image_size=IMAGE_SIZE)
    images, states, actions, instructions, obs_ids, successes = [], [], [], [], [], 0
    try:
        for seed in seeds:
            obs, info = env.reset(seed=int(seed))
            for t in range(max_steps):
                a = env.expert_action()
                s = obs["state"]
                images.append(np.stack([obs["images"][c] for c in CAMERAS]))
                states.append(np.concatenate([s[0:7], s[13:14]]).astype(np.float32))
                actions.append(np.asarray(a, np.float32))
                instructions.append(INSTRUCTION)
                obs_ids.append(f"{task}:{seed}:{t}")
                obs, _, success, truncated, info = env.step(a)
                if success or truncated:
                    successes += int(success)
                    break
    finally:
        env.close()
    return ExpertData(np.stack(images), np.stack(states), np.stack(actions), instructions, obs_ids, successes,
                      len(list(seeds)))


def tiny_config():
    from policy.config import VLAConfig
    return VLAConfig.from_dict(TINY_VLA)


def train_head_checkpoint(out_dir: Path, data: ExpertData, cache_root: Path, steps: int = 400, seed: int = 0,
                          backbone_seed: int = 0) -> tuple[Path, dict]:
    """Fit the head of a tiny VLA (frozen backbone) to the expert data; save the checkpoint. Returns (dir, info)."""
    from policy.data import NormStats
    from policy.latent_cache import LatentCache, encode_cached
    from policy.model import build_vla

    t0 = time.monotonic()
    torch.manual_seed(seed)
    vla = build_vla(tiny_config(), seed=backbone_seed, cache_root=cache_root)
    vla.eval()
    vid = vla.vlm_id()
    cache = LatentCache(memory_bytes=64 << 20)
    latents = encode_cached(vla, cache, data.obs_ids, data.images, data.instructions, batch_size=64, vlm_id=vid)
    t_enc = time.monotonic() - t0
    NormStats.from_arrays(data.actions, data.states).apply(vla.head)
    head = vla.head
    head.train()
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=2e-3, weight_decay=1e-4)
    states = torch.from_numpy(data.states)
    target = head.normalize_action(torch.from_numpy(data.actions))
    gen = torch.Generator().manual_seed(seed)
    n = len(latents)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, n, (min(64, n),), generator=gen)
        loss = torch.nn.functional.mse_loss(head.forward_normalized(latents[idx], states[idx]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    head.eval()
    path = vla.save(out_dir, extra_meta={"trained_by": "tests/policy_server_helpers.py", "samples": n})
    from policy.model import load_vla
    vid = load_vla(path).vlm_id()  # the id the server reports (a loaded checkpoint's backbone directory)
    info = {"samples": n, "episodes": data.episodes, "expert_successes": data.successes,
            "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-20:])),
            "encode_s": t_enc, "train_s": time.monotonic() - t0 - t_enc, "vlm_id": vid}
    return path, info


_CACHE: dict = {}


def trained_checkpoint(root: Path) -> tuple[Path, dict]:
    """The trained tiny checkpoint, built once per test session (both test files share it)."""
    if "ckpt" not in _CACHE:
        t0 = time.monotonic()
        data = collect_expert(seeds=range(6))
        collect_s = time.monotonic() - t0
        path, info = train_head_checkpoint(Path(root) / "ckpt_trained", data, Path(root) / "backbones")
        info["collect_s"] = collect_s
        _CACHE["ckpt"] = (path, info)
    return _CACHE["ckpt"]
