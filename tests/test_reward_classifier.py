"""Success classifier on latents (rl_agent/reward_classifier.py): learns separable synthetic latents with a class
imbalance, reports held-out accuracy (split by episode), round-trips through save/load, refuses bad input."""
from __future__ import annotations

import numpy as np
import pytest

from rl_agent.reward_classifier import ClassifierConfig, SuccessClassifier

N, D = 6, 16


def synthetic_frames(seed: int, episodes: int = 40, frames: int = 12):
    """Episodes of random latents; the last 3 frames of every other episode are successes, marked by a shift
    along a fixed random direction (plus noise) in every token."""
    rng = np.random.default_rng(seed)
    direction = np.random.default_rng(123).standard_normal(D).astype(np.float32)
    direction /= np.linalg.norm(direction)
    lat, labels, ep = [], [], []
    for e in range(episodes):
        x = rng.standard_normal((frames, N, D)).astype(np.float32)
        y = np.zeros(frames, bool)
        if e % 2 == 0:
            y[-3:] = True
            x[-3:] += 1.5 * direction  # success frames
        lat.append(x)
        labels.append(y)
        ep.append(np.full(frames, e))
    return np.concatenate(lat).astype(np.float16), np.concatenate(labels), np.concatenate(ep)


CFG = ClassifierConfig(hidden_dims=[32], epochs=40, batch_size=64)


def test_classifier_learns_separable_latents_and_reports_accuracy(tmp_path):
    latents, labels, episodes = synthetic_frames(0)
    assert labels.mean() < 0.2  # imbalanced, as real success labels are
    clf = SuccessClassifier(D, CFG)
    report = clf.fit(latents, labels, episode_ids=episodes)
    assert report["val_frames"] > 0 and report["train_frames"] + report["val_frames"] == len(labels)
    assert report["val_accuracy"] >= 0.9 and report["val_balanced_accuracy"] >= 0.9, report
    assert clf.report == report
    # held-out episodes are whole episodes: fresh data from another seed is classified as well
    test_lat, test_labels, _ = synthetic_frames(1, episodes=10)
    pred = clf.predict(test_lat)
    assert (pred == test_labels).mean() >= 0.9
    assert pred[test_labels].mean() >= 0.8  # the minority class is found, not ignored
    p = clf.predict_proba(test_lat[:1][0])  # one unbatched frame
    assert p.shape == (1,) and 0.0 <= p[0] <= 1.0
    np.testing.assert_array_equal(clf.reward(test_lat), pred.astype(np.float32))

    path = clf.save(tmp_path / "success.msgpack")
    loaded = SuccessClassifier.load(path)
    np.testing.assert_allclose(loaded.predict_proba(test_lat), clf.predict_proba(test_lat), atol=1e-6)
    assert loaded.report["val_accuracy"] == report["val_accuracy"]


def test_labels_without_signal_give_chance_accuracy():
    """Shuffled labels: the held-out balanced accuracy must not look good (the report is honest)."""
    latents, labels, episodes = synthetic_frames(2)
    rng = np.random.default_rng(0)
    clf = SuccessClassifier(D, CFG)
    report = clf.fit(latents, rng.permutation(labels), episode_ids=episodes)
    assert report["val_balanced_accuracy"] < 0.75, report


def test_bad_input_is_refused():
    latents, labels, _ = synthetic_frames(3, episodes=4)
    clf = SuccessClassifier(D, CFG)
    with pytest.raises(RuntimeError, match="not trained"):
        clf.predict_proba(latents)
    with pytest.raises(ValueError, match="positive"):
        clf.fit(latents, np.zeros(len(latents), bool))
    with pytest.raises(ValueError, match="labels"):
        clf.fit(latents, labels[:-1])
    bad = latents.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(bad, labels)
    with pytest.raises(ValueError, match="dim"):
        SuccessClassifier(D + 1, CFG).fit(latents, labels)
