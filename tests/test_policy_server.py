"""The policy server: its pure core (observation checks, encode-once, deadlines, commands, hot swap) with synthetic
frames and a real tiny VLA, then the ROS 2 node over real DDS with the real twin (sim_bringup in-process):
a language command end to end with a head trained here on scripted data, a missed deadline, bad images and
instructions, weight hot swap, cancel.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import policy_server_helpers as H
from helpers import wait_for
from policy.model import InputError, build_vla, load_vla
from policy.server_core import PolicyServerConfig, PolicyServerCore

torch.set_num_threads(1)  # the tiny model is fastest on one thread, and the machine is shared

HOME_STATE = ([0.45, 0.0, 0.25], [0.0, 1.0, 0.0, 0.0], 0.08)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """Two untrained tiny checkpoints with different backbones (different vlm_ids) and heads."""
    root = tmp_path_factory.mktemp("tiny_ckpts")
    out = {}
    for name, seed in (("a", 0), ("b", 1)):
        torch.manual_seed(seed)
        vla = build_vla(H.tiny_config(), seed=seed, cache_root=root / "backbones")
        path = vla.save(root / name)
        out[name] = (path, load_vla(path).vlm_id())  # the id of the weights as a server loads them
    assert out["a"][1] != out["b"][1]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path, info = H.trained_checkpoint(tmp_path_factory.getbasetemp())
    print(f"\ntrained tiny head: {info}")
    return path, info


class FakeClock:
    """Wall clock under the test's control; `lag` is added while the core computes (a slow model)."""

    def __init__(self, t0: float = 1000.0):
        self.t = t0
        self.lag = 0.0

    def __call__(self) -> float:
        return self.t + self.lag


def _core(ckpt, clock=None, cameras=None, **cfg) -> PolicyServerCore:
    core = PolicyServerCore.from_checkpoint(ckpt, PolicyServerConfig(**cfg), clock=clock or FakeClock())
    return core


def _image(seed=0, size=(224, 224)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _feed(core, t, seed=0, state=HOME_STATE):
    for cam in core.cameras:
        core.on_frame(cam, _image(seed), t)
    core.on_state(*state, stamp=t)


# ---------------------------------------------------------------------------------------------- pure core
def test_core_checks_observations_and_keeps_running(tiny_ckpts):
    clock = FakeClock()
    core = _core(tiny_ckpts["a"][0], clock, max_frame_age_s=0.3, max_state_age_s=0.3, max_invalid_s=100.0)
    core.start(H.INSTRUCTION, timeout_s=60.0, now=clock.t)
    t = clock.t

    def tick_reason():
        r = core.tick(t)
        assert r.action is None and r.status == "invalid", r
        return r.reason

    assert "camera front: no frame received yet" in tick_reason()
    core.on_frame("front", _image(), t)
    assert "robot state: none received yet" in tick_reason()
    core.on_state(*HOME_STATE, stamp=t)
    assert core.tick(t).status == "action"  # all good

    t += 0.5  # nothing new for 0.5 s: the camera stream stalled
    core.on_state(*HOME_STATE, stamp=t)
    assert "stale frame" in tick_reason() and "stalled" in tick_reason()
    core.on_frame("front", _image(size=(100, 120)), t)
    assert "image is 100x120 (HxW), expected 224x224" in tick_reason()
    core.on_frame("front", _image().astype(np.float32), t)
    assert "expected an HxWx3 uint8 RGB image" in tick_reason()
    core.on_frame_error("front", "expected an rgb8 image, got 'bgr8'", t)
    assert "rgb8" in tick_reason()
    core.on_frame("front", _image(1), t)
    core.on_state([0.45, float("nan"), 0.25], [0, 1, 0, 0], 0.08, stamp=t)
    assert "NaN" in tick_reason()
    core.on_state(*HOME_STATE, stamp=t - 1.0)
    assert "robot state: stale" in tick_reason()
    core.on_state(*HOME_STATE, stamp=t)
    r = core.tick(t)
    assert r.status == "action" and r.action.shape == (7,) and np.all(np.abs(r.action) <= 1.0)
    assert core.command.steps == 2 and core.counters["invalid_ticks"] == 9
    assert any("stale frame" in k for k in core.reasons)


def test_core_requires_synchronized_cameras(tmp_path):
    cfg = H.tiny_config()
    cfg.cameras = ["front", "wrist"]
    vla = build_vla(cfg, cache_root=tmp_path)
    clock = FakeClock()
    core = PolicyServerCore(vla, PolicyServerConfig(max_frame_skew_s=0.05), clock=clock)
    core.start("pick up the red block", 10.0, now=clock.t)
    t = clock.t
    core.on_frame("front", _image(0), t)
    core.on_state(*HOME_STATE, stamp=t)
    r = core.tick(t)
    assert r.status == "invalid" and "camera wrist: no frame received yet" in r.reason
    core.on_frame("wrist", _image(1), t - 0.12)
    r = core.tick(t)
    assert r.status == "invalid" and "not synchronized: frames 0.12 s apart" in r.reason
    core.on_frame("wrist", _image(1), t - 0.02)
    assert core.tick(t).status == "action"


def test_core_encodes_each_observation_once_and_hands_out_latents(tiny_ckpts):
    clock = FakeClock()
    ckpt, vlm_id = tiny_ckpts["a"]
    core = _core(ckpt, clock)
    core.start("  pick up   the red block ", 10.0, now=clock.t)
    assert core.command.instruction == "pick up the red block"
    t = clock.t
    _feed(core, t, seed=0)
    r1 = core.tick(t)
    assert r1.status == "action" and r1.latent is not None
    rec = r1.latent
    assert rec.obs_id == 1 and rec.vlm_id == vlm_id and rec.instruction == "pick up the red block"
    assert rec.latents.dtype == np.float16 and rec.latents.shape == (core.vla.num_latent_tokens, core.vla.latent_dim)
    np.testing.assert_allclose(rec.state, np.concatenate([HOME_STATE[0], HOME_STATE[1], [HOME_STATE[2]]]), atol=1e-6)
    # Same frames next tick (the camera has not sent a new one): no second encode, same action from the cache.
    core.on_state(*HOME_STATE, stamp=t + 0.1)
    r2 = core.tick(t + 0.1)
    assert r2.status == "action" and r2.latent is None
    np.testing.assert_allclose(r2.action, r1.action, atol=1e-6)
    assert core.counters["encodes"] == 1 and core.counters["cache_hits"] == 1
    # A new frame: a new observation id.
    _feed(core, t + 0.2, seed=1)
    r3 = core.tick(t + 0.2)
    assert r3.latent is not None and r3.latent.obs_id == 2 and core.latest_latent() is r3.latent
    # The head's action from the handed-out latents is the action the server computed (the RL actor sees these).
    a = core.vla.act_from_latents(torch.from_numpy(r3.latent.latents.astype(np.float32)), r3.latent.state[None])[0]
    np.testing.assert_allclose(a, r3.action, atol=1e-5)


def test_core_drops_actions_that_miss_their_deadline(tiny_ckpts):
    clock = FakeClock()
    core = _core(tiny_ckpts["a"][0], clock, deadline_budget_s=0.05)
    core.start(H.INSTRUCTION, 10.0, now=clock.t)
    t = clock.t
    _feed(core, t)
    clock.lag = 0.06  # the model "takes" 60 ms: later than the 50 ms budget
    r = core.tick(t)
    assert r.status == "late" and r.action is None and "not published" in r.reason
    assert core.command.late_actions == 1 and core.counters["late_actions"] == 1 and core.command.steps == 0
    clock.lag = 0.04  # within budget
    r = core.tick(t)
    assert r.status == "action" and r.deadline == pytest.approx(t + 0.05)
    # With the real clock, a budget no computation can meet: every action is dropped, none handed out.
    real = _core(tiny_ckpts["a"][0], deadline_budget_s=1e-6)
    real.clock = time.time
    real.start(H.INSTRUCTION, 10.0)
    for _ in range(3):
        now = time.time()
        _feed(real, now)
        assert real.tick(now).status == "late"
    assert real.counters["actions"] == 0 and real.counters["late_actions"] == 3


def test_core_validates_instructions_and_timeouts(tiny_ckpts):
    core = _core(tiny_ckpts["a"][0], max_instruction_chars=100)
    with pytest.raises(InputError, match="instruction is empty"):
        core.start("   ")
    with pytest.raises(InputError, match="too long: 101 characters > 100"):
        core.start("x" * 101)
    with pytest.raises(InputError, match="too long: .* tokens > max_text_tokens=48"):
        core.start("pick up the red block and then put it down gently please ok")  # 60 bytes > 48 tokens
    with pytest.raises(InputError, match="must be a string"):
        core.start(None)
    with pytest.raises(InputError, match="timeout_s must be >= 0"):
        core.start("pick up the red block", timeout_s=float("nan"))
    with pytest.raises(InputError, match="exceeds max_timeout_s"):
        core.start("pick up the red block", timeout_s=1e6)
    assert core.command is None
    cmd = core.start("pick up the red block", timeout_s=0)
    assert cmd.timeout_s == core.config.default_timeout_s
    with pytest.raises(RuntimeError, match="busy"):
        core.start("pick up the red block")


def test_core_ends_commands_on_timeout_and_on_persistent_bad_input(tiny_ckpts):
    clock = FakeClock()
    core = _core(tiny_ckpts["a"][0], clock, max_invalid_s=1.0)
    core.start(H.INSTRUCTION, timeout_s=2.0, now=clock.t)
    t = clock.t
    _feed(core, t)
    assert core.tick(t).status == "action"
    r = core.tick(t + 2.0)
    assert r.status == "ended" and r.ended.outcome == "timeout" and r.ended.steps == 1 and core.command is None
    assert core.tick(t + 2.1).status == "idle"
    # no usable observation for longer than max_invalid_s: an error naming the reason
    core.start(H.INSTRUCTION, timeout_s=30.0, now=t + 3.0)
    statuses = [core.tick(t + 3.0 + 0.1 * k) for k in range(12)]
    assert statuses[0].status == "invalid"
    end = statuses[-1]
    assert end.status == "ended" and end.ended.outcome == "error" and "stale frame" in end.ended.message
    # finish() of a command that is not active does nothing
    assert core.finish("canceled", command_id=12345) is None


def test_core_encode_only_mode_for_the_rl_actor(tiny_ckpts):
    clock = FakeClock()
    core = _core(tiny_ckpts["a"][0], clock)
    assert core.tick(clock.t).status == "idle"
    assert core.set_latent_instruction("pick up the red block") == "pick up the red block"
    _feed(core, clock.t)
    r = core.tick(clock.t)
    assert r.status == "encoded" and r.action is None and r.latent.obs_id == 1
    with pytest.raises(InputError):
        core.set_latent_instruction("y" * 1000)
    core.set_latent_instruction("")
    assert core.tick(clock.t).status == "idle"


def test_core_hot_swaps_head_and_checkpoint_between_ticks(tiny_ckpts, tmp_path):
    (ckpt_a, id_a), (ckpt_b, id_b) = tiny_ckpts["a"], tiny_ckpts["b"]
    clock = FakeClock()
    core = _core(ckpt_a, clock)
    core.start(H.INSTRUCTION, 60.0, now=clock.t)
    t = clock.t
    _feed(core, t)
    a0 = core.tick(t).action
    assert core.vlm_id == id_a
    # Stage 1: a new head. Same VLM: same vlm_id, cached latents stay valid (no re-encode), the action changes.
    assert core.load_head(ckpt_b / "head.safetensors") == id_a
    r = core.tick(t)
    assert r.latent is None and core.counters["encodes"] == 1 and not np.allclose(r.action, a0)
    # A head that does not fit is refused; the served head stays.
    from safetensors.torch import save_file
    save_file({"mlp.out.weight": torch.zeros(3, 3)}, str(tmp_path / "bad_head.safetensors"))
    with pytest.raises(ValueError, match="does not fit this model's head"):
        core.load_head(tmp_path / "bad_head.safetensors")
    with pytest.raises(FileNotFoundError, match="no head weights"):
        core.load_head(tmp_path / "missing")
    np.testing.assert_allclose(core.tick(t).action, r.action, atol=1e-6)
    # Stage 2: a new checkpoint. New vlm_id; the observation is encoded again with the new VLM.
    assert core.load_checkpoint(ckpt_b) == id_b and core.vlm_id == id_b
    r2 = core.tick(t)
    assert r2.latent is not None and r2.latent.vlm_id == id_b and core.counters["encodes"] == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        core.load_checkpoint(tmp_path / "nope")
    assert core.vlm_id == id_b and core.command is not None  # the command went on through all of it


def test_core_swap_during_ticks_is_atomic(tiny_ckpts):
    """Ticks from one thread while another swaps weights back and forth: every tick yields a valid action."""
    (ckpt_a, _), (ckpt_b, _) = tiny_ckpts["a"], tiny_ckpts["b"]
    core = _core(ckpt_a, deadline_budget_s=10.0, max_frame_age_s=10.0, max_state_age_s=10.0)
    core.clock = time.time
    core.start(H.INSTRUCTION, 60.0)
    errors, stop = [], threading.Event()

    def ticker():
        k = 0
        while not stop.is_set():
            now = time.time()
            _feed(core, now, seed=k % 3)
            r = core.tick(now)
            if r.status != "action":
                errors.append(r)
            k += 1

    th = threading.Thread(target=ticker)
    th.start()
    try:
        for k in range(4):
            core.load_head((ckpt_b if k % 2 == 0 else ckpt_a) / "head.safetensors")
        core.load_checkpoint(ckpt_b)
    finally:
        stop.set()
        th.join(10)
    assert not errors, errors[:3]
    assert core.counters["swaps_head"] == 4 and core.counters["swaps_checkpoint"] == 1


# ---------------------------------------------------------------------------------------------- over DDS
# Generous freshness/deadline settings: the tests run on a busy 2-core machine together with the twin's physics and
# rendering in this very process.
LOOSE = {"max_frame_age_s": 1.0, "max_state_age_s": 1.0, "max_frame_skew_s": 1.0}


@pytest.fixture
def ros_cell(ros_context, spin_thread):
    """start(checkpoint, seed=..., **server_params) -> Cell: sim cell + policy server + a test client, spun."""
    import rclpy
    from rclpy.action import ActionClient
    from rclpy.parameter import Parameter
    from std_msgs.msg import Float64MultiArray, String

    from irevla_interfaces.action import ExecuteInstruction
    from irevla_interfaces.msg import Latent
    from irevla_interfaces.srv import LoadWeights
    from policy.server_node import PolicyServerNode
    from robot_server import ros_interface as ri
    from robot_server import sim_bringup
    from robot_server.client import RobotClient
    from ros_clients import Sink

    def start(checkpoint, seed=100, **params):
        merged = {**LOOSE, "deadline_budget_s": 0.5, "checkpoint": str(checkpoint), **params}
        server = PolicyServerNode(context=ros_context,
                                  parameter_overrides=[Parameter(k, value=v) for k, v in merged.items()])
        try:
            b = sim_bringup.build(context=ros_context,
                                  robot_params=[Parameter("task", value=H.TASK), Parameter("seed", value=seed)],
                                  camera_params=[Parameter("rate", value=10.0)], make_executor=False)
        except BaseException:
            server.destroy_node()
            raise
        node = rclpy.create_node("policy_test_client", context=ros_context)
        cell = Cell()
        cell.bringup, cell.server, cell.node = b, server, node
        cell.robot = RobotClient(node)
        cell.actions, cell.latents, cell.status = Sink(), Sink(), Sink()
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        node.create_subscription(Float64MultiArray, ri.TOPIC_ACTION, cell.actions,
                                 QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        node.create_subscription(Latent, ri.TOPIC_POLICY_LATENTS, cell.latents, ri.LATENT_QOS)
        node.create_subscription(String, ri.TOPIC_POLICY_STATUS, cell.status, ri.LATCHED_QOS)
        cell.client = ActionClient(node, ExecuteInstruction, ri.ACTION_EXECUTE_INSTRUCTION)
        cell.load = node.create_client(LoadWeights, ri.SRV_POLICY_LOAD_WEIGHTS)
        spin_thread([b.camera, b.robot, server, node])
        assert cell.robot.wait_ready(timeout_s=30.0), "robot state did not arrive"
        assert cell.client.wait_for_server(timeout_sec=30.0), "no ExecuteInstruction server"
        wait_for(lambda: cell.robot.scene_json is not None, 20.0, message="no sim scene")
        cells.append(cell)
        return cell

    cells = []
    yield start
    spin_thread.stop_all()  # no spinning over a client being destroyed ("action client pointer is invalid")
    for cell in cells:  # action clients are waitables: destroy_node (in spin_thread's teardown) leaves them
        cell.client.destroy()


class Cell:
    def goal(self, instruction, timeout_s=5.0, task="", feedback=None):
        from irevla_interfaces.action import ExecuteInstruction
        fut = self.client.send_goal_async(ExecuteInstruction.Goal(instruction=instruction, timeout_s=timeout_s,
                                                                  task=task),
                                          feedback_callback=(lambda m: feedback.append(m.feedback))
                                          if feedback is not None else None)
        wait_for(fut.done, 20.0, message="goal not answered")
        handle = fut.result()
        assert handle.accepted
        return handle

    def result(self, handle, timeout=60.0):
        fut = handle.get_result_async()
        wait_for(fut.done, timeout, message="no result")
        return fut.result().result

    def run(self, instruction, timeout_s=5.0, task="", wait=60.0):
        return self.result(self.goal(instruction, timeout_s, task), wait)

    def server_status(self) -> dict:
        return json.loads(self.status.last().data)

    def block_pos(self) -> np.ndarray:
        return np.array(json.loads(self.robot.scene_json)["objects"]["red_block"][0])


def _ee(cell) -> np.ndarray:
    return cell.robot.state().ee_pos


def test_language_command_moves_the_arm_to_the_object_end_to_end(ros_cell, trained):
    ckpt, info = trained
    assert info["loss_last"] < 0.5 * info["loss_first"], info  # the head did learn the expert data
    cell = ros_cell(ckpt, seed=100)
    block, p0 = cell.block_pos(), _ee(cell)
    d0 = float(np.linalg.norm(p0 - block))
    feedback, dists, path = [], [], []
    handle = cell.goal(H.INSTRUCTION, timeout_s=8.0, task=H.TASK, feedback=feedback)
    fut = handle.get_result_async()
    while not fut.done():  # the arm's distance to the block while the policy drives it
        p = _ee(cell)
        path.append(p)
        dists.append(float(np.linalg.norm(p - block)))
        time.sleep(0.05)
    print("\nblock", np.round(block, 3), "ee path (every 0.5 s):", [np.round(p, 3).tolist() for p in path[::10]])
    res = fut.result().result
    t_end = time.time()
    n_actions = len(cell.actions.items)
    status = cell.server_status()
    robot = json.loads(cell.robot.status_json)
    print(f"robot: accepted {robot['counters']['accepted']} rejected {robot['counters']['rejected']} "
          f"sim_slips {robot['sim_slips']}")
    print(f"\ne2e: outcome={res.outcome} steps={res.steps} elapsed={res.elapsed_s:.1f}s distance to block "
          f"{d0:.3f} -> min {min(dists):.3f} m; feedback {len(feedback)}; actions seen {n_actions}; "
          f"late {status['counters']['late_actions']}; last tick latency {status['last_latency_ms']} ms")
    assert res.outcome in ("success", "timeout"), (res.outcome, res.message)
    assert res.steps >= 20, res.steps  # ~80 ticks in 8 s at 10 Hz, minus what a busy machine drops
    # Purposeful: the arm got much closer to the block than where it started (the expert reaches it within a few
    # cm; measured for this policy on an idle machine: 0.24 m -> 0.04-0.08 m; a starved real-time twin moves less).
    assert min(dists) < d0 - 0.07, (d0, min(dists))
    assert len(feedback) >= 5
    steps = [f.step for f in feedback]
    assert steps == sorted(steps) and steps[-1] > 5 and 0.0 < feedback[-1].progress <= 1.0
    assert feedback[-1].elapsed_s > feedback[0].elapsed_s
    # The command ended: nothing more is published (the one zero-motion hold came before the result).
    time.sleep(0.5)
    assert len([r for r in cell.actions.items if r.t_recv > t_end + 0.05]) == 0
    last = np.array(cell.actions.last().data)
    assert np.allclose(last[:6], 0.0), last
    # Latents for the RL actor came with every newly encoded observation.
    from policy.server_node import latents_from_msg
    lat = cell.latents.items
    assert len(lat) >= 10
    ids = [r.msg.obs_id for r in lat]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    arr = latents_from_msg(lat[-1].msg)
    assert arr.shape == tuple(lat[-1].msg.shape) and np.isfinite(arr).all() and lat[-1].msg.vlm_id == info["vlm_id"]
    assert len(lat[-1].msg.state) == 8


def test_missed_deadline_publishes_nothing_stale(ros_cell, tiny_ckpts):
    cell = ros_cell(tiny_ckpts["a"][0], deadline_budget_s=1e-4)  # 0.1 ms: no action can be ready in time
    feedback = []
    res = cell.result(cell.goal(H.INSTRUCTION, timeout_s=2.0, feedback=feedback))
    assert res.outcome == "timeout" and res.steps == 0, (res.outcome, res.message)
    time.sleep(0.3)
    assert len(cell.actions.items) == 0, "a late action was published"
    assert feedback and feedback[-1].late_actions >= 5, feedback[-1:]
    wait_for(lambda: cell.server_status()["counters"]["late_actions"] >= 5, 5.0)
    assert cell.server_status()["actions_published"] == 0
    status = json.loads(cell.robot.status_json)
    assert status["holding"], "the robot's watchdog should hold the arm"


def test_bad_images_and_instructions_get_clear_errors_and_the_node_lives_on(ros_cell, tiny_ckpts):
    from sensor_msgs.msg import Image
    from robot_server import ros_interface as ri
    from robot_server.camera_node import frame_to_msg
    from robot_server.cameras.base import Frame

    cell = ros_cell(tiny_ckpts["a"][0], cameras=["pytest_cam"], max_invalid_s=1.0)
    # instructions: refused with the reason, nothing published
    for text, reason in (("", "instruction is empty"), ("   ", "instruction is empty"),
                         ("x" * 600, "too long: 600 characters"),
                         ("pick up the red block and then put it down gently please ok", "tokens > max_text_tokens")):
        res = cell.run(text)
        assert res.outcome == "error" and res.message.startswith("rejected:") and reason in res.message, res.message
    res = cell.run(H.INSTRUCTION, task="press_button")
    assert res.outcome == "error" and "the cell runs task 'pick_red_block'" in res.message, res.message
    # no camera yet: an error naming the camera
    res = cell.run(H.INSTRUCTION, timeout_s=10.0)
    assert res.outcome == "error" and "camera front (/irevla/camera/pytest_cam/image_raw): no frame received yet" \
        in res.message, res.message

    pub = cell.node.create_publisher(Image, ri.camera_topic("pytest_cam"), ri.IMAGE_QOS)
    stream = {"make": None}
    stop = threading.Event()

    def camera():  # the test plays the camera hardware: 10 frames/s of whatever `make` builds
        while not stop.is_set():
            if stream["make"] is not None:
                pub.publish(stream["make"]())
            stop.wait(0.1)

    th = threading.Thread(target=camera, daemon=True)
    th.start()
    try:
        def bgr():
            m = frame_to_msg(Frame("pytest_cam", img, time.time()))
            m.encoding = "bgr8"
            return m

        def small():
            return frame_to_msg(Frame("pytest_cam", img[:100, :120].copy(), time.time()))

        def good():
            return frame_to_msg(Frame("pytest_cam", img, time.time()))

        img = _image(3)
        for make, reason in ((bgr, "expected an rgb8 image, got 'bgr8'"),
                             (small, "image is 100x120 (HxW), expected 224x224")):
            stream["make"] = make
            time.sleep(0.3)
            res = cell.run(H.INSTRUCTION, timeout_s=10.0)
            assert res.outcome == "error" and reason in res.message and "pytest_cam" in res.message, res.message
        assert len(cell.actions.items) == 0
        # good frames again: the same node serves the next command
        stream["make"] = good
        time.sleep(0.3)
        res = cell.run(H.INSTRUCTION, timeout_s=1.5)
        assert res.outcome == "timeout" and res.steps >= 3, (res.outcome, res.message, res.steps)
        assert len(cell.actions.items) >= 3
    finally:
        stop.set()
        th.join(5)
    assert cell.server.callback_errors == 0
    reasons = cell.server_status()["reasons"]
    assert any("rgb8" in k for k in reasons) and any("100x120" in k for k in reasons), reasons


def test_hot_swap_over_ros_changes_vlm_id_for_a_checkpoint_not_for_a_head(ros_cell, tiny_ckpts):
    from irevla_interfaces.srv import LoadWeights
    (ckpt_a, id_a), (ckpt_b, id_b) = tiny_ckpts["a"], tiny_ckpts["b"]
    # encode-only mode (the RL actor drives): latents flow without a command, and without actions
    cell = ros_cell(ckpt_a, latent_instruction=H.INSTRUCTION)
    cell.latents.wait(3, timeout=20.0)
    assert cell.latents.last().vlm_id == id_a

    def load(kind, path):
        assert cell.load.wait_for_service(timeout_sec=10.0)
        fut = cell.load.call_async(LoadWeights.Request(kind=kind, path=str(path)))
        wait_for(fut.done, 60.0, message="LoadWeights did not answer")
        return fut.result()

    r = load("head", ckpt_b / "head.safetensors")
    assert r.success and r.vlm_id == id_a, r.message
    r = load("checkpoint", ckpt_b)
    assert r.success and r.vlm_id == id_b, r.message
    t_swap = time.time()
    wait_for(lambda: any(x.msg.vlm_id == id_b for x in cell.latents.since(t_swap)), 20.0,
             message="no latents from the new checkpoint")
    for kind, path, why in (("checkpoint", ckpt_b / "nope", "does not exist"), ("weights", ckpt_a, "kind must be"),
                            ("head", ckpt_a / "nope.safetensors", "no head weights")):
        r = load(kind, path)
        assert not r.success and why in r.message and r.vlm_id == id_b, r.message
    st = cell.server_status()
    assert st["vlm_id"] == id_b and st["counters"]["swaps_checkpoint"] == 1 and st["counters"]["swaps_head"] == 1
    assert len(cell.actions.items) == 0  # encode-only mode never commands the arm
    # the swapped server still executes commands
    res = cell.run(H.INSTRUCTION, timeout_s=1.0)
    assert res.outcome == "timeout" and res.steps >= 3, (res.outcome, res.message)


def test_cancel_stops_publishing_actions(ros_cell, trained):
    cell = ros_cell(trained[0], seed=101)
    handle = cell.goal(H.INSTRUCTION, timeout_s=30.0)
    cell.actions.wait(5, timeout=20.0)
    # one command at a time: a second goal is refused with the reason, the first one goes on
    busy = cell.run("grasp the red block", timeout_s=5.0)
    assert busy.outcome == "error" and "rejected: busy" in busy.message, busy.message
    n = len(cell.actions.items)
    cell.actions.wait(n + 3, timeout=10.0)
    cancel = handle.cancel_goal_async()
    wait_for(cancel.done, 10.0, message="cancel not answered")
    res = cell.result(handle, 20.0)
    t_end = time.time()
    assert res.outcome == "canceled" and res.steps >= 5, (res.outcome, res.message)
    time.sleep(1.0)
    after = [r for r in cell.actions.items if r.t_recv > t_end + 0.05]
    assert not after, f"{len(after)} actions after the cancel"
    hold = np.array(cell.actions.last().data)
    assert np.allclose(hold[:6], 0.0), hold  # the stop: zero motion, gripper as it was
    wait_for(lambda: json.loads(cell.robot.status_json)["holding"], 5.0, message="robot not holding")
    # the next goal is served
    assert cell.run(H.INSTRUCTION, timeout_s=1.0).outcome == "timeout"


def test_node_without_checkpoint_exits_with_a_clear_message():
    proc = subprocess.run([sys.executable, "-m", "policy.server_node"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "parameter 'checkpoint' is required" in proc.stderr
