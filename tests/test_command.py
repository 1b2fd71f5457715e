"""`irevla command`: the real CLI in a subprocess, against the policy server and the twin over real DDS (the server
and sim cell run in this process). Exit codes, refusals with their reason, success, Ctrl-C cancelling the goal."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import policy_server_helpers as H
from helpers import wait_for

torch.set_num_threads(1)
pytestmark = pytest.mark.ros
SUCCESS_TOPIC = "/pytest/success"  # the test plays the success detector (the twin's own predicate stays false)


def _cli(*args, timeout=60.0):
    return subprocess.run([sys.executable, "-m", "robot_server.cli", "command", *args], capture_output=True,
                          text=True, timeout=timeout)


class Running:
    """A CLI process whose output is collected line by line while it runs."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", "robot_server.cli", "command", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout=60.0) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:  # only our own child, by PID
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return rc

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def test_no_server_is_a_clear_error_within_the_deadline():
    t0 = time.monotonic()
    out = _cli("pick up the red block", "--server-timeout", "2")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "no policy server on /irevla/policy/execute_instruction within 2 s" in out.stderr
    assert time.monotonic() - t0 < 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return H.trained_checkpoint(tmp_path_factory.getbasetemp())


def test_command_line_refusal_success_and_ctrl_c(ros_context, spin_thread, trained):
    import rclpy
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import Bool, Float64MultiArray

    from policy.server_node import PolicyServerNode
    from robot_server import ros_interface as ri
    from robot_server import sim_bringup
    from robot_server.client import RobotClient
    from ros_clients import Sink

    params = {"checkpoint": str(trained[0]), "success_topic": SUCCESS_TOPIC, "deadline_budget_s": 0.5,
              "max_frame_age_s": 1.0, "max_state_age_s": 1.0, "max_frame_skew_s": 1.0}
    server = PolicyServerNode(context=ros_context, parameter_overrides=[Parameter(k, value=v)
                                                                       for k, v in params.items()])
    try:
        b = sim_bringup.build(context=ros_context,
                              robot_params=[Parameter("task", value=H.TASK), Parameter("seed", value=102)],
                              camera_params=[Parameter("rate", value=10.0)], make_executor=False)
    except BaseException:
        server.destroy_node()
        raise
    node = rclpy.create_node("command_test_client", context=ros_context)
    robot = RobotClient(node)
    actions = Sink()
    node.create_subscription(Float64MultiArray, ri.TOPIC_ACTION, actions,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    success_pub = node.create_publisher(Bool, SUCCESS_TOPIC, ri.LATCHED_QOS)
    spin_thread([b.camera, b.robot, server, node])
    assert robot.wait_ready(timeout_s=30.0)

    # refused goals: the reason, exit code 4, no action
    out = _cli("   ")
    assert out.returncode == 4 and "rejected: instruction is empty" in out.stdout, out.stdout + out.stderr
    out = _cli(H.INSTRUCTION, "--task", "press_button")
    assert out.returncode == 4 and "the cell runs task 'pick_red_block'" in out.stdout, out.stdout + out.stderr
    assert len(actions.items) == 0

    # success: the policy drives the arm; a success signal ends the command
    run = Running(H.INSTRUCTION, "--timeout", "30", "--task", H.TASK)
    actions.wait(10, timeout=30.0)
    wait_for(lambda: any(l.startswith("step") for l in run.lines), 20.0, message=f"no progress line: {run.lines}")
    success_pub.publish(Bool(data=True))
    rc = run.wait(30.0)
    print("\n" + run.text)
    assert rc == 0, run.text
    assert run.lines[-1].startswith("success: success reported on the success topic"), run.text
    assert "% of the time budget" in run.text
    success_pub.publish(Bool(data=False))
    time.sleep(0.3)

    # Ctrl-C cancels the goal; the server stops publishing
    run = Running(H.INSTRUCTION, "--timeout", "30")
    n0 = len(actions.items)
    wait_for(lambda: len(actions.items) >= n0 + 5, 30.0, message="the command did not start")
    run.proc.send_signal(signal.SIGINT)
    rc = run.wait(30.0)
    t_end = time.time()
    print(run.text)
    assert rc == 130, run.text
    assert "canceling" in run.text and run.lines[-1].startswith("canceled: canceled by the client"), run.text
    time.sleep(1.0)
    assert not [r for r in actions.items if r.t_recv > t_end + 0.05], "actions after the cancel"
    assert np.allclose(np.array(actions.last().data)[:6], 0.0)  # the stop action: zero motion
    assert server.callback_errors == 0
