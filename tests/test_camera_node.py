"""camera_node + robot_node sharing one real-time twin (sim_bringup), over real DDS, rendering with MuJoCo."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.parameter import Parameter

from helpers import wait_for
from robot_server import ros_interface as ri
from robot_server import sim_bringup
from ros_clients import RobotClient, stamp_s

pytestmark = pytest.mark.ros

CAMERAS = ("front", "wrist")
SIZE = 224
REPO = Path(__file__).resolve().parents[1]


def _image(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.width, 3)


@pytest.fixture
def cell(ros_context, spin_thread):
    b = sim_bringup.build(context=ros_context,
                          robot_params=[Parameter("task", value="pick_red_block"), Parameter("seed", value=0)],
                          camera_params=[Parameter("rate", value=10.0)], make_executor=False)
    client = RobotClient(ros_context, cameras=CAMERAS)
    # Camera first: at teardown its capture thread stops before the robot node closes the shared backend.
    spin_thread([b.camera, b.robot, client.node])
    client.wait_ready()
    for name in CAMERAS:
        client.images[name].wait(1, timeout=10.0)
    yield b, client
    assert b.camera.capture_errors == 0 and b.robot.callback_errors == 0


def test_images_format_stamps_and_rate(cell):
    b, c = cell
    t0 = time.time()
    time.sleep(1.5)
    frames = {name: c.images[name].since(t0) for name in CAMERAS}
    for name, recs in frames.items():
        # 10 Hz nominal for 1.5 s; lower bound leaves room for a busy 2-core machine.
        assert len(recs) >= 6, (name, len(recs))
        for r in recs:
            m = r.msg
            assert m.encoding == "rgb8" and m.height == SIZE and m.width == SIZE and m.step == SIZE * 3
            assert len(m.data) == SIZE * SIZE * 3 and m.is_bigendian == 0
            assert m.header.frame_id == f"{name}_camera_optical_frame"
            age = r.t_recv - stamp_s(m.header)
            assert -0.005 <= age < 0.5, age  # stamped at render time, on the same (wall) clock
        stamps = [stamp_s(r.msg.header) for r in recs]
        assert all(b2 > a for a, b2 in zip(stamps, stamps[1:]))
        period = np.median(np.diff(stamps))
        assert 0.07 < period < 0.2, period
        img = _image(recs[-1].msg)
        assert img.std() > 10, "blank image"
    assert np.abs(_image(frames["front"][-1].msg).astype(int) - _image(frames["wrist"][-1].msg)).mean() > 10
    # The robot keeps publishing state while the cameras render from the same twin (50 Hz on an idle machine;
    # the bound leaves room for other jobs on 2 cores).
    assert len(c.pose.since(t0)) >= 8


def test_wrist_image_follows_the_arm(cell):
    b, c = cell
    before = _image(c.images["wrist"].last())
    z0 = c.ee_pos()[2]
    deadline = time.time() + 5.0
    while c.ee_pos()[2] > z0 - 0.08 and time.time() < deadline:  # down and yaw: the wrist view must change
        c.send_action([0, 0, -1, 0, 0, 1, 0])
        time.sleep(0.1)
    assert c.ee_pos()[2] < z0 - 0.08, "the arm did not move down"
    t_moved = time.time()
    c.images["wrist"].wait(len(c.images["wrist"].items) + 2, timeout=3.0)
    after = _image(c.images["wrist"].last())
    assert np.abs(after.astype(int) - before).mean() > 5
    # Image stamps and state stamps come from the same clock: the newest of each are close together.
    img_t = stamp_s(c.images["wrist"].last().header)
    pose_t = stamp_s(c.pose.last().header)
    assert abs(img_t - pose_t) < 0.3 and img_t > t_moved - 0.2


def test_sim_bringup_entry_point_runs_and_stops(ros_context, spin_thread):
    """`python -m robot_server.sim_bringup` as its own process: topics appear, SIGINT stops it cleanly."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "robot_server.sim_bringup", "--ros-args",
                             "-p", "task:=pick_red_block", "-p", "seed:=5", "-p", "camera_rate:=5.0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = RobotClient(ros_context, cameras=CAMERAS)
        spin_thread([client.node])
        client.wait_ready(timeout=30.0)
        for name in CAMERAS:
            client.images[name].wait(2, timeout=10.0)
        st = client.latest_status()
        assert st["task"] == "pick_red_block" and st["seed"] == 5
        recs = client.images["front"].items
        period = np.median(np.diff([stamp_s(r.msg.header) for r in recs])) if len(recs) > 2 else 0.2
        assert period > 0.12  # camera_rate:=5.0 reached the camera node
        assert client.call(ri.SRV_ESTOP).success
        wait_for(lambda: client.latest_status()["estop"], 3.0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"sim_bringup did not stop on SIGINT:\n{out[-2000:]}")
    assert proc.returncode == 0, out[-2000:]
    assert "Traceback" not in out, out[-2000:]
