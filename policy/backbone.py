"""The VLM backbone: BLIP-2 through transformers, always loaded with `from_pretrained` from a local directory.

`load_backbone(cfg)` returns a `Backbone`: the Blip2ForConditionalGeneration, its tokenizer and the image
normalization. With `pretrained_dir` it loads the user's checkpoint (e.g. Salesforce/blip2-opt-2.7b, downloaded
beforehand; nothing is fetched here). Without it, `write_tiny_blip2(dir, tiny)` first writes a tiny random
BLIP-2-shaped checkpoint with a byte-level tokenizer, so the tiny configuration goes through the same loading code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch

from policy.config import BackboneConfig, TinyBlip2Config

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TOKEN = "<image>"
TINY_INIT_VERSION = 2  # part of the tiny backbone's cache key: bump when write_tiny_blip2's weights change
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneError(RuntimeError):
    """The backbone directory is missing, incomplete or not a BLIP-2 checkpoint."""


@dataclass
class Backbone:
    model: torch.nn.Module  # Blip2ForConditionalGeneration
    tokenizer: object  # a transformers tokenizer (fast)
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_query_tokens: int
    hidden_size: int  # the language model's hidden size = latent width
    source: str  # directory it was loaded from


def byte_tokenizer():
    """A byte-level tokenizer (any text, no vocabulary file to download) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", IMAGE_TOKEN]
    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="</s>", eos_token="</s>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN})


def tiny_blip2_config(tiny: TinyBlip2Config, vocab_size: int, image_token_id: int, pad_id: int, bos_id: int):
    from transformers import Blip2Config
    h = tiny.hidden
    return Blip2Config(
        vision_config=dict(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=tiny.vision_layers,
                           num_attention_heads=tiny.heads, image_size=tiny.image_size, patch_size=tiny.patch_size,
                           initializer_range=tiny.init_range, attention_dropout=tiny.dropout),
        qformer_config=dict(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=tiny.qformer_layers,
                            num_attention_heads=tiny.heads, encoder_hidden_size=h, cross_attention_frequency=1,
                            vocab_size=vocab_size, max_position_embeddings=tiny.max_positions,
                            initializer_range=tiny.init_range, hidden_dropout_prob=tiny.dropout,
                            attention_probs_dropout_prob=tiny.dropout),
        text_config=dict(model_type="opt", hidden_size=h, ffn_dim=4 * h, num_hidden_layers=tiny.text_layers,
                         num_attention_heads=tiny.heads, vocab_size=vocab_size, word_embed_proj_dim=h,
                         max_position_embeddings=tiny.max_positions, pad_token_id=pad_id, bos_token_id=bos_id,
                         eos_token_id=bos_id, init_std=tiny.init_range, dropout=tiny.dropout,
                         attention_dropout=tiny.dropout, activation_dropout=tiny.dropout),
        num_query_tokens=tiny.num_query_tokens, image_token_index=image_token_id,
        initializer_range=tiny.init_range)


def write_tiny_blip2(directory: Union[str, Path], tiny: TinyBlip2Config, seed: int = 0) -> Path:
    """Write a random tiny BLIP-2 checkpoint (weights, config, tokenizer, image processor settings) to `directory`."""
    from transformers import Blip2ForConditionalGeneration
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = byte_tokenizer()
    cfg = tiny_blip2_config(tiny, len(tok), tok.convert_tokens_to_ids(IMAGE_TOKEN), tok.pad_token_id,
                            tok.bos_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(cfg)
        # transformers zero-initializes the query tokens (they come trained in a real checkpoint). From scratch,
        # identical queries read identical outputs and the Q-Former's LayerNorm of a zero vector has gradients of
        # ~1/sqrt(eps) = 1e6: initialize them like BLIP-2's original code, N(0, initializer_range).
        with torch.no_grad():
            torch.nn.init.trunc_normal_(model.query_tokens, std=tiny.init_range)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BlipImageProcessor", "size": {"height": tiny.image_size, "width": tiny.image_size},
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_normalize": True, "do_resize": True}))
    return directory


def _image_settings(directory: Path, vision_image_size: int):
    p = directory / "preprocessor_config.json"
    mean, std, size = CLIP_MEAN, CLIP_STD, vision_image_size
    if p.is_file():
        d = json.loads(p.read_text())
        mean = tuple(d.get("image_mean", mean))
        std = tuple(d.get("image_std", std))
        s = d.get("size", {})
        size = int(s.get("height", size)) if isinstance(s, dict) else int(s)
    return size, mean, std


def enable_activation_checkpointing(model) -> None:
    """Recompute layer activations in the backward pass (gradient checkpointing). Non-reentrant: gradients
    also reach LoRA weights whose layer inputs come from frozen embeddings."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_towers_backbone(cfg: BackboneConfig, directory: Union[str, Path]) -> Backbone:
    """The towers backbone (policy/towers.py): its trained fusion from `directory`, the towers from their packages."""
    from transformers import PreTrainedTokenizerFast
    from policy.towers import TowerError, TowersVLM
    directory = Path(directory)
    try:
        model = TowersVLM.from_pretrained(directory, dtype=_DTYPES[cfg.dtype])
        tokenizer = PreTrainedTokenizerFast.from_pretrained(directory, local_files_only=True)
    except TowerError:
        raise
    except Exception as exc:
        raise BackboneError(f"{directory}: cannot load a towers backbone ({type(exc).__name__}: {exc})") from exc
    size, mean, std = _image_settings(directory, model.config.image_size)
    return Backbone(model=model, tokenizer=tokenizer, image_size=size, mean=mean, std=std,
                    num_query_tokens=model.config.num_query_tokens, hidden_size=model.config.hidden,
                    source=str(directory))


def load_backbone(cfg: BackboneConfig, directory: Union[str, Path, None] = None) -> Backbone:
    """Load BLIP-2 from `directory` (default cfg.pretrained_dir) with from_pretrained; no network access.
    A towers directory (config.json model_type irevla_towers) loads through load_towers_backbone."""
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a robot service's log
    directory = Path(directory or cfg.pretrained_dir or "")
    if not (directory / "config.json").is_file():
        raise BackboneError(f"{directory}: no config.json; point backbone.pretrained_dir at a local BLIP-2 "
                            "checkpoint directory (e.g. a downloaded Salesforce/blip2-opt-2.7b)")
    from policy.towers import is_towers_dir
    if cfg.kind == "towers" or is_towers_dir(directory):
        return load_towers_backbone(cfg, directory)
    try:
        model = Blip2ForConditionalGeneration.from_pretrained(directory, dtype=_DTYPES[cfg.dtype],
                                                              local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:
        raise BackboneError(f"{directory}: cannot load a BLIP-2 checkpoint ({type(exc).__name__}: {exc})") from exc
    mcfg = model.config
    image_token_id = getattr(mcfg, "image_token_id", None) or getattr(mcfg, "image_token_index", None)
    if image_token_id is None:
        raise BackboneError(f"{directory}: config has no image_token_index; use a transformers>=4.47 checkpoint")
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    size, mean, std = _image_settings(directory, mcfg.vision_config.image_size)
    return Backbone(model=model, tokenizer=tokenizer, image_size=size, mean=mean, std=std,
                    num_query_tokens=mcfg.num_query_tokens, hidden_size=mcfg.text_config.hidden_size,
                    source=str(directory))
