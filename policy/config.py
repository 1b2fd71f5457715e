"""Typed configuration of the VLA: backbone, LoRA, token learner + action head (loadable from YAML).

The backbone is a switch: `kind: blip2` with `pretrained_dir` pointing at a local Hugging Face directory (e.g. a
downloaded Salesforce/blip2-opt-2.7b) is the production path; `pretrained_dir: null` builds the tiny BLIP-2-shaped
configuration below in code (tests, CPU, the embedded default model). Both go through `from_pretrained`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

# The policy's proprioceptive input is defined with the control contract (also the tail of every recorded state).
from robot_server.contract import POLICY_STATE_DIM, POLICY_STATE_NAMES  # noqa: F401
from teleop.config import from_dict, load_yaml, to_dict  # noqa: F401  (re-exported for policy users)


def check_device(spec: str) -> str:
    """A device setting: auto | cpu | cuda | cuda:N (ValueError otherwise)."""
    if spec not in ("auto", "cpu", "cuda") and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return spec


def resolve_device(spec: str) -> str:
    """The torch device a device setting means here: auto -> cuda when torch sees a GPU, else cpu; an explicit cuda
    without a GPU is an error (not a silent 15 GB load on CPU)."""
    import torch
    check_device(spec)
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: torch {torch.__version__} sees no CUDA device (use auto or cpu)")
    return spec


def checkpoint_device(checkpoint: Union[str, Path]) -> str:
    """The resolved device of a VLA checkpoint (its vla_config.yaml `device`; "cpu" for checkpoints without one)."""
    return resolve_device(VLAConfig.from_yaml(Path(checkpoint) / "vla_config.yaml").device)


@dataclass
class TinyBlip2Config:
    """A BLIP-2-shaped model small enough for CPU: ViT -> Q-Former -> OPT, all hidden sizes `hidden`."""
    image_size: int = 96
    patch_size: int = 16
    hidden: int = 128
    vision_layers: int = 2
    qformer_layers: int = 2
    text_layers: int = 2
    heads: int = 4
    num_query_tokens: int = 8
    max_positions: int = 128
    init_range: float = 0.02
    # 0: training is a deterministic function of the data order (DDP/resume equivalence; tiny data anyway).
    dropout: float = 0.0


@dataclass
class TowersSettings:
    """The `towers` backbone (policy/towers.py): frozen pretrained EfficientNet-Lite0 + all-MiniLM-L6-v2, fused by a
    trained Q-Former (learned queries per camera) and a small fusion LM of width `hidden`."""
    image_size: int = 128  # a multiple of 16: the vision grid is (image_size / 16)^2 cells
    hidden: int = 128
    num_query_tokens: int = 8
    qformer_layers: int = 2
    lm_layers: int = 2
    heads: int = 4
    dropout: float = 0.0
    # The instruction's MiniLM word-piece states join the sentence vector as context of the Q-Former and the LM
    # (keys only: the latents keep cameras * queries + 1 tokens). The sentence vector alone is dominated by the
    # phrasing ("pick up the red block" is nearer "pick up the green block", cosine 0.78, than "grasp the red
    # cube", 0.54); the word "red" itself is not.
    word_tokens: bool = False
    # FiLM of the vision grid by the instruction before the Q-Former reads it (RT-1's conditioning, on the frozen
    # tower's output): without it the model told tasks apart but not which object (red vs green block) to pick.
    film: bool = False
    # Spatial-softmax keypoints per camera (0: none): K expected grid positions of the modulated grid, one latent
    # token per camera (latents: cameras * (queries + 1) + 1 tokens).
    keypoints: int = 0
    # A linear readout of the instructed object's position (x, y, z) from the flattened latents, trained with an
    # auxiliary loss where the data carries privileged labels (twin episodes: `irevla dataset label-objects`). It
    # makes the latents keep where the named object is, which the action loss alone did not (issue 11's probe).
    object_readout: bool = False

    def __post_init__(self):
        if self.image_size % 16 or self.image_size < 32:
            raise ValueError(f"backbone.towers.image_size must be a multiple of 16 and >= 32, got {self.image_size}")
        if self.hidden % self.heads:
            raise ValueError(f"backbone.towers.hidden ({self.hidden}) must be divisible by heads ({self.heads})")


BACKBONE_KINDS = ("blip2", "towers")
# LoRA's default targets per backbone kind: the language model's attention query/value projections (as in the paper).
DEFAULT_LORA_TARGETS = {"blip2": r".*language_model.*\.(q_proj|v_proj)",
                        "towers": r".*language_model.*\.(query|value)"}


@dataclass
class BackboneConfig:
    # blip2: BLIP-2 from `pretrained_dir` (or the tiny random one built in code); towers: pretrained towers from
    # their pinned packages + a trained fusion (the embedded default model).
    kind: str = "blip2"
    pretrained_dir: Optional[str] = None  # local HF directory; None -> TinyBlip2Config built in code
    tiny: TinyBlip2Config = field(default_factory=TinyBlip2Config)
    towers: TowersSettings = field(default_factory=TowersSettings)
    dtype: str = "float32"  # weights dtype at load: float32 | bfloat16 | float16
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.kind not in BACKBONE_KINDS:
            raise ValueError(f"backbone.kind must be one of {list(BACKBONE_KINDS)}, got {self.kind!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"backbone.dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # Regex over module names; None: DEFAULT_LORA_TARGETS of the backbone kind (the LM's attention q/v).
    target_modules: Optional[str] = None


@dataclass
class HeadConfig:
    learned_tokens: int = 8  # token learner output S
    token_learner_hidden: int = 64
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    use_state: bool = True  # feed the proprioceptive state (POLICY_STATE_NAMES) to the MLP too
    layer_norm: bool = True
    action_dim: int = 7


@dataclass
class VLAConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    head: HeadConfig = field(default_factory=HeadConfig)
    cameras: list[str] = field(default_factory=lambda: ["front", "wrist"])
    max_text_tokens: int = 64  # instructions are padded to this; longer ones are rejected with a clear error
    # What trains in the supervised stages: "lora" (paper: LoRA on the LM + head), "full" (a tiny backbone from
    # scratch), "frozen" (head only: the iRe-VLA-freeze ablation).
    backbone_training: str = "lora"
    # Where the model runs when loaded from this config or a checkpoint of it (policy server, RL session; `irevla
    # train` when its train: section sets no device): auto (CUDA when available, else CPU) | cpu | cuda | cuda:N.
    # The weights' dtype is backbone.dtype. "cpu" by default: the shipped CPU models and their checkpoints.
    device: str = "cpu"

    def __post_init__(self):
        if self.backbone_training not in ("lora", "full", "frozen"):
            raise ValueError(f"backbone_training must be lora, full or frozen, got {self.backbone_training!r}")
        check_device(self.device)
        if not self.cameras:
            raise ValueError("cameras: at least one camera is needed")

    @classmethod
    def from_yaml(cls, path: Union[str, Path], section: Optional[str] = None) -> "VLAConfig":
        return load_yaml(cls, path, section)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "VLAConfig":
        return from_dict(cls, data)
