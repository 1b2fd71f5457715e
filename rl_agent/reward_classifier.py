"""Binary success classifier on VLM latents (reward source (b) of issue 5, as HIL-SERL's image classifier).

Frames labelled success / not-success (e.g. the last frames of successful episodes vs everything else) are pooled
over their tokens (mean, or mean and max concatenated), standardised with the training statistics, and fed to a
small Flax MLP trained with a class-balanced logistic loss (each class weighs half, whatever the imbalance: HIL-SERL
uses 2-3x as many negatives as positives). A held-out split (by episode when episode ids are given, since frames of
one episode are nearly duplicates) measures accuracy, which fit() returns and the classifier keeps in `.report`.

    clf = SuccessClassifier(latent_dim=d)
    report = clf.fit(latents [M, N, d], labels [M], episode_ids=ep [M])   # {"val_accuracy": ..., ...}
    p = clf.predict_proba(latents)        # [M] in [0, 1]; clf.reward(latents) -> 0/1 floats at clf.threshold
    clf.save("success.msgpack"); clf = SuccessClassifier.load("success.msgpack")
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from teleop.config import from_dict, load_yaml, to_dict
from rl_agent.files import atomic_open

SAVE_FORMAT = "irevla-success-classifier-v1"
POOLINGS = ("mean", "mean_max")


@dataclass
class ClassifierConfig:
    hidden_dims: list[int] = field(default_factory=lambda: [128])
    pooling: str = "mean_max"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 60
    batch_size: int = 256
    val_fraction: float = 0.2
    threshold: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @classmethod
    def from_yaml(cls, path, section: Optional[str] = None) -> "ClassifierConfig":
        return load_yaml(cls, path, section)


class _MLP(nn.Module):
    hidden_dims: tuple

    @nn.compact
    def __call__(self, x):
        for i, h in enumerate(self.hidden_dims):
            x = nn.gelu(nn.LayerNorm(name=f"norm_{i}")(nn.Dense(h, name=f"hidden_{i}")(x)))
        return nn.Dense(1, name="out")(x)[..., 0]


@lru_cache(maxsize=None)
def _training_fns(hidden_dims: tuple, learning_rate: float, weight_decay: float):
    """(model, optimizer, jitted train step), shared by classifiers of one configuration (compiled once)."""
    model = _MLP(hidden_dims)
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)

    @jax.jit
    def step(params, opt_state, x, y, w):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return jnp.sum(w * optax.sigmoid_binary_cross_entropy(logits, y)) / jnp.sum(w)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return model, tx, step


@lru_cache(maxsize=None)
def _init_fn(model):
    return jax.jit(model.init)


@lru_cache(maxsize=None)
def _predict_fn(model):
    return jax.jit(lambda params, x: jax.nn.sigmoid(model.apply({"params": params}, x)))


def pool_latents(latents, pooling: str = "mean_max", chunk: int = 512) -> np.ndarray:
    """[M, N, d] (any float dtype; [M, d] counts as one token) -> float32 [M, d] (mean) or [M, 2d] (mean_max)."""
    lat = np.asarray(latents)
    if lat.ndim == 2:
        lat = lat[:, None]
    if lat.ndim != 3:
        raise ValueError(f"latents must be [frames, tokens, dim] or [frames, dim], got shape {lat.shape}")
    out = []
    for i in range(0, len(lat), chunk):  # float32 copies chunk by chunk (full-size latents are large)
        x = lat[i:i + chunk].astype(np.float32)
        out.append(np.concatenate([x.mean(1), x.max(1)], -1) if pooling == "mean_max" else x.mean(1))
    feats = np.concatenate(out) if out else np.zeros((0, lat.shape[-1] * (2 if pooling == "mean_max" else 1)),
                                                     np.float32)
    if not np.isfinite(feats).all():
        raise ValueError("latents contain NaN or inf")
    return feats


def _split(labels: np.ndarray, episode_ids: Optional[np.ndarray], frac: float, rng: np.random.Generator):
    """Held-out indices: whole episodes (each class's episodes split separately) or stratified frames."""
    val = np.zeros(len(labels), bool)
    if episode_ids is not None:
        episode_ids = np.asarray(episode_ids)
        # An episode counts as positive if any of its frames is: split positive and negative episodes separately.
        eps = np.unique(episode_ids)
        pos_eps = np.array([e for e in eps if labels[episode_ids == e].any()])
        neg_eps = np.setdiff1d(eps, pos_eps)
        for group in (pos_eps, neg_eps):
            if len(group) >= 2:
                chosen = rng.choice(group, max(1, int(round(frac * len(group)))), replace=False)
                val |= np.isin(episode_ids, chosen)
    else:
        for cls in (True, False):
            idx = np.flatnonzero(labels == cls)
            if len(idx) >= 2:
                val[rng.choice(idx, max(1, int(round(frac * len(idx)))), replace=False)] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def _accuracies(prob: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    pred = prob >= threshold
    acc = float((pred == labels).mean()) if len(labels) else float("nan")
    per_class = [float((pred[labels == c] == c).mean()) for c in (True, False) if (labels == c).any()]
    return acc, float(np.mean(per_class)) if per_class else float("nan")


class SuccessClassifier:
    def __init__(self, latent_dim: int, config: Optional[ClassifierConfig] = None):
        self.latent_dim = int(latent_dim)
        self.config = config or ClassifierConfig()
        self.threshold = self.config.threshold
        self._model = _training_fns(tuple(self.config.hidden_dims), self.config.learning_rate,
                                    self.config.weight_decay)[0]
        self.params = None
        self.feature_mean = self.feature_std = None
        self.report: dict = {}

    @property
    def feature_dim(self) -> int:
        return self.latent_dim * (2 if self.config.pooling == "mean_max" else 1)

    def _features(self, latents) -> np.ndarray:
        lat = np.asarray(latents)
        if lat.shape[-1] != self.latent_dim:
            raise ValueError(f"latents have dim {lat.shape[-1]}, this classifier reads {self.latent_dim}")
        return pool_latents(lat, self.config.pooling)

    def fit(self, latents, labels, episode_ids=None, progress: bool = False) -> dict:
        """Train on labelled frames; returns (and keeps in .report) train/held-out accuracy and balanced accuracy."""
        cfg = self.config
        labels = np.asarray(labels).astype(bool).reshape(-1)
        if np.ndim(latents) != 3:
            raise ValueError(f"fit() takes latents [frames, tokens, dim], got shape {np.shape(latents)}")
        feats = self._features(latents)
        if len(feats) != len(labels):
            raise ValueError(f"{len(feats)} frames but {len(labels)} labels")
        n_pos, n_neg = int(labels.sum()), int((~labels).sum())
        if n_pos < 2 or n_neg < 2:
            raise ValueError(f"need at least 2 positive and 2 negative frames, got {n_pos} and {n_neg}")
        rng = np.random.default_rng(cfg.seed)
        train_idx, val_idx = _split(labels, episode_ids, cfg.val_fraction, rng)
        x_train, y_train = feats[train_idx], labels[train_idx]
        if y_train.all() or not y_train.any():
            raise ValueError("the training split holds only one class: label more episodes of each kind")
        self.feature_mean = x_train.mean(0)
        self.feature_std = x_train.std(0) + 1e-6
        x_train = (x_train - self.feature_mean) / self.feature_std
        # Class-balanced weights: each class contributes half of the loss.
        w_pos, w_neg = len(y_train) / (2.0 * y_train.sum()), len(y_train) / (2.0 * (~y_train).sum())
        weights = np.where(y_train, w_pos, w_neg).astype(np.float32)

        model, tx, step = _training_fns(tuple(cfg.hidden_dims), cfg.learning_rate, cfg.weight_decay)
        params = _init_fn(model)(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, self.feature_dim)))["params"]
        opt_state = jax.jit(tx.init)(params)
        bs = min(cfg.batch_size, len(x_train))
        steps_per_epoch = max(1, len(x_train) // bs)
        epochs = range(cfg.epochs)
        if progress:
            from tqdm import tqdm
            epochs = tqdm(epochs, desc="success classifier", unit="epoch")
        for _ in epochs:
            perm = rng.permutation(len(x_train))
            for s in range(steps_per_epoch):  # fixed batch shape: one compilation
                b = perm[s * bs:(s + 1) * bs]
                params, opt_state, loss = step(params, opt_state, x_train[b], y_train[b].astype(np.float32),
                                               weights[b])
        self.params = params
        train_acc, train_bal = _accuracies(self._proba_from_features(feats[train_idx]), labels[train_idx],
                                           self.threshold)
        val_acc, val_bal = _accuracies(self._proba_from_features(feats[val_idx]), labels[val_idx], self.threshold) \
            if len(val_idx) else (float("nan"), float("nan"))
        self.report = {"train_accuracy": train_acc, "train_balanced_accuracy": train_bal, "val_accuracy": val_acc,
                       "val_balanced_accuracy": val_bal, "train_frames": int(len(train_idx)),
                       "val_frames": int(len(val_idx)), "positives": n_pos, "negatives": n_neg,
                       "final_loss": float(loss), "threshold": self.threshold}
        return dict(self.report)

    def _proba_from_features(self, feats: np.ndarray) -> np.ndarray:
        if self.params is None:
            raise RuntimeError("the classifier is not trained: call fit() or load()")
        x = (feats - self.feature_mean) / self.feature_std
        return np.asarray(_predict_fn(self._model)(self.params, jnp.asarray(x, jnp.float32)))

    def predict_proba(self, latents) -> np.ndarray:
        """Success probability per frame: latents [M, N, d] or one frame [N, d] (-> [1])."""
        lat = np.asarray(latents)
        if lat.ndim == 2:
            lat = lat[None]
        return self._proba_from_features(self._features(lat))

    def predict(self, latents) -> np.ndarray:
        return self.predict_proba(latents) >= self.threshold

    def reward(self, latents) -> np.ndarray:
        """Binary reward (1.0 = success) per frame."""
        return self.predict(latents).astype(np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Union[str, Path]) -> Path:
        if self.params is None:
            raise RuntimeError("nothing to save: the classifier is not trained")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"latent_dim": self.latent_dim, "config": to_dict(self.config), "threshold": self.threshold,
                "report": self.report}
        payload = {"format": SAVE_FORMAT, "meta": json.dumps(meta),
                   "params": flax.serialization.to_state_dict(jax.device_get(self.params)),
                   "feature_mean": np.asarray(self.feature_mean), "feature_std": np.asarray(self.feature_std)}
        with atomic_open(path) as f:
            f.write(flax.serialization.msgpack_serialize(payload))
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SuccessClassifier":
        payload = flax.serialization.msgpack_restore(Path(path).read_bytes())
        if not isinstance(payload, dict) or payload.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path}: not a saved SuccessClassifier ({SAVE_FORMAT})")
        meta = json.loads(payload["meta"])
        clf = cls(meta["latent_dim"], from_dict(ClassifierConfig, meta["config"]))
        clf.threshold = float(meta["threshold"])
        clf.report = meta["report"]
        clf.params = jax.tree_util.tree_map(jnp.asarray, payload["params"])
        clf.feature_mean = np.asarray(payload["feature_mean"], np.float32)
        clf.feature_std = np.asarray(payload["feature_std"], np.float32)
        return clf
