"""Crash safety (SIGKILL of a recording process) and disk-full handling, with real files on disk."""
from __future__ import annotations

import errno
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teleop import storage
from teleop.dataset import validate_dataset, validate_episode
from teleop.episode_format import CameraConfig
from teleop.recorder import EpisodeRecorder, RecorderConfig, RecorderDiskError
from teleop.synthetic import record_episode, synthetic_action, synthetic_images, synthetic_state

ROOT = Path(__file__).resolve().parents[1]
SMALL = (CameraConfig("front", width=64, height=48), CameraConfig("wrist", width=32, height=32))

# The recording child: records short episodes forever (or until a hook kills it at a chosen point).
CHILD = r'''
import os, signal, sys, time
sys.path.insert(0, sys.argv[4])
import numpy as np
from teleop import storage
from teleop.episode_format import CameraConfig
from teleop.recorder import EpisodeRecorder, RecorderConfig
from teleop.synthetic import record_episode

root, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
asynchronous = mode.startswith("async_")  # episodes end with stop_async(): saved while the next one records
mode = mode[len("async_"):] if asynchronous else mode
arm = 2 if asynchronous else 1  # hooks fire once this many episodes were saved by this process
cams = (CameraConfig("front", width=64, height=48), CameraConfig("wrist", width=32, height=32))
rec = EpisodeRecorder(RecorderConfig(root=root, cameras=cams, min_free_mb=0))
finished = [0]
n0 = len(rec.episodes)

def saved():
    return len(rec.episodes) - n0

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode in ("before_rename", "after_rename"):
    real_replace = os.replace
    def replace(src, dst):
        if str(src).endswith(".mcap") and saved() >= arm:
            if mode == "before_rename":
                die()
            real_replace(src, dst)
            die()
        return real_replace(src, dst)
    storage.os.replace = replace
elif mode == "mid_index":
    real_write = storage._disk_write
    def write(f, data):
        if str(getattr(f, "name", "")).endswith("index.jsonl") and saved() >= arm:
            real_write(f, data[: len(data) // 2])
            f.flush()
            die()
        return real_write(f, data)
    storage._disk_write = write
elif mode == "mid_step":
    real_file_write = storage.EpisodeFile.write_serialized
    calls = [0]
    def file_write(self, topic, stamp, data):
        if saved() >= arm:
            calls[0] += 1
            if calls[0] == 10:
                die()
        return real_file_write(self, topic, stamp, data)
    storage.EpisodeFile.write_serialized = file_write

print("READY", rec.next_episode_number, flush=True)
rng = np.random.default_rng(seed)
t0 = 1.7e9 + seed * 1e4
from teleop.synthetic import synthetic_action, synthetic_images, synthetic_state
while True:
    n, task, success = int(rng.integers(1, 8)), f"task{int(rng.integers(3))}", bool(rng.random() < 0.8)
    if asynchronous:
        rec.start(task, "expert", "do it", "tester")
        for k in range(n):
            rec.add_step(synthetic_images(cams, k), synthetic_state(k), synthetic_action(k), t0 + 0.1 * k)
        rec.stop_async(success)
    else:
        record_episode(rec, n, task=task, t0=t0, success=success)
    finished[0] += 1
    t0 += 100.0
'''


def run_child(root: Path, seed: int, mode: str, kill_after: float | None) -> int:
    """Start the child, wait for READY, then SIGKILL it after `kill_after` s (or let its hook kill it)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root), str(seed), mode, str(ROOT)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY"), f"child failed to start: {line!r} {proc.stderr.read()}"
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == -signal.SIGKILL, f"child ended with {rc}: {proc.stderr.read()}"
    return int(line.split()[1])


def snapshot(root: Path) -> dict[str, str]:
    return {n: hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
            for n, p in storage.episode_files(root).items()}


def test_sigkill_at_random_moments_and_at_each_commit_phase(tmp_path):
    rng = random.Random(1234)
    rounds = [("random", rng.uniform(0.0, 0.35)) for _ in range(6)]
    rounds += [(m, None) for m in ("mid_step", "before_rename", "after_rename", "mid_index")]
    rng.shuffle(rounds)
    before: dict[str, str] = {}
    for seed, (mode, delay) in enumerate(rounds):
        next_number = run_child(tmp_path, seed, mode, delay)
        files = storage.episode_files(tmp_path)
        # The child's recorder resumed the numbering after the previous crash.
        assert next_number == len(before), (mode, next_number, sorted(before))
        after = snapshot(tmp_path)
        for name, digest in before.items():  # finished episodes survive every later crash untouched
            assert after.get(name) == digest, f"{name} lost or changed by a crash in mode {mode}"
        before = after
        assert list(files) == [storage.episode_name(i) for i in range(len(files))]  # no gaps
    assert len(before) >= 4  # at least one per hook round; the random rounds add more on a quiet machine
    for name, path in storage.episode_files(tmp_path).items():  # every finished episode validates
        errs, n = validate_episode(path)
        assert not errs and n > 0, errs
    # A new recorder reconciles (leftover partial, index lines) and resumes the numbering.
    with EpisodeRecorder(RecorderConfig(root=str(tmp_path), cameras=SMALL, min_free_mb=0)) as rec:
        assert rec.next_episode_number == len(before)
        assert len(rec.episodes) == len(before)
        assert record_episode(rec, 3)["name"] == storage.episode_name(len(before))
    rep = validate_dataset(tmp_path)
    assert rep.ok and not rep.warnings, rep.summary()


def test_sigkill_while_episodes_are_saved_in_the_background(tmp_path):
    """stop_async(): a kill loses at most the episode being saved and the one in progress, never a finished one."""
    rng = random.Random(99)
    rounds = [("async_random", rng.uniform(0.0, 0.3)) for _ in range(3)]
    rounds += [("async_before_rename", None), ("async_after_rename", None), ("async_mid_index", None)]
    before: dict[str, str] = {}
    for seed, (mode, delay) in enumerate(rounds):
        next_number = run_child(tmp_path, 100 + seed, mode, delay)
        assert next_number == len(before), (mode, next_number, sorted(before))
        after = snapshot(tmp_path)
        for name, digest in before.items():
            assert after.get(name) == digest, f"{name} lost or changed by a crash in mode {mode}"
        assert list(after) == [storage.episode_name(i) for i in range(len(after))]  # no gaps
        before = after
    assert len(before) >= 6  # at least two per hook round
    for path in storage.episode_files(tmp_path).values():
        errs, n = validate_episode(path)
        assert not errs and n > 0, errs
    with EpisodeRecorder(RecorderConfig(root=str(tmp_path), cameras=SMALL, min_free_mb=0)) as rec:
        assert rec.next_episode_number == len(before) and len(rec.episodes) == len(before)
    assert validate_dataset(tmp_path).ok


# ------------------------------------------------------------------------------------------------ disk full
def _check_after_disk_full(root: Path, rec: EpisodeRecorder, finished: int, exc: RecorderDiskError) -> None:
    msg = str(exc)
    assert "recording stopped" in msg and "No space left on device" in msg and "disk full" in msg
    assert f"{finished} finished episodes are intact" in msg and exc.errno == errno.ENOSPC
    assert not rec.recording and rec.progress().last_error == msg
    assert not any((root / storage.PARTIAL).iterdir())  # the partial file is removed
    assert len(storage.episode_files(root)) == finished


def _fill_until_error(rec: EpisodeRecorder, steps: int, noise: bool) -> RecorderDiskError:
    for i in range(50):
        try:
            record_episode(rec, steps, t0=1.7e9 + 100 * i, noise=noise)
        except RecorderDiskError as exc:
            return exc
    raise AssertionError("the disk never filled up")


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    try:
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mnt)], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {out.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=10)


def test_disk_full_on_a_real_tiny_filesystem(tiny_tmpfs):
    root = tiny_tmpfs / "data"
    cams = (CameraConfig("front"), CameraConfig("wrist"))  # 224x224 noisy frames: ~1 MB per 5 steps
    rec = EpisodeRecorder(RecorderConfig(root=str(root), cameras=cams, min_free_mb=0))
    exc = _fill_until_error(rec, 5, noise=True)
    finished = len(rec.episodes)
    assert finished >= 1
    _check_after_disk_full(root, rec, finished, exc)
    # Recording stays possible once space is freed; finished episodes are intact throughout.
    storage.episode_files(root)[storage.episode_name(0)].unlink()
    record_episode(rec, 2, t0=1.9e9)
    rec.close()
    for path in storage.episode_files(root).values():
        assert not validate_episode(path)[0]


def test_disk_full_injected_at_the_write_layer(tmp_path, monkeypatch):
    rec = EpisodeRecorder(RecorderConfig(root=str(tmp_path), cameras=SMALL, min_free_mb=0))
    record_episode(rec, 4)
    written = [0]
    real = storage._disk_write

    def full_disk(f, data):
        written[0] += len(data)
        if written[0] > 2000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, data)

    monkeypatch.setattr(storage, "_disk_write", full_disk)
    rec.start("t")
    for k in range(5):  # small frames stay in rosbags' 1 MiB chunk buffer: the failure comes at stop()
        rec.add_step(synthetic_images(SMALL, k), synthetic_state(k), synthetic_action(k), 5.0 + k)
    with pytest.raises(RecorderDiskError) as info:
        rec.stop(True)
    _check_after_disk_full(tmp_path, rec, 1, info.value)
    # While the disk stays full, every attempt fails the same clear way and leaves nothing behind.
    with pytest.raises(RecorderDiskError, match="No space left"):
        record_episode(rec, 3, t0=2e9)
    assert not any((tmp_path / storage.PARTIAL).iterdir())
    monkeypatch.setattr(storage, "_disk_write", real)
    assert record_episode(rec, 3, t0=1.95e9)["name"] == "episode_000001"
    rec.close()
    rep = validate_dataset(tmp_path)
    assert rep.ok and rep.n_files == 2, rep.summary()
