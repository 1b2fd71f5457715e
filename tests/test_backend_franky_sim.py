"""The FR3 libfranka backend (franky in its worker process) driven through robot_node over real DDS, against
franky-sim: a MuJoCo FR3 speaking the real libfranka protocol on 127.0.0.1 (robot port 1337, gripper 1338).

Exercised with the real protocol in the loop: connect, collision-behaviour settings, home (a planned joint motion),
1 kHz torque-level Cartesian impedance tracking of absolute targets and of 10 Hz contract actions, the gripper
(grasp / move) through actions and the gripper service, the safety layer's box (clamped actions, rejected
targets, wrong frame), the watchdog hold, and a clean worker shutdown. Also: the Panda backend's binding
(libfranka 0.9) refuses the FR3 protocol with a clear message.

franky-sim does not simulate reflexes; tests/test_backend_franka_sim.py covers them against franka-sim.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import yaml
from rclpy.parameter import Parameter

from helpers import stream, wait_for
from peers import provision, servers
from robot_server.backends.franka_libfranka import FrankaLibfrankaBackend, FrankaLibfrankaConfig, GripperConfig
from robot_server.geometry import matrix_to_quat, quat_angle
from robot_server.kinematics import franka_fk
from robot_server.robot_node import RobotNode
from robot_server.safety import R_HOME, SafetyConfig
from robot_server.server_core import RobotServerCore
from ros_clients import RobotClient

pytestmark = pytest.mark.ros

BASE = "fr3_link0"
DOWN = (0.0, 1.0, 0.0, 0.0)  # wxyz, tool axis down
READY_POS = np.array([0.307, 0.0, 0.487])  # TCP of the FR3 (with hand) in Franka's ready pose
BOX_MIN, BOX_MAX = (0.25, -0.25, 0.25), (0.55, 0.25, 0.50)


@pytest.fixture(scope="module")
def franky_sim():
    peer = servers.provisioned(servers.start_franky_sim)
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def franky_client():
    return servers.provisioned(provision.franky_client)


def _write(path, doc) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_fr3_backend_through_robot_node_against_franky_sim(franky_sim, franky_client, ros_context, spin_thread,
                                                           tmp_path):
    backend_cfg = _write(tmp_path / "fr3.yaml", {"franka_libfranka": {
        "hostname": servers.HOST, "realtime": False, "extra_pythonpath": [str(franky_client)],
        "home_dynamics_factor": 1.0, "gripper": {"speed": 0.2}}})
    safety_cfg = _write(tmp_path / "safety.yaml", {"safety": {
        "pos_min": list(BOX_MIN), "pos_max": list(BOX_MAX), "nominal_quat": list(DOWN)}})
    node = RobotNode(context=ros_context, parameter_overrides=[
        Parameter("backend", value="franka_libfranka"), Parameter("backend_config", value=backend_cfg),
        Parameter("safety_config", value=safety_cfg), Parameter("base_frame", value=BASE),
        Parameter("rate", value=50.0)])
    worker = node.backend.worker_pid
    c = RobotClient(ros_context)
    spin_thread([node, c.node])
    c.wait_ready(timeout=30)
    assert c.joints.last().name[0] == "fr3_joint1"

    # Home: a planned joint motion to Franka's ready pose (the reset service on a real robot).
    t0 = time.monotonic()
    r = c.call("/irevla/robot/reset", timeout=60)
    assert r.success, r.message
    print(f"\nhome took {time.monotonic() - t0:.1f} s")
    wait_for(lambda: np.linalg.norm(c.ee_pos() - READY_POS) < 0.01, 5.0, message=f"not at ready: {c.ee_pos()}")
    st = c.latest_status()
    assert st["backend_error"] == "" and not st["estop"], st
    # The home went through the safety layer: home_q checked by forward kinematics (with the robot's own F_T_EE),
    # which agrees with the robot's measured O_T_EE.
    c.wait_status(lambda st: st["counters"]["homes"] == 1, timeout=10.0)
    s = node.backend.read_state()
    m = franka_fk(s.q, node.backend.call("flange_to_tcp"))
    print(f"FK {np.round(m[:3, 3], 4)} vs measured TCP {np.round(s.ee_pos, 4)}")
    assert np.linalg.norm(m[:3, 3] - s.ee_pos) < 1e-3 and quat_angle(matrix_to_quat(m[:3, :3]), s.ee_quat) < 1e-3

    # Absolute target, approached at the safety layer's speed, tracked by the 1 kHz impedance loop.
    goal = np.array([0.42, 0.08, 0.40])
    t0 = time.monotonic()
    reached = stream(lambda: c.send_target(goal, DOWN, frame_id=BASE), 20.0,
                      until=lambda: np.linalg.norm(c.ee_pos() - goal) < 0.01)
    assert reached, f"target {goal} not reached: {c.ee_pos()}"
    print(f"target reached in {time.monotonic() - t0:.1f} s")
    q = c.pose.last().pose.orientation
    assert abs(abs(q.x) - 1.0) < 0.05, "orientation must stay gripper-down"

    # Contract actions (10 Hz): full-scale -y. Each action asks for 2 cm from the measured pose; the clipped
    # impedance (1 cm x 2000 N/m) limits the speed (simulated joint friction makes franky-sim slower than an FR3).
    p0 = c.ee_pos()
    # 1.5 s of actions, longer (up to 11.5 s) until 3 cm show on a loaded machine where fewer actions get through.
    stream(lambda: c.send_action([0, -1, 0, 0, 0, 0, -1]), 1.5)
    stream(lambda: c.send_action([0, -1, 0, 0, 0, 0, -1]), 10.0, until=lambda: c.ee_pos()[1] - p0[1] < -0.03)
    time.sleep(0.3)
    d = c.ee_pos() - p0
    print(f"actions of -2 cm in y moved the TCP by {np.round(d, 4)}")
    assert -0.30 < d[1] < -0.03 and abs(d[0]) < 0.02 and abs(d[2]) < 0.02, d

    # Gripper: closing through the action's gripper component, opening through the service.
    stream(lambda: c.send_action([0, 0, 0, 0, 0, 0, 1]), 10.0, until=lambda: c.gripper.last().position[0] < 0.01)
    assert c.gripper.last().position[0] < 0.01, f"gripper did not close: {c.gripper.last().position[0]}"
    r = c.call("/irevla/robot/gripper", data=False)
    assert r.success, r.message
    wait_for(lambda: c.gripper.last().position[0] > 0.07, 5.0, message="gripper did not open")

    # The safety box holds with the real robot loop: pushing up into the lid for 2 s ...
    before = c.latest_status()["counters"]
    t_push = time.time()
    up = lambda: c.send_action([0, 0, 1, 0, 0, 0, -1])  # noqa: E731
    assert stream(up, 20.0, until=lambda: c.ee_pos()[2] > BOX_MAX[2] - 0.01), f"never reached the lid: {c.ee_pos()}"
    # Keep pushing against it until the layer has clamped several commands (10 Hz; longer on a loaded machine).
    stream(up, 10.0, until=lambda: c.latest_status()["counters"]["clamped"] - before["clamped"] >= 5)
    zs = [s.msg.pose.position.z for s in c.pose.since(t_push)]
    print(f"pushing into the lid: max z {max(zs):.4f} (lid {BOX_MAX[2]})")
    assert max(zs) <= BOX_MAX[2] + 0.005, max(zs)
    after = c.wait_status(lambda s: s["counters"]["clamped"] > before["clamped"])["counters"]
    assert after["clamped"] - before["clamped"] >= 5, (before, after)
    # ... a target outside the box and one in the wrong frame are rejected and do not move the arm.
    p_before = c.ee_pos()
    # Commands are keep-last-1 (only the newest matters), so on a loaded machine a stalled executor may see only the
    # last of a burst: stream each kind until the node's status shows it was rejected.
    def rejected(reason):
        return lambda: c.latest_status()["counters"]["reasons"].get(reason, 0) > 0
    assert stream(lambda: c.send_target([0.45, 0.0, 0.60], DOWN, frame_id=BASE), 15.0,
                   until=rejected("outside workspace")), c.latest_status()["counters"]
    assert stream(lambda: c.send_target([0.30, 0.0, 0.35], DOWN, frame_id="panda_link0"), 15.0,
                   until=rejected("wrong frame")), c.latest_status()["counters"]
    assert np.linalg.norm(c.ee_pos() - p_before) < 0.01

    # Watchdog: no commands -> hold where it is.
    time.sleep(0.5)
    p_hold = c.ee_pos()
    time.sleep(1.0)
    assert np.linalg.norm(c.ee_pos() - p_hold) < 0.005
    assert json.loads(c.status.last().data)["holding"]
    assert node.callback_errors == 0 and node.core.backend_errors == 0

    # Shutdown closes the worker process (the robot connection) cleanly.
    node.backend.close()
    wait_for(lambda: node.backend.worker_exit_code is not None, 10.0, message=f"worker {worker} still running")
    assert node.backend.worker_exit_code == 0


def test_fr3_home_outside_the_box_is_refused_before_the_move(franky_sim, franky_client):
    """home_q is checked by forward kinematics (with the flange -> TCP transform the robot reports) before the
    planned joint motion: a home whose TCP lies outside the box is refused, counted, and the robot gets no motion."""
    sideways = (1.2, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398)  # ready pose turned: TCP at y ~ 0.29 m
    backend = FrankaLibfrankaBackend(FrankaLibfrankaConfig(
        hostname=servers.HOST, realtime=False, extra_pythonpath=(str(franky_client),), home_q=sideways,
        gripper=GripperConfig(enabled=False)))
    try:
        core = RobotServerCore(backend, safety_config=SafetyConfig(pos_min=BOX_MIN, pos_max=BOX_MAX,
                                                                   nominal_quat=DOWN))
        q0 = backend.read_state().q
        for call in (core.home, core.reset):
            ok, msg = call()
            print(f"\n{msg}")
            assert not ok and "franka_libfranka.home_q" in msg and "outside" in msg, msg
        # move_home blocks until the robot is there: had it been sent, the joints would differ now.
        assert np.abs(backend.read_state().q - q0).max() < 1e-4
        assert backend.status()["robot_mode"] != "Move" and not backend.status()["tracking"]
        st = core.status()
        assert st["counters"]["reasons"][R_HOME] == 2 and st["counters"]["homes"] == 0, st["counters"]
    finally:
        backend.close()


def test_panda_backend_refuses_fr3_protocol_clearly(franky_sim):
    """panda-python bundles libfranka 0.9 (Panda, system 4.x). Against an FR3 protocol peer it must fail at
    connect with a message that names the version mismatch and the backend to use instead."""
    from robot_server.backends import make_backend
    client = servers.provisioned(provision.panda_client)
    with pytest.raises(RuntimeError) as info:
        make_backend("panda_py", {"hostname": servers.HOST, "realtime": False, "extra_pythonpath": [str(client)],
                                  "connect_timeout_s": 30.0})
    msg = str(info.value)
    print(f"\n{msg}")
    assert "libfranka 0.9" in msg and "franka_libfranka" in msg, msg
