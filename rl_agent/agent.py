"""SACfD agent in the latent space of the frozen VLM (stage 1 of iRe-VLA), SERL/RLPD style, JAX + Flax + optax.

    agent = SACAgent.create(0, latent_shape=(N, d), config=SACConfig.from_head_config(vla.cfg.head),
                            actor_head=bridge.head_to_flax(vla.head))
    batch = sample_mixed(demo, online, agent.config.update_batch_size, rng)
    agent, info = agent.update(batch)          # pure: the old agent is untouched
    actions = agent.sample_actions(obs, seed)  # exploration; agent.eval_actions(obs) is deterministic

The agent is an immutable flax.struct.PyTreeNode; `update` is one jitted pure function that runs
`critic_actor_ratio` critic steps (a lax.scan over that many equal minibatches of the batch, each followed by a soft
target update) and then one actor step and one temperature step on the last minibatch (SERL's high-UTD update).

Critic target: r + discount * mask * min over a random `critic_subsample_size` subset of the target ensemble of
Q(s', a'), a' ~ pi(s') (RLPD; `backup_entropy` adds SAC's entropy bonus). Actor loss: temperature * log pi - mean
ensemble Q. Temperature loss: temperature * (entropy - target_entropy), target -|A|/2 by default.

Initialisation from the SFT head: the actor's mean network *is* the head (ActionHeadNet, weights copied through
the bridge, normalization buffers included); the pre-tanh mean is atanh(clip(head action, +-mean_clip)), so the
deterministic action tanh(mean) equals the head's action wherever |a| < mean_clip (0.999) and is the clipped
action elsewhere, which is also what the VLA sends after its own clip to [-1, 1] (difference <= 1e-3). The clip is
straight-through in the backward pass. The gripper dimension is continuous here; the contract reads > 0 as close.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Optional, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training.train_state import TrainState

from rl_agent.agent_parts import (ARCH_FIELDS, _as_key, _check_head_meta, _checked_tree,  # noqa: F401
                                  _network_defs, _run_once, _temperature_apply, _token_learner_def, _train_state)
from rl_agent.config import SACConfig
from rl_agent.networks import tanh_gaussian_sample
from rl_agent.files import atomic_open

SAVE_FORMAT = "irevla-sac-agent-v1"


class SACAgent(struct.PyTreeNode):
    actor: TrainState
    critic: TrainState
    target_critic_params: Any
    temperature: TrainState
    actor_buffers: Any  # the actor's "buffers" collection: the head's normalization statistics (never trained)
    frozen_token_learner: Any  # latent_input == "pooled": the SFT head's token learner params; else None
    prior_actor_params: Any  # the actor as created (from the SFT head): the prior that config.prior_weight holds to
    rng: jax.Array
    target_entropy: jax.Array  # a leaf, not static: changing it (agent.replace) needs no recompilation
    config: SACConfig = struct.field(pytree_node=False)
    latent_shape: tuple = struct.field(pytree_node=False)  # the VLM's [N, d] (or pixel shape for the benchmark)
    state_dim: int = struct.field(pytree_node=False, default=8)
    action_dim: int = struct.field(pytree_node=False, default=7)
    observation_key: str = struct.field(pytree_node=False, default="latents")

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, rng, latent_shape: tuple, state_dim: int = 8, action_dim: int = 7,
               config: Optional[SACConfig] = None, actor_head: Optional[dict] = None,
               pixel_encoder: Optional[nn.Module] = None) -> "SACAgent":
        """A fresh agent. `actor_head` (rl_agent.bridge.head_to_flax output) starts the actor from the SFT head and,
        with config.critic_token_learner_from_head, the critic's token learner too. `pixel_encoder` (benchmark
        only): observations carry "pixels" of shape `latent_shape` = (cams, H, W, 3), encoded by a copy of this
        module inside the actor and inside the critic."""
        cfg = config or SACConfig()
        latent_shape = tuple(int(x) for x in latent_shape)
        pooled = cfg.latent_input == "pooled"
        if pixel_encoder is None and len(latent_shape) != 2:
            raise ValueError(f"latent_shape must be (tokens, dim), got {latent_shape}")
        if pixel_encoder is not None and pooled:
            raise ValueError("latent_input='pooled' needs VLM latents, not a pixel encoder")
        if actor_head is not None:
            _check_head_meta(actor_head.get("meta"), cfg, latent_shape, state_dim, action_dim)
        key = _as_key(rng)
        key, k_actor, k_critic, k_tl = jax.random.split(key, 4)
        net_shape = (cfg.learned_tokens, latent_shape[1]) if pooled else latent_shape
        actor_def, critic_def = _network_defs(cfg, action_dim, state_dim, pixel_encoder)
        example = jnp.zeros((1, *net_shape), jnp.uint8 if pixel_encoder is not None else jnp.float32)
        state0, action0 = jnp.zeros((1, state_dim)), jnp.zeros((1, action_dim))
        actor_vars = flax.core.unfreeze(_run_once(actor_def.init, k_actor, example, state0))
        critic_params = flax.core.unfreeze(_run_once(critic_def.init, k_critic, example, state0, action0)["params"])
        actor_params, buffers = actor_vars["params"], actor_vars["buffers"]
        frozen_tl = None
        if pooled:
            tl_def = _token_learner_def(cfg.learned_tokens, cfg.token_learner_hidden)
            frozen_tl = flax.core.unfreeze(_run_once(tl_def.init, k_tl, jnp.zeros((1, *latent_shape)))["params"])
        if actor_head is not None:
            head_params = dict(actor_head["params"])
            head_tl = head_params.pop("token_learner")
            if pooled:
                frozen_tl = _checked_tree(frozen_tl, head_tl, "actor_head token_learner")
            else:
                head_params["token_learner"] = head_tl
            actor_params["head"] = _checked_tree(actor_params["head"], head_params, "actor_head")
            buffers["head"] = _checked_tree(buffers["head"], actor_head["buffers"], "actor_head buffers")
            if not pooled and cfg.critic_token_learner_from_head and pixel_encoder is None:
                critic_params["token_learner"] = _checked_tree(critic_params["token_learner"], head_tl,
                                                               "critic token_learner")
        actor = _train_state(actor_def.apply, actor_params, cfg.actor_lr)
        critic = _train_state(critic_def.apply, critic_params, cfg.critic_lr)
        temperature = _train_state(_temperature_apply,
                                   {"log_temperature": jnp.asarray(np.log(cfg.init_temperature), jnp.float32)},
                                   cfg.temperature_lr)
        return cls(actor=actor, critic=critic, target_critic_params=critic_params, temperature=temperature,
                   actor_buffers=buffers, frozen_token_learner=frozen_tl, prior_actor_params=actor_params, rng=key,
                   target_entropy=jnp.asarray(cfg.resolved_target_entropy(action_dim), jnp.float32), config=cfg,
                   latent_shape=latent_shape, state_dim=state_dim, action_dim=action_dim,
                   observation_key="pixels" if pixel_encoder is not None else "latents")

    # ------------------------------------------------------------------ networks
    @property
    def stored_latent_shape(self) -> tuple:
        """Shape of one observation's latents as the networks (and the replay buffers) take them."""
        if self.config.latent_input == "pooled":
            return (self.config.learned_tokens, self.latent_shape[1])
        return self.latent_shape

    def _state(self, obs):
        s = obs.get("state")
        if s is None:
            return jnp.zeros((obs[self.observation_key].shape[0], self.state_dim), jnp.float32)
        return jnp.asarray(s, jnp.float32)

    def _normalized_state(self, obs):
        b = self.actor_buffers["head"]
        return (self._state(obs) - b["state_mean"]) / b["state_std"]

    def _policy(self, actor_params, obs):
        return self.actor.apply_fn({"params": actor_params, "buffers": self.actor_buffers},
                                   obs[self.observation_key], self._state(obs))

    def _q(self, critic_params, obs, actions):
        return self.critic.apply_fn({"params": critic_params}, obs[self.observation_key],
                                    self._normalized_state(obs), actions)

    # ------------------------------------------------------------------ learning
    def _critic_step(self, batch):
        cfg = self.config
        rng, k_next, k_subset = jax.random.split(self.rng, 3)
        obs, next_obs = batch["observations"], batch["next_observations"]
        next_mean, next_log_std = self._policy(self.actor.params, next_obs)
        next_actions, next_log_prob = tanh_gaussian_sample(next_mean, next_log_std, k_next)
        target_qs = self._q(self.target_critic_params, next_obs, next_actions)  # [E, B]
        subset = jax.random.choice(k_subset, cfg.critic_ensemble_size, (cfg.critic_subsample_size,), replace=False)
        next_q = target_qs[subset].min(axis=0)
        masks = batch["masks"].astype(jnp.float32)
        target = batch["rewards"].astype(jnp.float32) + cfg.discount * masks * next_q
        if cfg.backup_entropy:
            target = target - cfg.discount * masks * self.temperature.apply_fn(self.temperature.params) * next_log_prob
        target = jax.lax.stop_gradient(target)

        def loss_fn(params):
            qs = self._q(params, obs, batch["actions"])
            loss = jnp.mean((qs - target[None]) ** 2)
            return loss, {"critic_loss": loss, "q_mean": qs.mean(), "target_q_mean": target.mean()}

        grads, info = jax.grad(loss_fn, has_aux=True)(self.critic.params)
        critic = self.critic.apply_gradients(grads=grads)
        target_params = optax.incremental_update(critic.params, self.target_critic_params, cfg.tau)
        return self.replace(critic=critic, target_critic_params=target_params, rng=rng), info

    def _actor_step(self, batch):
        rng, key = jax.random.split(self.rng)
        obs = batch["observations"]
        temperature = self.temperature.apply_fn(self.temperature.params)

        def loss_fn(params):
            mean, log_std = self._policy(params, obs)
            actions, log_prob = tanh_gaussian_sample(mean, log_std, key)
            q = self._q(self.critic.params, obs, actions).mean(axis=0)
            loss = jnp.mean(temperature * log_prob - q)
            w = batch["is_demo"].astype(jnp.float32)
            # on the sampled action, so the term holds the spread too: the critic's early errors otherwise widen it
            err = jnp.sum((actions - batch["actions"].astype(jnp.float32)) ** 2, axis=-1)
            bc = jnp.sum(w * err) / jnp.maximum(jnp.sum(w), 1.0)
            # every row: the sampled action against the starting actor's deterministic action at that state
            prior_err = jnp.zeros(())
            if self.config.prior_weight > 0:  # static: no second actor pass for SERL's plain SAC
                prior = jnp.tanh(jax.lax.stop_gradient(self._policy(self.prior_actor_params, obs)[0]))
                prior_err = jnp.mean(jnp.sum((actions - prior) ** 2, axis=-1))
            total = loss + self.config.bc_weight * bc + self.config.prior_weight * prior_err
            return total, {"actor_loss": loss, "bc_loss": bc, "prior_loss": prior_err, "entropy": -log_prob.mean(),
                           "actor_std": jnp.exp(log_std).mean()}

        grads, info = jax.grad(loss_fn, has_aux=True)(self.actor.params)
        actor = self.actor.apply_gradients(grads=grads)
        entropy = jax.lax.stop_gradient(info["entropy"])
        target_entropy = self.target_entropy

        def temperature_loss_fn(params):
            t = self.temperature.apply_fn(params)
            return t * (entropy - target_entropy), t

        t_grads, _ = jax.grad(temperature_loss_fn, has_aux=True)(self.temperature.params)
        new_temperature = self.temperature.apply_gradients(grads=t_grads)
        info["temperature"] = new_temperature.apply_fn(new_temperature.params)
        return self.replace(actor=actor, temperature=new_temperature, rng=rng), info

    @jax.jit
    def _update(self, batch):
        k = self.config.critic_actor_ratio
        n = batch["rewards"].shape[0] // k
        minibatches = jax.tree_util.tree_map(lambda x: x.reshape((k, n) + x.shape[1:]), batch)
        agent, critic_info = jax.lax.scan(lambda ag, mb: ag._critic_step(mb), self, minibatches)
        last = jax.tree_util.tree_map(lambda x: x[-1], minibatches)
        agent, actor_info = agent._actor_step(last)
        info = {k_: v.mean() for k_, v in critic_info.items()}
        info.update(actor_info)
        return agent, info

    def update(self, batch: dict) -> tuple["SACAgent", dict[str, float]]:
        """critic_actor_ratio critic steps + 1 actor step + 1 temperature step on `batch` (numpy or jax; latents
        may be float16). The batch size must be a multiple of critic_actor_ratio (ideally
        config.update_batch_size). Returns the new agent and float metrics; `self` is unchanged."""
        batch = self._check_batch(batch)
        agent, info = self._update(batch)
        return agent, {k: float(v) for k, v in jax.device_get(info).items()}

    def update_device(self, batch: dict) -> tuple["SACAgent", dict]:
        """As update(), without the host sync for the metrics (they stay jax scalars)."""
        return self._update(self._check_batch(batch))

    def _check_batch(self, batch: dict) -> dict:
        need = ("observations", "actions", "rewards", "masks", "next_observations")
        missing = [k for k in need if k not in batch]
        if missing:
            raise KeyError(f"batch is missing {missing}; it needs {list(need)}")
        b = int(np.shape(batch["rewards"])[0])
        k = self.config.critic_actor_ratio
        if b % k or b < k:
            raise ValueError(f"batch of {b} transitions: must be a positive multiple of critic_actor_ratio={k} "
                             f"(sample config.update_batch_size = {self.config.update_batch_size})")
        key = self.observation_key
        out = {k_: batch[k_] for k_ in need}
        # rows from the demo buffer (sample_mixed(..., return_sources=True)); the BC term reads them
        out["is_demo"] = np.asarray(batch["is_demo"], bool) if "is_demo" in batch else np.zeros(b, bool)
        for name in ("observations", "next_observations"):
            obs = batch[name]
            if key not in obs:
                raise KeyError(f"batch[{name!r}] has no {key!r}")
            shape = tuple(np.shape(obs[key])[1:])
            if shape != self.stored_latent_shape:
                raise ValueError(f"batch[{name!r}][{key!r}] has per-row shape {shape}, the agent expects "
                                 f"{self.stored_latent_shape}")
            out[name] = {key: obs[key], "state": obs["state"]} if "state" in obs else {key: obs[key]}
        return out

    # ------------------------------------------------------------------ acting
    @partial(jax.jit, static_argnames=("deterministic",))
    def _act(self, observations, key, deterministic: bool):
        mean, log_std = self._policy(self.actor.params, observations)
        if deterministic:
            return jnp.tanh(mean)
        actions, _ = tanh_gaussian_sample(mean, log_std, key)
        return actions

    def _check_observations(self, observations: dict) -> tuple[dict, bool]:
        key = self.observation_key
        if key not in observations:
            raise KeyError(f"observations need {key!r} (and 'state')")
        lat = np.asarray(observations[key])
        single = lat.ndim == len(self.stored_latent_shape)
        if single:
            lat = lat[None]
        if tuple(lat.shape[1:]) != self.stored_latent_shape:
            hint = (" (latent_input='pooled': pass the VLM latents through agent.prepare_observations first)"
                    if self.config.latent_input == "pooled" and tuple(lat.shape[1:]) == self.latent_shape else "")
            raise ValueError(f"observations[{key!r}] has per-row shape {tuple(lat.shape[1:])}, the agent expects "
                             f"{self.stored_latent_shape}{hint}")
        out = {key: lat}
        if "state" in observations and observations["state"] is not None:
            st = np.asarray(observations["state"], dtype=np.float32).reshape(lat.shape[0], -1)
            if st.shape[1] != self.state_dim:
                raise ValueError(f"state has {st.shape[1]} values per row, the agent expects {self.state_dim}")
            if not np.isfinite(st).all():
                raise ValueError("state contains NaN or inf")
            out["state"] = st
        elif self.config.use_state:
            raise KeyError("observations need 'state' (this agent reads the proprioceptive state)")
        if key == "latents" and not np.isfinite(lat).all():
            raise ValueError("latents contain NaN or inf")
        return out, single

    def sample_actions(self, observations: dict, seed) -> np.ndarray:
        """Stochastic actions [B, A] in [-1, 1] (or [A] for one unbatched observation); seed: int or PRNG key."""
        obs, single = self._check_observations(observations)
        a = np.asarray(self._act(obs, _as_key(seed), deterministic=False))
        return a[0] if single else a

    def actions_with_noise(self, observations: dict, noise: np.ndarray) -> np.ndarray:
        """tanh(mean + std * noise) for a given standard-normal draw `noise` [B, A] (or [A]): exploration whose noise
        the caller shapes, e.g. temporally correlated over an episode (rl_agent.episodes.agent_policy)."""
        obs, single = self._check_observations(observations)
        eps = np.asarray(noise, np.float32)
        eps = eps.reshape(-1, self.action_dim) if eps.size % self.action_dim == 0 else eps
        if eps.shape != (next(iter(obs.values())).shape[0], self.action_dim) or not np.isfinite(eps).all():
            raise ValueError(f"noise of shape {np.shape(noise)} for {next(iter(obs.values())).shape[0]} observation(s)")
        a = np.asarray(self._act_noise(obs, jnp.asarray(eps)))
        return a[0] if single else a

    @jax.jit
    def _act_noise(self, observations, noise):
        mean, log_std = self._policy(self.actor.params, observations)
        return jnp.tanh(mean + jnp.exp(log_std) * noise)

    def eval_actions(self, observations: dict) -> np.ndarray:
        """Deterministic actions tanh(mean) [B, A] (== the SFT head's action at init where |a| < mean_clip)."""
        obs, single = self._check_observations(observations)
        a = np.asarray(self._act(obs, jax.random.PRNGKey(0), deterministic=True))
        return a[0] if single else a

    @jax.jit
    def _pool(self, latents):
        tl = _token_learner_def(self.config.learned_tokens, self.config.token_learner_hidden)
        return tl.apply({"params": self.frozen_token_learner}, latents.astype(jnp.float32))

    def prepare_observations(self, observations: dict) -> dict:
        """What the buffers store and the networks read. latent_input='tokens': the observations unchanged.
        'pooled': latents [B, N, d] (or [N, d]) replaced by the frozen SFT token learner's output [B, S, d]
        (float32; the buffers store float16)."""
        if self.config.latent_input != "pooled":
            return observations
        lat = np.asarray(observations["latents"])
        single = lat.ndim == 2
        if single:
            lat = lat[None]
        if tuple(lat.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents have per-row shape {tuple(lat.shape[1:])}, expected {self.latent_shape}")
        pooled = np.asarray(self._pool(jnp.asarray(lat)))
        return {**observations, "latents": pooled[0] if single else pooled}

    # ------------------------------------------------------------------ hand-back and persistence
    def actor_head_params(self) -> dict:
        """The actor's mean network as {"params", "buffers"} numpy trees in the layout of bridge.head_to_flax, for
        bridge.flax_to_head(params, vla.head) (stage 2 hand-back)."""
        head = jax.device_get(self.actor.params["head"])
        params = {"mlp": head["mlp"], "out": head["out"],
                  "token_learner": jax.device_get(self.frozen_token_learner) if self.config.latent_input == "pooled"
                  else head["token_learner"]}
        to_np = partial(jax.tree_util.tree_map, lambda x: np.asarray(x, dtype=np.float32))
        return {"params": to_np(params), "buffers": to_np(jax.device_get(self.actor_buffers["head"]))}

    def metadata(self) -> dict:
        return {"config": self.config.to_dict(), "latent_shape": list(self.latent_shape), "state_dim": self.state_dim,
                "action_dim": self.action_dim, "observation_key": self.observation_key}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the whole agent (networks, targets, optimizer states, temperature, rng, config) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": SAVE_FORMAT, "meta": json.dumps(self.metadata()),
                   "state": flax.serialization.to_state_dict(jax.device_get(self))}
        data = flax.serialization.msgpack_serialize(payload)
        with atomic_open(path) as f:
            f.write(data)
        return path

    @classmethod
    def load(cls, path: Union[str, Path], template: Optional["SACAgent"] = None) -> "SACAgent":
        """Restore an agent written by save(). Without `template` the agent is rebuilt from the saved config and
        shapes (latent agents; a pixel-encoder agent needs its template)."""
        path = Path(path)
        payload = flax.serialization.msgpack_restore(path.read_bytes())
        if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path}: not a saved SACAgent ({SAVE_FORMAT})")
        meta = json.loads(payload["meta"])
        if template is None:
            if meta["observation_key"] != "latents":
                raise ValueError(f"{path}: a pixel-encoder agent needs a template to load into")
            template = cls.create(0, tuple(meta["latent_shape"]), meta["state_dim"], meta["action_dim"],
                                  SACConfig.from_dict(meta["config"]))
        elif (list(template.latent_shape) != meta["latent_shape"] or template.action_dim != meta["action_dim"]
              or template.state_dim != meta["state_dim"] or template.config.to_dict() != meta["config"]):
            raise ValueError(f"{path}: saved agent (shapes {meta['latent_shape']}, config {meta['config']}) does not "
                             "match the template")
        return flax.serialization.from_state_dict(template, payload["state"])
