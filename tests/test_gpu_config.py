"""config/policy_blip2_opt_2.7b.yaml through the loaders its three consumers use (no weights needed), the one
device / dtype setting (vla.device, vla.backbone.dtype) as `irevla train`, the policy server and `irevla rl-session`
resolve it, and benchmarks/bench_policy.py's full-size part on a small-width stand-in on CPU."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config" / "policy_blip2_opt_2.7b.yaml"


def _want_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def test_vla_section_is_the_papers_model():
    from policy.config import DEFAULT_LORA_TARGETS, VLAConfig, resolve_device
    cfg = VLAConfig.from_yaml(CONFIG, "vla")
    assert cfg.backbone.kind == "blip2" and cfg.backbone.pretrained_dir == "models/blip2-opt-2.7b"
    assert cfg.backbone.dtype == "bfloat16"
    assert cfg.backbone_training == "lora"
    assert cfg.cameras == ["front", "wrist"]
    targets = re.compile(cfg.lora.target_modules or DEFAULT_LORA_TARGETS["blip2"])
    assert targets.fullmatch("language_model.model.decoder.layers.31.self_attn.q_proj")
    assert targets.fullmatch("language_model.model.decoder.layers.0.self_attn.v_proj")
    assert not targets.fullmatch("language_model.model.decoder.layers.0.self_attn.k_proj")
    assert not targets.fullmatch("qformer.encoder.layer.0.attention.attention.query")
    assert cfg.device == "auto" and resolve_device(cfg.device) == _want_device()
    from policy.backbone import _DTYPES
    assert _DTYPES[cfg.backbone.dtype] is torch.bfloat16


def test_device_resolution(monkeypatch):
    from policy.config import VLAConfig, resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="no CUDA"):
        resolve_device("cuda")
    with pytest.raises(ValueError):
        VLAConfig.from_dict({"device": "gpu"})
    assert VLAConfig().device == "cpu"  # the shipped CPU configs and every older checkpoint


def test_train_takes_the_models_device(tmp_path, monkeypatch):
    from policy.train import TrainConfig
    from policy.train_cli import model_device
    t = TrainConfig.from_yaml(CONFIG, "train")
    assert t.amp == "bf16" and t.gradient_checkpointing
    assert model_device(str(CONFIG)) == "auto"  # the vla: section's, as the server and the session read it
    assert model_device(str(ROOT / "config" / "policy_tiny.yaml")) is None  # its train.device: auto stays
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "vla_config.yaml").write_text(yaml.safe_dump({"device": "cuda", "backbone": {"dtype": "bfloat16"}}))
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert model_device(str(CONFIG), str(ckpt)) == "cuda:3"  # stage 2 under torchrun: the checkpoint's, per rank
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump({"vla": {"device": "auto"}, "train": {"device": "cpu"}}))
    assert model_device(str(own)) is None  # a train: section naming its own device keeps it


def test_checkpoint_device_for_the_server(tmp_path, monkeypatch):
    from policy import server_core
    from policy.config import VLAConfig, checkpoint_device
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "vla_config.yaml").write_text(yaml.safe_dump(VLAConfig.from_yaml(CONFIG, "vla").to_dict()))
    assert checkpoint_device(ckpt) == _want_device()
    old = tmp_path / "old"
    old.mkdir()
    data = VLAConfig().to_dict()
    data.pop("device")  # a checkpoint written before the setting existed
    (old / "vla_config.yaml").write_text(yaml.safe_dump(data))
    assert checkpoint_device(old) == "cpu"

    seen = []

    def fake_load(path, device, dtype=None):
        seen.append((Path(path), device))
        raise RuntimeError("stop")

    monkeypatch.setattr(server_core, "load_vla", fake_load)
    for device, want in ((None, _want_device()), ("", _want_device()), ("cpu", "cpu")):
        with pytest.raises(RuntimeError, match="stop"):
            server_core.PolicyServerCore.from_checkpoint(ckpt, device=device)
        assert seen[-1] == (ckpt, want)


def test_rl_session_reads_the_session_section():
    from rl_agent.jobs.session_cli import build_parser, config_from_args
    args = build_parser().parse_args(["--checkpoint", "runs/stage0/final", "--out", "runs/rl", "--config",
                                      str(CONFIG)])
    cfg = config_from_args(args)
    assert cfg.env.image_size == 224 and cfg.sac == {} and cfg.task == "pick_eggplant"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_policy", ROOT / "benchmarks" / "bench_policy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_full_settings_come_from_the_config():
    bench = _bench()
    args = type("A", (), {"full_config": str(CONFIG), "full_device": None, "full_dtype": None})()
    assert bench.full_settings(args) == (_want_device(), "bfloat16")


def test_bench_full_path_on_cpu(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "bench.json"
    rc = bench.main(["--skip-tiny", "--full-device", "cpu", "--full-arch", "tiny", "--full-iters", "3", "--warmup",
                     "1", "--compile", "none", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["full"]
    for key in ("fp32_eager", "bf16_eager"):
        assert res[key]["p50_ms"] > 0 and res[key]["p99_ms"] >= res[key]["p50_ms"]
    assert set(res["ratios_vs_fp32_eager"]) == {"bf16_eager"}
    assert res["dtype"] == "bfloat16" and res["optimized"]["variant"] == "bf16_eager"
    text = capsys.readouterr().out
    assert "eager fp32" in text and "faster than eager fp32" in text
    assert text.strip().splitlines()[-1].startswith("ratio (b) eager fp32 p50 / bf16_eager p50")
