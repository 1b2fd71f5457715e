"""RobotServerCore with the real MuJoCo twin backend stepped by hand (no ROS, no mocks)."""
from __future__ import annotations

import numpy as np
import pytest

from robot_server.backends.sim import SimTwinBackend
from robot_server.server_core import RobotServerCore

TASK = "pick_red_block"
DOWN = np.array([0.0, 1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def backend():
    b = SimTwinBackend(task=TASK, seed=0, realtime=False)
    yield b
    b.close()


@pytest.fixture
def core(backend):
    backend.reset_task(TASK, 0)
    return RobotServerCore(backend, task=TASK, seed=0)


def run(core, backend, t, seconds, action=None, dt=0.02):
    """Advance `seconds` of sim time, ticking at 1/dt and sending `action` at 10 Hz."""
    n = int(round(seconds / dt))
    for k in range(n):
        if action is not None and k % int(round(0.1 / dt)) == 0:
            d = core.on_action(action, now=t)
            assert d.accepted, d
        core.tick(now=t)
        backend.step(dt)
        t += dt
    return t


def test_actions_move_tcp_by_contract_steps(core, backend):
    p0 = backend.read_state().ee_pos
    t = run(core, backend, 0.0, 1.0, action=[0, 1, 0, 0, 0, 0, 0])
    t = run(core, backend, t, 0.5)
    dy = backend.read_state().ee_pos[1] - p0[1]
    assert 0.10 < dy <= 0.20 + 1e-3, dy  # 10 steps of at most 2 cm
    assert core.safety.holding


def test_gripper_from_actions_is_sent_on_change_only(core, backend):
    w_open = backend.read_state().gripper_width
    t = run(core, backend, 0.0, 1.0, action=[0, 0, 0, 0, 0, 0, 1])
    assert backend.read_state().gripper_width < w_open - 0.02
    assert core._gripper_cmd == 1.0
    run(core, backend, t, 1.0, action=[0, 0, 0, 0, 0, 0, -0.5])
    assert backend.read_state().gripper_width > w_open - 0.005


def test_a_failed_gripper_command_is_sent_again_with_the_next_action():
    """A real gripper action server can be unavailable for a moment (franka_gripper restarting): the close that
    failed must not count as sent, or the gripper would never close while the policy keeps asking."""
    class FirstGripperCommandFails(SimTwinBackend):
        calls = 0

        def command_gripper(self, close):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("gripper action server /franka_gripper/grasp not available")
            super().command_gripper(close)

    b = FirstGripperCommandFails(task=TASK, seed=0, realtime=False)
    try:
        core = RobotServerCore(b, task=TASK, seed=0)
        w_open = b.read_state().gripper_width
        run(core, b, 0.0, 1.0, action=[0, 0, 0, 0, 0, 0, 1])
        assert b.calls == 2 and core.backend_errors == 1
        assert b.read_state().gripper_width < w_open - 0.02
    finally:
        b.close()


def test_estop_freezes_and_refuses_services(core, backend):
    t = run(core, backend, 0.0, 0.3, action=[1, 0, 0, 0, 0, 0, 0])
    ok, msg = core.estop("test")
    assert ok and "test" in msg
    p = backend.read_state().ee_pos
    for _ in range(20):
        assert core.on_action([1, 0, 0, 0, 0, 0, 0], now=t).reason == "estop latched"
        assert core.on_target_pose([0.6, 0, 0.2], DOWN, now=t).reason == "estop latched"
        core.tick(now=t)
        backend.step(0.05)
        t += 0.05
    assert np.linalg.norm(backend.read_state().ee_pos - p) < 0.01  # stops from motion within ~1 cm
    for call in (core.reset, core.home, core.recover, lambda: core.set_gripper(True)):
        ok, msg = call()
        assert not ok and "estop" in msg
    assert core.status()["estop"]
    assert core.estop_reset()[0]
    assert core.on_action([1, 0, 0, 0, 0, 0, 0], now=t).accepted


def test_reset_uses_next_seed_and_rerandomizes(core, backend):
    block0 = backend.twin.object_pos("red_block")
    ok, msg = core.reset()
    assert ok and "seed=1" in msg and core.seed == 1
    assert backend.twin.episode_seed == 1
    assert np.linalg.norm(backend.twin.object_pos("red_block") - block0) > 1e-3
    np.testing.assert_allclose(backend.read_state().ee_pos, backend.home_pos, atol=0.01)
    # Waits for a fresh command, holding the setpoint the layer re-seated on the measured (home) pose.
    assert core.safety.holding
    np.testing.assert_allclose(core.safety.setpoint.pos, backend.read_state().ee_pos, atol=1e-6)
    assert core.safety.stats["homes"] == 1


def test_home_moves_back_gently(core, backend):
    run(core, backend, 0.0, 1.0, action=[0.5, -0.5, -0.5, 0, 0, 0.5, 0])
    assert np.linalg.norm(backend.read_state().ee_pos - backend.home_pos) > 0.05
    ok, _ = core.home()
    assert ok
    np.testing.assert_allclose(backend.read_state().ee_pos, backend.home_pos, atol=0.01)


def test_status_is_json_ready(core):
    import json
    s = json.loads(json.dumps(core.status()))
    assert s["task"] == TASK and s["counters"]["accepted"] == 0 and s["instruction"]


def test_nonfinite_physics_state_rejects_commands_and_holds():
    import mujoco
    b = SimTwinBackend(task=None, seed=0, realtime=False)  # its own twin: this test breaks the physics state
    try:
        core = RobotServerCore(b)
        target_before = b.twin.target[0]
        b.twin.data.qpos[:] = np.nan
        mujoco.mj_forward(b.twin.model, b.twin.data)
        st = b.read_state()
        assert not st.ok and st.error
        assert core.on_action(np.zeros(7), now=0.0).reason == "bad state"
        res = core.tick(now=0.01)
        assert res.setpoint.pose is None and res.setpoint.holding and not res.sent
        np.testing.assert_allclose(b.twin.target[0], target_before)  # no NaN target reached the twin
        assert core.status()["backend_error"]
    finally:
        b.close()
