"""Supervised trainer on a small real dataset recorded with `irevla collect`: data mixture, loss going down,
resume = uninterrupted, DDP with two gloo processes = one process, stage 2 with LoRA on a mixture."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from policy.config import VLAConfig
from policy.data import MixtureBatches, NormStats, PolicyData
from policy.model import load_vla
from policy.train import TrainConfig, fixed_loss_hook, train_sft
from teleop.dataset import compute_stats

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "config" / "policy_tiny.yaml"
TASKS = ["pick_red_block", "press_button"]


@pytest.fixture(scope="module")
def env(tiny_model_env):
    """IREVLA_CACHE in a temp dir (shared with the subprocesses) for the tiny backbone."""
    return tiny_model_env


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("data") / "scripted"
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out),
                           "--episodes-per-task", "2", "--tasks", *TASKS, "--workers", "2", "--image-size", "96",
                           "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def small_yaml(tmp_path_factory):
    """The tiny VLA of config/policy_tiny.yaml with a 4-step training section (checkpoint every 2 steps)."""
    doc = yaml.safe_load(TINY_YAML.read_text())
    doc["train"].update(steps=4, batch_size=8, lr=3e-4, warmup_steps=1, save_every=2, log_every=1, eval_every=0,
                        progress=False, augment_shift_px=2)
    path = tmp_path_factory.mktemp("cfg") / "small.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str) -> int:
    from policy.train_cli import main
    return main([*map(str, args)])


def tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    out = {}
    for f in sorted(ckpt.rglob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[f"{f.relative_to(ckpt)}:{k}"] = v
    return out


def max_abs_diff(a: Path, b: Path) -> float:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys() and ta
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env, dataset, small_yaml):
    """One uninterrupted single-process run: the baseline of the resume and the DDP tests."""
    out = tmp_path_factory.mktemp("ref")
    assert cli("--config", small_yaml, "--data", dataset, "--out", out, "--eval-samples", "0") == 0
    return out


def test_mixture_batches_are_deterministic_weighted_and_split_by_rank(env, dataset):
    cams = ["front", "wrist"]
    pick = PolicyData(dataset, cams, tasks=["pick_red_block"])
    press = PolicyData(dataset, cams, tasks=["press_button"])
    assert pick.num_episodes == press.num_episodes == 2 and pick.image_shape == (96, 96, 3)
    mb = MixtureBatches([pick, press], [0.25, 0.75], batch_size=8, seed=3)
    b = mb.batch(5)
    assert b.images.shape == (8, 2, 96, 96, 3) and b.images.dtype == np.uint8
    assert b.state.shape == (8, 8) and b.action.shape == (8, 7) and len(b.instructions) == 8
    # The policy state is the recorded row's tail; the ids name (episode file hash, step).
    k, t = pick.ds.locate(0)
    np.testing.assert_array_equal(pick.batch([0]).state[0], np.asarray(pick.ds.episode(k)["state"][t])[-8:])
    assert pick.obs_id(0) == f"{pick.episode_hashes[0]}:0" and len(set(b.obs_ids)) == 8
    # Deterministic given the seed; another seed gives other batches.
    again = MixtureBatches([pick, press], [0.25, 0.75], batch_size=8, seed=3)
    assert again.global_picks(5) == mb.global_picks(5)
    assert MixtureBatches([pick, press], [0.25, 0.75], 8, seed=4).global_picks(5) != mb.global_picks(5)
    # Two ranks' slices are the global batch.
    r0 = MixtureBatches([pick, press], [0.25, 0.75], 8, seed=3, rank=0, world_size=2).batch(5)
    r1 = MixtureBatches([pick, press], [0.25, 0.75], 8, seed=3, rank=1, world_size=2).batch(5)
    assert r0.obs_ids + r1.obs_ids == b.obs_ids
    np.testing.assert_array_equal(np.concatenate([r0.images, r1.images]), mb.batch(5).images)
    # The mixture weights hold, and each source is read in epochs (every sample once before any repeats).
    steps = 60
    picks = [p for s in range(steps) for p in mb.global_picks(s)]
    frac = np.mean([k == 0 for k, _ in picks])
    assert abs(frac - 0.25) < 0.03, frac
    n = len(pick)  # 2 samples of `pick` per step
    first = [i for s in range(n // 2) for k, i in mb.global_picks(s) if k == 0]
    assert len(set(first)) == len(first) == 2 * (n // 2)
    covered = {i for s in range((n + 1) // 2) for k, i in mb.global_picks(s) if k == 0}
    assert covered == set(range(n))
    # Pooled statistics with weights proportional to the sizes are the statistics of the union.
    stats = NormStats.pooled([pick.norm_stats(), press.norm_stats()], [len(pick), len(press)])
    full = NormStats.from_compute_stats(compute_stats(dataset))
    for name in ("action_mean", "action_std", "state_mean", "state_std"):
        np.testing.assert_allclose(getattr(stats, name), getattr(full, name), rtol=1e-5, atol=1e-7)


def test_short_training_run_lowers_the_loss(tmp_path, env, dataset):
    vla_cfg = VLAConfig.from_yaml(TINY_YAML, "vla")
    cfg = TrainConfig.from_yaml(TINY_YAML, "train")
    cfg.steps, cfg.batch_size, cfg.warmup_steps = 40, 16, 5  # lr: the config's 3e-4
    cfg.eval_every, cfg.save_every, cfg.log_every, cfg.progress = 20, 0, 5, False
    data = PolicyData(dataset, vla_cfg.cameras)
    calls = []
    loss_hook = fixed_loss_hook([data], samples=32)

    def hook(vla, step):
        calls.append((step, vla.training, torch.is_grad_enabled()))
        return loss_hook(vla, step)

    ckpt = train_sft(cfg, vla_cfg, [data], tmp_path, eval_hook=hook)
    assert ckpt == tmp_path / "final"
    assert calls == [(0, False, False), (20, False, False), (40, False, False)]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval/fixed_loss"] for r in rows if "eval/fixed_loss" in r}
    train = [r["train/loss"] for r in rows if "train/loss" in r]
    print(f"fixed-sample loss {evals}; train loss every 5 steps {[round(x, 3) for x in train]}")
    assert evals[40] < 0.65 * evals[0], evals  # measured: 2.32 -> 1.21
    assert np.mean(train[-2:]) < 0.75 * np.mean(train[:2]), train
    assert all(r["train/samples_per_s"] > 0 and r["train/lr"] > 0 for r in rows if "train/lr" in r)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "eval/fixed_loss"} \
        <= set(acc.Tags()["scalars"])
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 40 and meta["norm_source"] == "data"
    stats = NormStats.from_compute_stats(compute_stats(dataset))
    np.testing.assert_allclose(meta["norm_stats"]["action_mean"], stats.action_mean, rtol=1e-6)
    vla = load_vla(ckpt)
    np.testing.assert_allclose(vla.head.action_mean.numpy(), stats.action_mean, rtol=1e-6)
    b = data.batch([0, 1])
    act = vla.act(b.images, b.instructions, b.state)
    assert act.shape == (2, 7) and np.isfinite(act).all()


def test_resume_equals_uninterrupted(tmp_path, env, dataset, small_yaml, reference):
    assert cli("--config", small_yaml, "--data", dataset, "--out", tmp_path, "--until-step", "3",
               "--eval-samples", "0") == 0
    # Stopped after step 3 with a checkpoint; the periodic one of step 2 is there too.
    assert not (tmp_path / "final").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]
    # Simulate a crash after step 3's checkpoint started: its trainer state never got written.
    (tmp_path / "checkpoints" / "step_0000003" / "trainer_state.pt").unlink()
    assert cli("--config", small_yaml, "--data", dataset, "--out", tmp_path, "--resume", "--eval-samples", "0") == 0
    diff = max_abs_diff(tmp_path / "final", reference / "final")
    print(f"resume vs uninterrupted: max abs parameter difference {diff:.3g}")
    assert diff == 0.0
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 3, 4]  # 1-3 logged by the first run, 3-4 by the resumed one (from step 2)
    # Resuming with another schedule is refused.
    assert cli("--config", small_yaml, "--data", dataset, "--out", tmp_path, "--resume", "--steps", "9") == 2


def test_ddp_two_gloo_processes_match_one_process(tmp_path, env, dataset, small_yaml, reference):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "policy.train_cli", "--config", str(small_yaml), "--data", str(dataset), "--out", str(tmp_path),
           "--eval-samples", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    meta = json.loads((tmp_path / "final" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4
    diff = max_abs_diff(tmp_path / "final", reference / "final")
    print(f"DDP 2 gloo processes (batch 4 each) vs 1 process (batch 8): max abs parameter difference {diff:.3g}")
    assert diff < 1e-5
    # The runs changed the weights (so the comparison says something).
    first = tensors(reference / "checkpoints" / "step_0000002")
    last = tensors(reference / "final")
    assert max(float((first[k] - last[k]).abs().max()) for k in first if "backbone" in k) > 1e-4


def test_stage2_lora_on_a_mixture_from_a_stage0_checkpoint(tmp_path, env, dataset, reference):
    stage0 = reference / "final"
    cams = ["front", "wrist"]
    expert = PolicyData(dataset, cams, tasks=["pick_red_block"])
    rl = PolicyData(dataset, cams, tasks=["press_button"])
    cfg = TrainConfig(steps=2, batch_size=4, lr=1e-3, warmup_steps=0, save_every=0, log_every=1,
                      backbone_training="lora", mix=[0.5, 0.5], progress=False, tensorboard=False)
    ckpt = train_sft(cfg, stage0, [expert, rl], tmp_path)
    meta0 = json.loads((stage0 / "meta.json").read_text())
    meta = json.loads((ckpt / "meta.json").read_text())
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    assert meta["norm_source"] == "checkpoint" and meta["norm_stats"]["action_mean"] == pytest.approx(
        meta0["norm_stats"]["action_mean"])
    assert meta["mix"] == [0.5, 0.5] and meta["origin"] == str(stage0)
    t = VLAConfig.from_yaml(TINY_YAML, "vla")
    lora = t.backbone.tiny.text_layers * 2 * 2 * t.backbone.tiny.hidden * t.lora.r
    assert meta["parameters"]["vlm_trainable"] == lora
    assert meta["vlm_id"] != meta0["vlm_id"]
    vla = load_vla(ckpt)
    assert vla.cfg.backbone_training == "lora" and vla.vlm_id() == meta["vlm_id"]
    b = expert.batch([0])
    assert np.isfinite(vla.act(b.images, b.instructions, b.state)).all()
    # The backbone below the adapter is still the stage-0 one: only LoRA and the head moved.
    base0, base2 = tensors(stage0), tensors(ckpt)
    for k, v in base0.items():
        if k.startswith("backbone/"):
            assert torch.equal(v, base2[k]), k
