"""The VLA: BLIP-2 backbone (LoRA on its language model) + token learner + MLP action head.

    latents = vla.encode(images, instructions)        # [B, N, d]: the LM's last hidden states
    action  = vla.head(latents, state)                 # [B, 7] contract units
    action  = vla.act(images, instructions, state)     # both, numpy in/out, clipped to [-1, 1]

N = cameras * num_query_tokens + max_text_tokens: each camera's image goes through the vision tower and Q-Former
separately (one batch of B * cameras images), its query outputs are projected into the LM's embedding space and
placed in front of the instruction tokens (padded to a fixed length, so latents of every frame have one shape and
the RL buffer can store them as a plain array).

Checkpoints (`save` / `load_vla`) are a directory:
    vla_config.yaml, head.safetensors, adapter/ (peft save_pretrained; LoRA mode), backbone/ (full weights, when the
    backbone itself was trained or is the tiny one), meta.json (ids, normalization stats, provenance).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
import yaml
from torch import nn

from policy.backbone import TINY_INIT_VERSION, Backbone, load_backbone, write_tiny_blip2
from policy.config import DEFAULT_LORA_TARGETS, POLICY_STATE_DIM, VLAConfig
from policy.heads import ActionHead

PathLike = Union[str, Path]


class InputError(ValueError):
    """Bad policy input: empty/overlong instruction, wrong image shape/dtype, NaN state."""


def _fingerprint_dir(directory: Path) -> str:
    """Cheap identity of a weights directory: config + every weight file's name, size and head/tail bytes."""
    h = hashlib.blake2b(digest_size=8)
    for p in sorted(directory.rglob("*")):
        if not p.is_file() or p.suffix not in (".json", ".safetensors", ".bin"):
            continue
        h.update(str(p.relative_to(directory)).encode())
        st = p.stat()
        h.update(str(st.st_size).encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 16))
            if st.st_size > 1 << 17:
                f.seek(-(1 << 16), os.SEEK_END)
                h.update(f.read())
    return h.hexdigest()


def _tensor_hash(tensors) -> str:
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class VLA(nn.Module):
    def __init__(self, cfg: VLAConfig, backbone: Backbone, adapter_dir: Optional[PathLike] = None,
                 adapter_trainable: bool = True):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = backbone.tokenizer
        self.backbone_source = backbone.source
        self.image_size, self.num_query_tokens = backbone.image_size, backbone.num_query_tokens
        self.latent_dim = backbone.hidden_size
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.is_towers = cfg.backbone.kind == "towers"
        model = backbone.model
        self.peft_model = None
        if cfg.backbone_training == "lora":
            from peft import LoraConfig, PeftModel, get_peft_model
            if adapter_dir is not None:
                self.peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=adapter_trainable)
            else:
                targets = cfg.lora.target_modules or DEFAULT_LORA_TARGETS[cfg.backbone.kind]
                lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                  target_modules=targets, bias="none")
                self.peft_model = get_peft_model(model, lcfg)
            vlm = self.peft_model.base_model.model
        else:
            vlm = model
            for p in vlm.parameters():
                p.requires_grad_(cfg.backbone_training == "full")
        self.vlm = vlm
        self.head = ActionHead(self.latent_dim, cfg.head)
        self._vlm_id_base = _fingerprint_dir(Path(backbone.source))

    # ------------------------------------------------------------------ identity
    @property
    def num_latent_tokens(self) -> int:
        if self.is_towers:  # queries per camera (+ keypoint tokens) + one sentence token
            return self.vlm.num_latent_tokens
        return len(self.cfg.cameras) * self.num_query_tokens + self.cfg.max_text_tokens

    def vlm_id(self) -> str:
        """Identity of everything that produces latents (backbone weights + LoRA). Keys the latent cache: it
        changes when stage 2 (or stage 0) changes the VLM, not when stage 1 changes only the head."""
        mode = self.cfg.backbone_training
        if mode == "frozen":
            return self._vlm_id_base
        if mode == "full":
            # Every weight may have changed: the weights alone are the identity, so the id is the same during
            # training, in the saved checkpoint and after loading it (whatever directory it was loaded from).
            return hashlib.blake2b(("full" + _tensor_hash(self.vlm.parameters())).encode(),
                                   digest_size=8).hexdigest()
        lora = [p for n, p in self.vlm.named_parameters() if "lora_" in n]
        if not lora:
            return self._vlm_id_base
        return hashlib.blake2b((self._vlm_id_base + _tensor_hash(lora)).encode(), digest_size=8).hexdigest()

    def trainable_parameter_counts(self) -> dict[str, int]:
        def count(params, trainable):
            return sum(p.numel() for p in params if p.requires_grad == trainable)
        return {"vlm_trainable": count(self.vlm.parameters(), True),
                "vlm_frozen": count(self.vlm.parameters(), False),
                "head_trainable": count(self.head.parameters(), True)}

    # ------------------------------------------------------------------ inputs
    def check_instructions(self, instructions: Sequence[str]) -> list[str]:
        if isinstance(instructions, str):
            instructions = [instructions]
        out = []
        for s in instructions:
            if not isinstance(s, str):
                raise InputError(f"instruction must be a string, got {type(s).__name__}")
            s = " ".join(s.split())
            if not s:
                raise InputError("instruction is empty")
            n = len(self.tokenizer(s)["input_ids"])
            if n > self.cfg.max_text_tokens:
                raise InputError(f"instruction is too long: {n} tokens > max_text_tokens={self.cfg.max_text_tokens}"
                                 f" ({s[:60]!r}...)")
            out.append(s)
        return out

    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        instructions = self.check_instructions(instructions)
        t = self.tokenizer(instructions, padding="max_length", max_length=self.cfg.max_text_tokens,
                           truncation=False, return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    def _images_tensor(self, images) -> torch.Tensor:
        """uint8 [B, C, H, W, 3] (C = cameras; numpy or torch) or {camera: [B, H, W, 3]} -> float [B*C, 3, S, S]."""
        if isinstance(images, dict):
            missing = [c for c in self.cfg.cameras if c not in images]
            if missing:
                raise InputError(f"missing camera image(s) {missing}; this policy reads {self.cfg.cameras}")
            images = np.stack([np.asarray(images[c]) for c in self.cfg.cameras], axis=1) \
                if not torch.is_tensor(images[self.cfg.cameras[0]]) \
                else torch.stack([images[c] for c in self.cfg.cameras], dim=1)
        x = torch.as_tensor(images)
        ncam = len(self.cfg.cameras)
        if x.ndim != 5 or x.shape[1] != ncam or x.shape[-1] != 3:
            raise InputError(f"images must be [batch, {ncam} cameras, H, W, 3], got shape {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            raise InputError(f"images must be uint8 RGB, got {x.dtype}")
        if min(x.shape[2], x.shape[3]) < 16:
            raise InputError(f"images of {x.shape[2]}x{x.shape[3]} pixels are too small")
        b = x.shape[0]
        x = x.to(self.pixel_mean.device).reshape(b * ncam, *x.shape[2:]).permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = nn.functional.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                                          antialias=True, align_corners=False)
        return (x - self.pixel_mean) / self.pixel_std

    def _state_tensor(self, state, batch: int) -> Optional[torch.Tensor]:
        if not self.cfg.head.use_state:
            return None
        if state is None:
            raise InputError("this policy reads the robot state: pass state [batch, 8]")
        s = torch.as_tensor(np.asarray(state, dtype=np.float32) if not torch.is_tensor(state) else state)
        s = s.reshape(batch, -1).float().to(self.pixel_mean.device)
        if s.shape[1] != POLICY_STATE_DIM:
            raise InputError(f"state must have {POLICY_STATE_DIM} values (ee xyz, quat wxyz, gripper width), "
                             f"got {s.shape[1]}")
        if not torch.isfinite(s).all():
            raise InputError("state contains NaN or inf")
        return s

    # ------------------------------------------------------------------ forward
    def encode(self, images, instructions: Sequence[str]) -> torch.Tensor:
        """Latents [B, N, d] (the LM's last hidden states) for uint8 images and instructions. Differentiable
        when called with grad enabled (stages 0 and 2)."""
        pixel_values = self._images_tensor(images)
        b = pixel_values.shape[0] // len(self.cfg.cameras)
        ids, mask = self.tokenize(instructions)
        if len(ids) == 1 and b > 1:
            ids, mask = ids.expand(b, -1), mask.expand(b, -1)
        if len(ids) != b:
            raise InputError(f"{b} observations but {len(ids)} instructions")
        dev = pixel_values.device
        return self.encode_tensors(pixel_values, ids.to(dev), mask.to(dev))

    def encode_tensors(self, pixel_values: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The tensor-only core of `encode` (no checks, no tokenizer: what torch.compile and the trainer see):
        normalized pixels [B * cameras, 3, S, S] (towers backbone: or its cached vision features), token ids and
        attention mask [B, T] -> latents [B, N, d]."""
        if self.is_towers:
            return self.vlm(pixel_values, ids, mask)
        b = ids.shape[0]
        dev = pixel_values.device
        vlm = self.vlm
        dtype = vlm.language_projection.weight.dtype
        feats = vlm.get_image_features(pixel_values=pixel_values.to(dtype), return_dict=True).pooler_output
        feats = feats.reshape(b, -1, feats.shape[-1])  # [B, C*Q, d]
        text = vlm.get_input_embeddings()(ids)
        embeds = torch.cat([feats.to(text.dtype), text], dim=1)
        attn = torch.cat([torch.ones(feats.shape[:2], dtype=mask.dtype, device=dev), mask], dim=1)
        lm = vlm.language_model
        base = getattr(lm, "model", None) or lm.base_model
        out = base(inputs_embeds=embeds, attention_mask=attn, return_dict=True)
        return out.last_hidden_state

    def forward(self, images, instructions, state=None) -> torch.Tensor:
        latents = self.encode(images, instructions)
        return self.head(latents, self._state_tensor(state, latents.shape[0]))

    @torch.no_grad()
    def act(self, images, instructions, state=None) -> np.ndarray:
        a = self.forward(images, instructions, state)
        if not torch.isfinite(a).all():
            raise RuntimeError("the policy produced a non-finite action")
        return a.float().clamp(-1.0, 1.0).cpu().numpy()

    @torch.no_grad()
    def act_from_latents(self, latents, state=None) -> np.ndarray:
        lat = torch.as_tensor(latents).to(self.pixel_mean.device)
        if lat.ndim == 2:
            lat = lat[None]
        a = self.head(lat, self._state_tensor(state, lat.shape[0]))
        return a.float().clamp(-1.0, 1.0).cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: PathLike, extra_meta: Optional[dict] = None) -> Path:
        """Write the checkpoint directory atomically (write to a temp dir, then rename)."""
        from safetensors.torch import save_file
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
        try:
            (tmp / "vla_config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()},
                      str(tmp / "head.safetensors"))
            if self.peft_model is not None:
                self.peft_model.save_pretrained(str(tmp / "adapter"))
            backbone_dir = Path(self.backbone_source)
            if self.cfg.backbone_training == "full" or self.cfg.backbone.pretrained_dir is None:
                base = self.peft_model.get_base_model() if self.peft_model is not None else self.vlm
                if self.peft_model is not None:  # save the base weights without the LoRA layers
                    if (backbone_dir / "config.json").is_file():
                        shutil.copytree(backbone_dir, tmp / "backbone")
                else:
                    base.save_pretrained(str(tmp / "backbone"))
                    self.tokenizer.save_pretrained(str(tmp / "backbone"))
                    pp = backbone_dir / "preprocessor_config.json"
                    if pp.is_file():
                        shutil.copy(pp, tmp / "backbone" / "preprocessor_config.json")
            meta = {"vlm_id": self.vlm_id(), "head_id": _tensor_hash(self.head.state_dict().values()),
                    "backbone_source": str(backbone_dir), "latent_dim": self.latent_dim,
                    "num_latent_tokens": self.num_latent_tokens, **(extra_meta or {})}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if directory.exists():
                old = directory.with_name(directory.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.rename(directory, old)
                os.rename(tmp, directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def load_head(self, path: PathLike) -> None:
        """Swap in an action head (e.g. the RL-trained one) from head.safetensors or a checkpoint directory."""
        from safetensors.torch import load_file
        path = Path(path)
        if path.is_dir():
            path = path / "head.safetensors"
        state = load_file(str(path))
        self.head.load_state_dict(state)


def tiny_backbone_dir(cfg: VLAConfig, root: Optional[PathLike] = None, seed: int = 0) -> Path:
    """Directory of the tiny random backbone for `cfg` (written once, keyed by its settings and seed)."""
    # TINY_INIT_VERSION: bumped when write_tiny_blip2's initialization changes, so stale cached weights are unused.
    key = hashlib.blake2b(json.dumps([cfg.backbone.tiny.__dict__, seed, TINY_INIT_VERSION], sort_keys=True).encode(),
                          digest_size=6).hexdigest()
    root = Path(root or os.environ.get("IREVLA_CACHE", Path.home() / ".cache" / "irevla"))
    d = root / f"tiny-blip2-{key}"
    if not (d / "config.json").is_file():
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=d.name + ".", dir=d.parent))
        write_tiny_blip2(tmp, cfg.backbone.tiny, seed=seed)
        try:
            os.rename(tmp, d)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return d


def towers_backbone_dir(cfg: VLAConfig, root: Optional[PathLike] = None, seed: int = 0) -> Path:
    """Directory of a fresh towers backbone for `cfg`: pretrained towers (from their packages, not copied) and a
    seeded random fusion, written once and keyed by its settings, cameras, seed and the tower versions."""
    from policy.towers import tower_id, write_towers_backbone
    key = hashlib.blake2b(json.dumps([cfg.backbone.towers.__dict__, len(cfg.cameras), seed, tower_id()],
                                     sort_keys=True).encode(), digest_size=6).hexdigest()
    root = Path(root or os.environ.get("IREVLA_CACHE", Path.home() / ".cache" / "irevla"))
    d = root / f"towers-{key}"
    if not (d / "config.json").is_file():
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=d.name + ".", dir=d.parent))
        write_towers_backbone(tmp, cfg.backbone.towers, len(cfg.cameras), seed=seed)
        try:
            os.rename(tmp, d)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return d


def build_vla(cfg: VLAConfig, seed: int = 0, cache_root: Optional[PathLike] = None) -> VLA:
    """A fresh VLA: the configured pretrained backbone, the towers one, or the tiny one; new head (seeded)."""
    if cfg.backbone.kind == "towers":
        directory = towers_backbone_dir(cfg, cache_root, seed)
    else:
        directory = cfg.backbone.pretrained_dir or tiny_backbone_dir(cfg, cache_root, seed)
    backbone = load_backbone(cfg.backbone, directory)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VLA(cfg, backbone)


def load_vla(directory: PathLike, trainable: bool = False, backbone_training: Optional[str] = None,
             device: Union[str, torch.device] = "cpu", dtype: Optional[str] = None) -> VLA:
    """Load a checkpoint written by VLA.save. `backbone_training` overrides the saved mode (e.g. a stage-0 "full"
    tiny checkpoint continues in stage 2 as "lora"); `dtype` the backbone's saved dtype (e.g. bfloat16 on a GPU)."""
    from safetensors.torch import load_file
    directory = Path(directory)
    if not (directory / "vla_config.yaml").is_file():
        raise FileNotFoundError(f"{directory}: not a VLA checkpoint (no vla_config.yaml)")
    cfg = VLAConfig.from_yaml(directory / "vla_config.yaml")
    saved_mode = cfg.backbone_training
    if dtype:
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        cfg.backbone.dtype = dtype
    if backbone_training is not None:
        cfg.backbone_training = backbone_training
    bdir = directory / "backbone" if (directory / "backbone" / "config.json").is_file() else cfg.backbone.pretrained_dir
    if bdir is None:
        raise FileNotFoundError(f"{directory}: no backbone/ and no backbone.pretrained_dir in the config")
    backbone = load_backbone(cfg.backbone, bdir)
    adapter = directory / "adapter"
    use_adapter = cfg.backbone_training == "lora" and saved_mode == "lora" and (adapter / "adapter_config.json").is_file()
    if saved_mode == "lora" and cfg.backbone_training != "lora" and (adapter / "adapter_config.json").is_file():
        # Fold the trained adapter into the weights so nothing learned is lost when the mode changes.
        from peft import PeftModel
        backbone.model = PeftModel.from_pretrained(backbone.model, str(adapter)).merge_and_unload()
    vla = VLA(cfg, backbone, adapter_dir=adapter if use_adapter else None, adapter_trainable=trainable)
    vla.head.load_state_dict(load_file(str(directory / "head.safetensors")))
    vla.to(device)
    if not trainable:
        vla.eval()
        for p in vla.parameters():
            p.requires_grad_(False)
    return vla
