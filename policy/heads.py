"""Token learner + MLP action head (torch). The RL agent mirrors this architecture in Flax (rl_agent/bridge.py).

TokenLearner (RT-1 style): LayerNorm, MLP d -> hidden -> S, softmax over the N latent positions, weighted sum:
[B, N, d] -> [B, S, d]. The head flattens the S tokens, optionally appends the proprioceptive state, and an MLP
(Linear -> LayerNorm -> GELU per hidden layer) maps to the action in normalized units; fixed buffers
(dataset mean/std) turn it into the 7-D contract action.
"""
from __future__ import annotations

import torch
from torch import nn

from policy.config import POLICY_STATE_DIM, HeadConfig


class TokenLearner(nn.Module):
    def __init__(self, dim: int, num_tokens: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, d] -> [B, S, d]
        h = self.norm(x)
        w = self.fc2(nn.functional.gelu(self.fc1(h)))  # [B, N, S]
        w = torch.softmax(w, dim=1)
        return torch.einsum("bns,bnd->bsd", w, h)


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden_dims: list[int], out_dim: int, layer_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden_dims:
            layers.append(nn.Linear(d, h))
            if layer_norm:
                layers.append(nn.LayerNorm(h))
            layers.append(nn.GELU())
            d = h
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(d, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class ActionHead(nn.Module):
    """latents [B, N, d] (+ state [B, POLICY_STATE_DIM]) -> action [B, action_dim] in contract units."""

    def __init__(self, latent_dim: int, cfg: HeadConfig, out_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.latent_dim = latent_dim
        out_dim = out_dim or cfg.action_dim
        self.token_learner = TokenLearner(latent_dim, cfg.learned_tokens, cfg.token_learner_hidden)
        in_dim = cfg.learned_tokens * latent_dim + (POLICY_STATE_DIM if cfg.use_state else 0)
        self.mlp = MLP(in_dim, list(cfg.hidden_dims), out_dim, cfg.layer_norm)
        # Normalization of actions (and state) from the dataset statistics; identity until set.
        self.register_buffer("action_mean", torch.zeros(out_dim))
        self.register_buffer("action_std", torch.ones(out_dim))
        self.register_buffer("state_mean", torch.zeros(POLICY_STATE_DIM))
        self.register_buffer("state_std", torch.ones(POLICY_STATE_DIM))

    def set_normalization(self, action_mean, action_std, state_mean=None, state_std=None, min_std: float = 1e-3):
        with torch.no_grad():
            self.action_mean.copy_(torch.as_tensor(action_mean, dtype=torch.float32))
            self.action_std.copy_(torch.as_tensor(action_std, dtype=torch.float32).clamp_min(min_std))
            if state_mean is not None:
                self.state_mean.copy_(torch.as_tensor(state_mean, dtype=torch.float32))
                self.state_std.copy_(torch.as_tensor(state_std, dtype=torch.float32).clamp_min(min_std))

    def features(self, latents: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        x = self.token_learner(latents.to(self.action_mean.dtype)).flatten(1)
        if self.cfg.use_state:
            if state is None:
                raise ValueError("this head was configured with use_state=True: pass the robot state")
            x = torch.cat([x, (state.to(x.dtype) - self.state_mean) / self.state_std], dim=-1)
        return x

    def forward_normalized(self, latents: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.features(latents, state))

    def forward(self, latents: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_normalized(latents, state) * self.action_std + self.action_mean

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_mean) / self.action_std
