"""recorder_node (teleop/recorder_node.py) over real DDS with the real twin (sim_bringup in-process) and real
episode files; teleop_node's no-device exit."""
from __future__ import annotations

import json
import subprocess
import sys
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
    def start(out_dir, cameras=("front", "wrist")):
        import rclpy
        b = sim_bringup.build(context=ros_context,
                              robot_params=[Parameter("task", value="pick_red_block"), Parameter("seed", value=0)],
                              camera_params=[Parameter("rate", value=10.0)], make_executor=False)
        rec = RecorderNode(context=ros_context, parameter_overrides=[
            Parameter("out_dir", value=str(out_dir)), Parameter("cameras", value=list(cameras)),
            Parameter("task", value="pick_red_block"), Parameter("instruction", value=INSTRUCTION),
            Parameter("operator", value="pytest")])
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
    _send(client, 15)
    r = call(ri.SRV_RECORDER_SUCCESS)
    assert r.success, r.message
    files = storage.episode_files(tmp_path)
    assert list(files) == ["episode_000000"]
    rep = validate_dataset(tmp_path)
    assert rep.ok, rep.summary()
    ep = read_episode(files["episode_000000"])
    assert ep.meta["instruction"] == INSTRUCTION and ep.meta["task"] == "pick_red_block" and ep.meta["success"]
    assert 11 <= len(ep) <= 17, len(ep)  # 15 actions at 10 Hz, sampled by a 10 Hz timer on a busy machine
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
    assert not any((tmp_path / storage.PARTIAL).glob("*"))
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
