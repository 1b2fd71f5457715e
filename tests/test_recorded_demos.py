"""Demos from recorded episodes: a recorded expert-set episode becomes SACfD demo chunks through the same frozen VLA
encoder the actor uses; cached, so a restarted actor sends the same chunks without encoding again."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    out = tmp_path_factory.mktemp("recorded") / "data"
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out), "--episodes-per-task",
                           "2", "--tasks", "press_button", "--workers", "1", "--image-size", "128", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_recorded_episodes_become_demo_chunks(recorded, tmp_path):
    from policy.model import load_vla
    from rl_agent import transport as tp
    from rl_agent.env import LatentEncoder
    from rl_agent.recorded_demos import send_recorded_demos
    from teleop.dataset import EpisodeDataset
    encoder = LatentEncoder(load_vla(REPO / "policy" / "default_model"), torch_threads=1)
    sent = []
    n = send_recorded_demos(recorded, encoder, tmp_path, "press_button", 5, lambda o: o,
                            lambda kind, chunk: sent.append((kind, chunk)), log=lambda *_: None)
    assert n == 2 and [k for k, _ in sent] == [tp.KIND_DEMOS] * 2
    ds = EpisodeDataset(recorded)
    ep = ds.episode(0)
    chunk = sent[0][1]
    T = len(ep["action"])
    assert chunk["actions"].shape == (T, 7) and chunk["latents"].shape[0] == T + 1
    np.testing.assert_allclose(chunk["actions"], np.clip(ep["action"], -1, 1), atol=1e-6)
    first = encoder({c: np.asarray(ep["images"][c][0]) for c in encoder.cameras}, ep["instruction"])
    np.testing.assert_allclose(chunk["latents"][0].astype(np.float32), first, atol=2e-2)  # float16 on the wire
    np.testing.assert_allclose(chunk["state"][3], np.asarray(ep["state"][3])[-8:], atol=1e-6)
    assert chunk["rewards"][-1] == 1.0 and chunk["dones"][-1] and not chunk["dones"][:-1].any()
    # cached: a second actor start sends the same chunks and encodes nothing
    calls = encoder.calls
    again = []
    send_recorded_demos(recorded, encoder, tmp_path, "press_button", 5, lambda o: o,
                        lambda kind, chunk: again.append(chunk), log=lambda *_: None)
    assert encoder.calls == calls and len(again) == 2
    np.testing.assert_array_equal(again[0]["actions"], chunk["actions"])
    from rl_agent.recorded_demos import recorded_demo_chunks
    with pytest.raises(ValueError, match="no successful episodes of task open_drawer"):
        recorded_demo_chunks(recorded, encoder, "open_drawer", 5, log=lambda *_: None)


def test_train_classifier_from_marked_episodes(recorded, tmp_path):
    """`irevla train-classifier`: the last frames of successful episodes against the rest, on the VLA's latents."""
    out = tmp_path / "success.msgpack"
    base = [sys.executable, "-m", "robot_server.cli", "train-classifier", "--checkpoint",
            str(REPO / "policy" / "default_model"), "--data", str(recorded), "--out", str(out)]
    proc = subprocess.run(base + ["--task", "press_button"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "held-out accuracy" in proc.stdout.strip().splitlines()[-1]
    from policy.model import load_vla
    from rl_agent.env import LatentEncoder
    from rl_agent.reward_classifier import SuccessClassifier
    from teleop.dataset import EpisodeDataset
    clf = SuccessClassifier.load(out)
    encoder = LatentEncoder(load_vla(REPO / "policy" / "default_model"), torch_threads=1)
    ep = EpisodeDataset(recorded).episode(0)
    first = encoder({c: np.asarray(ep["images"][c][0]) for c in encoder.cameras}, ep["instruction"])
    last = encoder({c: np.asarray(ep["images"][c][-1]) for c in encoder.cameras}, ep["instruction"])
    p_first, p_last = clf.predict_proba(np.stack([first, last]))
    assert p_last > 0.5 > p_first, (p_first, p_last)  # pressed vs not yet
    proc = subprocess.run(base[:-2] + ["--out", str(tmp_path / "x.msgpack"), "--task", "open_drawer"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no episodes of task open_drawer" in proc.stderr
