"""EpisodeRecorder with real files on disk: round trip, independent readers, bad inputs, states, resume, index."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml

from teleop import episode_format as ef
from teleop import storage
from teleop.config import ConfigError, to_dict
from teleop.dataset import read_episode, read_metadata, validate_dataset
from teleop.episode_format import CameraConfig
from teleop.recorder import (EpisodeRecorder, RecorderConfig, RecorderDiskError, RecorderInputError,
                             RecorderStateError)
from teleop.synthetic import record_episode, synthetic_action, synthetic_images, synthetic_state

SMALL = (CameraConfig("front", width=64, height=48), CameraConfig("wrist", width=32, height=32))


def small_config(root, **kw) -> RecorderConfig:
    kw.setdefault("cameras", SMALL)
    return RecorderConfig(root=str(root), min_free_mb=0, **kw)


def expected_state(k: int) -> np.ndarray:
    s = synthetic_state(k)
    return np.concatenate([s["q"], s["ee_pos"], s["ee_quat"], [s["gripper_width"]]])


@pytest.fixture(scope="module")
def dataset_224(tmp_path_factory):
    """Two episodes at the production size (2 x 224x224 raw): one success, one failure."""
    root = tmp_path_factory.mktemp("ds224")
    with EpisodeRecorder(RecorderConfig(root=str(root), min_free_mb=0, robot={"backend": "sim"})) as rec:
        e0 = record_episode(rec, 12, task="pick_red_block", instruction="pick up the red block")
        e1 = record_episode(rec, 8, task="pick_blue_block", success=False, t0=1.8e9)
        prog = rec.progress()
    return root, [e0, e1], prog


def test_round_trip_values_metadata_index_and_progress(dataset_224):
    root, (e0, e1), prog = dataset_224
    assert (e0["name"], e1["name"]) == ("episode_000000", "episode_000001")
    ep = read_episode(root / e0["file"])
    assert len(ep) == 12 and ep.instruction == "pick up the red block"
    cams = RecorderConfig().cameras
    for k in range(12):
        for c in cams:
            np.testing.assert_array_equal(ep.images[c.name][k], synthetic_images(cams, k)[c.name])
        np.testing.assert_allclose(ep.state[k], expected_state(k))
        np.testing.assert_allclose(ep.action[k], synthetic_action(k))
    np.testing.assert_array_equal(ep.stamps, [int(round((1.7e9 + k * 0.1) * 1e9)) for k in range(12)])
    meta = read_metadata(root / e1["file"])
    for k, v in dict(task="pick_blue_block", category="expert", operator="tester", success=False, n_steps=8,
                     format=ef.FORMAT, control_hz=10.0, ros_distro="kilted").items():
        assert meta[k] == v, k
    assert [c["name"] for c in meta["cameras"]] == ["front", "wrist"]
    assert meta["cameras"][0]["width"] == 224 and meta["robot"]["backend"] == "sim"
    assert meta["robot"]["joint_names"] == list(ef.DEFAULT_JOINT_NAMES) and meta["software"]["python"]
    assert meta["state_names"][-1] == "gripper_width" and len(meta["state_names"]) == 15
    assert meta["start_time"].endswith("+00:00") and meta["duration_s"] == pytest.approx(0.8)
    index, bad = storage.read_index(root)
    assert bad == 0 and [e["name"] for e in index] == ["episode_000000", "episode_000001"]
    assert index[1]["success"] is False and index[0]["bytes"] == (root / e0["file"]).stat().st_size
    assert (prog.done, prog.failed, prog.target) == (1, 1, 2000)
    assert str(prog).startswith("1/2000 successful episodes (1 failed)")
    assert prog.per_task == {"pick_red_block": {"success": 1, "failure": 0},
                             "pick_blue_block": {"success": 0, "failure": 1}}
    assert validate_dataset(root).ok
    assert not list((root / storage.PARTIAL).iterdir())


def test_independent_reader_mcap_ros2_decodes_schemas_and_values(dataset_224):
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    root, (e0, _), _ = dataset_224
    cams = RecorderConfig().cameras
    with open(root / e0["file"], "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        schemas = {ch.topic: summary.schemas[ch.schema_id].name for ch in summary.channels.values()}
        assert schemas == {
            "/irevla/camera/front/image_raw": "sensor_msgs/msg/Image",
            "/irevla/camera/wrist/image_raw": "sensor_msgs/msg/Image",
            "/irevla/robot/joint_states": "sensor_msgs/msg/JointState",
            "/irevla/robot/ee_pose": "geometry_msgs/msg/PoseStamped",
            "/irevla/robot/gripper": "sensor_msgs/msg/JointState",
            "/irevla/episode/action": "std_msgs/msg/Float64MultiArray",
            "/irevla/episode/instruction": "std_msgs/msg/String",
        }
        assert {ch.message_encoding for ch in summary.channels.values()} == {"cdr"}
        assert set(summary.statistics.channel_message_counts.values()) == {12}
        steps: dict[str, list] = {}
        for _schema, channel, message, msg in reader.iter_decoded_messages():
            steps.setdefault(channel.topic, []).append((message.log_time, msg))
        custom = yaml.safe_load(next(m for m in reader.iter_metadata() if m.name == "rosbag2")
                                .metadata["serialized_metadata"])["custom_data"]
    meta = json.loads(custom["irevla.episode"])
    assert meta["task"] == "pick_red_block" and meta["n_steps"] == 12 and custom["irevla.success"] == "true"
    for k in range(12):
        stamp = steps["/irevla/episode/action"][k][0]
        for topic, items in steps.items():
            log_time, msg = items[k]
            assert log_time == stamp  # one sample per step, all at the step time
            if hasattr(msg, "header"):
                assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == stamp
        imgs = synthetic_images(cams, k)
        for c in cams:
            m = steps[c.topic][k][1]
            assert (m.height, m.width, m.encoding, m.step) == (224, 224, "rgb8", 672)
            np.testing.assert_array_equal(np.frombuffer(bytes(m.data), np.uint8).reshape(224, 224, 3), imgs[c.name])
        s = synthetic_state(k)
        js = steps["/irevla/robot/joint_states"][k][1]
        assert list(js.name) == list(ef.DEFAULT_JOINT_NAMES)
        np.testing.assert_allclose(js.position, s["q"])
        np.testing.assert_allclose(js.velocity, s["dq"])
        pose = steps["/irevla/robot/ee_pose"][k][1]
        assert pose.header.frame_id == "panda_link0"
        o = pose.pose.orientation
        np.testing.assert_allclose([o.w, o.x, o.y, o.z], s["ee_quat"])  # wxyz state -> ROS x,y,z,w fields
        np.testing.assert_allclose([pose.pose.position.x, pose.pose.position.y, pose.pose.position.z], s["ee_pos"])
        g = steps["/irevla/robot/gripper"][k][1]
        assert list(g.name) == ["gripper_width"] and g.position[0] == pytest.approx(s["gripper_width"])
        a = steps["/irevla/episode/action"][k][1]
        np.testing.assert_allclose(a.data, synthetic_action(k))
        assert a.layout.dim[0].label == "action" and a.layout.dim[0].size == 7
        assert steps["/irevla/episode/instruction"][k][1].data == "pick up the red block"


def test_rosbags_reader_opens_the_bare_file(dataset_224):
    from rosbags.rosbag2 import Reader

    root, (e0, _), _ = dataset_224
    with Reader(root / e0["file"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert len(counts) == 7 and set(counts.values()) == {12}


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_compressed_image_formats(tmp_path, fmt):
    cams = (CameraConfig("front", 64, 48, format=fmt), CameraConfig("wrist", 32, 32, format=fmt))
    with EpisodeRecorder(small_config(tmp_path, cameras=cams)) as rec:
        e = record_episode(rec, 3)
    ep = read_episode(tmp_path / e["file"])
    assert read_metadata(tmp_path / e["file"])["topics"]["/irevla/camera/front/image_raw/compressed"] == \
        "sensor_msgs/msg/CompressedImage"
    for k in range(3):
        ref = synthetic_images(cams, k)["front"]
        err = np.abs(ep.images["front"][k].astype(int) - ref).mean()
        assert err == 0 if fmt == "png" else err < 4
    assert validate_dataset(tmp_path).ok


def test_bad_inputs_raise_clear_errors_and_keep_the_episode(tmp_path):
    rec = EpisodeRecorder(small_config(tmp_path))
    rec.start("pick_red_block", "expert", "pick", "op")
    imgs, st, act = synthetic_images(SMALL, 0), synthetic_state(0), synthetic_action(0)
    rec.add_step(imgs, st, act, 10.0)
    cases = [
        (dict(images={**imgs, "front": np.zeros((48, 63, 3), np.uint8)}), r"camera front: image shape \(48, 63, 3\)"
         r" does not match the configured 48x64x3"),
        (dict(images={**imgs, "wrist": imgs["wrist"].astype(np.float32)}), "camera wrist: image dtype float32"),
        (dict(images={"front": imgs["front"]}), r"missing \['wrist'\]"),
        (dict(images={**imgs, "side": imgs["wrist"]}), r"unexpected \['side'\]"),
        (dict(action=np.r_[act[:3], np.nan, act[4:]]), r"action contains NaN/inf in \['rx'\]"),
        (dict(action=np.r_[act[:6], 1.5]), r"action outside \[-1, 1\] in \['gripper'\]"),
        (dict(action=act[:6]), "action has 6 values, expected 7"),
        (dict(state={**st, "q": np.r_[st["q"][:6], np.inf]}), r"state.q contains NaN/inf at index \[6\]"),
        (dict(state={**st, "q": st["q"][:6]}), "state.q has 6 values, expected 7"),
        (dict(state={**st, "ee_quat": [0, 0, 0, 0]}), "not a unit quaternion"),
        (dict(state={k: v for k, v in st.items() if k != "ee_pos"}), "state.ee_pos is missing"),
        (dict(state=None), "robot state is missing"),
        (dict(stamp=9.9), r"non-monotonic stamps: step 1 has stamp 9.9000\d+ s, not after the previous step's 10.0"),
        (dict(stamp=10.0), "non-monotonic stamps"),
        (dict(stamp=float("nan")), "stamp is not finite"),
        (dict(stamp=3e9), "outside the ROS time range"),
        (dict(stamp=-5), "outside the ROS time range"),
    ]
    for override, pattern in cases:
        kw = dict(images=imgs, state=st, action=act, stamp=10.1)
        kw.update(override)
        with pytest.raises(RecorderInputError, match=pattern):
            rec.add_step(**kw)
        assert rec.recording  # the episode in progress is kept
    assert rec.add_step(imgs, st, act, 10_100_000_000) == 2  # int = nanoseconds
    entry = rec.stop(True)
    rec.close()
    assert entry["n_steps"] == 2
    assert validate_dataset(tmp_path).ok


def test_state_machine_errors_discard_and_close(tmp_path):
    rec = EpisodeRecorder(small_config(tmp_path))
    imgs, st, act = synthetic_images(SMALL, 0), synthetic_state(0), synthetic_action(0)
    with pytest.raises(RecorderStateError, match="call start"):
        rec.add_step(imgs, st, act, 1.0)
    with pytest.raises(RecorderStateError, match="nothing to stop"):
        rec.stop(True)
    with pytest.raises(RecorderInputError, match="non-empty"):
        rec.start("  ")
    with pytest.raises(RecorderInputError, match="JSON"):
        rec.start("t", extra={"when": object()})
    with pytest.raises(RecorderInputError, match="instruction is not valid UTF-8"):
        rec.start("t", instruction="bad \udc80")
    with pytest.raises(RecorderInputError, match="instruction must be a string"):
        rec.start("t", instruction=None)
    name = rec.start("t")
    assert name == "episode_000000" and (tmp_path / storage.PARTIAL / name).is_dir()
    with pytest.raises(RecorderStateError, match="in progress"):
        rec.start("t")
    with pytest.raises(RecorderStateError, match="no steps"):
        rec.stop(True)
    assert rec.recording
    rec.add_step(imgs, st, act, 1.0)
    assert rec.discard() and not rec.discard()
    assert not (tmp_path / storage.PARTIAL / name).exists()
    assert rec.start("t") == "episode_000000"  # a discarded episode's number is reused
    rec.add_step(imgs, st, act, 1.0)
    prog = rec.close()  # quit with an episode in progress: discarded
    assert prog.done == 0 and storage.episode_files(tmp_path) == {}
    with pytest.raises(RecorderStateError, match="closed"):
        rec.start("t")
    rec.close()  # idempotent


def test_resume_numbering_and_index_reconcile(tmp_path):
    with EpisodeRecorder(small_config(tmp_path)) as rec:
        for i in range(3):
            record_episode(rec, 2, task=f"task{i % 2}")
    # A fresh recorder continues the numbering and the counts.
    with EpisodeRecorder(small_config(tmp_path)) as rec:
        assert rec.next_episode_number == 3 and rec.progress().done == 3
        assert not rec.reconcile_report.rebuilt
    # Damage the index: drop a line, add a torn line -> rebuilt from the files.
    lines = (tmp_path / storage.INDEX).read_text().splitlines()
    (tmp_path / storage.INDEX).write_text("\n".join(lines[:1] + lines[2:]) + '\n{"name": "episode_0000')
    (tmp_path / storage.EPISODES / "episode_000002.mcap").unlink()  # the user deleted a bad episode
    (tmp_path / storage.PARTIAL / "episode_000003").mkdir(parents=True)  # leftover of a crash
    assert not validate_dataset(tmp_path).ok
    with EpisodeRecorder(small_config(tmp_path)) as rec:
        r = rec.reconcile_report
        assert r.rebuilt and r.torn_lines == 1 and r.added_to_index == ["episode_000001"]
        assert r.dropped_from_index == ["episode_000002"] and r.removed_partials == ["episode_000003"]
        assert rec.next_episode_number == 2  # numbering from the existing files
        assert [e["name"] for e in rec.episodes] == ["episode_000000", "episode_000001"]
        assert record_episode(rec, 2)["name"] == "episode_000002"
    assert validate_dataset(tmp_path).ok


def test_one_recorder_per_directory(tmp_path):
    with EpisodeRecorder(small_config(tmp_path)):
        with pytest.raises(RuntimeError, match="another recorder"):
            EpisodeRecorder(small_config(tmp_path))
    EpisodeRecorder(small_config(tmp_path)).close()  # released on close


def test_start_refuses_when_disk_is_nearly_full(tmp_path):
    with EpisodeRecorder(RecorderConfig(root=str(tmp_path), cameras=SMALL, min_free_mb=1e12)) as rec:
        with pytest.raises(RecorderDiskError, match=r"MB free on the filesystem .*min_free_mb"):
            rec.start("t")
        assert not rec.recording and "MB free" in rec.progress().last_error


def test_recorder_config_from_yaml(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text(yaml.safe_dump({"recorder": {
        "root": str(tmp_path / "data"), "target_episodes": 50, "ros_distro": "humble",
        "cameras": [{"name": "front", "width": 128, "height": 96, "format": "jpeg"}, {"name": "wrist"}],
        "robot": {"backend": "franka", "ip": "172.16.0.2"}}}))
    cfg = RecorderConfig.from_yaml(p)
    assert cfg.cameras[0] == CameraConfig("front", 128, 96, "jpeg") and cfg.cameras[1] == CameraConfig("wrist")
    assert cfg.target_episodes == 50 and cfg.robot["ip"] == "172.16.0.2"
    assert RecorderConfig.from_dict(to_dict(cfg)) == cfg
    for bad, msg in [({"cameras": [{"width": 3}]}, "missing required key"),
                     ({"cameras": [{"name": "a"}, {"name": "a"}]}, "unique"),
                     ({"cameras": [{"name": "a", "format": "gif"}]}, "format must be"),
                     ({"ros_distro": "noetic"}, "ros_distro"), ({"control_hz": "10"}, "expected a number")]:
        with pytest.raises(ConfigError, match=msg):
            RecorderConfig.from_dict(bad)
    with EpisodeRecorder(RecorderConfig.from_dict({"root": str(tmp_path / "h"), "ros_distro": "humble",
                                                   "min_free_mb": 0, "cameras": [{"name": "c", "width": 8,
                                                                                  "height": 8}]})) as rec:
        e = record_episode(rec, 2)
    assert read_metadata(tmp_path / "h" / e["file"])["ros_distro"] == "humble"


# ------------------------------------------------------------------------------------------------ asynchronous stop
def _steps(rec, n, t0):
    for k in range(n):
        rec.add_step(synthetic_images(SMALL, k), synthetic_state(k), synthetic_action(k), t0 + 0.1 * k)


def test_stop_async_saves_in_order_while_the_next_episode_records(tmp_path, monkeypatch):
    rec = EpisodeRecorder(small_config(tmp_path))
    gate = __import__("threading").Event()
    real_finalize = storage.EpisodeFile.finalize

    def slow_finalize(self, custom):  # hold the saver until the next episode has started and recorded
        assert gate.wait(10.0)
        return real_finalize(self, custom)

    monkeypatch.setattr(storage.EpisodeFile, "finalize", slow_finalize)
    rec.start("task_a", instruction="first")
    _steps(rec, 3, 10.0)
    fut0 = rec.stop_async(True, extra={"note": "async"})
    assert rec.next_episode_number == 1 and not rec.recording
    assert rec.start("task_b", instruction="second") == "episode_000001"  # at once, while 0 is being saved
    _steps(rec, 4, 20.0)
    prog = rec.progress()
    assert prog.saving == 1 and prog.done == 0 and "saving 1" in str(prog)
    assert storage.episode_files(tmp_path) == {}  # not visible before it is complete
    fut1 = rec.stop_async(False)
    gate.set()
    assert rec.wait_saved(10.0)
    e0, e1 = fut0.result(), fut1.result()
    assert (e0["name"], e0["n_steps"], e0["extra"]) == ("episode_000000", 3, {"note": "async"})
    assert (e1["name"], e1["n_steps"], e1["success"]) == ("episode_000001", 4, False)
    assert [e["name"] for e in rec.episodes] == ["episode_000000", "episode_000001"]
    lines = [json.loads(ln) for ln in (tmp_path / storage.INDEX).read_text().splitlines()]
    assert [ln["name"] for ln in lines] == ["episode_000000", "episode_000001"]
    p = rec.close()
    assert p.done == 1 and p.failed == 1 and p.saving == 0
    rep = validate_dataset(tmp_path)
    assert rep.ok and rep.n_files == 2, rep.summary()


def test_close_waits_for_pending_saves(tmp_path):
    rec = EpisodeRecorder(small_config(tmp_path))
    for i in range(3):
        rec.start(f"t{i}")
        _steps(rec, 2, 10.0 * (i + 1))
        rec.stop_async(True)
    assert rec.close().done == 3
    assert len(storage.episode_files(tmp_path)) == 3 and validate_dataset(tmp_path).ok


def test_failed_background_save_stops_recording_with_a_clear_error(tmp_path, monkeypatch):
    import errno
    import os
    rec = EpisodeRecorder(small_config(tmp_path))
    record_episode(rec, 2)
    real = storage._disk_write
    started = __import__("threading").Event()

    def full_disk(f, data):  # the disk fills up while episode 1 is being saved
        assert started.wait(10.0)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    rec.start("t")
    _steps(rec, 3, 5.0)  # small frames stay in rosbags' chunk buffer: the first disk write is at the save
    monkeypatch.setattr(storage, "_disk_write", full_disk)
    fut = rec.stop_async(True)
    rec.start("t")  # episode 2 starts while 1 is being saved
    started.set()
    with pytest.raises(RecorderDiskError, match="No space left"):
        fut.result(10.0)
    with pytest.raises(RecorderDiskError, match=r"episode_000001.*discarded as well") as info:
        _steps(rec, 1, 9.0)  # the next call reports it once and stops recording
    assert "episode in progress (episode_000002" in str(info.value) and not rec.recording
    assert not any((tmp_path / storage.PARTIAL).iterdir())
    assert list(storage.episode_files(tmp_path)) == ["episode_000000"]  # the finished one is intact
    monkeypatch.setattr(storage, "_disk_write", real)
    assert record_episode(rec, 2, t0=1.9e9)["name"] == "episode_000001"  # numbering stays without gaps
    rec.close()
    assert validate_dataset(tmp_path).ok


def test_next_episode_file_is_opened_on_the_saver_thread(tmp_path, monkeypatch):
    import threading
    opened = []  # (episode number, thread name) of every file the recorder opens
    real_new = EpisodeRecorder._new_file

    def spy(self, number):
        opened.append((number, threading.current_thread().name))
        return real_new(self, number)

    monkeypatch.setattr(EpisodeRecorder, "_new_file", spy)
    rec = EpisodeRecorder(small_config(tmp_path))
    main = threading.current_thread().name
    rec.start("t")  # the first file: opened by start() itself; the next one is prepared in the background
    _steps(rec, 2, 1.0)
    rec.stop_async(True)
    assert rec.start("t") == "episode_000001"
    assert opened[0] == (0, main) and opened[1][0] == 1 and opened[1][1].startswith("episode-saver")
    _steps(rec, 2, 2.0)
    rec.discard()  # the number is used again: opened by start(), the prepared file for 2 is kept
    assert rec.start("t") == "episode_000001" and opened[-1] == (1, main)
    _steps(rec, 2, 3.0)
    rec.stop(True)
    n_opened = len(opened)
    assert rec.start("t") == "episode_000002"  # took the kept file for 2 ...
    deadline = time.monotonic() + 10
    while len(opened) == n_opened and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [n for n, _ in opened[n_opened:]] == [3]  # ... and prepares 3
    _steps(rec, 2, 4.0)
    rec.stop(False)
    rec.close()  # the prepared file for 3 is deleted
    assert not any((tmp_path / storage.PARTIAL).iterdir())
    rep = validate_dataset(tmp_path)
    assert rep.ok and rep.n_files == 3, rep.summary()
