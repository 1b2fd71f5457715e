"""Policy latency benchmark: camera frame -> action, and action from a cached latent.

    python benchmarks/bench_policy.py                       # (a) on CPU; (b) too when CUDA is available
    python benchmarks/bench_policy.py --full-layers 4 2 4   # (b) with fewer layers: a quick check of the path
    python benchmarks/bench_policy.py --full-device cpu --full-layers 2 2 2   # (b)'s code on CPU (smoke test)
    python benchmarks/bench_policy.py --skip-tiny --full-device cpu --full-arch tiny --compile none   # seconds

(a) CPU, the default model's architecture (config/policy_towers.yaml; --config for another): the full path
    (uint8 frames + instruction + state -> encode -> head -> action, `VLA.act`) against the cached path (latent cache hit -> `VLA.act_from_latents`), p50/p99.
    Goals: an action from a cached latent in <= 1 ms; encode of 2 cameras <= 25 ms at the default image size on one
    thread. The previous default (config/policy_tiny.yaml) is measured in the same run as the baseline.
(b) GPU (whenever torch sees one; device and dtype from --full-config, config/policy_blip2_opt_2.7b.yaml: device
    auto, dtype bfloat16): the full-size BLIP-2-OPT-2.7B architecture (ViT-g 39 layers, Q-Former 12, OPT-2.7B 32
    layers) built from a Blip2Config in code with random weights (nothing downloaded). Baseline: naive eager fp32
    (`VLA.act`: attention "eager", fp32 weights, tokenization per frame). Then, in the same run: the config's dtype
    (bf16) eager, with SDPA attention, the instruction tokenized once, frames through pinned memory, inference mode;
    and the same compiled (torch.compile, default "reduce-overhead": CUDA graphs; --compile none skips it). Each
    row: p50/p99 frame -> action and frames/s, and its p50/p99 ratio to the eager fp32 path. Goal: p50 <= 15 ms on
    an H100.
The last line printed is the speed-up ratio (b: fp32 eager p50 / fastest p50; a alone: full / cached p50).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

INSTRUCTION = "pick up the red block"


def percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "frames_per_s": float(1e3 / ms.mean())}


def timed(fn, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return percentiles(out)


def line(name: str, r: dict) -> str:
    return (f"{name:<52} p50 {r['p50_ms']:9.3f} ms   p99 {r['p99_ms']:9.3f} ms   "
            f"{r['frames_per_s']:9.1f} /s")


# ---------------------------------------------------------------------------------------------- (a) CPU tiny
def bench_tiny(args) -> dict:
    from policy.config import VLAConfig
    from policy.latent_cache import LatentCache, encode_cached, observation_key
    from policy.model import build_vla

    cfg = VLAConfig.from_yaml(args.config, "vla")
    cfg.backbone_training = "frozen"  # inference: the same weights, no LoRA wrapper
    vla = build_vla(cfg)
    vla.eval()
    size = args.frame_size or (cfg.backbone.towers.image_size if cfg.backbone.kind == "towers"
                               else cfg.backbone.tiny.image_size)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, len(cfg.cameras), size, size, 3), dtype=np.uint8)
    state = rng.normal(size=(1, 8)).astype(np.float32)
    counts = vla.trainable_parameter_counts()
    n_vlm = counts["vlm_trainable"] + counts["vlm_frozen"]
    print(f"(a) CPU, {cfg.backbone.kind} VLA ({args.config}): {n_vlm / 1e6:.2f} M VLM + "
          f"{counts['head_trainable'] / 1e6:.3f} M head "
          f"parameters; {len(cfg.cameras)} cameras at {size}x{size}; latents {vla.num_latent_tokens}x"
          f"{vla.latent_dim}; torch threads {torch.get_num_threads()}")
    res = {}
    with torch.inference_mode():
        res["encode"] = timed(lambda: vla.encode(frames, INSTRUCTION), args.iters, args.warmup)
        res["full"] = timed(lambda: vla.act(frames, INSTRUCTION, state), args.iters, args.warmup)
    cache = LatentCache()
    vid = vla.vlm_id()
    encode_cached(vla, cache, ["frame:0"], frames, INSTRUCTION, vlm_id=vid)
    key = observation_key("frame:0", INSTRUCTION)

    def cached():
        lat = cache.get(vid, key)
        return vla.act_from_latents(lat.astype(np.float32), state)

    res["cached"] = timed(cached, args.iters * 5, args.warmup)
    np.testing.assert_allclose(cached(), vla.act(frames, INSTRUCTION, state), atol=5e-2)
    print(line("encode (2 cameras + instruction -> latents)", res["encode"]))
    if cfg.backbone.kind == "towers":
        goal = "met" if res["encode"]["p50_ms"] <= 25.0 else "NOT met"
        print(f"encode p50 {res['encode']['p50_ms']:.2f} ms for {len(cfg.cameras)} cameras at {size} px on "
              f"{torch.get_num_threads()} thread(s): goal <= 25 ms {goal}")
    if args.baseline_config:  # the previous default (tiny BLIP-2, from scratch), measured in the same run
        bcfg = VLAConfig.from_yaml(args.baseline_config, "vla")
        bcfg.backbone_training = "frozen"
        base = build_vla(bcfg).eval()
        bsize = bcfg.backbone.tiny.image_size
        bframes = rng.integers(0, 256, (1, len(bcfg.cameras), bsize, bsize, 3), dtype=np.uint8)
        with torch.inference_mode():
            res["baseline_encode"] = timed(lambda: base.encode(bframes, INSTRUCTION), args.iters, args.warmup)
        print(line(f"baseline encode ({Path(args.baseline_config).name}, {bsize} px)", res["baseline_encode"]))
        res["ratio_encode_over_baseline_p50"] = res["encode"]["p50_ms"] / res["baseline_encode"]["p50_ms"]
        print(f"    encode p50 ratio {cfg.backbone.kind} / baseline = {res['ratio_encode_over_baseline_p50']:.2f}x")
    print(line("full path: frames -> encode -> head -> action", res["full"]))
    print(line("cached path: latent cache hit -> head -> action", res["cached"]))
    goal = "met" if res["cached"]["p50_ms"] <= 1.0 else "NOT met"
    print(f"cached-latent action p50 {res['cached']['p50_ms']:.3f} ms: goal <= 1 ms {goal}")
    res["ratio_full_over_cached_p50"] = res["full"]["p50_ms"] / res["cached"]["p50_ms"]
    return res


# ---------------------------------------------------------------------------------------------- (b) full size
def blip2_opt_2_7b_config(layers=None):
    """The Salesforce/blip2-opt-2.7b architecture (optionally with fewer layers: vision, qformer, text)."""
    from transformers import Blip2Config
    v, q, t = layers or (39, 12, 32)
    return Blip2Config(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=v, num_attention_heads=16,
                           image_size=224, patch_size=14, qkv_bias=True, layer_norm_eps=1e-6,
                           initializer_range=0.02),
        qformer_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=q, num_attention_heads=12,
                            encoder_hidden_size=1408, cross_attention_frequency=2, vocab_size=30522,
                            max_position_embeddings=512),
        text_config=dict(model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=t,
                         num_attention_heads=32, vocab_size=50272, word_embed_proj_dim=2560,
                         max_position_embeddings=2048, do_layer_norm_before=True, pad_token_id=1, bos_token_id=2,
                         eos_token_id=2),
        num_query_tokens=32, image_token_index=50265)


def tiny_full_config(layers=None):
    """The same structure with small widths: (b)'s code path on a CPU in seconds (tests, --full-arch tiny)."""
    from transformers import Blip2Config
    v, q, t = layers or (2, 2, 2)
    return Blip2Config(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=v, num_attention_heads=4,
                           image_size=224, patch_size=32, qkv_bias=True, layer_norm_eps=1e-6),
        qformer_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=q, num_attention_heads=4,
                            encoder_hidden_size=64, cross_attention_frequency=2, vocab_size=512,
                            max_position_embeddings=64),
        text_config=dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=t, num_attention_heads=4,
                         vocab_size=512, word_embed_proj_dim=64, max_position_embeddings=128,
                         do_layer_norm_before=True, pad_token_id=0, bos_token_id=1, eos_token_id=1),
        num_query_tokens=8, image_token_index=3)


def build_full_vla(layers, device: torch.device, cameras: int, text_tokens: int, arch: str = "blip2-opt-2.7b"):
    from transformers import Blip2ForConditionalGeneration

    from policy.backbone import CLIP_MEAN, CLIP_STD, Backbone, byte_tokenizer
    from policy.config import VLAConfig
    from policy.model import VLA

    mcfg = tiny_full_config(layers) if arch == "tiny" else blip2_opt_2_7b_config(layers)
    torch.manual_seed(0)
    with torch.device(device):
        model = Blip2ForConditionalGeneration(mcfg)
    model.eval()
    # A byte-level tokenizer stands in for OPT's (its ids are valid OPT ids; nothing to download).
    tok = byte_tokenizer()
    src = Path(tempfile.mkdtemp(prefix="bench_blip2_"))
    backbone = Backbone(model=model, tokenizer=tok, image_size=224, mean=CLIP_MEAN, std=CLIP_STD,
                        num_query_tokens=mcfg.num_query_tokens, hidden_size=mcfg.text_config.hidden_size,
                        source=str(src))
    vcfg = VLAConfig(cameras=["front", "wrist"][:cameras] if cameras <= 2 else [f"cam{i}" for i in range(cameras)],
                     max_text_tokens=text_tokens, backbone_training="frozen")
    vla = VLA(vcfg, backbone).to(device)
    vla.eval()
    return vla


def set_attention(vla, impl: str) -> str:
    try:
        vla.vlm.set_attn_implementation(impl)
    except Exception as exc:  # an implementation this build cannot use: keep the current one
        print(f"    (attention {impl!r} unavailable: {type(exc).__name__}: {exc})")
    return vla.vlm.config._attn_implementation


def full_settings(args) -> tuple[str, str]:
    """(device, dtype) of part (b): --full-device / --full-dtype, else --full-config's vla.device (resolved: auto ->
    cuda when available) and vla.backbone.dtype, the one place the policy server, RL session and trainer read them."""
    from policy.config import VLAConfig, resolve_device
    cfg = VLAConfig.from_yaml(args.full_config, "vla") if args.full_config else VLAConfig(device="auto")
    device = args.full_device or (cfg.device if cfg.device.startswith("cuda") else resolve_device(cfg.device))
    dtype = args.full_dtype or (cfg.backbone.dtype if cfg.backbone.dtype != "float32" else "bfloat16")
    return device, dtype


def ratio_line(name: str, base: dict, r: dict) -> str:
    return (f"    {name}: {base['p50_ms'] / r['p50_ms']:.2f}x p50, {base['p99_ms'] / r['p99_ms']:.2f}x p99 "
            "faster than eager fp32")


def bench_full(args) -> dict:
    from policy.backbone import CLIP_MEAN, CLIP_STD
    dev = torch.device(args.full_device)
    fast_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[args.full_dtype]
    dname = str(fast_dtype).replace("torch.", "")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the baseline is plain fp32
    layers = tuple(args.full_layers) if args.full_layers else None
    t0 = time.perf_counter()
    vla = build_full_vla(layers, dev, args.cameras, args.text_tokens, args.full_arch)
    n = sum(p.numel() for p in vla.vlm.parameters())
    tiny = args.full_arch == "tiny"
    desc = ("small-width stand-in (--full-arch tiny)" if tiny else
            f"layers {layers} (reduced)" if layers else "full depth (39/12/32 layers)")
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    size = f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"
    print(f"(b) BLIP-2-OPT-2.7B architecture, random weights, {desc}: {size} VLM parameters on {gpu}; "
          f"{args.cameras} camera(s) 224x224 uint8 -> action; instruction padded to {args.text_tokens} tokens "
          f"(built in {time.perf_counter() - t0:.1f} s; torch {torch.__version__})")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, args.cameras, 224, 224, 3), dtype=np.uint8)
    state = rng.normal(size=(1, 8)).astype(np.float32)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    res = {"device": gpu, "vlm_parameters": n, "arch": args.full_arch, "dtype": dname,
           "layers": list(layers) if layers else ([2, 2, 2] if tiny else [39, 12, 32])}

    # Baseline: naive eager fp32 (what a first implementation does: VLA.act on every frame).
    impl = set_attention(vla, "eager")
    with torch.no_grad():
        base_action = vla.act(frames, INSTRUCTION, state)
    res["fp32_eager"] = timed(lambda: (vla.act(frames, INSTRUCTION, state), sync()), args.full_iters, args.warmup)
    res["fp32_eager"]["attention"] = impl
    base = res["fp32_eager"]
    print(line(f"eager fp32, {impl} attention, VLA.act", base))

    # The config's dtype (bf16): weights cast, SDPA, tokens once, pinned host frames, inference mode ...
    vla.to(fast_dtype)
    impl = set_attention(vla, "sdpa")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ids, mask = vla.tokenize([INSTRUCTION])
    ids, mask = ids.to(dev), mask.to(dev)
    # Normalization folded into one multiply-add on the uint8 values (the model reads 224 px: no resize).
    mean = torch.tensor(CLIP_MEAN, device=dev).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(CLIP_STD, device=dev).view(1, 3, 1, 1) * 255.0)
    host = torch.empty(frames.shape, dtype=torch.uint8)
    host_state = torch.empty(state.shape, dtype=torch.float32)
    if dev.type == "cuda":
        host, host_state = host.pin_memory(), host_state.pin_memory()

    def core(frames_u8, st):
        b, c = frames_u8.shape[:2]
        x = frames_u8.reshape(b * c, *frames_u8.shape[2:]).permute(0, 3, 1, 2).float()
        pv = ((x - mean) * inv_std).to(fast_dtype)
        latents = vla.encode_tensors(pv, ids, mask)
        return vla.head(latents, st)

    def runner(fn):
        def run():
            host.numpy()[...] = frames
            host_state.numpy()[...] = state
            with torch.inference_mode():
                a = fn(host.to(dev, non_blocking=True), host_state.to(dev, non_blocking=True))
                return a.float().clamp(-1, 1).cpu().numpy()
        return run

    eager = runner(core)
    fast_action = eager()
    res["bf16_eager"] = timed(eager, args.full_iters, args.warmup)
    res["bf16_eager"].update(attention=impl, compile="none", dtype=dname)
    print(line(f"eager {dname}, {impl}, tokens once, pinned frames", res["bf16_eager"]))
    res["action_max_abs_diff_bf16_vs_fp32"] = float(np.abs(fast_action - base_action).max())

    # ... and the same compiled (torch.compile), when asked for and it works here.
    mode = args.compile
    if mode != "none":
        try:
            compiled = runner(torch.compile(core, mode=None if mode == "default" else mode, fullgraph=False))
            t0 = time.perf_counter()
            for _ in range(3):  # CUDA-graph modes record on a later call
                compiled()
            res["compile_s"] = time.perf_counter() - t0
            res["bf16_compiled"] = timed(compiled, args.full_iters, args.warmup)
            res["bf16_compiled"].update(attention=impl, compile=mode, dtype=dname)
            print(line(f"compiled {dname}, {impl}, compile={mode}", res["bf16_compiled"])
                  + f"   (first calls {res['compile_s']:.1f} s)")
        except Exception as exc:
            print(f"    (torch.compile mode {mode!r} unavailable or failed: {type(exc).__name__}: {str(exc)[:300]})")
    print(f"    {dname} vs fp32 action max abs difference {res['action_max_abs_diff_bf16_vs_fp32']:.3g} "
          "(random weights; a sanity check that both compute the same function)")
    res["ratios_vs_fp32_eager"] = {}
    for key, name in (("bf16_eager", f"eager {dname}"), ("bf16_compiled", f"compiled {dname}")):
        if key in res:
            res["ratios_vs_fp32_eager"][key] = {"p50": base["p50_ms"] / res[key]["p50_ms"],
                                                "p99": base["p99_ms"] / res[key]["p99_ms"]}
            print(ratio_line(name, base, res[key]))
    fastest = min(("bf16_eager", "bf16_compiled"), key=lambda k: res[k]["p50_ms"] if k in res else float("inf"))
    res["optimized"] = dict(res[fastest], variant=fastest)  # the fastest of the two (the earlier key)
    if dev.type == "cuda" and not layers and not tiny:
        goal = "met" if res["optimized"]["p50_ms"] <= 15.0 else "NOT met"
        print(f"frame-to-action p50 {res['optimized']['p50_ms']:.2f} ms on {gpu} ({fastest}): goal <= 15 ms {goal}")
    res["ratio_fp32_eager_over_optimized_p50"] = base["p50_ms"] / res["optimized"]["p50_ms"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "config" / "policy_towers.yaml"),
                    help="(a) the VLA measured (default: the default model's architecture)")
    ap.add_argument("--baseline-config", default=str(REPO / "config" / "policy_tiny.yaml"),
                    help="(a) a second VLA measured in the same run for the ratio (''/none: skip)")
    ap.add_argument("--iters", type=int, default=200, help="(a) timed iterations (the cached path runs 5x more)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--frame-size", type=int, default=None, help="(a) camera frame size (default: model input)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: multi-threaded OpenMP collapses on a shared, loaded machine)")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--full-config", default=str(REPO / "config" / "policy_blip2_opt_2.7b.yaml"),
                    help="(b) where its device (vla.device, auto: CUDA when available) and fast dtype "
                         "(vla.backbone.dtype) come from")
    ap.add_argument("--full-device", default=None,
                    help="(b) device (default: the config's, resolved); 'cpu' only for a smoke test")
    ap.add_argument("--full-dtype", default=None, choices=["bfloat16", "float16"],
                    help="(b) the fast path's dtype (default: the config's backbone.dtype)")
    ap.add_argument("--full-arch", default="blip2-opt-2.7b", choices=["blip2-opt-2.7b", "tiny"],
                    help="(b) the architecture; tiny: small widths, (b)'s code path on a CPU in seconds")
    ap.add_argument("--full-layers", type=int, nargs=3, metavar=("VISION", "QFORMER", "TEXT"), default=None,
                    help="(b) reduced layer counts for a quick check (default: the full 39 12 32)")
    ap.add_argument("--full-iters", type=int, default=100)
    ap.add_argument("--cameras", type=int, default=2, help="(b) cameras per frame (default 2: front + wrist)")
    ap.add_argument("--text-tokens", type=int, default=32, help="(b) instruction length in tokens")
    ap.add_argument("--compile", default="reduce-overhead",
                    choices=["none", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    if args.baseline_config in ("", "none"):
        args.baseline_config = None
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    if not args.skip_tiny:
        results["tiny_cpu"] = bench_tiny(args)
    run_full = False
    if not args.skip_full:
        explicit = args.full_device is not None
        args.full_device, args.full_dtype = full_settings(args)
        # the config's auto resolved to cpu (no GPU): skipped, as a 15 GB fp32 model on CPU is no benchmark
        run_full = explicit or args.full_device != "cpu"
        if args.full_device.startswith("cuda") and not torch.cuda.is_available():
            run_full = False
    if run_full:
        if args.full_device == "cpu" and not args.full_layers and args.full_arch != "tiny":
            print("(b) on CPU needs --full-layers (the full 3.8 B model in fp32 is a 15 GB, minutes-per-frame run)")
            return 2
        results["full"] = bench_full(args)
    elif not args.skip_full:
        print("(b) skipped: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine, or "
              "check the code path with --full-device cpu --full-layers 2 2 2")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if "full" in results:
        r = results["full"]
        print(f"ratio (b) eager fp32 p50 / {r['optimized']['variant']} p50 = "
              f"{r['ratio_fp32_eager_over_optimized_p50']:.2f}x "
              f"({r['fp32_eager']['p50_ms']:.2f} ms -> {r['optimized']['p50_ms']:.2f} ms)")
    elif "tiny_cpu" in results:
        r = results["tiny_cpu"]
        print(f"ratio (a) full path p50 / cached-latent path p50 = {r['ratio_full_over_cached_p50']:.1f}x "
              f"({r['full']['p50_ms']:.2f} ms -> {r['cached']['p50_ms']:.3f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
