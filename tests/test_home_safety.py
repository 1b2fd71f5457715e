"""Home, reset and recover go through the one safety layer (robot_server/safety.py), like actions and targets.

Here: the arm's forward kinematics, the layer's home entry, the config-load check of every backend's home, the sim
twin (home streamed through the layer, reset, recover, an out-of-box home refused with no motion sent) and the
panda-python backend's joint-space home (no simulator speaks its libfranka 0.9 protocol, so its home check runs at
the layer with the backend's own config, behind a recording stand-in for the robot connection).
The protocol-peer backends are covered next to their other tests: franka_ros2 in tests/peers/franka_ros2_inner.py
(tests/test_backend_franka_ros2.py), libfranka against franky-sim in tests/test_backend_franky_sim.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml

from robot_server.backends import load_backend_config
from robot_server.backends.base import PANDA_ARM_JOINTS, RobotBackend, RobotState
from robot_server.backends.sim import SimTwinBackend
from robot_server.config import check_backend_home, load_safety_config
from robot_server.geometry import matrix_to_quat, quat_angle
from robot_server.kinematics import franka_fk, franka_hand_f_t_ee
from robot_server.safety import R_HOME, R_STATE_OUTSIDE, HomeTarget, SafetyConfig, SafetyLayer
from robot_server.server_core import RobotServerCore
from robot_server.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOWN = (0.0, 1.0, 0.0, 0.0)
READY_Q = (0.0, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398)
SIDEWAYS_Q = (1.2, -0.785398, 0.0, -2.356194, 0.0, 1.570796, 0.785398)  # ready pose turned 1.2 rad: TCP y 0.29 m


# ---------------------------------------------------------------------------------------------- kinematics
def test_franka_fk_ready_pose_and_the_twins_panda_model():
    m = franka_fk(READY_Q)
    np.testing.assert_allclose(m[:3, 3], [0.307, 0.0, 0.487], atol=1e-3)  # Franka's documented ready TCP
    assert quat_angle(matrix_to_quat(m[:3, :3]), DOWN) < 1e-5
    np.testing.assert_allclose(franka_fk(READY_Q, franka_hand_f_t_ee().flatten(order="F")), m)  # column major

    # Against an independent model: MuJoCo's Panda in the twin (joint 7's frame = the flange 0.107 m back).
    import mujoco
    from sim_twin.twin import Twin
    twin = Twin()
    try:
        body = twin.model.body("panda/link7").id
        rng = np.random.default_rng(0)
        for _ in range(20):
            q = rng.uniform([-2.8, -1.7, -2.8, -3.0, -2.8, 0.0, -2.8], [2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8])
            twin.data.qpos[twin._arm_qadr] = q
            mujoco.mj_kinematics(twin.model, twin.data)
            f = franka_fk(q, np.eye(4))
            np.testing.assert_allclose(twin.data.xpos[body], f[:3, 3] - 0.107 * f[:3, 2], atol=1e-9)
            np.testing.assert_allclose(twin.data.xmat[body].reshape(3, 3), f[:3, :3], atol=1e-9)
    finally:
        twin.close()
    with pytest.raises(ValueError, match="7 finite"):
        franka_fk([0.0] * 6)
    with pytest.raises(ValueError, match="7 finite"):
        franka_fk([np.nan] * 7)


# ---------------------------------------------------------------------------------------------- the layer
def test_filter_home_checks_cartesian_and_joint_homes_and_counts():
    layer = SafetyLayer(SafetyConfig(), nominal_quat=DOWN)
    inside = HomeTarget(pos=(0.45, 0.0, 0.25), quat=DOWN, source="test.home_pos")
    assert layer.check_home(inside) == ""
    at = (np.array([0.45, 0.05, 0.3]), np.array(DOWN))
    assert layer.filter_home(inside, 0.0, at).accepted and layer.stats["homes"] == 1
    # A home goal is streamed at the home speed and is not cancelled by the watchdog while the server drives it.
    sp = layer.next_setpoint(at, 0.0)
    sp = layer.next_setpoint(at, 5.0)
    assert not sp.holding and np.linalg.norm(sp.pose.pos - at[0]) <= 0.1 * 0.1 + 1e-9
    layer.forget_motion()

    above = HomeTarget(pos=(0.45, 0.0, 0.60), quat=DOWN, source="franka_ros2.home_pos")
    msg = layer.check_home(above)
    assert "franka_ros2.home_pos" in msg and "100.0 mm outside" in msg, msg
    d = layer.filter_home(above, 1.0, at)
    assert not d.accepted and d.reason == R_HOME and "franka_ros2.home_pos" in d.detail
    tilted = HomeTarget(pos=(0.45, 0.0, 0.25), quat=(0.0, 0.7071068, 0.7071068, 0.0), source="x.home_quat_wxyz")
    assert "orientation" in layer.check_home(tilted)
    assert layer.filter_home(HomeTarget(q=READY_Q, source="panda_py.home_q"), 2.0).accepted
    d = layer.filter_home(HomeTarget(q=SIDEWAYS_Q, source="panda_py.home_q"), 3.0)
    assert not d.accepted and "panda_py.home_q" in d.detail and "forward kinematics" in d.detail
    assert layer.stats["reasons"][R_HOME] == 2 and layer.stats["homes"] == 2
    # A Cartesian home cannot be streamed from a measured pose outside the limits (no pose would be safe to send).
    far = (np.array([0.45, 0.0, 0.56]), np.array(DOWN))
    assert layer.filter_home(inside, 4.0, far).reason == R_STATE_OUTSIDE
    with pytest.raises(ValueError, match="either"):
        HomeTarget(pos=(0.4, 0, 0.3), q=READY_Q)


# ---------------------------------------------------------------------------------------------- config load
def test_shipped_backend_configs_have_their_homes_inside_the_shipped_box():
    safety = load_safety_config(str(ROOT / "config" / "safety.yaml"))
    for kind, path in (("sim", None), ("franka_ros2", "franka_ros2.yaml"), ("franka_libfranka",
                                                                             "franka_libfranka.yaml"),
                       ("panda_py", "panda_py.yaml")):
        cfg = None if path is None else ROOT / "config" / "backends" / path
        home = check_backend_home(kind, cfg, safety)
        assert SafetyLayer(safety, nominal_quat=DOWN).check_home(home) == "", kind


def test_cartesian_home_outside_the_box_fails_at_config_load_naming_the_field(tmp_path):
    safety = load_safety_config(str(ROOT / "config" / "safety.yaml"))
    doc = yaml.safe_load((ROOT / "config" / "backends" / "franka_ros2.yaml").read_text())
    doc["franka_ros2"]["home_pos"] = [0.307, 0.0, 0.6]
    bad = tmp_path / "franka_ros2.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"franka_ros2\.yaml: franka_ros2\.home_pos .*100\.0 mm outside"):
        check_backend_home("franka_ros2", str(bad), safety)
    doc["franka_ros2"]["home_pos"] = [0.307, 0.0, 0.45]
    doc["franka_ros2"]["home_quat_wxyz"] = [0.0, 0.7071068, 0.7071068, 0.0]  # 90 deg tilt: outside the limits
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"franka_ros2\.home_pos / franka_ros2\.home_quat_wxyz.*orientation"):
        check_backend_home("franka_ros2", str(bad), safety)


# ---------------------------------------------------------------------------------------------- sim twin
class _Recorder:
    """Wraps a backend's command_pose to record every pose that reaches it."""

    def __init__(self, backend):
        self.poses: list = []
        self._inner = backend.command_pose
        backend.command_pose = self

    def __call__(self, pos, quat):
        self.poses.append((np.array(pos, float), np.array(quat, float)))
        self._inner(pos, quat)


@pytest.fixture
def sim():
    b = SimTwinBackend(task="pick_red_block", seed=0, realtime=False)
    yield b
    b.close()


def _drive(core, backend, action, seconds, t=0.0, dt=0.02):
    for k in range(int(round(seconds / dt))):
        if k % 5 == 0:
            core.on_action(action, now=t)
        core.tick(now=t)
        backend.step(dt)
        t += dt
    return t


def test_sim_home_reset_and_recover_go_through_the_layer(sim):
    core = RobotServerCore(sim, task="pick_red_block", seed=0)
    layer = core.safety
    t = _drive(core, sim, [1.0, -1.0, -1.0, 0, 0, 0.5, 0], 1.5)
    assert np.linalg.norm(sim.read_state().ee_pos - sim.home_pos) > 0.1
    rec = _Recorder(sim)

    ok, msg = core.home(now=t)
    assert ok, msg
    assert np.linalg.norm(sim.read_state().ee_pos - sim.home_pos) <= 0.005
    assert layer.stats["homes"] == 1 and len(rec.poses) > 10
    steps = [np.linalg.norm(b[0] - a[0]) for a, b in zip(rec.poses, rec.poses[1:])]
    assert all(layer.in_box(p, q) for p, q in rec.poses), "a home setpoint left the box"
    assert max(steps) <= 0.15 * 0.02 + 1e-9, f"home setpoints faster than the home speed: {max(steps)}"
    assert layer.holding  # the home goal is dropped once there: the server waits for a fresh command

    # Reset: the home is checked, the scene teleported, the setpoint re-seated by the layer (one in-box pose).
    n = len(rec.poses)
    ok, msg = core.reset()
    assert ok and "seed=1" in msg, msg
    assert layer.stats["homes"] == 2 and len(rec.poses) == n + 1 and layer.in_box(*rec.poses[-1])

    # Recover: the twin clears nothing and moves nothing itself; the layer's re-seated setpoint is what is sent.
    t = _drive(core, sim, [0, 0, 1.0, 0, 0, 0, 0], 0.6, t=t + 1.0)
    n = len(rec.poses)
    ok, msg = core.recover()
    assert ok, msg
    assert len(rec.poses) == n + 1
    np.testing.assert_allclose(rec.poses[-1][0], sim.read_state().ee_pos, atol=1e-9)
    assert core.final_check_failures == 0 and core.backend_errors == 0


def test_sim_home_outside_the_box_is_refused_and_nothing_moves(sim):
    with pytest.raises(ConfigError, match=r"sim twin home .*outside the safety workspace box"):
        RobotServerCore(sim, safety_config=SafetyConfig(pos_max=(0.75, 0.35, 0.20)))

    core = RobotServerCore(sim, task="pick_red_block", seed=0)
    t = _drive(core, sim, [0.5, 0.5, 0, 0, 0, 0, 0], 0.6)
    core.tick(now=t + 1.0)  # watchdog: hold at the measured pose
    target, seed = sim.twin.target[0].copy(), sim.twin.episode_seed
    rec = _Recorder(sim)
    sim.twin.home_pos = np.array([0.45, 0.0, 0.60])  # a home that moved out of the box after start
    ok, msg = core.home(now=t + 1.0)
    assert not ok and "home refused" in msg and "100.0 mm outside" in msg, msg
    ok, msg = core.reset()
    assert not ok and "reset refused" in msg, msg
    assert rec.poses == [] and sim.twin.episode_seed == seed
    np.testing.assert_allclose(sim.twin.target[0], target)
    assert core.safety.stats["reasons"][R_HOME] == 2 and core.safety.stats["homes"] == 0


# ---------------------------------------------------------------------------------------------- panda-python
class _PandaConnection(RobotBackend):
    """What PandaPyBackend exposes to the server, with the robot connection replaced by a recording stand-in
    (no simulator speaks libfranka 0.9): home_target from the backend's own config, move_home recorded."""

    def __init__(self, cfg):
        self.config, self.moves, self.poses = cfg, [], []
        m = franka_fk(READY_Q)
        self.q, self.pos, self.quat = np.array(READY_Q), m[:3, 3].copy(), matrix_to_quat(m[:3, :3])

    @property
    def home_target(self):
        return self.config.home_target("panda_py", f_t_ee=franka_hand_f_t_ee().flatten(order="F"))

    def move_home(self, home):
        self.moves.append(tuple(home.q))

    def read_state(self):
        return RobotState(0.0, PANDA_ARM_JOINTS, self.q, np.zeros(7), self.pos, self.quat, 0.08)

    def command_pose(self, pos, quat):
        self.poses.append(np.array(pos))

    def command_gripper(self, close):
        pass

    def recover(self):
        pass

    def hold(self):
        pass

    def close(self):
        pass

    @property
    def home_quat(self):
        return np.asarray(self.config.nominal_quat_wxyz, float)


def test_panda_py_joint_home_is_checked_by_forward_kinematics_before_the_move(tmp_path, caplog):
    safety = load_safety_config(str(ROOT / "config" / "safety.yaml"))
    shipped = ROOT / "config" / "backends" / "panda_py.yaml"
    arm = _PandaConnection(load_backend_config("panda_py", shipped))
    core = RobotServerCore(arm, safety_config=safety)
    ok, msg = core.home()
    assert ok, msg
    assert arm.moves == [tuple(load_backend_config("panda_py", shipped).home_q)]
    assert core.safety.stats["homes"] == 1

    doc = yaml.safe_load(shipped.read_text())
    doc["panda_py"]["home_q"] = list(SIDEWAYS_Q)
    bad = tmp_path / "panda_py.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with caplog.at_level(logging.WARNING):
        check_backend_home("panda_py", str(bad), safety)  # a warning at load: the robot's TCP is not known yet
    assert "panda_py.home_q" in caplog.text
    arm = _PandaConnection(load_backend_config("panda_py", str(bad)))
    core = RobotServerCore(arm, safety_config=safety)  # starts (actions still work) ...
    ok, msg = core.home()  # ... but the home motion is refused before anything is sent
    assert not ok and "panda_py.home_q" in msg and "forward kinematics" in msg and "outside" in msg, msg
    ok, msg = core.reset()
    assert not ok and "panda_py.home_q" in msg
    assert arm.moves == [] and arm.poses == []
    assert core.safety.stats["reasons"][R_HOME] == 2 and core.safety.stats["homes"] == 0
