"""The VLA core on the tiny configuration (config/policy_tiny.yaml): shapes, what trains, checkpoints, ids, inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.backbone import enable_activation_checkpointing
from policy.config import POLICY_STATE_DIM, VLAConfig
from policy.model import InputError, build_vla, load_vla

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "config" / "policy_tiny.yaml"
INSTR = "pick up the red block"


@pytest.fixture(scope="module", autouse=True)
def _tiny_cache(tiny_model_env):
    yield


def tiny_cfg(mode: str) -> VLAConfig:
    cfg = VLAConfig.from_yaml(TINY_YAML, "vla")
    cfg.backbone_training = mode
    return cfg


def inputs(b: int, cfg: VLAConfig, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = cfg.backbone.tiny.image_size
    images = rng.integers(0, 256, (b, len(cfg.cameras), s, s, 3), dtype=np.uint8)
    state = rng.normal(size=(b, POLICY_STATE_DIM)).astype(np.float32)
    return images, state


def head_param_count(cfg: VLAConfig, d: int) -> int:
    """Independent count of the token learner + MLP head parameters from the config numbers."""
    h = cfg.head
    n = 2 * d + (d * h.token_learner_hidden + h.token_learner_hidden) + (h.token_learner_hidden * h.learned_tokens
                                                                         + h.learned_tokens)
    prev = h.learned_tokens * d + (POLICY_STATE_DIM if h.use_state else 0)
    for width in h.hidden_dims:
        n += prev * width + width + (2 * width if h.layer_norm else 0)
        prev = width
    return n + prev * h.action_dim + h.action_dim


def test_forward_backward_shapes_full_mode():
    cfg = tiny_cfg("full")
    vla = build_vla(cfg)
    b = 3
    images, state = inputs(b, cfg)
    t = cfg.backbone.tiny
    assert vla.num_latent_tokens == len(cfg.cameras) * t.num_query_tokens + cfg.max_text_tokens
    lat = vla.encode(images, [INSTR] * b)
    assert lat.shape == (b, vla.num_latent_tokens, t.hidden)
    out = vla(images, INSTR, state)  # one instruction broadcast to the batch
    assert out.shape == (b, 7)
    out.pow(2).mean().backward()
    vlm_grads = [p.grad for n, p in vla.vlm.named_parameters() if p.grad is not None]
    head_grads = [p.grad for p in vla.head.parameters() if p.grad is not None]
    assert len(head_grads) == len(list(vla.head.parameters()))
    assert vlm_grads and all(torch.isfinite(g).all() for g in vlm_grads)
    assert any(g.abs().sum() > 0 for g in vlm_grads if g is not None)
    act = vla.act(images, INSTR, state)
    assert act.shape == (b, 7) and act.dtype == np.float32 and np.all(np.abs(act) <= 1.0)
    # The latents path gives the same action as the full path.
    np.testing.assert_allclose(vla.act_from_latents(lat.detach(), state), act, atol=1e-6)


def test_lora_only_in_language_model_q_v_with_exact_counts():
    from transformers import Blip2Config, Blip2ForConditionalGeneration
    cfg = tiny_cfg("lora")
    vla = build_vla(cfg)
    t, r = cfg.backbone.tiny, cfg.lora.r
    base = Blip2ForConditionalGeneration(Blip2Config.from_pretrained(vla.backbone_source))
    base_count = sum(p.numel() for p in base.parameters())
    expected_lora = t.text_layers * 2 * (t.hidden * r + r * t.hidden)  # q_proj and v_proj: A (d x r) + B (r x d)
    counts = vla.trainable_parameter_counts()
    assert counts == {"vlm_trainable": expected_lora, "vlm_frozen": base_count,
                      "head_trainable": head_param_count(cfg, t.hidden)}
    trainable = [n for n, p in vla.vlm.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in n and "lora_" in n and ("q_proj" in n or "v_proj" in n)
                             for n in trainable), trainable
    for n, p in vla.vlm.named_parameters():
        if n.startswith(("vision_model", "qformer", "query_tokens", "language_projection")):
            assert not p.requires_grad, n
    assert all(p.requires_grad for p in vla.head.parameters())


def test_frozen_and_full_modes_counts():
    frozen = build_vla(tiny_cfg("frozen"))
    full = build_vla(tiny_cfg("full"))
    total = sum(p.numel() for p in full.vlm.parameters())
    cf, cu = frozen.trainable_parameter_counts(), full.trainable_parameter_counts()
    assert cf["vlm_trainable"] == 0 and cf["vlm_frozen"] == total
    assert cu["vlm_trainable"] == total and cu["vlm_frozen"] == 0
    assert cf["head_trainable"] == cu["head_trainable"] == head_param_count(tiny_cfg("full"), full.latent_dim)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_save_then_load_gives_identical_actions(tmp_path, mode):
    cfg = tiny_cfg(mode)
    vla = build_vla(cfg, seed=3)
    vla.head.set_normalization(np.linspace(-0.2, 0.2, 7), np.linspace(0.5, 1.5, 7), np.full(8, 0.1), np.full(8, 2.0))
    with torch.no_grad():  # make every trained part matter: a non-zero LoRA B, moved backbone weights
        g = torch.Generator().manual_seed(0)
        for n, p in vla.vlm.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    vla.eval()
    images, state = inputs(4, cfg, seed=1)
    before = vla.act(images, INSTR, state)
    ckpt = vla.save(tmp_path / "ckpt")
    assert (ckpt / "head.safetensors").is_file() and (ckpt / "vla_config.yaml").is_file()
    assert (ckpt / "adapter" / "adapter_config.json").is_file() == (mode == "lora")
    loaded = load_vla(ckpt)
    after = loaded.act(images, INSTR, state)
    np.testing.assert_array_equal(after, before)
    assert loaded.vlm_id() == vla.vlm_id() == json.loads((ckpt / "meta.json").read_text())["vlm_id"]


def _sft_step(vla, cfg, params):
    from policy.data import Batch
    from policy.train import SFTObjective, prepare_inputs
    images, state = inputs(4, cfg, seed=5)
    batch = Batch(images, [INSTR] * 4, state, np.random.default_rng(0).uniform(-1, 1, (4, 7)).astype(np.float32),
                  [str(i) for i in range(4)])
    opt = torch.optim.AdamW(params, lr=1e-3)
    loss = SFTObjective(vla, 1.0)(*prepare_inputs(vla, batch, "cpu"))[0]
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def test_vlm_id_changes_with_a_stage2_step_not_with_the_head(tmp_path):
    cfg = tiny_cfg("full")
    stage0 = build_vla(cfg)
    ckpt = stage0.save(tmp_path / "stage0")
    vla = load_vla(ckpt, trainable=True, backbone_training="lora")  # stage 2 starts from the stage-0 checkpoint
    vla.train()
    id0 = vla.vlm_id()
    _sft_step(vla, cfg, list(vla.head.parameters()))  # stage 1 changes only the head
    assert vla.vlm_id() == id0
    other = build_vla(cfg, seed=7)
    other.save(tmp_path / "other")
    vla.load_head(tmp_path / "other")
    assert vla.vlm_id() == id0
    loss = _sft_step(vla, cfg, [p for p in vla.parameters() if p.requires_grad])  # stage 2: LoRA + head
    assert np.isfinite(loss)
    id1 = vla.vlm_id()
    assert id1 != id0
    saved = vla.save(tmp_path / "stage2")
    assert load_vla(saved).vlm_id() == id1


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = tiny_cfg("lora")
    images, state = inputs(2, cfg, seed=2)
    grads = []
    for ckpt in (False, True):
        vla = build_vla(cfg)
        vla.train()
        if ckpt:
            enable_activation_checkpointing(vla.vlm)
            assert vla.vlm.is_activation_checkpointing
        vla(images, INSTR, state).pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in vla.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("lora_" in n for n in grads[1])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-7)


def test_bad_inputs_raise_input_error():
    cfg = tiny_cfg("frozen")
    vla = build_vla(cfg)
    images, state = inputs(2, cfg)
    good = vla.act(images, INSTR, state)
    assert good.shape == (2, 7)
    cases = {
        "empty instruction": lambda: vla.act(images, "", state),
        "blank instruction": lambda: vla.act(images, "   \n", state),
        "overlong instruction": lambda: vla.act(images, "pick " * cfg.max_text_tokens, state),
        "non-string instruction": lambda: vla.act(images, [3, 4], state),
        "instruction count": lambda: vla.act(images, [INSTR] * 3, state),
        "float images": lambda: vla.act(images.astype(np.float32), INSTR, state),
        "missing camera axis": lambda: vla.act(images[:, 0], INSTR, state),
        "wrong camera count": lambda: vla.act(images[:, :1], INSTR, state),
        "grayscale": lambda: vla.act(images[..., :1], INSTR, state),
        "tiny images": lambda: vla.act(images[:, :, :8, :8], INSTR, state),
        "NaN state": lambda: vla.act(images, INSTR, np.where(np.eye(2, 8) > 0, np.nan, state)),
        "inf state": lambda: vla.act(images, INSTR, np.full((2, 8), np.inf, np.float32)),
        "state length": lambda: vla.act(images, INSTR, state[:, :7]),
        "missing state": lambda: vla.act(images, INSTR, None),
        "missing camera in dict": lambda: vla.act({"front": images[:, 0]}, INSTR, state),
    }
    for name, fn in cases.items():
        with pytest.raises(InputError):
            fn()
            pytest.fail(f"no InputError for {name}")
    lat = vla.encode(images, INSTR)
    with pytest.raises(InputError):
        vla.act_from_latents(lat, np.full((2, 8), np.nan))
    # The model still works after the rejected inputs.
    np.testing.assert_array_equal(vla.act(images, INSTR, state), good)
