"""LeRobotDataset v3.0 export / import (teleop/lerobot_export.py, lerobot_import.py), checked with an independent reader
(tests/lerobot_reader.py: pyarrow + PyAV against the published layout) on a small real expert set."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lerobot_reader import LeRobotV3  # tests/ is on sys.path (conftest.py)

# Measured (64x64 twin renders, libx264 yuv444p crf 0): mean absolute error 0.34 / 255, max 2.
MAE_LIMIT = 1.0


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "scripted"
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out),
                           "--episodes-per-task", "2", "--tasks", "pick_red_block", "press_button", "--workers", "1",
                           "--image-size", "64", "--no-progress"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    from teleop.dataset import read_episode, selected_entries
    episodes = [read_episode(e["path"]) for e in selected_entries(out)]
    assert len(episodes) == 4
    return out, episodes


@pytest.fixture(scope="module", params=["one_file", "split_files"])
def exported(request, source, tmp_path_factory):
    """The default export (one data file, one video per camera) and one split into a file per episode."""
    from teleop.lerobot_export import export_lerobot
    src, _ = source
    out = tmp_path_factory.mktemp("export") / request.param
    kw = {} if request.param == "one_file" else {"data_file_size_mb": 1e-6, "video_file_size_mb": 1e-6}
    summary = export_lerobot(src, out, **kw)
    return out, summary


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_independent_reader_sees_the_source(source, exported):
    _, episodes = source
    out, summary = exported
    r = LeRobotV3(out)
    assert r.problems() == []
    info = r.info
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and info["robot_type"] == "sim_twin"
    assert info["total_episodes"] == 4 and info["total_frames"] == sum(len(e) for e in episodes)
    assert set(r.tasks.values()) == {e.instruction for e in episodes}
    f = info["features"]
    assert f["action"] == {"dtype": "float64", "shape": [7], "names": ["dx", "dy", "dz", "rx", "ry", "rz", "gripper"]}
    assert f["observation.state"]["names"] == episodes[0].meta["state_names"]
    assert sorted(r.video_keys) == ["observation.images.front", "observation.images.wrist"]
    for k in r.video_keys:
        assert f[k]["shape"] == [64, 64, 3] and f[k]["info"]["video.codec"] == "h264"
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert stats["action"]["count"] == [info["total_frames"]]
    assert np.allclose(stats["action"]["mean"], np.concatenate([e.action for e in episodes]).mean(0))
    front = "videos/observation.images.front"
    files = {(row[f"{front}/chunk_index"], row[f"{front}/file_index"]) for row in r.episodes}
    assert len(files) == (1 if out.name == "one_file" else 4)
    assert len(r.data_files) == len(files)
    total_video_frames = sum(r.video_frame_count("observation.images.front", c, fi) for c, fi in files)
    assert total_video_frames == info["total_frames"]
    maes = []
    for k, src in enumerate(episodes):
        ep = r.episode(k)
        n = len(src)
        assert ep["length"] == n and ep["task"] == src.instruction and ep["tasks"] == [src.instruction]
        assert np.array_equal(ep["action"], src.action)  # float64: bit-exact
        assert np.array_equal(ep["observation.state"], src.state)
        assert np.array_equal(ep["frame_index"], np.arange(n))
        assert np.allclose(ep["timestamp"], np.arange(n) / 10.0)
        for cam in ("front", "wrist"):
            frames = ep["images"][f"observation.images.{cam}"]
            assert frames.shape == (n, 64, 64, 3)
            maes.append(_mae(frames, src.images[cam]))
    print(f"{out.name}: export {summary['bytes'] / 1e3:.0f} kB (video {summary['video_bytes'] / 1e3:.0f} kB), "
          f"frame MAE max {max(maes):.3f} mean {np.mean(maes):.3f}")
    assert max(maes) < MAE_LIMIT


def test_round_trip_import(source, exported, tmp_path):
    from teleop.dataset import read_episode, selected_entries, validate_dataset
    from teleop.lerobot_import import import_lerobot
    src_dir, episodes = source
    out, _ = exported
    dest = tmp_path / "imported"
    s = import_lerobot(out, dest)
    assert s["episodes"] == 4
    rep = validate_dataset(dest)
    assert rep.ok, rep.summary()
    assert len((dest / "index.jsonl").read_text().splitlines()) == 4
    got = {e["extra"]["source_episode_index"]: e for e in selected_entries(dest)}
    assert sorted(got) == [0, 1, 2, 3]
    for k, src in enumerate(episodes):
        e = got[k]
        ep = read_episode(e["path"])
        assert len(ep) == len(src)
        assert np.array_equal(ep.action, src.action)
        np.testing.assert_allclose(ep.state, src.state, rtol=0, atol=1e-12)
        assert ep.instruction == src.instruction and ep.instructions == src.instructions
        assert (e["task"], e["category"], e["success"]) == (src.meta["task"], src.meta["category"], True)
        assert e["extra"]["seed"] == src.meta["extra"]["seed"]
        assert e["state_names"] == src.meta["state_names"] and e["control_hz"] == 10.0
        assert np.allclose(np.diff(ep.stamps), 1e8)
        for cam in ("front", "wrist"):
            assert _mae(ep.images[cam], src.images[cam]) < MAE_LIMIT


def _copy(out, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    return bad


def test_bad_inputs_are_one_line_errors(source, tmp_path, capsys):
    from teleop.dataset_cli import main
    from teleop.lerobot_export import export_lerobot
    from teleop.lerobot_import import import_lerobot
    out = tmp_path / "lr"
    export_lerobot(source[0], out)
    # missing directory
    assert main(["import-lerobot", str(tmp_path / "nope"), "--out", str(tmp_path / "d")]) == 2
    assert "no LeRobot dataset directory" in capsys.readouterr().err
    # wrong action shape (a joint-space robot)
    bad = _copy(out, tmp_path)
    info = json.loads((bad / "meta" / "info.json").read_text())
    info["features"]["action"]["shape"] = [6]
    (bad / "meta" / "info.json").write_text(json.dumps(info))
    assert main(["import-lerobot", str(bad), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "feature 'action' has shape [6], expected [7]" in err and len(err.strip().splitlines()) == 1
    # action names that are not an ee delta: refused unless --assume-ee-delta
    info["features"]["action"].update(shape=[7], names=[f"joint{i}" for i in range(7)])
    (bad / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="not the end-effector delta layout"):
        import_lerobot(bad, tmp_path / "d")
    # a state that is not joints + ee pose + gripper
    info["features"]["action"]["names"] = ["dx", "dy", "dz", "rx", "ry", "rz", "gripper"]
    info["features"]["observation.state"]["names"][-1] = "something_else"
    (bad / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="observation.state.*not irevla's state layout"):
        import_lerobot(bad, tmp_path / "d")
    # corrupt info.json
    (bad / "meta" / "info.json").write_text("{not json")
    assert main(["import-lerobot", str(bad), "--out", str(tmp_path / "d")]) == 2
    assert "info.json is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # refused before anything was written
    # export into a non-empty directory
    assert main(["export", str(source[0]), "--format", "lerobot", "--out", str(out)]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_cli_export_import(source, tmp_path):
    src_dir, episodes = source
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    run = lambda *a: subprocess.run([sys.executable, "-m", "robot_server.cli", "dataset", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=120, env=env)
    p = run("export", str(src_dir), "--format", "lerobot", "--out", str(tmp_path / "lr"))
    assert p.returncode == 0, p.stderr
    assert "4 episodes" in p.stdout and "LeRobotDataset v3.0" in p.stdout
    p = run("import-lerobot", str(tmp_path / "lr"), "--out", str(tmp_path / "back"))
    assert p.returncode == 0, p.stderr
    assert "4 episodes" in p.stdout
    p = run("validate", str(tmp_path / "back"))
    assert p.returncode == 0, p.stdout + p.stderr
