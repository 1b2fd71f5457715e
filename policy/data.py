"""Training data for the supervised stages: recorded episodes -> batches for the VLA, mixtures of datasets.

    expert = PolicyData("data/expert", cameras=["front", "wrist"])
    rl = PolicyData("data/rl_harvest", cameras=["front", "wrist"])
    batches = MixtureBatches([expert, rl], weights=[0.5, 0.5], batch_size=32, seed=0, rank=0, world_size=1)
    b = batches.batch(step)      # b.images uint8 [B, cams, H, W, 3], b.instructions, b.state [B, 8], b.action [B, 7]

A sample is one recorded step: its camera images (in the VLA's camera order), the episode's instruction, the policy
state (the last 8 columns of the recorded state row: ee xyz, quat wxyz, gripper width) and the executed action.

Sampling is a pure function of (seed, step): every global batch is the same whatever the number of processes, and a
process of rank r in a world of W takes the r-th contiguous slice of it (B / W samples). Averaging the W slices'
mean gradients is then the full batch's mean gradient, which is what makes 2 gloo processes match 1 process, and a
resumed run match an uninterrupted one. Each source is read in shuffled epochs (a fresh permutation per epoch); the
per-step number of samples from each source follows the mixture weights (stochastic rounding of weight * B).
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from policy.config import POLICY_STATE_DIM, POLICY_STATE_NAMES
from teleop.dataset import EpisodeDataset, compute_stats, file_hash
from teleop.object_labels import read_object_labels

LOG = logging.getLogger("policy.data")
PathLike = Union[str, Path]


class DataError(ValueError):
    """A dataset cannot be used for policy training (missing camera, unknown state layout, empty)."""


# ---------------------------------------------------------------------------------------------- normalization
@dataclass
class NormStats:
    """Per-dimension mean/std of actions and policy states (set into the action head's buffers)."""
    action_mean: list[float]
    action_std: list[float]
    state_mean: list[float]
    state_std: list[float]
    steps: int = 0

    @classmethod
    def from_compute_stats(cls, stats: dict) -> "NormStats":
        """From `teleop.dataset.compute_stats` output (state: its last POLICY_STATE_DIM columns)."""
        a, s = stats["action"], stats["state"]
        if not a.get("count"):
            raise DataError(f"{stats.get('root')}: no steps to compute normalization statistics from")
        names = list(s["names"][-POLICY_STATE_DIM:])
        if tuple(names) != POLICY_STATE_NAMES:
            raise DataError(f"{stats.get('root')}: state columns end in {names}, expected {list(POLICY_STATE_NAMES)}")
        return cls(list(a["mean"]), list(a["std"]), list(s["mean"][-POLICY_STATE_DIM:]),
                   list(s["std"][-POLICY_STATE_DIM:]), int(a["count"]))

    @classmethod
    def from_arrays(cls, actions: np.ndarray, states: np.ndarray) -> "NormStats":
        actions, states = np.asarray(actions, np.float64), np.asarray(states, np.float64)
        return cls(actions.mean(0).tolist(), actions.std(0).tolist(), states.mean(0).tolist(),
                   states.std(0).tolist(), len(actions))

    @classmethod
    def pooled(cls, parts: Sequence["NormStats"], weights: Sequence[float]) -> "NormStats":
        """Statistics of the mixture that samples part k with probability weights[k]."""
        w = np.asarray(weights, np.float64)
        w = w / w.sum()

        def pool(means, stds):
            m = np.asarray(means, np.float64)
            s = np.asarray(stds, np.float64)
            mean = (w[:, None] * m).sum(0)
            var = (w[:, None] * (s ** 2 + m ** 2)).sum(0) - mean ** 2
            return mean.tolist(), np.sqrt(np.maximum(var, 0.0)).tolist()

        am, asd = pool([p.action_mean for p in parts], [p.action_std for p in parts])
        sm, ssd = pool([p.state_mean for p in parts], [p.state_std for p in parts])
        return cls(am, asd, sm, ssd, int(sum(p.steps for p in parts)))

    def apply(self, head, min_action_std: float = 1e-3, min_state_std: float = 1e-2) -> None:
        """Into `head.set_normalization`. A state dimension that barely moved in the data (e.g. the orientation
        of a top-down gripper) gets a floor on its std so that a small drift at run time is not blown up."""
        head.set_normalization(self.action_mean, np.maximum(self.action_std, min_action_std),
                               self.state_mean, np.maximum(self.state_std, min_state_std), min_std=min_action_std)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def head_norm_stats(head) -> NormStats:
    """The normalization currently in an action head (e.g. a stage-0 checkpoint's, kept in stage 2)."""
    return NormStats(head.action_mean.tolist(), head.action_std.tolist(), head.state_mean.tolist(),
                     head.state_std.tolist())


# ---------------------------------------------------------------------------------------------- one dataset
@dataclass
class Batch:
    images: Optional[np.ndarray]  # uint8 [B, cameras, H, W, 3]; None when `features` are given
    instructions: list[str]
    state: np.ndarray  # float32 [B, 8]
    action: np.ndarray  # float32 [B, 7]
    obs_ids: list[str]
    features: Optional[np.ndarray] = None  # float16 [B, cameras, F, g, g]: a frozen vision tower's cached output
    # float32 [B, 3]: the instructed object's position where the data has privileged labels (NaN rows elsewhere)
    object_xyz: Optional[np.ndarray] = None
    # bool [B]: rows whose action is a label (False: a counterfactual row for the object readout only); None: all
    action_mask: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.instructions)

    def row(self, r: int) -> "Batch":
        """The one-sample batch of row r."""
        return Batch(None if self.images is None else self.images[r:r + 1], [self.instructions[r]],
                     self.state[r:r + 1], self.action[r:r + 1], [self.obs_ids[r]],
                     None if self.features is None else self.features[r:r + 1],
                     None if self.object_xyz is None else self.object_xyz[r:r + 1],
                     None if self.action_mask is None else self.action_mask[r:r + 1])

    @staticmethod
    def concat(parts: Sequence["Batch"]) -> "Batch":
        feats = None if parts[0].features is None else np.concatenate([p.features for p in parts])
        images = None if parts[0].images is None else np.concatenate([p.images for p in parts])
        xyz = None
        if any(p.object_xyz is not None for p in parts):
            xyz = np.concatenate([np.full((len(p), 3), np.nan, np.float32) if p.object_xyz is None else p.object_xyz
                                  for p in parts])
        mask = None
        if any(p.action_mask is not None for p in parts):
            mask = np.concatenate([np.ones(len(p), bool) if p.action_mask is None else p.action_mask for p in parts])
        return Batch(images, [i for p in parts for i in p.instructions], np.concatenate([p.state for p in parts]),
                     np.concatenate([p.action for p in parts]), [o for p in parts for o in p.obs_ids], feats, xyz,
                     mask)


class PolicyData:
    """A recorded dataset (teleop.dataset.EpisodeDataset: successful episodes by default) seen as policy samples."""

    def __init__(self, root: PathLike, cameras: Sequence[str], include_failed: bool = False,
                 tasks: Optional[Iterable[str]] = None, category: Optional[str] = None,
                 cache_dir: Optional[PathLike] = None):
        self.root = Path(root)
        self.cameras = list(cameras)
        self.include_failed = include_failed
        self._filtered = tasks is not None or category is not None
        self.ds = EpisodeDataset(self.root, cache_dir=cache_dir, include_failed=include_failed, tasks=tasks,
                                 category=category)
        if len(self.ds) == 0:
            raise DataError(f"{self.root}: no usable episodes (successful ones unless include_failed; "
                            f"tasks={list(tasks) if tasks else 'all'})")
        memo_path = self.ds.cache_dir / "hashes.json"
        memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
        self.episode_hashes: list[str] = []
        for k in range(self.ds.num_episodes):
            ep = self.ds.episode(k)
            have = list(ep["images"])
            missing = [c for c in self.cameras if c not in have]
            if missing:
                raise DataError(f"{self.root}/{ep['name']}: no camera {missing} (it has {have}); the policy reads "
                                f"{self.cameras}")
            names = ep["meta"].get("state_names") or []
            if tuple(names[-POLICY_STATE_DIM:]) != POLICY_STATE_NAMES:
                raise DataError(f"{self.root}/{ep['name']}: state columns end in {names[-POLICY_STATE_DIM:]}, "
                                f"expected {list(POLICY_STATE_NAMES)}")
            self.episode_hashes.append(file_hash(self.ds.entries[k]["path"], memo))
        shapes = {self.ds.episode(k)["images"][c].shape[1:] for k in range(self.ds.num_episodes)
                  for c in self.cameras}
        if len(shapes) != 1:
            raise DataError(f"{self.root}: camera images of different sizes {sorted(shapes)}")
        self.image_shape = shapes.pop()  # (H, W, 3)
        labels = read_object_labels(self.root)  # privileged object positions (twin datasets), if labelled
        self.object_labels = [labels.get(self.ds.episode(k)["name"]) for k in range(self.ds.num_episodes)]
        self.feature_store = None  # policy.feature_cache.FeatureStore: batches then carry features, not images

    def use_features(self, store) -> None:
        """Serve the frozen vision tower's cached features instead of images (policy/feature_cache.py)."""
        missing = store.missing()
        if missing:
            raise DataError(f"{self.root}: {len(missing)} episode(s) have no cached features in {store.dir}")
        self.feature_store = store

    def __len__(self) -> int:
        return len(self.ds)

    @property
    def num_episodes(self) -> int:
        return self.ds.num_episodes

    def obs_id(self, i: int) -> str:
        """Stable id of step i: content hash of its episode file + step (the latent cache's observation id)."""
        k, t = self.ds.locate(i)
        return f"{self.episode_hashes[k]}:{t}"

    def alternatives(self, i: int) -> list:
        """(instruction naming another object of the scene, that object's xyz) for step i: counterfactual readout
        rows (teleop/object_labels.py); empty where the step has no object label."""
        k, t = self.ds.locate(int(i))
        label = self.object_labels[k]
        return list(label["others"]) if label is not None and t < label["until_step"] else []

    def images(self, indices: Sequence[int]) -> np.ndarray:
        out = np.empty((len(indices), len(self.cameras), *self.image_shape), np.uint8)
        for j, i in enumerate(indices):
            k, t = self.ds.locate(int(i))
            ep = self.ds.episode(k)
            for c, cam in enumerate(self.cameras):
                out[j, c] = ep["images"][cam][t]
        return out

    def batch(self, indices: Sequence[int]) -> Batch:
        n = len(indices)
        state = np.empty((n, POLICY_STATE_DIM), np.float32)
        action = np.empty((n, 7), np.float32)
        xyz = np.full((n, 3), np.nan, np.float32)
        instr, ids, where = [], [], []
        for j, i in enumerate(indices):
            k, t = self.ds.locate(int(i))
            ep = self.ds.episode(k)
            state[j] = ep["state"][t][-POLICY_STATE_DIM:]
            action[j] = ep["action"][t]
            label = self.object_labels[k]
            if label is not None and t < label["until_step"]:
                xyz[j] = label["xyz"]
            instr.append(ep["instruction"])
            ids.append(f"{self.episode_hashes[k]}:{t}")
            where.append((k, t))
        if self.feature_store is not None:
            feats = np.stack([self.feature_store.features(k, t) for k, t in where])
            return Batch(None, instr, state, action, ids, feats, xyz)
        return Batch(self.images(indices), instr, state, action, ids, None, xyz)

    def norm_stats(self) -> NormStats:
        if not self._filtered:
            return NormStats.from_compute_stats(compute_stats(self.root, include_failed=self.include_failed))
        eps = [self.ds.episode(k) for k in range(self.ds.num_episodes)]  # a task subset: from the loaded arrays
        return NormStats.from_arrays(np.concatenate([np.asarray(e["action"]) for e in eps]),
                                     np.concatenate([np.asarray(e["state"])[:, -POLICY_STATE_DIM:] for e in eps]))


# ---------------------------------------------------------------------------------------------- mixture
def _resize_to(images: np.ndarray, shape: tuple) -> np.ndarray:
    import cv2
    b, c = images.shape[:2]
    out = np.empty((b, c, *shape), np.uint8)
    for i in range(b):
        for j in range(c):
            out[i, j] = cv2.resize(images[i, j], (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return out


def random_shift(images: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """DrQ-style augmentation: pad each image by `pad` pixels (edge values) and crop back at a random offset."""
    if pad <= 0:
        return images
    out = np.empty_like(images)
    h, w = images.shape[-3:-1]
    for i in range(images.shape[0]):
        for c in range(images.shape[1]):
            dy, dx = rng.integers(0, 2 * pad + 1, size=2)
            p = np.pad(images[i, c], ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            out[i, c] = p[dy:dy + h, dx:dx + w]
    return out


def split_by_task(sources: Sequence[PolicyData], dataset_weights: Optional[Sequence[float]] = None
                  ) -> tuple[list[PolicyData], list[float]]:
    """One source per (dataset, task) and weights giving every task the same share of a batch (a task found in
    several datasets is split between them by their step counts). With `dataset_weights`, each dataset gets its
    weight's share and splits it equally among its own tasks (stage 2: the harvest's share beside an expert set
    whose tasks are balanced)."""
    parts = []
    for i, s in enumerate(sources):
        tasks = sorted({s.ds.episode(k)["task"] for k in range(s.num_episodes)})
        for t in tasks:
            parts.append((i, t, PolicyData(s.root, s.cameras, include_failed=s.include_failed, tasks=[t])))
        s.ds.release()  # the whole-set view is replaced by its parts: free its file descriptors now
    if dataset_weights is not None:
        if len(dataset_weights) != len(sources):
            raise DataError(f"{len(sources)} datasets but {len(dataset_weights)} mixture weights")
        per_set = {i: sum(1 for j, _, _ in parts if j == i) for i in range(len(sources))}
        total = sum(w for i, w in enumerate(dataset_weights) if per_set[i])
        return [p for _, _, p in parts], [dataset_weights[i] / total / per_set[i] for i, _, _ in parts]
    names = sorted({t for _, t, _ in parts})
    totals = {t: sum(len(p) for _, u, p in parts if u == t) for t in names}
    return [p for _, _, p in parts], [len(p) / totals[t] / len(names) for _, t, p in parts]


class MixtureBatches:
    """Deterministic batches from several PolicyData sources mixed by weight, split across processes."""

    def __init__(self, sources: Sequence[PolicyData], weights: Optional[Sequence[float]], batch_size: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1, augment_shift_px: int = 0,
                 counterfactual_rate: float = 0.0):
        if not sources:
            raise DataError("no datasets given")
        weights = [1.0] * len(sources) if not weights else list(weights)
        if len(weights) != len(sources):
            raise DataError(f"{len(sources)} datasets but {len(weights)} mixture weights")
        w = np.asarray(weights, np.float64)
        if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise DataError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
        if batch_size % world_size:
            raise DataError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        cams = {tuple(s.cameras) for s in sources}
        if len(cams) != 1:
            raise DataError(f"datasets read different cameras {sorted(cams)}")
        self.sources = list(sources)
        self.weights = (w / w.sum()).tolist()
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.augment_shift_px = int(augment_shift_px)
        self.counterfactual_rate = float(counterfactual_rate)
        self.image_shape = sources[0].image_shape
        self._perms: "OrderedDict[tuple[int, int], np.ndarray]" = OrderedDict()
        self._consumed_step = 0
        self._consumed = np.zeros(len(sources), np.int64)

    def counts(self, step: int) -> np.ndarray:
        """Samples from each source in the global batch of `step` (sums to batch_size)."""
        quota = np.asarray(self.weights) * self.batch_size
        base = np.floor(quota).astype(np.int64)
        left = self.batch_size - int(base.sum())
        if left:
            frac = quota - base
            rng = np.random.default_rng([self.seed, 11, step])
            extra = rng.choice(len(quota), size=left, replace=False, p=frac / frac.sum())
            np.add.at(base, extra, 1)
        return base

    def _consumed_before(self, step: int) -> np.ndarray:
        if step < self._consumed_step:
            self._consumed_step, self._consumed = 0, np.zeros(len(self.sources), np.int64)
        while self._consumed_step < step:
            self._consumed += self.counts(self._consumed_step)
            self._consumed_step += 1
        return self._consumed.copy()

    def _perm(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        p = self._perms.get(key)
        if p is None:
            p = np.random.default_rng([self.seed, 13, k, epoch]).permutation(len(self.sources[k]))
            self._perms[key] = p
            while len(self._perms) > 2 * len(self.sources) + 2:
                self._perms.popitem(last=False)
        return p

    def global_picks(self, step: int) -> list[tuple[int, int]]:
        """(source, index) of every sample of the global batch of `step`, in batch order."""
        start = self._consumed_before(step)
        picks = []
        for k, n in enumerate(self.counts(step)):
            size = len(self.sources[k])
            for pos in range(int(start[k]), int(start[k] + n)):
                picks.append((k, int(self._perm(k, pos // size)[pos % size])))
        order = np.random.default_rng([self.seed, 17, step]).permutation(len(picks))
        return [picks[i] for i in order]

    def batch(self, step: int) -> Batch:
        """This process's slice of the global batch of `step`."""
        lo = self.rank * self.local_batch
        picks = self.global_picks(step)[lo:lo + self.local_batch]
        parts: list[Optional[Batch]] = [None] * len(picks)
        by_source: dict[int, list[int]] = {}
        for j, (k, _) in enumerate(picks):
            by_source.setdefault(k, []).append(j)
        for k, slots in by_source.items():
            b = self.sources[k].batch([picks[j][1] for j in slots])
            if b.images is not None and b.images.shape[2:] != self.image_shape:
                b.images = _resize_to(b.images, self.image_shape)
            for r, j in enumerate(slots):
                parts[j] = b.row(r)
        kinds = {p.features is None for p in parts}
        if len(kinds) != 1:
            raise DataError("some sources serve cached features and others images: use features for all or none")
        if self.counterfactual_rate > 0:
            parts += self._counterfactuals(step, lo, picks, parts)
        out = Batch.concat(parts)
        if self.augment_shift_px and out.images is not None:  # cached features: no pixel augmentation possible
            # Seeded by the sample's position in the global batch: the same pixels whatever the process split.
            for j in range(len(out)):
                rng = np.random.default_rng([self.seed, 19, step, lo + j])
                out.images[j:j + 1] = random_shift(out.images[j:j + 1], self.augment_shift_px, rng)
        return out

    def _counterfactuals(self, step: int, lo: int, picks: list, rows: list) -> list[Batch]:
        """Extra rows: a labelled sample again with its instruction naming another object of the scene and that
        object's position as the readout's target; no action label (the recorded action is for the named task)."""
        extra = []
        for j, ((k, i), row) in enumerate(zip(picks, rows)):
            rng = np.random.default_rng([self.seed, 23, step, lo + j])
            if rng.random() >= self.counterfactual_rate:
                continue
            alts = self.sources[k].alternatives(i)
            if not alts:
                continue
            text, xyz = alts[int(rng.integers(len(alts)))]
            extra.append(Batch(row.images, [text], row.state, row.action, [row.obs_ids[0] + ":cf"], row.features,
                               np.asarray(xyz, np.float32)[None], np.zeros(1, bool)))
        return extra

    def norm_stats(self) -> NormStats:
        return NormStats.pooled([s.norm_stats() for s in self.sources], self.weights)

    def describe(self) -> str:
        return ", ".join(f"{s.root} ({len(s)} steps, {s.num_episodes} episodes, weight {w:.2f})"
                         for s, w in zip(self.sources, self.weights))
