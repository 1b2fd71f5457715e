"""Typed configuration of the SACfD agent (stage 1 of iRe-VLA), loadable from YAML.

Defaults are SERL's / RLPD's choices for real-robot SAC (critic ensemble of 10 with the minimum over a random 2,
4 critic updates per actor update, discount 0.97, batch 256, lr 3e-4, initial temperature 0.01, target entropy
-|A|/2, soft target updates) and the action head's architecture (policy/config.py HeadConfig: token learner with 8
learned tokens and a 64-unit MLP, [256, 256] LayerNorm MLP, proprioceptive state as input).

    cfg = SACConfig.from_yaml("rl.yaml", section="sac")
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from teleop.config import from_dict, load_yaml, to_dict

LATENT_INPUTS = ("tokens", "pooled")


@dataclass
class SACConfig:
    discount: float = 0.97
    # Transitions per critic step. update() splits the batch it gets into `critic_actor_ratio` equal minibatches
    # (SERL's high-UTD update), so sample `update_batch_size` = batch_size * critic_actor_ratio rows per update.
    batch_size: int = 256
    critic_ensemble_size: int = 10
    critic_subsample_size: int = 2  # target = min over a random subset of this many ensemble members (RLPD)
    critic_actor_ratio: int = 4
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    init_temperature: float = 0.01
    target_entropy: Optional[float] = None  # None -> -action_dim / 2
    tau: float = 0.005  # soft target update rate, applied after every critic step
    backup_entropy: bool = False  # SERL's default: no entropy term in the critic target
    # Behaviour cloning on the batch's demo rows in the actor loss (SACfD with a BC term, Nair et al. 2018):
    # bc_weight * squared error of the sampled action to the demo action. 0: SERL's plain SAC. It keeps an actor
    # started from the SFT head near what works while the critic is still untrained (README: a pick fell from
    # 0.60 to 0.20 deterministic success in 7 min without it).
    bc_weight: float = 0.0
    # The same on every row toward the starting actor (the SFT head's action at that state): a prior the policy may
    # leave only where the critic says it pays (KL-style regularisation toward the pretrained policy). 0: off.
    prior_weight: float = 0.0
    # Actor standard deviation (pre-tanh): state-dependent, squashed smoothly into [log_std_min, log_std_max];
    # the log-std layer starts with a zero kernel, so at init every state gets exp(init_log_std).
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    init_log_std: float = -1.0
    # The SFT head's output a (contract units) becomes the pre-tanh mean atanh(clip(a, -mean_clip, mean_clip)),
    # so the deterministic RL action tanh(mean) equals the head's action wherever |a| < mean_clip. The clip is
    # straight-through in the backward pass (d tanh(atanh(a))/da = 1), so saturated dimensions still learn.
    mean_clip: float = 0.999
    # Architecture (defaults: the action head's; an actor initialised from a head must match it).
    hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    learned_tokens: int = 8
    token_learner_hidden: int = 64
    use_state: bool = True
    layer_norm: bool = True
    # "tokens": observations carry the VLM latents [N, d]; actor and critic each run their own trainable token
    #   learner (the critic's starts from the head's when the actor does).
    # "pooled": observations carry the SFT head's token-learner output [learned_tokens, d] (computed once per
    #   frame with SACAgent.prepare_observations); both token learners stay frozen at the head's and only the MLPs
    #   train. 16x smaller buffers at BLIP-2-OPT-2.7B size (see rl_agent/buffers.py, benchmarks/bench_learner.py).
    latent_input: str = "tokens"
    critic_token_learner_from_head: bool = True

    def __post_init__(self):
        if self.latent_input not in LATENT_INPUTS:
            raise ValueError(f"latent_input must be one of {LATENT_INPUTS}, got {self.latent_input!r}")
        if not 1 <= self.critic_subsample_size <= self.critic_ensemble_size:
            raise ValueError(f"critic_subsample_size must be in 1..critic_ensemble_size={self.critic_ensemble_size},"
                             f" got {self.critic_subsample_size}")
        for name in ("batch_size", "critic_actor_ratio", "learned_tokens", "token_learner_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {self.discount}")
        if not 0.0 < self.mean_clip < 1.0:
            raise ValueError(f"mean_clip must be in (0, 1), got {self.mean_clip}")
        if not self.log_std_min < self.init_log_std < self.log_std_max:
            raise ValueError("need log_std_min < init_log_std < log_std_max")
        if self.bc_weight < 0 or self.prior_weight < 0:
            raise ValueError(f"bc_weight and prior_weight must be >= 0, got {self.bc_weight}, {self.prior_weight}")
        if self.init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {self.init_temperature}")

    # The agent keeps its config as a static (hashed) part of its pytree: hash by value. Do not mutate a config
    # after an agent was created from it.
    def __hash__(self):
        return hash(json.dumps(to_dict(self), sort_keys=True))

    @property
    def update_batch_size(self) -> int:
        """Rows to sample per SACAgent.update call (one batch_size minibatch per critic step)."""
        return self.batch_size * self.critic_actor_ratio

    def resolved_target_entropy(self, action_dim: int) -> float:
        return -action_dim / 2.0 if self.target_entropy is None else float(self.target_entropy)

    @classmethod
    def from_yaml(cls, path: Union[str, Path], section: Optional[str] = None) -> "SACConfig":
        return load_yaml(cls, path, section)

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "SACConfig":
        return from_dict(cls, data)

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_head_config(cls, head_cfg, **overrides) -> "SACConfig":
        """A config whose actor architecture matches a policy.config.HeadConfig (needed to start from that head)."""
        arch = dict(hidden_dims=list(head_cfg.hidden_dims), learned_tokens=head_cfg.learned_tokens,
                    token_learner_hidden=head_cfg.token_learner_hidden, use_state=head_cfg.use_state,
                    layer_norm=head_cfg.layer_norm)
        arch.update(overrides)
        return cls(**arch)
