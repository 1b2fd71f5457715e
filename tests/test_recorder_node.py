"""recorder_node (teleop/recorder_node.py) over real DDS with the real twin (sim_bringup in-process) and real
episode files: record / discard / quit, stop as failure, a missing camera, a camera stalling mid-episode (both
stall policies); teleop_node's no-device exit. The teleop node end to end: tests/test_teleop_e2e.py."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time

import pytest
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import Trigger

from helpers import wait_for
from robot_server import ros_interface as ri
from robot_server import sim_bringup
from robot_server.client import RobotClient
from teleop import storage
from teleop.dataset import read_episode, validate_dataset
from teleop.recorder_node import RecorderNode

pytestmark = pytest.mark.ros
INSTRUCTION = "pick up the red block please"


@pytest.fixture
def cell(ros_context, spin_thread):
    def start(out_dir, cameras=("front", "wrist"), extra_params=()):
        import rclpy
        b = sim_bringup.build(context=ros_context,
                              robot_params=[Parameter("task", value="pick_red_block"), Parameter("seed", value=0)],
                              camera_params=[Parameter("rate", value=10.0)], make_executor=False)
        rec = RecorderNode(context=ros_context, parameter_overrides=[
            Parameter("out_dir", value=str(out_dir)), Parameter("cameras", value=list(cameras)),
            Parameter("task", value="pick_red_block"), Parameter("instruction", value=INSTRUCTION),
            Parameter("operator", value="pytest"), *extra_params])
        node = rclpy.create_node("recorder_test_client", context=ros_context)
        client = RobotClient(node)
        progress = []
        node.create_subscription(String, ri.TOPIC_RECORDER_PROGRESS, lambda m: progress.append(json.loads(m.data)),
                                 ri.LATCHED_QOS)
        srv = {name: node.create_client(Trigger, name) for name in
               (ri.SRV_RECORDER_START, ri.SRV_RECORDER_SUCCESS, ri.SRV_RECORDER_FAILURE, ri.SRV_RECORDER_DISCARD,
                ri.SRV_RECORDER_QUIT)}
        # Camera first: at teardown its capture thread stops before the robot node closes the shared backend.
        spin_thread([b.camera, b.robot, rec, node])
        assert client.wait_ready(timeout_s=20.0)
        wait_for(lambda: client.pub_action.get_subscription_count() >= 2, 10.0, message="action not subscribed")
        wait_for(lambda: progress, 10.0, message="no latched progress")

        def call(name):
            c = srv[name]
            assert c.wait_for_service(timeout_sec=10.0), name
            fut = c.call_async(Trigger.Request())
            wait_for(fut.done, 15.0, message=f"no answer from {name}")
            return fut.result()

        start.bringup = b
        return rec, client, call, progress

    return start


def _send(client, n, action=(0.3, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)):
    t_next = time.monotonic()
    for _ in range(n):
        client.send_action(action)
        t_next += 0.1
        time.sleep(max(0.0, t_next - time.monotonic()))


def test_records_a_successful_episode_and_discard_leaves_no_file(cell, tmp_path):
    rec, client, call, progress = cell(tmp_path)
    r = call(ri.SRV_RECORDER_START)
    assert r.success, r.message
    backend = cell.bringup.robot.backend
    x0 = backend.read_state().ee_pos[0]
    t_start = time.monotonic()
    _send(client, 15)
    sent = 15
    # On a loaded machine the real-time twin runs slower than the wall clock: go on until the arm moved 2 cm.
    while backend.read_state().ee_pos[0] < x0 + 0.02 and sent < 100:
        _send(client, 1)
        sent += 1
    r = call(ri.SRV_RECORDER_SUCCESS)
    assert r.success, r.message
    elapsed = time.monotonic() - t_start
    files = storage.episode_files(tmp_path)
    assert list(files) == ["episode_000000"]
    rep = validate_dataset(tmp_path)
    assert rep.ok, rep.summary()
    ep = read_episode(files["episode_000000"])
    assert ep.meta["instruction"] == INSTRUCTION and ep.meta["task"] == "pick_red_block" and ep.meta["success"]
    assert 11 <= len(ep) <= elapsed * 10 + 2, (len(ep), elapsed)  # sampled by a 10 Hz timer
    assert abs(ep.action[len(ep) // 2, 0] - 0.3) < 1e-9
    assert ep.state[-1, 7] > ep.state[0, 7] + 0.01  # ee_x moved forward with the recorded actions
    wait_for(lambda: progress[-1]["done"] == 1, 5.0)
    assert progress[-1]["per_task"] == {"pick_red_block": {"success": 1, "failure": 0}}

    # a discarded episode leaves no file
    assert call(ri.SRV_RECORDER_START).success
    _send(client, 5)
    r = call(ri.SRV_RECORDER_DISCARD)
    assert r.success, r.message
    assert list(storage.episode_files(tmp_path)) == ["episode_000000"]
    assert not (tmp_path / storage.PARTIAL / "episode_000001").exists()  # nothing left of the discarded one
    assert validate_dataset(tmp_path).ok
    r = call(ri.SRV_RECORDER_QUIT)
    assert r.success and rec.quit_requested


def test_missing_camera_topic_skips_steps_with_a_clear_error(cell, tmp_path):
    rec, client, call, progress = cell(tmp_path, cameras=("front", "wrist", "side"))
    assert call(ri.SRV_RECORDER_START).success
    _send(client, 8)
    reason = "camera topic missing: side"
    wait_for(lambda: progress[-1]["skipped_steps"].get(reason, 0) >= 3, 5.0, message=str(progress[-1:]))
    assert rec.recorder.progress().steps_in_progress == 0
    r = call(ri.SRV_RECORDER_SUCCESS)  # nothing to save: refused, the node lives on
    assert not r.success and "no steps" in r.message
    assert call(ri.SRV_RECORDER_DISCARD).success
    assert storage.episode_files(tmp_path) == {}
    # the stream being present again is not needed for the service to keep working
    assert call(ri.SRV_RECORDER_START).success


def test_teleop_node_without_device_exits_with_a_clear_message():
    proc = subprocess.run([sys.executable, "-m", "teleop.teleop_node", "--ros-args", "-p", "device:=keyboard"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "cannot use input device" in proc.stderr and "not a TTY" in proc.stderr


class ActionStream:
    """Publishes an action at 10 Hz in the background (the teleop side), so the action never goes stale."""

    def __init__(self, client, action=(0.2, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0)):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(client, action), daemon=True)
        self._thread.start()

    def _run(self, client, action):
        while not self._stop.wait(0.1):
            client.send_action(action)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)


def test_camera_stalling_mid_episode_keeps_recorded_steps_and_marks_the_gap(cell, tmp_path):
    # stale_s 1 s: on a loaded machine the twin's camera alone can pause for 0.5 s
    rec, client, call, progress = cell(tmp_path, extra_params=[Parameter("stale_s", value=1.0)])
    camera = cell.bringup.camera
    steps = lambda: rec.recorder.progress().steps_in_progress  # noqa: E731
    actions = ActionStream(client)
    try:
        # --- policy keep (default): recording goes on once the camera is back, the gap is in the metadata
        assert call(ri.SRV_RECORDER_START).success
        wait_for(lambda: steps() >= 6, 15.0, message="no steps recorded")
        camera.stop()  # the camera stops publishing partway through the episode
        wait_for(lambda: progress[-1]["stalled"].startswith("camera stalled: front"), 10.0, message=str(progress[-1:]))
        at_stall = steps()
        wait_for(lambda: rec.skipped_in_episode >= 4, 10.0)
        assert steps() == at_stall  # nothing recorded from stale frames, nothing recorded before is lost
        assert progress[-1]["skipped_in_episode"] >= 1
        camera.start()
        wait_for(lambda: steps() >= at_stall + 4, 15.0, message="recording did not resume")
        wait_for(lambda: progress[-1]["stalled"] == "", 5.0)
        r = call(ri.SRV_RECORDER_FAILURE)  # stop as failure
        assert r.success and "gap" in r.message, r.message
        rep = validate_dataset(tmp_path)
        assert rep.ok, rep.summary()
        ep = read_episode(storage.episode_files(tmp_path)["episode_000000"])
        assert ep.meta["success"] is False and len(ep) == ep.meta["n_steps"] >= at_stall + 4
        gaps = ep.meta["extra"]["gaps"]
        assert len(gaps) == 1 and gaps[0]["reasons"][0] == "camera stalled: front", gaps
        assert gaps[0]["after_step"] == at_stall and gaps[0]["skipped"] >= 4
        skipped = ep.meta["extra"]["skipped_steps"]
        assert sum(n for r, n in skipped.items() if r.startswith("camera stalled")) == gaps[0]["skipped"], skipped
        assert ep.stamps[at_stall] - ep.stamps[at_stall - 1] > 0.35e9  # the gap shows in the stamps too
        wait_for(lambda: progress[-1]["failed"] == 1, 5.0)
        assert progress[-1]["per_task"] == {"pick_red_block": {"success": 0, "failure": 1}}
        digest = hashlib.blake2b(storage.episode_files(tmp_path)["episode_000000"].read_bytes()).hexdigest()

        # --- policy discard: a stall drops the episode in progress at once, with the reason; re-record it
        rec.set_parameters([Parameter("stall_policy", value="discard")])
        assert call(ri.SRV_RECORDER_START).success
        wait_for(lambda: steps() >= 3, 15.0)
        camera.stop()
        wait_for(lambda: progress[-1]["recording"] is None and "discarded" in progress[-1]["last_error"], 10.0,
                 message=str(progress[-1:]))
        assert "camera stalled: front" in progress[-1]["last_error"]
        assert list(storage.episode_files(tmp_path)) == ["episode_000000"]
        assert not any((tmp_path / storage.PARTIAL).glob("episode_000001"))
        camera.start()
        r = call(ri.SRV_RECORDER_START)  # re-record: the discarded episode's number is used again
        assert r.success and "episode_000001" in r.message, r.message
        wait_for(lambda: steps() >= 3, 15.0)
        assert call(ri.SRV_RECORDER_SUCCESS).success
    finally:
        actions.close()
        camera.start()
    assert list(storage.episode_files(tmp_path)) == ["episode_000000", "episode_000001"]
    assert hashlib.blake2b(storage.episode_files(tmp_path)["episode_000000"].read_bytes()).hexdigest() == digest
    rep = validate_dataset(tmp_path)
    assert rep.ok, rep.summary()
    wait_for(lambda: progress[-1]["done"] == 1 and progress[-1]["failed"] == 1, 5.0)
