"""Flax networks of the SACfD agent: the action head's architecture (policy/heads.py) on cached VLM latents.

    ActionHeadNet      mirror of the torch ActionHead, parameter for parameter (rl_agent/bridge.py converts):
                       TokenLearner -> flatten -> (+ normalized state) -> MLP (Dense, LayerNorm, GELU)* -> Dense,
                       output de-normalized with the head's fixed buffers (collection "buffers", never trained).
    TanhGaussianActor  ActionHeadNet gives the mean, a zero-initialised Dense on the last hidden layer gives the
                       log-std; the pre-tanh mean is atanh(clip(head action)) so tanh(mean) is the head's action.
    CriticEnsemble     the head's architecture with a scalar output and the action as an extra input: one token
                       learner (the critic's own; shared by the ensemble members, as SERL shares the critic encoder)
                       and `ensemble_size` vmapped MLPs.
    ConvTokenizer      small conv encoder (pixels -> tokens) for the benchmark's re-encoding baseline only.

Numerics follow torch's defaults so the bridge is exact: LayerNorm eps 1e-5 with the two-pass variance, exact (erf)
GELU, softmax of the token learner over the N latent positions.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

TORCH_LN_EPS = 1e-5


def gelu(x):
    return nn.gelu(x, approximate=False)  # torch.nn.GELU() default is the exact erf form


def layer_norm(name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=TORCH_LN_EPS, use_fast_variance=False, name=name)


class TokenLearner(nn.Module):
    """[B, N, d] -> [B, S, d]: LayerNorm, MLP d -> hidden -> S, softmax over N, weighted sum (RT-1)."""
    num_tokens: int
    hidden: int

    @nn.compact
    def __call__(self, x):
        h = layer_norm("norm")(x)
        w = nn.Dense(self.num_tokens, name="fc2")(gelu(nn.Dense(self.hidden, name="fc1")(h)))  # [B, N, S]
        w = jax.nn.softmax(w, axis=1)
        return jnp.einsum("bns,bnd->bsd", w, h)


class MLPTrunk(nn.Module):
    """(Dense -> LayerNorm -> GELU) per hidden layer; the torch MLP's `body`."""
    hidden_dims: Sequence[int]
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.hidden_dims):
            x = nn.Dense(width, name=f"hidden_{i}")(x)
            if self.layer_norm:
                x = layer_norm(f"norm_{i}")(x)
            x = gelu(x)
        return x


class ActionHeadNet(nn.Module):
    """latents [B, N, d] (+ state [B, state_dim]) -> (action [B, A] in contract units, last hidden [B, H]).

    pooled_input=True: `latents` already are the token learner's output [B, S, d] (the token learner lives
    outside, frozen)."""
    action_dim: int
    state_dim: int
    learned_tokens: int
    token_learner_hidden: int
    hidden_dims: Sequence[int]
    use_state: bool = True
    layer_norm: bool = True
    pooled_input: bool = False

    @nn.compact
    def __call__(self, latents, state=None):
        action_mean = self.variable("buffers", "action_mean", lambda: jnp.zeros(self.action_dim, jnp.float32))
        action_std = self.variable("buffers", "action_std", lambda: jnp.ones(self.action_dim, jnp.float32))
        state_mean = self.variable("buffers", "state_mean", lambda: jnp.zeros(self.state_dim, jnp.float32))
        state_std = self.variable("buffers", "state_std", lambda: jnp.ones(self.state_dim, jnp.float32))
        latents = latents.astype(jnp.float32)
        tokens = latents if self.pooled_input else TokenLearner(self.learned_tokens, self.token_learner_hidden,
                                                                name="token_learner")(latents)
        x = tokens.reshape(tokens.shape[0], -1)
        if self.use_state:
            x = jnp.concatenate([x, (state.astype(jnp.float32) - state_mean.value) / state_std.value], axis=-1)
        hidden = MLPTrunk(tuple(self.hidden_dims), self.layer_norm, name="mlp")(x)
        # Small initial outputs (a fresh actor starts near the middle of the action range, not saturated); an
        # actor started from the SFT head gets the head's weights instead.
        out = nn.Dense(self.action_dim, kernel_init=nn.initializers.variance_scaling(0.01, "fan_in", "normal"),
                       name="out")(hidden)
        return out * action_std.value + action_mean.value, hidden


def clip_straight_through(x, bound: float):
    """clip(x, -bound, bound) forward, identity gradient backward."""
    return x + jax.lax.stop_gradient(jnp.clip(x, -bound, bound) - x)


class TanhGaussianActor(nn.Module):
    """(latents, state) -> (pre-tanh mean [B, A], log_std [B, A]); action = tanh(mean + std * noise)."""
    action_dim: int
    state_dim: int
    learned_tokens: int
    token_learner_hidden: int
    hidden_dims: Sequence[int]
    use_state: bool = True
    layer_norm: bool = True
    pooled_input: bool = False
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    init_log_std: float = -1.0
    mean_clip: float = 0.999
    encoder: Optional[nn.Module] = None  # pixels -> tokens (benchmark baseline); None: latents in

    @nn.compact
    def __call__(self, latents, state=None):
        if self.encoder is not None:
            latents = self.encoder(latents)
        head_action, hidden = ActionHeadNet(self.action_dim, self.state_dim, self.learned_tokens,
                                            self.token_learner_hidden, tuple(self.hidden_dims), self.use_state,
                                            self.layer_norm, self.pooled_input, name="head")(latents, state)
        # atanh of the (straight-through) clipped head action: tanh(mean) == head action for |a| < mean_clip.
        mean = jnp.arctanh(clip_straight_through(head_action, self.mean_clip))
        span = self.log_std_max - self.log_std_min
        raw_init = float(np.arctanh(2.0 * (self.init_log_std - self.log_std_min) / span - 1.0))
        raw = nn.Dense(self.action_dim, kernel_init=nn.initializers.zeros,
                       bias_init=nn.initializers.constant(raw_init), name="log_std")(hidden)
        log_std = self.log_std_min + 0.5 * span * (jnp.tanh(raw) + 1.0)
        return mean, log_std


class CriticMember(nn.Module):
    hidden_dims: Sequence[int]
    layer_norm: bool = True

    @nn.compact
    def __call__(self, x):
        return nn.Dense(1, name="out")(MLPTrunk(tuple(self.hidden_dims), self.layer_norm, name="mlp")(x))[..., 0]


class CriticEnsemble(nn.Module):
    """(latents, normalized state, action) -> Q [ensemble_size, B]."""
    ensemble_size: int
    learned_tokens: int
    token_learner_hidden: int
    hidden_dims: Sequence[int]
    use_state: bool = True
    layer_norm: bool = True
    pooled_input: bool = False
    encoder: Optional[nn.Module] = None

    @nn.compact
    def __call__(self, latents, state_normalized, actions):
        if self.encoder is not None:
            latents = self.encoder(latents)
        latents = latents.astype(jnp.float32)
        tokens = latents if self.pooled_input else TokenLearner(self.learned_tokens, self.token_learner_hidden,
                                                                name="token_learner")(latents)
        parts = [tokens.reshape(tokens.shape[0], -1)]
        if self.use_state:
            parts.append(state_normalized.astype(jnp.float32))
        parts.append(actions.astype(jnp.float32))
        x = jnp.concatenate(parts, axis=-1)
        ensemble = nn.vmap(CriticMember, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=None, out_axes=0, axis_size=self.ensemble_size)
        return ensemble(tuple(self.hidden_dims), self.layer_norm, name="ensemble")(x)


class ConvTokenizer(nn.Module):
    """uint8 pixels [B, cams, H, W, 3] -> tokens [B, cams * h * w, token_dim] (a DrQ/SERL-sized conv stack).
    trainable=False stops gradients at its output (SERL's frozen pretrained encoder: re-encoding is forward only)."""
    features: Sequence[int] = (32, 32, 32, 32)
    strides: Sequence[int] = (2, 2, 2, 2)
    token_dim: int = 64
    trainable: bool = True

    @nn.compact
    def __call__(self, pixels):
        b, cams = pixels.shape[:2]
        x = pixels.reshape(b * cams, *pixels.shape[2:]).astype(jnp.float32) / 255.0
        for i, (f, s) in enumerate(zip(self.features, self.strides)):
            x = nn.relu(nn.Conv(f, (3, 3), strides=(s, s), name=f"conv_{i}")(x))
        x = nn.Dense(self.token_dim, name="proj")(x)  # [B*cams, h, w, token_dim]
        x = x.reshape(b, -1, self.token_dim)
        return x if self.trainable else jax.lax.stop_gradient(x)


def tanh_gaussian_sample(mean, log_std, key):
    """Reparameterised sample of tanh(N(mean, std)) and its log-probability (tanh change of variables)."""
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    pre = mean + jnp.exp(log_std) * noise
    log_prob = jnp.sum(-0.5 * noise ** 2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)
    # log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)), stable for large |u|
    log_prob -= jnp.sum(2.0 * (jnp.log(2.0) - pre - jax.nn.softplus(-2.0 * pre)), axis=-1)
    return jnp.tanh(pre), log_prob
