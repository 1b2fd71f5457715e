"""Dataset tools: validate (CLI exit codes on real defects), stats, view, the cached loader, the benchmark."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from teleop import episode_format as ef
from teleop import storage
from teleop.dataset import EpisodeDataset, compute_stats, iter_raw, read_episode, read_metadata
from teleop.dataset_cli import main as cli
from teleop.episode_format import CameraConfig
from teleop.recorder import EpisodeRecorder, RecorderConfig
from teleop.synthetic import record_episode, synthetic_action, synthetic_state

ROOT = Path(__file__).resolve().parents[1]
CAMS = (CameraConfig("front", width=64, height=48), CameraConfig("wrist", width=32, height=32))
PLAN = [("pick_red_block", 6, True), ("pick_red_block", 4, True), ("pick_blue_block", 5, False),
        ("pick_blue_block", 7, True)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    with EpisodeRecorder(RecorderConfig(root=str(root), cameras=CAMS, min_free_mb=0)) as rec:
        for i, (task, n, ok) in enumerate(PLAN):
            record_episode(rec, n, task=task, success=ok, t0=1.7e9 + 100 * i)
    return root


def corrupt_copy(root: Path, src: str, name: str, tamper) -> None:
    """Re-write episode `src` as `name`, passing each message through tamper(step, topic, stamp, msg) ->
    (stamp, msg) or None (drop). Bypasses the recorder's validation on purpose."""
    path = root / storage.EPISODES / f"{src}.mcap"
    meta = dict(read_metadata(path), name=name)
    ts = ef.typestore()
    f = storage.EpisodeFile(root, name, meta["topics"], ts)
    steps: dict[str, int] = {}
    for topic, msgtype, stamp, data in iter_raw(path):
        k = steps[topic] = steps.get(topic, -1) + 1
        out = tamper(k, topic, stamp, ts.deserialize_cdr(data, msgtype))
        if out is not None:
            f.write(topic, out[0], out[1])
    final = f.finalize(ef.metadata_to_custom_data(meta))
    storage.append_index(root, storage.index_entry(meta, final))


def test_validate_cli_accepts_a_good_dataset(dataset, capsys):
    assert cli(["validate", str(dataset)]) == 0
    assert "4 episodes, 22 steps: OK" in capsys.readouterr().out
    assert cli(["validate", str(dataset), "--jobs", "2"]) == 0


def test_validate_cli_reports_each_defect_with_nonzero_exit(dataset, tmp_path, capsys):
    root = tmp_path / "bad"
    shutil.copytree(dataset, root, ignore=shutil.ignore_patterns(".lock", ".cache"))

    def nan_action(k, topic, stamp, msg):
        if topic == ef.TOPIC_ACTION and k == 3:
            msg.data = np.r_[msg.data[:2], np.nan, msg.data[3:]]
        return stamp, msg

    def drop_last_instruction(k, topic, stamp, msg):
        return None if (topic == ef.TOPIC_INSTRUCTION and k == 5) else (stamp, msg)

    def stamps_go_back(k, topic, stamp, msg):
        if k == 2:
            stamp -= 150_000_000  # before step 1
            if hasattr(msg, "header"):
                msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return stamp, msg

    def broken_image(k, topic, stamp, msg):
        if topic == "/irevla/camera/front/image_raw" and k == 1:
            msg.data = msg.data[:100]
        return stamp, msg

    def header_off(k, topic, stamp, msg):
        if topic == ef.TOPIC_EE_POSE and k == 0:
            msg.header.stamp.nanosec += 1
        return stamp, msg

    for i, tamper in enumerate([nan_action, drop_last_instruction, stamps_go_back, broken_image, header_off]):
        corrupt_copy(root, "episode_000000", f"episode_0001{i:02d}", tamper)
    (root / storage.EPISODES / "episode_000001.mcap").unlink()  # index line without file
    (root / storage.EPISODES / "episode_000099.mcap").write_bytes(b"\x89MCAP0\r\nnot really")  # garbage
    capsys.readouterr()
    assert cli(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    for expected in [
        "episode_000100: step 3: action contains NaN/inf",
        "episode_000101: frame counts differ across topics",
        "episode_000102: /irevla/episode/action: stamps are not strictly increasing",
        "episode_000103: camera front step 1: image does not decode",
        "episode_000104: /irevla/robot/ee_pose: header stamps differ from the log times",
        "index.jsonl: episode_000001 has no file",
        "episode_000099: file is not in index.jsonl",
        "episode_000099: ", "not a readable MCAP episode",
    ]:
        assert expected in out, f"{expected!r} not in:\n{out}"
    # reindex makes the index agree with the files again; the defective files still fail validation
    assert cli(["reindex", str(root)]) == 0
    capsys.readouterr()
    assert cli(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert "has no file" not in out and "not in index.jsonl" not in out and "NaN/inf" in out


def test_validate_cli_on_a_missing_directory(tmp_path, capsys):
    assert cli(["validate", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_stats_normalization_matches_numpy(dataset, tmp_path, capsys):
    out = tmp_path / "stats.json"
    assert cli(["stats", str(dataset), "-o", str(out)]) == 0
    assert "normalization statistics written" in capsys.readouterr().out
    stats = json.loads(out.read_text())
    used = [n for _, n, ok in PLAN if ok]
    A = np.concatenate([[synthetic_action(k) for k in range(n)] for n in used])
    S = np.concatenate([[np.concatenate([s["q"], s["ee_pos"], s["ee_quat"], [s["gripper_width"]]])
                         for s in map(synthetic_state, range(n))] for n in used])
    assert stats["episodes"] == 3 and stats["steps"] == A.shape[0] == 17
    for key, X in (("action", A), ("state", S)):
        st = stats[key]
        np.testing.assert_allclose(st["mean"], X.mean(0), atol=1e-9)
        np.testing.assert_allclose(st["std"], X.std(0), atol=1e-9)
        np.testing.assert_allclose(st["min"], X.min(0))
        np.testing.assert_allclose(st["max"], X.max(0))
        np.testing.assert_allclose(st["p01"], np.percentile(X, 1, axis=0))
        np.testing.assert_allclose(st["p99"], np.percentile(X, 99, axis=0))
    assert stats["action"]["names"] == list(ef.ACTION_NAMES) and stats["state"]["names"][-1] == "gripper_width"
    assert stats["per_task"]["pick_blue_block"] == {"success": 1, "failure": 1,
                                                    "length": {"mean": 7.0, "min": 7, "max": 7, "median": 7.0}}
    assert stats["length"]["min"] == 4 and stats["length"]["max"] == 7
    assert compute_stats(dataset, include_failed=True)["steps"] == 22


def test_view_renders_side_by_side_video(dataset, tmp_path, capsys):
    import av
    out = tmp_path / "ep.mp4"
    assert cli(["view", str(dataset), "3", "-o", str(out)]) == 0
    with av.open(str(out)) as c:
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 7
    assert (frames[0].width, frames[0].height) == ((64 + 32) * 2, 48 * 2 + 64)
    assert cli(["view", str(dataset), "episode_000042", "-o", str(out)]) == 2
    assert "no episode" in capsys.readouterr().err


def test_episode_dataset_caches_decoded_steps(dataset, tmp_path):
    cache = tmp_path / "cache"
    ds = EpisodeDataset(dataset, cache_dir=cache)
    assert ds.num_episodes == 3 and len(ds) == 17 and ds.decoded == 3
    ep = read_episode(dataset / storage.EPISODES / "episode_000001.mcap")
    item = ds[6 + 2]  # episode 1 (second successful), step 2
    assert (item["episode"], item["step"], item["task"]) == ("episode_000001", 2, "pick_red_block")
    np.testing.assert_array_equal(item["images"]["front"], ep.images["front"][2])
    np.testing.assert_allclose(item["state"], ep.state[2], rtol=1e-6)
    np.testing.assert_allclose(item["action"], ep.action[2], rtol=1e-6)
    assert item["instruction"] == "do pick_red_block" and ds[-1]["episode"] == "episode_000003"
    assert isinstance(ds.episode(0)["images"]["front"], np.memmap)
    with pytest.raises(IndexError):
        ds[17]
    assert EpisodeDataset(dataset, cache_dir=cache).decoded == 0  # second epoch/run: no decoding
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy, ignore=shutil.ignore_patterns(".lock", ".cache"))
    assert EpisodeDataset(copy, cache_dir=cache).decoded == 0  # keyed by content hash, not by path
    everything = EpisodeDataset(dataset, cache_dir=cache, include_failed=True)
    assert len(everything) == 22 and everything.decoded == 1
    assert len(EpisodeDataset(dataset, cache_dir=cache, tasks=["pick_blue_block"])) == 7


def test_cache_cli(dataset, tmp_path, capsys):
    assert cli(["cache", str(dataset), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "3 episodes, 17 steps cached" in capsys.readouterr().out


def test_benchmark_short_run():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_recorder.py"), "--seconds", "1.5",
                          "--episode-steps", "15"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert any(l.startswith("steps written") and "dropped" in l for l in lines)
    assert any("bytes per 100-step episode" in l and "2,000 episodes" in l for l in lines)
    assert lines[-1].startswith("RATIO capacity/needed = ")
    assert float(lines[-1].split("=")[1].split("x")[0]) > 1.0
