"""Teleop end to end over real DDS with the real twin: input device -> teleop node -> robot node moves the twin ->
recorder node records -> the episode file validates. Only the device read is fake (a real pty for the keyboard, a
fake HID object under pyspacemouse's open() for the SpaceMouse)."""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from rclpy.parameter import Parameter
from std_msgs.msg import String

from helpers import wait_for
from robot_server import ros_interface as ri
from robot_server import sim_bringup
from teleop import storage
from teleop.controller import TeleopConfig, make_teleop
from teleop.dataset import read_episode, validate_dataset
from teleop.devices import SpaceMouseDevice
from teleop.operator import TaskChoice
from teleop.recorder_node import RecorderNode
from teleop.teleop_node import TeleopNode

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cell(ros_context, spin_thread):
    """Sim cell (robot + camera node) and a recorder node in this process; a progress listener."""
    def start(out_dir, recorder_params=(), extra_nodes=()):
        import rclpy
        b = sim_bringup.build(context=ros_context,
                              robot_params=[Parameter("task", value="pick_red_block"), Parameter("seed", value=0)],
                              camera_params=[Parameter("rate", value=10.0)], make_executor=False)
        rec = RecorderNode(context=ros_context, parameter_overrides=[
            Parameter("out_dir", value=str(out_dir)), Parameter("operator", value="pytest"), *recorder_params])
        listener = rclpy.create_node("teleop_e2e_listener", context=ros_context)
        progress: list[dict] = []
        listener.create_subscription(String, ri.TOPIC_RECORDER_PROGRESS,
                                     lambda m: progress.append(json.loads(m.data)), ri.LATCHED_QOS)
        spin_thread([b.camera, b.robot, rec, listener, *extra_nodes])
        wait_for(lambda: progress, 20.0, message="no progress from the recorder node")
        return b, rec, progress

    return start


class Terminal:
    """The master side of a pty whose slave is the teleop node's stdin and stdout (what an SSH session gives)."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):  # keep draining, or the child blocks on a full pty
        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if r:
                try:
                    data = os.read(self.master, 65536)
                except OSError:
                    return
                with self._lock:
                    self._buf += data

    @property
    def text(self) -> str:
        with self._lock:
            return self._buf.decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait_text(self, needle: str, timeout: float = 30.0, after: int = 0) -> int:
        wait_for(lambda: needle in self.text[after:], timeout, message=f"{needle!r} not shown; terminal: "
                 f"{self.text[-1500:]!r}")
        return self.text.index(needle, after)

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


def test_keyboard_over_a_terminal_prompt_and_every_episode_key(cell, tmp_path):
    b, rec, progress = cell(tmp_path / "data")  # the recorder starts with no task: the operator chooses it
    term = Terminal()
    log = open(tmp_path / "teleop_node.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "teleop.teleop_node", "--ros-args", "-p", "device:=keyboard"],
                            stdin=term.slave, stdout=term.slave, stderr=log, cwd=ROOT, start_new_session=True)
    try:
        term.wait_text("Task for the next episodes", 60.0)
        assert "pick_red_block" in term.text  # the registry's tasks are listed
        term.type("pick_red_block\r")
        term.wait_text("Instruction")
        term.type("grab the red block gently\r")
        wait_for(lambda: progress[-1]["task"] == "pick_red_block"
                 and progress[-1]["instruction"] == "grab the red block gently", 20.0, message=str(progress[-1:]))
        assert progress[-1]["task_category"] == "expert"  # the registry's category came with it
        term.wait_text('task pick_red_block: "grab the red block gently"', 20.0)  # on the status line

        term.type("n")  # start: robot reset, then the recorder starts
        wait_for(lambda: progress[-1]["recording"] == "episode_000000", 30.0, message=str(progress[-1:]))
        x0 = b.robot.backend.read_state().ee_pos[0]
        t_min, t_max = time.monotonic() + 1.5, time.monotonic() + 20.0
        # Hold 'w' (+x; a terminal repeats a held key) for 1.5 s and until the twin's arm moved 5 cm (a loaded
        # machine runs the real-time twin slower than the wall clock).
        while time.monotonic() < t_min or (b.robot.backend.read_state().ee_pos[0] < x0 + 0.05
                                            and time.monotonic() < t_max):
            term.type("w")
            time.sleep(0.04)
        assert b.robot.backend.read_state().ee_pos[0] > x0 + 0.05  # the twin's arm moved forward
        term.type(" ")  # toggle the gripper: close
        # The close reached the arm (a loaded machine can stall the action stream for a second), then more steps.
        wait_for(lambda: b.robot.backend.read_state().gripper_width < 0.09, 15.0, message="gripper did not close")
        steps = rec.recorder.progress().steps_in_progress
        wait_for(lambda: rec.recorder.progress().steps_in_progress >= steps + 5, 15.0)
        term.type("\r")  # success
        wait_for(lambda: progress[-1]["done"] == 1 and progress[-1]["recording"] is None, 20.0,
                 message=str(progress[-1:]))
        term.wait_text("1/2000", 10.0)
        # discard and re-record, then stop as failure: all from keys
        term.type("n")
        wait_for(lambda: progress[-1]["recording"] == "episode_000001", 30.0, message=str(progress[-1:]))
        wait_for(lambda: rec.recorder.progress().steps_in_progress >= 2, 10.0)
        term.type("x")  # discard
        wait_for(lambda: progress[-1]["recording"] is None, 20.0, message=str(progress[-1:]))
        assert list(storage.episode_files(tmp_path / "data")) == ["episode_000000"]
        term.type("n")  # re-record: the same number again
        wait_for(lambda: progress[-1]["recording"] == "episode_000001", 30.0, message=str(progress[-1:]))
        wait_for(lambda: rec.recorder.progress().steps_in_progress >= 2, 10.0)
        term.type("\x7f")  # Backspace: stop as failure
        wait_for(lambda: progress[-1]["failed"] == 1 and progress[-1]["recording"] is None, 20.0,
                 message=str(progress[-1:]))
        term.wait_text("1/2000 (1 failed)", 10.0)
        term.type("q")  # quit: the recorder closes, the teleop node exits
        assert proc.wait(timeout=30) == 0
        wait_for(lambda: rec.quit_requested, 10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        term.close()
        print((tmp_path / "teleop_node.log").read_text()[-3000:])

    data = tmp_path / "data"
    rep = validate_dataset(data)
    assert rep.ok and rep.n_files == 2, rep.summary()
    assert read_episode(storage.episode_files(data)["episode_000001"], images=False).meta["success"] is False
    ep = read_episode(storage.episode_files(data)["episode_000000"])
    m = ep.meta
    assert (m["task"], m["instruction"], m["category"], m["extra"]["task_category"], m["success"]) == (
        "pick_red_block", "grab the red block gently", "teleop", "expert", True)
    assert ep.instruction == "grab the red block gently"
    forward = ep.action[:, 0] == 0.5
    assert forward.sum() >= 8, ep.action[:, 0]  # ~1.5 s of +x at 10 Hz
    assert ep.action[0, 6] == -1.0 and ep.action[-1, 6] == 1.0  # starts open, closed by the space key
    assert ep.state[-1, 7] > ep.state[0, 7] + 0.05  # recorded ee_x moved with the recorded actions


class FakeHid:
    """What pyspacemouse.open() returns (the hardware read is the only fake)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.state = dict(t=0.0, x=0.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0, buttons=[0, 0])

    def set(self, **kw):
        with self.lock:
            self.state.update(kw, t=self.state["t"] + 1.0)

    def read(self):
        with self.lock:
            return SimpleNamespace(**self.state)

    def close(self):
        pass


def test_spacemouse_teleop_with_episode_control_over_ros_services(cell, tmp_path, ros_context):
    hid = FakeHid()
    teleop = make_teleop(TeleopConfig(), device=SpaceMouseDevice(opener=lambda **kw: hid)).open()
    node = TeleopNode(context=ros_context, teleop=teleop,
                      parameter_overrides=[Parameter("prompt_at_start", value=False)])
    b, rec, progress = cell(tmp_path, extra_nodes=[node])
    # the task is set on the recorder the way the prompt sets it (its set_parameters service)
    ok, msg = node.set_recorder_task(TaskChoice("press_button", "press the green button", "expert"))
    assert ok, msg
    wait_for(lambda: progress[-1]["instruction"] == "press the green button", 10.0)

    import rclpy
    from std_srvs.srv import Trigger
    client = rclpy.create_node("teleop_e2e_services", context=ros_context)
    srv = {n: client.create_client(Trigger, n) for n in (ri.SRV_RECORDER_START, ri.SRV_RECORDER_SUCCESS)}
    from rclpy.executors import SingleThreadedExecutor
    ex = SingleThreadedExecutor(context=ros_context)
    ex.add_node(client)

    def call(name):
        assert srv[name].wait_for_service(timeout_sec=10.0)
        fut = srv[name].call_async(Trigger.Request())
        ex.spin_until_future_complete(fut, timeout_sec=20.0)
        assert fut.done(), name
        return fut.result()

    try:
        r = call(ri.SRV_RECORDER_START)  # episode control from a ROS 2 service
        assert r.success, r.message
        x0 = b.robot.backend.read_state().ee_pos[0]
        hid.set(y=-0.6)  # SERL mapping: action x = -y
        wait_for(lambda: b.robot.backend.read_state().ee_pos[0] > x0 + 0.05, 15.0, message="arm did not move")
        w0 = b.robot.backend.read_state().gripper_width
        hid.set(y=0.0, buttons=[1, 0])  # hold the left button: close the gripper
        wait_for(lambda: b.robot.backend.read_state().gripper_width < w0 - 0.01, 10.0, message="gripper stayed open")
        hid.set(buttons=[0, 0])
        n_closed = rec.recorder.progress().steps_in_progress
        wait_for(lambda: rec.recorder.progress().steps_in_progress >= max(15, n_closed + 5), 15.0)
        r = call(ri.SRV_RECORDER_SUCCESS)
        assert r.success, r.message
    finally:
        ex.shutdown()
        client.destroy_node()
    wait_for(lambda: node.progress and node.progress["done"] == 1, 10.0)  # the teleop node sees the progress
    assert node.progress["per_task"] == {"press_button": {"success": 1, "failure": 0}}
    rep = validate_dataset(tmp_path)
    assert rep.ok and rep.n_files == 1, rep.summary()
    ep = read_episode(storage.episode_files(tmp_path)["episode_000000"])
    assert (ep.meta["task"], ep.meta["instruction"]) == ("press_button", "press the green button")
    assert np.max(ep.action[:, 0]) > 0.5 and np.all(np.abs(ep.action[:, 1]) < 1e-9)
    assert ep.action[0, 6] == -1.0 and ep.action[-1, 6] == 1.0
    assert ep.state[-1, 7] > ep.state[0, 7] + 0.05 and ep.state[-1, 14] < ep.state[0, 14] - 0.01
