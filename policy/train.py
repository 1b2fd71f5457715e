"""Supervised trainer of the VLA: stage 0 (expert set) and stage 2 (expert set + successful RL trajectories).

    cfg = TrainConfig.from_yaml("config/policy_tiny.yaml", "train")
    ckpt = train_sft(cfg, VLAConfig.from_yaml("config/policy_tiny.yaml", "vla"), ["data/expert"], "runs/stage0")
    ckpt = train_sft(cfg2, "runs/stage0/final", ["data/expert", "data/rl"], "runs/stage2")   # mix: cfg2.mix

Objective: MSE between the head's output and the dataset action, both in normalized units (dataset mean/std kept in
the head's buffers); loss = mean MSE over the 6 pose dimensions + gripper_loss_weight * MSE of the gripper.
AdamW, linear warmup then cosine decay to min_lr_ratio * lr, gradient clipping, bf16 autocast on CUDA.

Distributed: launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK in the environment) the trainer joins a process
group (nccl on GPUs, gloo on CPU) and wraps the objective in DistributedDataParallel. Every process takes its slice
of the same global batch (policy.data.MixtureBatches), so N processes with B/N samples each compute the gradient of
the one-process batch B.

Output directory:
    checkpoints/step_0000500/   VLA.save() (head safetensors, LoRA adapter, config, norm stats in meta.json)
                                + trainer_state.pt (optimizer, scheduler, step, RNG of every process): resumable
    final/                      the last checkpoint (same layout)
    tb/                         TensorBoard scalars;  metrics.jsonl: the same numbers as JSON lines
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import random
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from policy.backbone import enable_activation_checkpointing
from policy.config import VLAConfig, from_dict, load_yaml, to_dict
from policy.data import Batch, MixtureBatches, NormStats, PolicyData, head_norm_stats, split_by_task

LOG = logging.getLogger("policy.train")
PathLike = Union[str, Path]
EvalHook = Callable[[object, int], dict]
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32  # global: split evenly over the processes
    lr: float = 3e-4
    head_lr: Optional[float] = None  # default: lr
    weight_decay: float = 0.01  # not applied to biases, norms and other 1-D parameters
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    gripper_loss_weight: float = 1.0
    # Weight of the object-readout loss (towers backbone with object_readout, on rows with privileged labels).
    object_loss_weight: float = 1.0
    # Chance that a labelled sample is repeated with its instruction naming another object of the scene, for the
    # readout only (policy/data.py MixtureBatches): the latents must follow the words, not the scene's composition.
    counterfactual_rate: float = 0.0
    # How a batch is shared: "dataset" (by the `mix` weights, equal by default) or "task" (every task of every
    # dataset gets the same share, e.g. stage 2's RL task beside each expert task, whatever the episode counts;
    # with `mix`, each dataset gets its weight and splits it equally among its tasks).
    balance: str = "dataset"
    # Override of what trains in the VLM ("lora", "full", "frozen"); None: the model's own setting. Stage 2 of a
    # checkpoint uses "lora" (paper); a fresh tiny VLA trains "full".
    backbone_training: Optional[str] = None
    gradient_checkpointing: bool = False
    amp: str = "auto"  # auto: bf16 autocast on CUDA, none on CPU | bf16 | off
    mix: list[float] = field(default_factory=list)  # weight per dataset (empty: equal weights)
    # auto: from the data when the head has no normalization yet (fresh model), else keep the checkpoint's
    # (stage 2 continues in the same units); data: recompute; keep: never touch.
    normalization: str = "auto"
    augment_shift_px: int = 0  # random-shift augmentation (pixels of the recorded images); 0 = off
    # Towers backbone: train on the frozen vision tower's cached output (policy/feature_cache.py), computed once
    # per frame; pixel augmentation is then off. False: run the tower on every batch (augmentation possible).
    feature_cache: bool = True
    include_failed: bool = False
    tasks: list[str] = field(default_factory=list)  # train on these tasks only (empty: all)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only before and after training
    save_every: int = 500  # 0: only the final checkpoint
    keep_checkpoints: int = 2
    num_threads: int = 0  # torch CPU threads per process; 0: cores / processes on this machine
    device: str = "auto"  # auto: cuda:LOCAL_RANK when CUDA is available, else cpu
    tensorboard: bool = True
    progress: bool = True
    prefetch: bool = True  # build the next batch in a background thread

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be auto, bf16 or off, got {self.amp!r}")
        if self.normalization not in ("auto", "data", "keep"):
            raise ValueError(f"normalization must be auto, data or keep, got {self.normalization!r}")
        if self.balance not in ("dataset", "task"):
            raise ValueError(f"balance must be dataset or task, got {self.balance!r}")
        if self.backbone_training not in (None, "lora", "full", "frozen"):
            raise ValueError(f"backbone_training must be lora, full or frozen, got {self.backbone_training!r}")
        if len(self.betas) != 2:
            raise ValueError("betas: two values")

    @classmethod
    def from_yaml(cls, path: PathLike, section: Optional[str] = "train") -> "TrainConfig":
        return load_yaml(cls, path, section)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "TrainConfig":
        return from_dict(cls, data)

    def to_dict(self) -> dict:
        return to_dict(self)


# ---------------------------------------------------------------------------------------------- distributed
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60))
        info.initialized_here = True
    return info


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        torch.distributed.barrier()


def _main_first(info: DistInfo, fn: Callable):
    """Run fn on rank 0 first (it may write shared caches), then on the other ranks."""
    if info.enabled and not info.is_main:
        _barrier(info)
    out = fn()
    if info.enabled and info.is_main:
        _barrier(info)
    return out


# ---------------------------------------------------------------------------------------------- objective
class SFTObjective(nn.Module):
    """(normalized pixels, tokens, state, action, object position) -> (loss, pose MSE, gripper MSE, object MSE).
    The module DDP wraps. The object term (a towers backbone with `object_readout`) is the readout's MSE on the rows
    that carry a privileged object label (teleop/object_labels.py), weighted by `object_loss_weight`; 0 elsewhere."""

    def __init__(self, vla, gripper_loss_weight: float, object_loss_weight: float = 0.0):
        super().__init__()
        self.vla = vla
        self.gripper_loss_weight = float(gripper_loss_weight)
        self.object_loss_weight = float(object_loss_weight)
        self.has_readout = has_object_readout(vla)

    def forward(self, pixel_values, ids, mask, state, action, object_xyz=None, action_mask=None):
        head = self.vla.head
        latents = self.vla.encode_tensors(pixel_values, ids, mask)
        pred = head.forward_normalized(latents, state).float()
        target = head.normalize_action(action).float()
        err = (pred - target) ** 2
        if action_mask is not None:  # counterfactual rows train the object readout only
            w = action_mask.float()[:, None]
            arm = (err[:, :6] * w).sum() / (w.sum() * 6).clamp_min(1)
            grip = (err[:, 6:] * w).sum() / (w.sum() * (err.shape[1] - 6)).clamp_min(1)
        else:
            arm = err[:, :6].mean()
            grip = err[:, 6:].mean()
        loss = arm + self.gripper_loss_weight * grip
        obj = torch.zeros((), device=loss.device)
        if self.has_readout and object_xyz is not None and self.object_loss_weight > 0:
            # Every row goes through the readout (so DDP sees its parameters used); unlabelled rows weigh 0.
            vlm = self.vla.vlm
            rows = torch.isfinite(object_xyz).all(dim=1)
            guess = vlm.object_position(latents).float()
            goal = vlm.normalize_position(torch.nan_to_num(object_xyz.float()))
            sq = ((guess - goal) ** 2).mean(dim=1) * rows.float()
            obj = sq.sum() / rows.sum().clamp_min(1)
            loss = loss + self.object_loss_weight * obj
        return loss, arm.detach(), grip.detach(), obj.detach()


def has_object_readout(vla) -> bool:
    """A towers backbone built with `object_readout` (also under a peft LoRA wrapper)."""
    return any(n.endswith("object_readout.weight") for n, _ in vla.named_parameters())


def prepare_inputs(vla, batch: Batch, device) -> tuple:
    """Batch (numpy) -> the objective's tensors on `device` (image checks, normalization, tokenization)."""
    if batch.features is not None:  # a frozen vision tower's cached output stands in for the pixels
        f = torch.from_numpy(np.ascontiguousarray(batch.features)).float()
        pixel_values = f.reshape(-1, *f.shape[2:])
    else:
        pixel_values = vla._images_tensor(batch.images)
    ids, mask = vla.tokenize(batch.instructions)
    state = vla._state_tensor(batch.state, len(batch)) if vla.cfg.head.use_state else None
    action = torch.as_tensor(batch.action, dtype=torch.float32)
    xyz = None if batch.object_xyz is None else torch.as_tensor(batch.object_xyz, dtype=torch.float32).to(device)
    amask = None if batch.action_mask is None else torch.as_tensor(batch.action_mask).to(device)
    return (pixel_values.to(device), ids.to(device), mask.to(device),
            None if state is None else state.to(device), action.to(device), xyz, amask)


def batch_loss(vla, batch: Batch, gripper_loss_weight: float = 1.0, object_loss_weight: float = 0.0) -> dict:
    """The training objective on one batch, without gradients, in eval mode (for evaluation hooks)."""
    was = vla.training
    vla.eval()
    try:
        with torch.no_grad():
            dev = vla.pixel_mean.device
            loss, arm, grip, obj = SFTObjective(vla, gripper_loss_weight, object_loss_weight)(
                *prepare_inputs(vla, batch, dev))
    finally:
        vla.train(was)
    return {"loss": float(loss), "loss_pose": float(arm), "loss_gripper": float(grip), "loss_object": float(obj)}


def fixed_loss_hook(data: Sequence[PolicyData], samples: int = 64, gripper_loss_weight: float = 1.0,
                    batch_size: int = 32, seed: int = 1234) -> EvalHook:
    """An evaluation hook: the objective on a fixed, evenly spread set of samples (the same at every call)."""
    picks = []
    for k, d in enumerate(data):
        n = min(len(d), max(1, samples // len(data)))
        picks += [(k, int(i)) for i in np.linspace(0, len(d) - 1, n).round().astype(int)]

    def hook(vla, step):
        tot, count = {"loss": 0.0, "loss_pose": 0.0, "loss_gripper": 0.0}, 0
        for start in range(0, len(picks), batch_size):
            chunk = picks[start:start + batch_size]
            b = Batch.concat([data[k].batch([i]) for k, i in chunk])
            r = batch_loss(vla, b, gripper_loss_weight)
            for key in tot:
                tot[key] += r[key] * len(chunk)
            count += len(chunk)
        return {f"fixed_{k}": v / count for k, v in tot.items()}

    return hook


# ---------------------------------------------------------------------------------------------- helpers
def _device(cfg: TrainConfig, info: DistInfo) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def _param_groups(vla, cfg: TrainConfig) -> tuple[list[dict], list[str]]:
    """AdamW groups: (VLM | head) x (decay | no decay); names in a fixed order (checked on resume)."""
    groups: dict[tuple[bool, bool], list] = {}
    names = []
    for name, p in vla.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("head.")
        decay = p.ndim >= 2 and "embed" not in name and "query_tokens" not in name
        groups.setdefault((is_head, decay), []).append(p)
        names.append(name)
    out = []
    for (is_head, decay), params in sorted(groups.items()):
        lr = (cfg.head_lr or cfg.lr) if is_head else cfg.lr
        out.append({"params": params, "lr": lr, "weight_decay": cfg.weight_decay if decay else 0.0,
                    "name": f"{'head' if is_head else 'vlm'}_{'decay' if decay else 'nodecay'}"})
    return out, names


def _schedule(optimizer, cfg: TrainConfig):
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, num_warmup_steps=cfg.warmup_steps,
                                                       num_training_steps=cfg.steps, min_lr_rate=cfg.min_lr_ratio)


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def complete_checkpoints(out_dir: PathLike) -> list[tuple[int, Path]]:
    """(step, dir) of the resumable checkpoints under out_dir/checkpoints, oldest first."""
    root = Path(out_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and (d / STATE_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The resumable checkpoint with the highest step (final/ included), or None."""
    found = complete_checkpoints(out_dir)
    final = Path(out_dir) / "final"
    if (final / STATE_FILE).is_file():
        step = int(json.loads((final / "meta.json").read_text()).get("step", -1))
        if not found or step >= found[-1][0]:
            return final
    return found[-1][1] if found else None


def _freeze_unused(objective: SFTObjective, inputs: tuple) -> list[str]:
    """Trainable parameters the objective never reaches (e.g. BLIP-2's text-side Q-Former embeddings) are frozen:
    DDP then needs no per-step search for unused parameters. Found once with autograd on one sample."""
    named = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    if not named:
        return []
    xyz = inputs[5] if len(inputs) > 5 else None
    r = 0  # a row with an object label if there is one: the readout is used only there
    if xyz is not None and bool(torch.isfinite(xyz).all(dim=1).any()):
        r = int(torch.isfinite(xyz).all(dim=1).nonzero()[0, 0])
    one = tuple(x[r:r + 1] if torch.is_tensor(x) else x for x in inputs)
    cams = inputs[0].shape[0] // inputs[1].shape[0]
    one = (inputs[0][r * cams:(r + 1) * cams],) + one[1:]  # that observation's camera images
    with torch.random.fork_rng(devices=[]):
        loss = objective(*one)[0]
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    unused = [n for (n, p), g in zip(named, grads) if g is None]
    for (n, p), g in zip(named, grads):
        if g is None:
            p.requires_grad_(False)
    return unused


# Parameters the loss cannot depend on: a bias added to every position before a softmax over positions (the token
# learner's selection logits; attention keys) shifts all logits equally. Their gradient is rounding noise, which Adam
# would turn into lr-sized random steps (and which alone made 2 processes differ from 1), so they stay fixed.
GRADIENT_FREE = (re.compile(r"(^|\.)token_learner\.fc2\.bias$"), re.compile(r"\.k_proj\.bias$"),
                 re.compile(r"\.attention\.key\.bias$"))


def _freeze_gradient_free(vla) -> list[str]:
    names = []
    for n, p in vla.named_parameters():
        if p.requires_grad and any(r.search(n) for r in GRADIENT_FREE):
            p.requires_grad_(False)
            names.append(n)
    return names


class _Logger:
    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.tb = None
        self.jsonl = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.jsonl = open(out_dir / "metrics.jsonl", "a", encoding="utf-8")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "tb"))

    def log(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in scalars.items()}}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()


# ---------------------------------------------------------------------------------------------- trainer
def _load_model(vla_or_ckpt, cfg: TrainConfig):
    from policy.model import VLA, build_vla, load_vla
    if isinstance(vla_or_ckpt, VLA):
        vla = vla_or_ckpt
        if cfg.backbone_training not in (None, vla.cfg.backbone_training):
            raise ValueError("backbone_training override needs a VLAConfig or a checkpoint, not a built VLA")
        return vla, "in-memory VLA"
    if isinstance(vla_or_ckpt, VLAConfig):
        vcfg = VLAConfig.from_dict(vla_or_ckpt.to_dict())
        if cfg.backbone_training:
            vcfg.backbone_training = cfg.backbone_training
        return build_vla(vcfg, seed=cfg.seed), "fresh"
    path = Path(vla_or_ckpt)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # a new LoRA adapter's initialization
        vla = load_vla(path, trainable=True, backbone_training=cfg.backbone_training)
    return vla, str(path)


def train_sft(cfg: TrainConfig, vla_or_ckpt, datasets: Sequence[Union[PolicyData, PathLike]], out_dir: PathLike,
              eval_hook: Optional[EvalHook] = None, resume: bool = False, until_step: Optional[int] = None) -> Path:
    """Train and return the final checkpoint directory (or the step checkpoint where `until_step` stopped).

    vla_or_ckpt: a VLAConfig (stage 0 from scratch / from the configured pretrained backbone), a checkpoint
    directory (stage 2: loaded trainable, with cfg.backbone_training, e.g. "lora"), or a built VLA.
    datasets: PolicyData or dataset directories, mixed with cfg.mix.
    eval_hook(vla, step) -> {name: value}: called on rank 0 before training, every cfg.eval_every steps and at the
    end, in eval mode without gradients; its numbers go to TensorBoard / metrics.jsonl under eval/.
    resume: continue from the latest complete checkpoint in out_dir (a fresh start if there is none).
    until_step: stop after this step with a resumable checkpoint (time-sliced jobs; the schedule is unchanged).
    """
    out_dir = Path(out_dir)
    dev_kind = "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or cfg.device.startswith("cuda") \
        else "cpu"
    info = init_distributed(dev_kind)
    try:
        return _train(cfg, vla_or_ckpt, datasets, out_dir, eval_hook, resume, until_step, info)
    finally:
        if info.initialized_here:
            torch.distributed.destroy_process_group()


def _train(cfg, vla_or_ckpt, datasets, out_dir: Path, eval_hook, resume, until_step, info: DistInfo) -> Path:
    from policy.model import load_vla
    device = _device(cfg, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or max(1, (os.cpu_count() or 1) // max(1, info.local_world_size)))
    if cfg.batch_size % info.world_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {info.world_size} processes")

    state = None
    start_step = 0
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
        start_step = int(state["step"])
        if state["steps"] != cfg.steps or state["batch_size"] != cfg.batch_size:
            raise ValueError(f"{ckpt}: it was trained for {state['steps']} steps at batch {state['batch_size']}; "
                             f"resuming with steps={cfg.steps} batch_size={cfg.batch_size} would change the "
                             "schedule and data order")
        if start_step >= cfg.steps:
            LOG.info("%s: already trained for %d steps", ckpt, start_step)
            return ckpt
        vla = _main_first(info, lambda: load_vla(ckpt, trainable=True))
        origin = state.get("origin", str(ckpt))
    else:
        torch.manual_seed(cfg.seed)
        vla, origin = _main_first(info, lambda: _load_model(vla_or_ckpt, cfg))
    if cfg.gradient_checkpointing:
        vla.cfg.backbone.gradient_checkpointing = True
        enable_activation_checkpointing(vla.vlm)

    cams = vla.cfg.cameras
    tasks = cfg.tasks or None
    sources = _main_first(info, lambda: [d if isinstance(d, PolicyData) else
                                         PolicyData(d, cams, include_failed=cfg.include_failed, tasks=tasks)
                                         for d in datasets])
    for s in sources:
        if list(s.cameras) != list(cams):
            raise ValueError(f"{s.root}: read cameras {s.cameras}, the policy reads {cams}")
    mix = list(cfg.mix) or None
    if cfg.balance == "task":
        sources, mix = _main_first(info, lambda: split_by_task(sources, mix))
    if getattr(vla, "is_towers", False) and cfg.feature_cache:
        from policy.feature_cache import FeatureStore
        stores = _main_first(info, lambda: [FeatureStore.build(vla, s, progress=cfg.progress and info.is_main)
                                            for s in sources])
        for s, store in zip(sources, stores):
            s.use_features(store)
        if cfg.augment_shift_px:
            LOG.warning("augment_shift_px=%d is ignored: training on cached vision features", cfg.augment_shift_px)
    readout = cfg.object_loss_weight > 0 and has_object_readout(vla)  # counterfactual rows only feed the readout
    batches = MixtureBatches(sources, mix, cfg.batch_size, seed=cfg.seed, rank=info.rank,
                             world_size=info.world_size, augment_shift_px=cfg.augment_shift_px,
                             counterfactual_rate=cfg.counterfactual_rate if readout else 0.0)
    norm_source = "checkpoint"
    identity = bool(torch.all(vla.head.action_mean == 0) and torch.all(vla.head.action_std == 1))
    if state is None and (cfg.normalization == "data" or (cfg.normalization == "auto" and identity)):
        batches.norm_stats().apply(vla.head)
        norm_source = "data"
    norm = head_norm_stats(vla.head)

    vla.to(device)
    vla.train()
    objective = SFTObjective(vla, cfg.gripper_loss_weight, cfg.object_loss_weight).to(device)
    first = prepare_inputs(vla, batches.batch(start_step), device)
    unused = _freeze_gradient_free(vla) + _freeze_unused(objective, first)
    groups, names = _param_groups(vla, cfg)
    if not names:
        raise ValueError("nothing to train: every parameter is frozen")
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                  foreach=device.type == "cuda")
    scheduler = _schedule(optimizer, cfg)
    if state is not None:
        if state["param_names"] != names:
            raise ValueError(f"{ckpt}: its optimizer state belongs to other trainable parameters")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        if len(rngs) == info.world_size:
            _set_rng_state(rngs[info.rank])
        else:
            LOG.warning("resuming with %d processes, saved with %d: RNG streams reseeded", info.world_size,
                        len(rngs))
            torch.manual_seed(cfg.seed * 1000003 + start_step * 101 + info.rank)
    else:
        torch.manual_seed(cfg.seed * 1000003 + info.rank)

    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=False)
    else:
        model = objective
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    trainable = [p for _, p in vla.named_parameters() if p.requires_grad]
    counts = vla.trainable_parameter_counts()
    logger = _Logger(out_dir, info.is_main, cfg.tensorboard)
    extra_meta_base = {"origin": origin, "norm_source": norm_source, "norm_stats": norm.to_dict(),
                       "datasets": [str(s.root) for s in sources], "mix": batches.weights,
                       "train_config": cfg.to_dict(), "world_size": info.world_size,
                       "parameters": counts, "frozen_in_training": unused}
    if info.is_main:
        LOG.info("training %s on %s; %d processes on %s; trainable %s; %d gradient-free or unused parameter tensors kept fixed", origin,
                 batches.describe(), info.world_size, device, counts, len(unused))

    def save(step: int, final: bool) -> Path:
        rngs = [None] * info.world_size
        if info.enabled:
            torch.distributed.all_gather_object(rngs, _rng_state())
        else:
            rngs = [_rng_state()]
        path = out_dir / ("final" if final else f"checkpoints/step_{step:07d}")
        if info.is_main:
            vla.save(path, extra_meta={**extra_meta_base, "step": step, "steps": cfg.steps})
            st = {"step": step, "steps": cfg.steps, "batch_size": cfg.batch_size, "origin": origin,
                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
                  "param_names": names, "train_config": cfg.to_dict()}
            tmp = path / (STATE_FILE + ".tmp")
            torch.save(st, tmp)
            os.replace(tmp, path / STATE_FILE)  # written last: its presence marks the checkpoint complete
            if not final:
                for _, old in complete_checkpoints(out_dir)[:-max(1, cfg.keep_checkpoints)]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier(info)
        return path

    def evaluate(step: int) -> None:
        if eval_hook is None:
            return
        if info.is_main:
            was = vla.training
            vla.eval()
            try:
                with torch.no_grad():
                    metrics = eval_hook(vla, step) or {}
            finally:
                vla.train(was)
            logger.log(step, {f"eval/{k}": v for k, v in metrics.items()})
            LOG.info("step %d eval %s", step, {k: round(float(v), 5) for k, v in metrics.items()})
        _barrier(info)

    stop = cfg.steps if until_step is None else min(cfg.steps, int(until_step))
    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    pool = ThreadPoolExecutor(1) if cfg.prefetch else None
    next_batch = None
    if start_step == 0:
        evaluate(0)
    t_log, n_log = time.perf_counter(), 0
    step = start_step
    saved_at = start_step if ckpt is not None else -1
    try:
        while step < stop:
            batch = batches.batch(step) if next_batch is None else next_batch.result()
            next_batch = pool.submit(batches.batch, step + 1) if (pool and step + 1 < stop) else None
            inputs = prepare_inputs(vla, batch, device)
            with autocast():
                loss, arm, grip, obj = model(*inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            else:
                grad_norm = torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in trainable if p.grad is not None]))
            if not torch.isfinite(grad_norm):
                raise FloatingPointError(f"step {step}: non-finite gradient norm (loss {float(loss):.4g})")
            optimizer.step()
            scheduler.step()
            step += 1
            n_log += 1
            if step % cfg.log_every == 0 or step == stop:
                vals = torch.stack([loss.detach().float(), arm.float(), grip.float(), obj.float()])
                if info.enabled:
                    torch.distributed.all_reduce(vals)
                    vals /= info.world_size
                dt = time.perf_counter() - t_log
                scalars = {"train/loss": float(vals[0]), "train/loss_pose": float(vals[1]),
                           "train/loss_gripper": float(vals[2]), "train/loss_object": float(vals[3]),
                           "train/lr": scheduler.get_last_lr()[0],
                           "train/grad_norm": float(grad_norm), "train/samples_per_s": n_log * cfg.batch_size / dt}
                logger.log(step, scalars)
                if bar is not None:
                    bar.set_postfix(loss=f"{scalars['train/loss']:.4f}", lr=f"{scalars['train/lr']:.2e}")
                t_log, n_log = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                evaluate(step)
            if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
                save(step, final=False)
                saved_at = step
        if step >= cfg.steps:
            evaluate(step)
            path = save(step, final=True)
        elif saved_at == step:
            path = out_dir / f"checkpoints/step_{step:07d}"
        else:
            path = save(step, final=False)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        if bar is not None:
            bar.close()
        logger.close()
    return path
