"""Unit tests of the pure safety layer and the action contract (no ROS, no MuJoCo)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from robot_server.contract import ActionContract
from robot_server.geometry import (Pose, quat_angle, quat_mul, quat_normalize, quat_to_rotvec, rotvec_to_quat,
                                   rpy_to_quat, quat_to_rpy)
from robot_server.safety import (R_ESTOP, R_NONFINITE, R_ORIENTATION, R_QUAT, R_RANGE, R_SHAPE, R_STATE,
                                 R_STATE_OUTSIDE, R_WORKSPACE, SafetyConfig, SafetyLayer, SafetyViolation)

HOME_POS = np.array([0.45, 0.0, 0.25])
HOME_QUAT = np.array([0.0, 1.0, 0.0, 0.0])  # gripper down (pi about x), as in the twin
HOME = Pose(HOME_POS, HOME_QUAT)
REPO = Path(__file__).resolve().parents[1]


def layer(**kw) -> SafetyLayer:
    return SafetyLayer(SafetyConfig(**kw), nominal_quat=HOME_QUAT)


def at(pos, quat=HOME_QUAT) -> Pose:
    return Pose(np.asarray(pos, float), quat_normalize(np.asarray(quat, float)))


# ---------------------------------------------------------------------------------------------- config
def test_shipped_yaml_matches_defaults():
    cfg = SafetyConfig.from_yaml(str(REPO / "config" / "safety.yaml"))
    assert cfg == SafetyConfig()
    assert cfg.watchdog_timeout_s == pytest.approx(0.150)
    assert cfg.pos_min == (0.25, -0.35, 0.005) and cfg.pos_max == (0.75, 0.35, 0.50)
    assert cfg.contract == ActionContract()


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown"):
        SafetyConfig.from_dict({"pos_mn": [0, 0, 0]})
    with pytest.raises(ValueError):
        SafetyConfig(pos_min=(0.8, 0, 0), pos_max=(0.7, 1, 1))
    with pytest.raises(ValueError):
        SafetyConfig(rpy_min=(0.1, -0.5, -1), rpy_max=(0.5, 0.5, 1))  # excludes the nominal orientation
    with pytest.raises(ValueError):
        SafetyConfig(watchdog_timeout_s=0.0)
    p = tmp_path / "s.yaml"
    p.write_text("watchdog_timeout_s: 0.2\npos_max: [0.7, 0.3, 0.4]\n")
    cfg = SafetyConfig.from_yaml(str(p))
    assert cfg.watchdog_timeout_s == 0.2 and cfg.pos_max == (0.7, 0.3, 0.4)
    with pytest.raises(ValueError, match="nominal"):
        SafetyLayer(SafetyConfig())  # no nominal orientation anywhere


# ---------------------------------------------------------------------------------------------- contract
def test_contract_scaling_and_gripper_sign():
    c = ActionContract()
    dpos, drot, g = c.action_to_delta([1, 0, 0, 0, 0, -1, 0.3])
    np.testing.assert_allclose(dpos, [0.02, 0, 0])
    np.testing.assert_allclose(drot, [0, 0, -0.1])
    assert g == 1.0  # > 0 closes
    assert c.action_to_delta([0] * 7)[2] == 0.0  # 0 is open
    assert c.action_to_delta([0] * 6 + [-1])[2] == 0.0
    # Diagonals are clipped in norm: the per-step limit holds in every direction.
    dpos, drot, _ = c.action_to_delta([1, 1, 1, 1, 1, 1, 0])
    assert np.linalg.norm(dpos) == pytest.approx(0.02)
    assert np.linalg.norm(drot) == pytest.approx(0.1)
    a = c.delta_to_action([0.01, 0, -0.02], [0, 0.05, 0], 1.0)
    np.testing.assert_allclose(a, [0.5, 0, -1, 0, 0.5, 0, 1])


def test_geometry_roundtrips():
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.normal(size=3)
        v *= rng.uniform(0, 3.0) / np.linalg.norm(v)
        np.testing.assert_allclose(quat_to_rotvec(rotvec_to_quat(v)), v, atol=1e-9)
        rpy = rng.uniform([-3, -1.5, -3], [3, 1.5, 3])
        np.testing.assert_allclose(quat_to_rpy(rpy_to_quat(rpy)), rpy, atol=1e-9)
    assert quat_angle(HOME_QUAT, quat_mul(rotvec_to_quat([0, 0, 0.3]), HOME_QUAT)) == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------- delta actions
@pytest.mark.parametrize("action, reason", [
    (np.zeros(6), R_SHAPE),
    (np.zeros(8), R_SHAPE),
    (np.zeros((7, 1)), R_SHAPE),
    ("0000000", R_SHAPE),
    (None, R_SHAPE),
    ([0, 0, 0, 0, 0, 0, "x"], R_SHAPE),
    (["0.5"] * 7, R_SHAPE),  # numbers as strings are refused, not converted
    ([True] * 7, R_SHAPE),
    ([0.5j] * 7, R_SHAPE),
    ([0, 0, 0, 0, 0, 0, 10 ** 400], R_SHAPE),  # an int no float holds
    ([0, 0, np.nan, 0, 0, 0, 0], R_NONFINITE),
    ([0, 0, 0, np.inf, 0, 0, 0], R_NONFINITE),
    ([0, 0, 0, 0, 0, 0, -np.inf], R_NONFINITE),
    ([1.001, 0, 0, 0, 0, 0, 0], R_RANGE),
    ([0, 0, 0, 0, 0, 0, 1e300], R_RANGE),
    ([0, -1 - 2e-6, 0, 0, 0, 0, 0], R_RANGE),
])
def test_bad_actions_rejected_with_reason(action, reason):
    s = layer()
    d = s.filter_delta(action, HOME, now=0.0)
    assert not d.accepted and d.reason == reason
    assert s.stats["rejected"] == 1 and s.stats["reasons"] == {reason: 1} and s.stats["accepted"] == 0
    assert s.last_rejection == reason
    # A rejected command is not a command: the watchdog still holds.
    assert s.next_setpoint(HOME, now=0.01).holding


def test_action_tolerance_boundary_accepted():
    s = layer()
    assert s.filter_delta([1 + 5e-7, -1, 0, 0, 0, 0, 1], HOME, 0.0).accepted


def test_delta_is_relative_to_measured_pose_no_windup():
    s = layer()
    a = [0.5, 0, -0.5, 0, 0, 0, 1]  # norm within the step limit: no norm clipping
    d1 = s.filter_delta(a, HOME, 0.0)
    d2 = s.filter_delta(a, HOME, 0.05)  # arm did not move (blocked): the goal does not run away
    assert d1.accepted and d2.accepted and d1.gripper == 1.0
    np.testing.assert_allclose(d1.target.pos, HOME_POS + [0.01, 0, -0.01])
    np.testing.assert_allclose(d2.target.pos, d1.target.pos)
    sp = s.next_setpoint(HOME, 0.06)
    assert not sp.holding
    np.testing.assert_allclose(sp.pose.pos, d1.target.pos)


def test_rotation_delta_in_base_frame():
    s = layer()
    d = s.filter_delta([0, 0, 0, 0, 0, 1, 0], HOME, 0.0)  # +0.1 rad about base z
    expected = quat_mul(rotvec_to_quat([0, 0, 0.1]), HOME_QUAT)
    assert quat_angle(d.target.quat, expected) < 1e-9


def test_clamped_at_walls_and_counted():
    s = layer()
    near_wall = at([0.745, 0.0, 0.01])
    d = s.filter_delta([1, 0, -1, 0, 0, 0, 0], near_wall, 0.0)
    assert d.accepted and d.clamped
    np.testing.assert_allclose(d.target.pos, [0.75, 0.0, 0.005])
    assert s.stats["clamped"] == 1 and s.stats["accepted"] == 1 and s.stats["rejected"] == 0


def test_orientation_clamped_to_limits():
    s = layer()
    pose = HOME
    # Keep rotating about the vertical: yaw saturates at the configured limit.
    for i in range(40):
        d = s.filter_delta([0, 0, 0, 0, 0, 1, 0], pose, i * 0.1)
        assert d.accepted
        pose = d.target
    rpy = s.orientation_rpy(pose.quat)
    assert abs(rpy[2]) == pytest.approx(1.57, abs=1e-6)
    assert s.in_box(pose.pos, pose.quat)
    # Tilting is limited tighter than yaw.
    pose = HOME
    for i in range(20):
        pose = s.filter_delta([0, 0, 0, 1, 0, 0, 0], pose, 5 + i * 0.1).target
    assert np.max(np.abs(s.orientation_rpy(pose.quat))) == pytest.approx(0.5, abs=1e-6)


def test_bad_measured_state_rejects_and_outside_state_holds_natively():
    s = layer()
    assert s.filter_delta(np.zeros(7), at([np.nan, 0, 0.2]), 0.0).reason == R_STATE
    assert s.filter_delta(np.zeros(7), None, 0.0).reason == R_STATE
    far = at([0.9, 0.0, 0.25])  # 15 cm outside the box
    assert s.filter_delta(np.zeros(7), far, 0.0).reason == R_STATE_OUTSIDE
    sp = s.next_setpoint(far, 0.01)
    assert sp.pose is None and sp.holding  # clamping would jump 15 cm: hold natively instead
    # Slightly outside (tracking error): hold at the clamped pose.
    sp = s.next_setpoint(at([0.755, 0.0, 0.25]), 0.02)
    np.testing.assert_allclose(sp.pose.pos, [0.75, 0, 0.25])


# ---------------------------------------------------------------------------------------------- absolute targets
def test_target_validation():
    s = layer()
    q = HOME_QUAT
    cases = [
        (([0.5, 0, np.nan], q), R_NONFINITE),
        (([0.5, 0, 0.2], [np.inf, 0, 0, 0]), R_NONFINITE),
        (([0.5, 0, 0.2], [0, 0, 0, 0]), R_QUAT),
        (([0.5, 0, 0.2], [0, 2.0, 0, 0]), R_QUAT),
        (([0.5, 0, 0.2], [0, 0.5, 0, 0]), R_QUAT),
        (([0.5, 0, 0.2, 1], q), R_SHAPE),
        (([0.5, 0, 0.2], q[:3]), R_SHAPE),
        ((["0.5", "0", "0.2"], q), R_SHAPE),
        (([0.5, 0, 0.2], [None, 1, 0, 0]), R_SHAPE),
        (([0.8, 0, 0.2], q), R_WORKSPACE),
        (([0.5, 0, 0.0], q), R_WORKSPACE),
        (([0.5, -0.4, 0.2], q), R_WORKSPACE),
        (([0.5, 0, 0.2], [1, 0, 0, 0]), R_ORIENTATION),  # gripper pointing up
        (([0.5, 0, 0.2], quat_mul(q, rpy_to_quat([0.6, 0, 0]))), R_ORIENTATION),
    ]
    for (p, qq), reason in cases:
        d = s.filter_target(p, qq, 0.0)
        assert not d.accepted and d.reason == reason, (p, qq, d)
    assert s.stats["rejected"] == len(cases)
    # Slightly non-unit quaternions are normalized and accepted.
    d = s.filter_target([0.5, 0.1, 0.2], 1.05 * q, 0.0)
    assert d.accepted and np.linalg.norm(d.target.quat) == pytest.approx(1.0)
    # The sign of a quaternion does not matter.
    assert s.filter_target([0.5, 0.1, 0.2], -q, 0.0).accepted


def test_target_is_rate_limited_and_leashed():
    cfg = SafetyConfig()
    s = layer()
    goal = np.array([0.65, 0.2, 0.1])
    cur = HOME
    t = 0.0
    s.next_setpoint(cur, t)
    prev = HOME_POS.copy()
    for _ in range(10):
        t += 0.02
        assert s.filter_target(goal, HOME_QUAT, t).accepted
        sp = s.next_setpoint(cur, t)  # the arm does not move (blocked)
        step = np.linalg.norm(sp.pose.pos - prev)
        assert step <= cfg.max_target_speed_m_s * 0.02 + 1e-9
        # The leash: never more than one contract step ahead of the measured pose.
        assert np.linalg.norm(sp.pose.pos - cur.pos) <= cfg.max_step_m + 1e-9
        prev = sp.pose.pos
    assert np.linalg.norm(prev - HOME_POS) == pytest.approx(cfg.max_step_m)
    # If the arm follows, the setpoint reaches the goal at the configured speed.
    for _ in range(200):
        t += 0.02
        s.filter_target(goal, HOME_QUAT, t)
        sp = s.next_setpoint(cur, t)
        cur = sp.pose  # perfect tracking
    np.testing.assert_allclose(cur.pos, goal, atol=1e-9)


def test_target_orientation_rate_limited():
    s = layer()
    goal_q = quat_mul(rotvec_to_quat([0, 0, 1.0]), HOME_QUAT)
    t, cur = 0.0, HOME
    s.next_setpoint(cur, t)
    for _ in range(5):
        t += 0.02
        s.filter_target(HOME_POS, goal_q, t)
        sp = s.next_setpoint(cur, t)
        assert quat_angle(sp.pose.quat, cur.quat) <= 1.0 * 0.02 + 1e-9
        cur = sp.pose


# ---------------------------------------------------------------------------------------------- watchdog
def test_watchdog_holds_at_measured_pose_and_cancels_target():
    s = layer()
    t = 0.0
    s.next_setpoint(HOME, t)
    goal = np.array([0.65, 0.0, 0.25])
    cur = HOME
    for _ in range(5):  # stream for 100 ms, arm follows
        t += 0.02
        s.filter_target(goal, HOME_QUAT, t)
        cur = s.next_setpoint(cur, t).pose
    t_last = t
    assert not s.holding
    # Commands stop. Within the timeout the approach continues...
    t += 0.1
    assert not s.next_setpoint(cur, t).holding
    # ... after it, hold at the measured pose.
    measured = at(cur.pos + [0.003, 0, 0])
    t = t_last + 0.151
    sp = s.next_setpoint(measured, t)
    assert sp.holding and s.holding
    np.testing.assert_allclose(sp.pose.pos, measured.pos)
    # The frozen pose stays frozen even as the measured pose drifts, and the old target is cancelled.
    for _ in range(10):
        t += 0.02
        sp = s.next_setpoint(at(measured.pos + [0.001, 0, 0]), t)
        np.testing.assert_allclose(sp.pose.pos, measured.pos)
    assert s.stats["holds"] == 1
    # A fresh command resumes from the frozen pose.
    t += 0.02
    assert s.filter_delta([1, 0, 0, 0, 0, 0, 0], measured, t).accepted
    sp = s.next_setpoint(measured, t)
    assert not sp.holding
    np.testing.assert_allclose(sp.pose.pos, measured.pos + [0.02, 0, 0])


def test_watchdog_on_delta_stream():
    s = layer()
    t = 0.0
    for _ in range(3):
        s.filter_delta([0.5, 0, 0, 0, 0, 0, 0], HOME, t)
        assert not s.next_setpoint(HOME, t + 0.05).holding
        t += 0.1
    assert s.next_setpoint(HOME, t - 0.1 + 0.149).holding is False
    assert s.next_setpoint(HOME, t - 0.1 + 0.151).holding is True


# ---------------------------------------------------------------------------------------------- e-stop
def test_estop_latches_until_reset():
    s = layer()
    s.filter_delta([1, 0, 0, 0, 0, 0, 0], HOME, 0.0)
    pose_at_estop = at([0.46, 0.01, 0.24])
    s.estop("operator", pose_at_estop)
    assert s.estopped and s.estop_reason == "operator"
    for t in np.arange(0.01, 2.0, 0.1):
        assert s.filter_delta(np.zeros(7), HOME, t).reason == R_ESTOP
        assert s.filter_target(HOME_POS, HOME_QUAT, t).reason == R_ESTOP
        sp = s.next_setpoint(at([0.5, 0.05, 0.2]), t)  # measured pose moves (e.g. pushed)
        assert sp.estop and sp.holding
        np.testing.assert_allclose(sp.pose.pos, pose_at_estop.pos)
    assert s.stats["reasons"][R_ESTOP] == 2 * 20
    s.estop("again")  # a second e-stop keeps the original frozen pose
    np.testing.assert_allclose(s.next_setpoint(HOME, 3.0).pose.pos, pose_at_estop.pos)
    s.reset_estop()
    assert not s.estopped
    sp = s.next_setpoint(HOME, 3.1)
    assert sp.holding and not sp.estop  # holds at the measured pose until a fresh command
    np.testing.assert_allclose(sp.pose.pos, HOME_POS)
    assert s.filter_delta(np.zeros(7), HOME, 3.2).accepted


# ---------------------------------------------------------------------------------------------- final check, logging
def test_assert_in_box():
    s = layer()
    s.assert_in_box(HOME_POS, HOME_QUAT)
    for pos, quat in [([0.76, 0, 0.2], HOME_QUAT), ([0.5, 0, 0.004], HOME_QUAT), ([np.nan, 0, 0.2], HOME_QUAT),
                      ([0.5, 0, 0.2], [1, 0, 0, 0]), ([0.5, 0, 0.2], [0, 2, 0, 0])]:
        with pytest.raises(SafetyViolation):
            s.assert_in_box(pos, quat)


def test_rejection_logging_is_rate_limited(caplog):
    s = layer()
    with caplog.at_level(logging.WARNING, logger="robot_server.safety"):
        for i in range(1000):
            s.filter_delta([np.nan] * 7, HOME, i * 0.001)
            s.filter_delta([2.0] * 7, HOME, i * 0.001)
    lines = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert 2 <= len(lines) <= 6  # one per reason (per second), not 2000
    assert s.stats["reasons"] == {R_NONFINITE: 1000, R_RANGE: 1000}


def test_random_actions_keep_setpoints_in_box():
    """Pure-layer property: whatever the commands, every setpoint passes the final check."""
    s = layer()
    rng = np.random.default_rng(1)
    cur, t = HOME, 0.0
    for i in range(3000):
        t += 0.02
        kind = rng.integers(3)
        if kind == 0:
            s.filter_delta(rng.uniform(-1, 1, 7) * rng.choice([1, 1, 1, 10]), cur, t)
        elif kind == 1:
            p = rng.uniform([0.0, -0.6, -0.2], [1.0, 0.6, 0.8])
            s.filter_target(p, rng.normal(size=4), t)
        sp = s.next_setpoint(cur, t)
        if sp.pose is not None:
            s.assert_in_box(sp.pose.pos, sp.pose.quat)
            cur = sp.pose  # perfect tracking
    assert s.stats["accepted"] > 500 and s.stats["rejected"] > 500 and s.stats["clamped"] > 10
