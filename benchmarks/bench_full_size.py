"""Full-size check of the real BLIP-2 path on a CPU: a BLIP-2-OPT-2.7B-shaped checkpoint with random bf16 weights is
written to a local directory and loaded through the same code a lab's Salesforce/blip2-opt-2.7b goes through
(policy.backbone.load_backbone -> from_pretrained, VLA with LoRA on the OPT q/v projections); one observation of two
224-px cameras goes through the VLA.

    python benchmarks/bench_full_size.py [--dir /tmp/blip2-opt-2.7b-random] [--keep]

The weights are written shard by shard from a meta-device model, so building them never holds the model twice.
Prints the parameter count, load time, the frame -> action time, the latent shape and the peak RSS; the last line is
the verdict against the 10 GB RSS budget.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHARD_BYTES = 1 << 30


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


def write_random_checkpoint(directory: Path, seed: int = 0) -> int:
    """Random bf16 weights (N(0, 0.02), LayerNorms at 1/0) for the blip2-opt-2.7b architecture, in safetensors shards
    with an index, plus the config, a tokenizer and the image processor settings."""
    from safetensors.torch import save_file
    from transformers import Blip2ForConditionalGeneration
    from bench_policy import blip2_opt_2_7b_config
    from policy.backbone import CLIP_MEAN, CLIP_STD, byte_tokenizer
    cfg = blip2_opt_2_7b_config()
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(cfg)
    directory.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(directory)
    gen = torch.Generator().manual_seed(seed)
    shard, size, n_shards, weight_map, total = {}, 0, 0, {}, 0

    def flush():
        nonlocal shard, size, n_shards
        if shard:
            name = f"model-{n_shards:05d}.safetensors"
            save_file(shard, str(directory / name), metadata={"format": "pt"})
            for k in shard:
                weight_map[k] = name
            n_shards += 1
            shard, size = {}, 0

    for name, p in model.state_dict().items():
        if name.endswith("lm_head.weight"):  # tied to the token embeddings (OPT)
            continue
        if p.ndim == 1 and name.endswith("weight") and "norm" in name.lower():  # LayerNorm scales
            t = torch.ones(p.shape, dtype=torch.bfloat16)
        elif name.endswith("bias"):
            t = torch.zeros(p.shape, dtype=torch.bfloat16)
        else:
            t = (torch.randn(p.shape, generator=gen) * 0.02).to(torch.bfloat16)
        shard[name] = t
        size += t.numel() * 2
        total += t.numel()
        if size >= SHARD_BYTES:
            flush()
    flush()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 2 * total},
                                                                        "weight_map": weight_map}))
    byte_tokenizer().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BlipImageProcessor", "size": {"height": 224, "width": 224},
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}))
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=None, help="where to write the random checkpoint (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written checkpoint")
    ap.add_argument("--budget-gb", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from policy.config import VLAConfig
    from policy.model import VLA, load_backbone
    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="blip2-opt-2.7b-random-"))
    try:
        t0 = time.perf_counter()
        if not (directory / "model.safetensors.index.json").is_file():
            n = write_random_checkpoint(directory)
            print(f"wrote {n / 1e9:.3f} B random bf16 parameters to {directory} in {time.perf_counter() - t0:.0f} s "
                  f"(peak RSS so far {peak_rss_gb():.2f} GB)", flush=True)
        cfg = VLAConfig.from_dict({"backbone": {"kind": "blip2", "pretrained_dir": str(directory),
                                                "dtype": "bfloat16"},
                                   "max_text_tokens": 32, "backbone_training": "lora"})
        t1 = time.perf_counter()
        vla = VLA(cfg, load_backbone(cfg.backbone))
        vla.head.to(torch.bfloat16)
        vla.eval()
        counts = vla.trainable_parameter_counts()
        print(f"loaded through load_backbone/from_pretrained + LoRA in {time.perf_counter() - t1:.0f} s: "
              f"{counts} (peak RSS {peak_rss_gb():.2f} GB)", flush=True)
        rng = np.random.default_rng(0)
        frames = rng.integers(0, 256, (1, 2, 224, 224, 3), dtype=np.uint8)
        state = rng.normal(size=(1, 8)).astype(np.float32)
        with torch.inference_mode():
            t2 = time.perf_counter()
            latents = vla.encode(frames, ["pick up the red block"])
            action = vla.head(latents, vla._state_tensor(state, 1).to(torch.bfloat16))
            dt = time.perf_counter() - t2
        ok_action = bool(torch.isfinite(action.float()).all())
        print(f"one observation (2 cameras, 224 px) -> latents {tuple(latents.shape)} {latents.dtype} -> action "
              f"{tuple(action.shape)} finite={ok_action} in {dt:.1f} s on {args.threads} CPU threads")
        rss = peak_rss_gb()
        ok = rss <= args.budget_gb and ok_action and tuple(latents.shape) == (1, 2 * 32 + 32, 2560)
        print(f"full-size BLIP-2-OPT-2.7B path: latents {tuple(latents.shape)}, peak RSS {rss:.2f} GB "
              f"(budget {args.budget_gb:g} GB): {'PASS' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
