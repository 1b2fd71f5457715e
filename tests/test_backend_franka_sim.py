"""Real reflexes: the FR3 libfranka backend (franky worker) under RobotServerCore against franka-sim, which enforces
the FCI's limits like the robot: a commanded torque that jumps faster than the torque-rate limit, and a control
loop that misses 20 cycles in a row, abort the motion with the robot's own reflex errors.

Documented behaviour checked here (docs/lab_setup.md, "Reflexes"): on a reflex the backend latches the libfranka
error, the state turns not-ok with that message (status `backend_error`, logged), robot_server commands nothing
(actions are rejected as "bad state", the arm stays where the reflex stopped it) until the recover service runs
libfranka's automatic error recovery; then tracking resumes from the measured pose.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from helpers import wait_for
from peers import provision, servers
from robot_server.backends.franka_libfranka import FrankaLibfrankaBackend, FrankaLibfrankaConfig, GripperConfig
from robot_server.safety import SafetyConfig
from robot_server.server_core import RobotServerCore


@pytest.fixture(scope="module")
def franka_sim():
    peer = servers.provisioned(servers.start_franka_sim, enforce_limits=True, gripper=False)
    yield peer
    peer.stop()


@pytest.fixture
def cell(franka_sim):
    client = servers.provisioned(provision.franky_client)
    backend = FrankaLibfrankaBackend(FrankaLibfrankaConfig(
        hostname=servers.HOST, realtime=False, extra_pythonpath=(str(client),), home_dynamics_factor=0.5,
        gripper=GripperConfig(enabled=False)))
    try:
        # The safety box is calibrated around the measured start pose (what a lab does with its real cell).
        s = backend.read_state()
        assert s.ok, s.error
        safety = SafetyConfig(pos_min=tuple(s.ee_pos - 0.15), pos_max=tuple(s.ee_pos + 0.15),
                              nominal_quat=tuple(s.ee_quat))
        yield RobotServerCore(backend, safety_config=safety), franka_sim
    finally:
        backend.close()


def _drive(core, action, seconds: float, period: float = 0.1) -> None:
    """Contract actions at 10 Hz plus server ticks at 50 Hz, like robot_node."""
    end = time.monotonic() + seconds
    next_action = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_action:
            core.on_action(action, now)
            next_action = now + period
        else:
            core.tick(now)
        time.sleep(0.02)


def _moves(core, action, seconds: float = 1.0) -> float:
    p0 = core.backend.read_state().ee_pos
    _drive(core, action, seconds)
    return float(np.linalg.norm(core.backend.read_state().ee_pos - p0))


def _expect_reflex(core, peer, error_name: str) -> None:
    state = wait_for(lambda: (lambda s: s if not s.ok else None)(core.backend.read_state()), 5.0,
                     message="no reflex reported")
    print(f"\nreflex reported: {state.error}")
    assert error_name in state.error and "recover" in state.error, state.error
    assert error_name in peer.log_tail(200_000), "the simulator itself must have raised it"
    # Safe state: robot_server commands nothing, every action is refused, the arm does not move.
    core.tick()
    st = core.status()
    assert error_name in st["backend_error"] and st["holding"], st
    q0 = core.backend.read_state().q
    rejected = st["counters"]["reasons"].get("bad state", 0)
    _drive(core, [0.5, 0, 0, 0, 0, 0, -1], 0.6)
    assert core.status()["counters"]["reasons"].get("bad state", 0) > rejected
    assert np.abs(core.backend.read_state().q - q0).max() < 1e-3, "the arm moved while faulted"
    ok, msg = core.recover()
    assert ok, msg
    wait_for(lambda: core.backend.read_state().ok, 5.0, message="still faulted after recover")
    core.tick()
    assert core.status()["backend_error"] == ""


def test_reflexes_latch_hold_and_recover(cell):
    core, peer = cell
    # Normal tracking with the default (SERL) tuning: torque rate limited to 1 Nm per cycle, no reflex.
    d = _moves(core, [0, 0, -0.5, 0, 0, 0, -1])
    assert d > 0.01 and core.backend.read_state().ok, (d, core.backend.read_state().error)

    # 1) A controller tuned without torque-rate limiting and with a large error window: the next setpoint step
    #    makes the commanded torque jump -> franka-sim raises controller_torque_discontinuity.
    core.backend.set_impedance(translational_stiffness=3000.0, translational_error_clip=0.05, max_delta_tau=100.0)
    _drive(core, [0, 1, 0, 0, 0, 0, -1], 0.5)
    _expect_reflex(core, peer, "controller_torque_discontinuity")
    core.backend.set_impedance(translational_stiffness=2000.0, translational_error_clip=0.01, max_delta_tau=1.0)
    assert _moves(core, [0, 0, 0.5, 0, 0, 0, -1]) > 0.01, "no tracking after recovery"
    assert core.backend.read_state().ok

    # 2) The control loop starves for 0.25 s (what a busy PC without an RT kernel does to it): 20 lost cycles
    #    -> communication_constraints_violation.
    _drive(core, [0, 0, 0, 0, 0, 0, -1], 0.3)
    pid = core.backend.worker_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.25)
    finally:
        os.kill(pid, signal.SIGCONT)
    _expect_reflex(core, peer, "communication_constraints_violation")
    assert _moves(core, [0, 0, -0.5, 0, 0, 0, -1]) > 0.01, "no tracking after recovery"
    assert core.backend.read_state().ok
