"""`irevla train`: supervised training of the VLA (stage 0 on the expert set; stage 2 on expert + RL data).

    irevla train --data data/expert --out runs/stage0                                   # stage 0, tiny VLA
    irevla train --checkpoint runs/stage0/final --data data/expert --data-rl data/rl_harvest --mix 0.5 --out runs/stage2
    torchrun --nproc_per_node 2 -m policy.train_cli --data data/expert --out runs/stage0   # DDP (gloo on CPU)

The config file holds two sections: `vla:` (policy.config.VLAConfig, used for a fresh model) and `train:`
(policy.train.TrainConfig). With --checkpoint the model (and its config) comes from that checkpoint and trains with
train.backbone_training, default "lora" (the paper's stage 2). --resume continues from the latest checkpoint in
--out. A fixed-sample loss is evaluated before training, every --eval-every steps and at the end.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional

DEFAULT_CONFIG = "config/policy_tiny.yaml"  # resolved through robot_server.config (share dir, else source tree)


def mixture_weights(n_expert: int, n_rl: int, mix: Optional[float], configured: list[float]) -> list[float]:
    """Per-dataset weights: with RL datasets, `mix` of every batch comes from them (split evenly), the rest from
    the expert datasets; otherwise the config's `train.mix` (or equal weights)."""
    if n_rl:
        m = 0.5 if mix is None else mix
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"--mix must be within [0, 1], got {m}")
        return [(1.0 - m) / n_expert] * n_expert + [m / n_rl] * n_rl
    if mix is not None:
        raise ValueError("--mix needs --data-rl")
    return list(configured)


def _section(path: str, name: str) -> dict:
    import yaml
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    sec = doc.get(name, {}) if isinstance(doc, dict) and name else doc
    return sec if isinstance(sec, dict) else {}


def model_device(config: str, checkpoint: Optional[str] = None) -> Optional[str]:
    """The trainer's device when the config's train: section names none: the model's `device` (the checkpoint's
    vla_config.yaml with --checkpoint, else the config's vla: section), where it sets one; None: TrainConfig's.
    auto stays auto (cuda:LOCAL_RANK under torchrun, else cpu); a bare cuda means this process's GPU."""
    if "device" in _section(config, "train"):
        return None
    vla = _section(os.path.join(checkpoint, "vla_config.yaml"), "") if checkpoint else _section(config, "vla")
    dev = vla.get("device")
    if dev is None:
        return None
    from policy.config import check_device
    check_device(str(dev))
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if dev == "cuda" else str(dev)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="irevla train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML with vla: and train: sections (default "
                                                              f"{DEFAULT_CONFIG})")
    ap.add_argument("--data", nargs="+", required=True, help="expert dataset directories")
    ap.add_argument("--data-rl", nargs="*", default=[], help="RL-harvested dataset directories (stage 2)")
    ap.add_argument("--mix", type=float, default=None, help="fraction of each batch from --data-rl (default 0.5)")
    ap.add_argument("--checkpoint", default=None, help="VLA checkpoint to continue from (stage 2); default: a "
                                                       "fresh VLA")
    ap.add_argument("--out", required=True, help="output directory (checkpoints, final/, tb/, metrics.jsonl)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="global batch size (split over processes)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--eval-samples", type=int, default=64, help="samples of the fixed-sample loss (0: none)")
    ap.add_argument("--backbone-training", choices=["lora", "full", "frozen"], default=None)
    ap.add_argument("--tasks", nargs="+", default=None, help="train on these tasks only")
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    ap.add_argument("--until-step", type=int, default=None, help="stop after this step (resumable checkpoint)")
    ap.add_argument("--device", default=None, help="auto | cpu | cuda")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    from robot_server.usage import add_hidden_alias, require_checkpoint, require_dir, require_file
    add_hidden_alias(ap, "--init", "--checkpoint", dest="checkpoint")  # the spelling before --checkpoint everywhere
    args = ap.parse_args(argv)
    # Paths first, before torch loads: a typo fails in a second (robot_server/cli.py prints it as one line).
    from robot_server.config import resolve_config
    args.config = str(require_file(resolve_config(args.config), "--config"))
    for d in list(args.data) + list(args.data_rl):
        require_dir(d, "dataset directory")
    if args.checkpoint:
        require_checkpoint(args.checkpoint)

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    from policy.config import VLAConfig
    from policy.data import DataError, PolicyData
    from policy.train import TrainConfig, fixed_loss_hook, train_sft
    from teleop.config import ConfigError

    try:
        cfg = TrainConfig.from_yaml(args.config, "train")
        vla_cfg = VLAConfig.from_yaml(args.config, "vla")
        device = model_device(args.config, args.checkpoint)
    except (OSError, ValueError) as exc:  # ConfigError is a ValueError
        print(f"irevla train: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    if device is not None:  # one device setting: the model's, unless the train: section names its own
        cfg.device = device
    for name in ("steps", "batch_size", "lr", "seed", "save_every", "eval_every", "backbone_training", "device"):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg, name, v)
    if args.tasks:
        cfg.tasks = list(args.tasks)
    if args.no_progress:
        cfg.progress = False
    if args.checkpoint and cfg.backbone_training is None:
        cfg.backbone_training = "lora"
    try:
        TrainConfig.from_dict(cfg.to_dict())  # re-validate after the overrides
        cfg.mix = mixture_weights(len(args.data), len(args.data_rl), args.mix, cfg.mix)
    except (ValueError, ConfigError) as exc:
        print(f"irevla train: {exc}", file=sys.stderr)
        return 2

    datasets = list(args.data) + list(args.data_rl)
    hook = None
    if args.eval_samples > 0:
        state = {}

        def hook(vla, step):  # built lazily on rank 0 (the trainer has filled the dataset caches by then)
            if "fn" not in state:
                data = [PolicyData(d, vla.cfg.cameras, include_failed=cfg.include_failed, tasks=cfg.tasks or None)
                        for d in datasets]
                state["fn"] = fixed_loss_hook(data, args.eval_samples, cfg.gripper_loss_weight)
            return state["fn"](vla, step)

    try:
        path = train_sft(cfg, args.checkpoint or vla_cfg, datasets, args.out, eval_hook=hook, resume=args.resume,
                         until_step=args.until_step)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"irevla train: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"checkpoint: {path}")
    return 0


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("train", main))  # user errors as one line, as under `irevla`
