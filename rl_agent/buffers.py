"""Replay buffers of latent transitions (numpy): a demo buffer and an online buffer, sampled half and half.

Layout: one ring of observation slots. Slot j holds an observation (latents float16 [N, d], state float32) and
the transition that *led into* it from slot j-1 (action, reward, done, valid). An episode's T+1 observations take
T+1 consecutive slots and give T transitions: each observation is stored once, the next observation of step t is
the observation of step t+1 (bytes per transition ~ one observation: (T+1)/T slots per transition).

    buf = LatentReplayBuffer(capacity=36_000, latent_shape=(N, d))      # capacity = observation slots
    buf.start_episode(obs)                          # obs = {"latents": [N, d], "state": [8]}
    buf.add(action, reward, next_obs, done)         # done: terminal (mask 0); a time-limit cut passes done=False
    batch = sample_mixed(demo, online, 512, rng)    # {"observations", "actions", "rewards", "masks",
                                                    #  "next_observations"}

Memory: arrays are allocated at construction (np.zeros: pages are only touched as slots are written), so
`nbytes` is the full cost up front. With `memory_budget_bytes`, a capacity that does not fit raises ValueError
naming the largest that does (capacity=None takes exactly that). When the ring is full the oldest observation is
overwritten (FIFO eviction) and the transition that started from it disappears with it.

Bad data is refused whole: a NaN/inf or misshaped observation, action or reward raises ValueError and nothing is
stored. save()/load() write/read one .npz atomically (temp file + fsync + rename); only the used slots are written.
The buffers are thread-safe (the in-process learner samples while the actor adds).
"""
from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from rl_agent.files import atomic_open

FORMAT_VERSION = 1


class _hybridmethod:
    """classmethod on the class, instance method on an instance (Buffer.load(p) -> new; buf.load(p) -> in place)."""

    def __init__(self, fn):
        self.fn = fn

    def __get__(self, obj, cls):
        return partial(self.fn, cls, obj)


class LatentReplayBuffer:
    def __init__(self, capacity: Optional[int], latent_shape: Sequence[int], state_dim: int = 8, action_dim: int = 7,
                 memory_budget_bytes: Optional[int] = None, latent_dtype=np.float16):
        self.latent_shape = tuple(int(x) for x in latent_shape)
        self.state_dim, self.action_dim = int(state_dim), int(action_dim)
        self.latent_dtype = np.dtype(latent_dtype)
        self.bytes_per_observation = (int(np.prod(self.latent_shape)) * self.latent_dtype.itemsize
                                      + 4 * self.state_dim + 4 * self.action_dim + 4 + 1 + 1)
        if memory_budget_bytes is not None:
            fits = int(memory_budget_bytes) // self.bytes_per_observation
            if capacity is None:
                capacity = fits
            elif capacity > fits:
                raise ValueError(
                    f"replay buffer of {capacity} observations x {self.bytes_per_observation} B = "
                    f"{capacity * self.bytes_per_observation / 1e9:.2f} GB exceeds the memory budget of "
                    f"{memory_budget_bytes / 1e9:.2f} GB; at most {fits} observations fit "
                    "(pass capacity=None to take that, or store pooled latents: SACConfig.latent_input='pooled')")
        if capacity is None or capacity < 2:
            raise ValueError(f"capacity must be >= 2 observation slots, got {capacity}")
        self.capacity = int(capacity)
        self.memory_budget_bytes = memory_budget_bytes
        c = self.capacity
        self._latents = np.zeros((c, *self.latent_shape), self.latent_dtype)
        self._state = np.zeros((c, self.state_dim), np.float32)
        self._action = np.zeros((c, self.action_dim), np.float32)  # action taken in slot j-1 that led to slot j
        self._reward = np.zeros(c, np.float32)
        self._done = np.zeros(c, bool)
        self._valid = np.zeros(c, bool)  # slot j ends a stored transition (slot j-1 is its observation)
        self._head = 0  # next slot to write
        self._count = 0  # observations stored (<= capacity)
        self._num_transitions = 0
        self._episode_open = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self._num_transitions

    @property
    def num_observations(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes allocated by the storage arrays (the whole capacity)."""
        return sum(a.nbytes for a in (self._latents, self._state, self._action, self._reward, self._done,
                                      self._valid))

    @property
    def bytes_per_transition(self) -> float:
        """Storage per stored transition: used slots x bytes per slot / transitions (one observation plus the
        per-episode extra first observation); the per-slot cost while empty."""
        if self._num_transitions == 0:
            return float(self.bytes_per_observation)
        return self._count * self.bytes_per_observation / self._num_transitions

    # ------------------------------------------------------------------ validation
    def _check_obs(self, obs: dict, what: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(obs, dict) or "latents" not in obs or "state" not in obs:
            raise ValueError(f"{what}: an observation is a dict with 'latents' and 'state'")
        lat = np.asarray(obs["latents"])
        st = np.asarray(obs["state"], dtype=np.float32).reshape(-1)
        if lat.shape != self.latent_shape:
            raise ValueError(f"{what}: latents have shape {lat.shape}, this buffer stores {self.latent_shape}")
        if st.shape != (self.state_dim,):
            raise ValueError(f"{what}: state has {st.size} values, this buffer stores {self.state_dim}")
        with np.errstate(over="ignore", invalid="ignore"):
            lat16 = lat.astype(self.latent_dtype)
        if not np.isfinite(lat16).all():  # also catches float32 values beyond float16's range
            raise ValueError(f"{what}: latents contain NaN or inf (or values beyond {self.latent_dtype}); "
                             "transition rejected, nothing stored")
        if not np.isfinite(st).all():
            raise ValueError(f"{what}: state contains NaN or inf; transition rejected, nothing stored")
        return lat16, st

    def _check_step(self, action, reward, what: str) -> tuple[np.ndarray, float]:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (self.action_dim,):
            raise ValueError(f"{what}: action has {a.size} values, this buffer stores {self.action_dim}")
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: action contains NaN or inf; transition rejected, nothing stored")
        r = float(np.asarray(reward, dtype=np.float64).reshape(()))
        if not np.isfinite(r):
            raise ValueError(f"{what}: reward is {r}; transition rejected, nothing stored")
        return a, r

    # ------------------------------------------------------------------ writing
    def _write_slot(self, lat, st, action=None, reward=0.0, done=False) -> None:
        j = self._head
        nxt = (j + 1) % self.capacity
        if self._valid[j]:
            self._num_transitions -= 1
        # slot j+1's transition started from the observation being overwritten: it is gone.
        if self._valid[nxt]:
            self._valid[nxt] = False
            self._num_transitions -= 1
        self._latents[j], self._state[j] = lat, st
        if action is None:
            self._valid[j] = False
            self._action[j], self._reward[j], self._done[j] = 0.0, 0.0, False
        else:
            self._action[j], self._reward[j], self._done[j] = action, reward, done
            self._valid[j] = True
            self._num_transitions += 1
        self._head = nxt
        self._count = min(self._count + 1, self.capacity)

    def start_episode(self, obs: dict) -> None:
        """Store an episode's first observation (a still-open episode just ends without a terminal flag)."""
        lat, st = self._check_obs(obs, "start_episode")
        with self._lock:
            self._write_slot(lat, st)
            self._episode_open = True

    def add(self, action, reward, next_obs: dict, done: bool, info: Optional[dict] = None) -> None:
        """Append a transition from the last stored observation. done=True: terminal (mask 0), closes the episode.
        `info` is accepted for the caller's bookkeeping and not stored."""
        if not self._episode_open:
            raise RuntimeError("add() before start_episode(): no current observation to start the transition from")
        a, r = self._check_step(action, reward, "add")
        lat, st = self._check_obs(next_obs, "add")
        with self._lock:
            self._write_slot(lat, st, a, r, bool(done))
            if done:
                self._episode_open = False

    def insert_episode(self, observations, actions, rewards, dones) -> None:
        """A whole episode: T+1 observations (a list of obs dicts, or {"latents": [T+1, N, d], "state": [T+1, 8]}),
        actions [T, A], rewards [T], dones [T]. Everything is checked before anything is stored."""
        if isinstance(observations, dict):
            lats, sts = np.asarray(observations["latents"]), np.asarray(observations["state"])
            observations = [{"latents": lats[i], "state": sts[i]} for i in range(len(lats))]
        actions = np.asarray(actions, dtype=np.float32).reshape(len(actions), -1) if len(actions) else \
            np.zeros((0, self.action_dim), np.float32)
        rewards, dones = np.asarray(rewards).reshape(-1), np.asarray(dones).reshape(-1)
        t = len(actions)
        if t < 1 or len(observations) != t + 1 or len(rewards) != t or len(dones) != t:
            raise ValueError(f"insert_episode: need T+1 observations and T actions/rewards/dones with T >= 1, got "
                             f"{len(observations)} observations, {t} actions, {len(rewards)} rewards, "
                             f"{len(dones)} dones")
        if np.asarray(dones[:-1], bool).any():
            raise ValueError("insert_episode: only the last step may be terminal")
        obs = [self._check_obs(o, f"insert_episode step {i}") for i, o in enumerate(observations)]
        steps = [self._check_step(actions[i], rewards[i], f"insert_episode step {i}") for i in range(t)]
        if t + 1 > self.capacity:
            raise ValueError(f"insert_episode: {t + 1} observations do not fit a buffer of {self.capacity}")
        with self._lock:
            self._write_slot(*obs[0])
            for i in range(t):
                self._write_slot(*obs[i + 1], steps[i][0], steps[i][1], bool(dones[i]))
            self._episode_open = not bool(dones[-1])

    # ------------------------------------------------------------------ sampling
    def _gather(self, idx: np.ndarray) -> dict:
        prev = (idx - 1) % self.capacity
        return {"observations": {"latents": self._latents[prev], "state": self._state[prev]},
                "actions": self._action[idx], "rewards": self._reward[idx],
                "masks": (~self._done[idx]).astype(np.float32),
                "next_observations": {"latents": self._latents[idx], "state": self._state[idx]}}

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        """Uniform sample (with replacement) of stored transitions; latents stay float16."""
        with self._lock:
            if self._num_transitions == 0:
                raise ValueError("sample() from an empty replay buffer")
            valid = np.flatnonzero(self._valid)
            return self._gather(valid[rng.integers(0, len(valid), size=int(batch_size))])

    def all_transitions(self) -> dict:
        """Every stored transition, oldest first, as one batch dict (copies)."""
        with self._lock:
            order = self._chronological_slots()
            return self._gather(order[self._valid[order]])

    # ------------------------------------------------------------------ persistence
    def _chronological_slots(self) -> np.ndarray:
        return (self._head - self._count + np.arange(self._count)) % self.capacity

    def save(self, path: Union[str, Path]) -> Path:
        """Write the used slots (oldest first) to one .npz, atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            order = self._chronological_slots()
            arrays = dict(latents=self._latents[order], state=self._state[order], action=self._action[order],
                          reward=self._reward[order], done=self._done[order], valid=self._valid[order],
                          meta=np.array([FORMAT_VERSION, self.capacity, int(self._episode_open), self.state_dim,
                                         self.action_dim], np.int64),
                          latent_shape=np.array(self.latent_shape, np.int64))
            with atomic_open(path) as f:
                np.savez(f, **arrays)
        return path

    @_hybridmethod
    def load(cls, self, path: Union[str, Path], memory_budget_bytes: Optional[int] = None):
        """LatentReplayBuffer.load(path) -> a new buffer (saved capacity); buf.load(path) -> refills `buf` in place
        (same shapes; keeps the newest observations if the file holds more than its capacity). Returns the buffer."""
        with np.load(Path(path), allow_pickle=False) as z:
            meta = z["meta"]
            if int(meta[0]) != FORMAT_VERSION:
                raise ValueError(f"{path}: replay buffer format {int(meta[0])}, expected {FORMAT_VERSION}")
            latent_shape = tuple(int(x) for x in z["latent_shape"])
            data = {k: z[k] for k in ("latents", "state", "action", "reward", "done", "valid")}
        capacity, episode_open, state_dim, action_dim = (int(x) for x in meta[1:5])
        if self is None:
            self = cls(capacity, latent_shape, state_dim, action_dim, memory_budget_bytes=memory_budget_bytes,
                       latent_dtype=data["latents"].dtype)
        elif (self.latent_shape, self.state_dim, self.action_dim) != (latent_shape, state_dim, action_dim):
            raise ValueError(f"{path}: holds latents {latent_shape}, state {state_dim}, action {action_dim}; this "
                             f"buffer stores {self.latent_shape}, {self.state_dim}, {self.action_dim}")
        n = len(data["valid"])
        keep = slice(max(0, n - self.capacity), n)
        with self._lock:
            m = keep.stop - keep.start
            self._latents[:m] = data["latents"][keep]
            self._state[:m] = data["state"][keep]
            self._action[:m] = data["action"][keep]
            self._reward[:m] = data["reward"][keep]
            self._done[:m] = data["done"][keep]
            self._valid[:] = False
            self._valid[:m] = data["valid"][keep]
            if m:
                self._valid[0] = False  # the oldest kept slot's predecessor is not in the buffer
            self._head, self._count = m % self.capacity, m
            self._num_transitions = int(self._valid.sum())
            self._episode_open = bool(episode_open) and m > 0
        return self


def sample_mixed(demo: LatentReplayBuffer, online: LatentReplayBuffer, batch_size: int,
                 rng: np.random.Generator, return_sources: bool = False):
    """Half the batch from `demo` (batch_size // 2 rows), the rest from `online`, rows shuffled (the agent splits
    batches into minibatches along the rows). While one buffer is empty everything comes from the other.
    return_sources=True also returns is_demo [batch_size] bool."""
    if demo.latent_shape != online.latent_shape or demo.state_dim != online.state_dim \
            or demo.action_dim != online.action_dim:
        raise ValueError(f"demo ({demo.latent_shape}) and online ({online.latent_shape}) buffers differ in shape")
    if len(demo) == 0 and len(online) == 0:
        raise ValueError("sample_mixed: both buffers are empty")
    n_demo = batch_size if len(online) == 0 else 0 if len(demo) == 0 else batch_size // 2
    parts, sources = [], []
    if n_demo:
        parts.append(demo.sample(n_demo, rng))
        sources.append(np.ones(n_demo, bool))
    if batch_size - n_demo:
        parts.append(online.sample(batch_size - n_demo, rng))
        sources.append(np.zeros(batch_size - n_demo, bool))
    perm = rng.permutation(batch_size)

    batch = _tree_map(lambda *xs: np.concatenate(xs, axis=0)[perm], *parts)
    return (batch, np.concatenate(sources)[perm]) if return_sources else batch


def _tree_map(fn, *trees):
    if isinstance(trees[0], dict):
        return {k: _tree_map(fn, *(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)
