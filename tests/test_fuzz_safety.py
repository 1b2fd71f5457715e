"""Fuzz: >= 10,000 random, NaN, inf, huge, mis-shaped actions and target poses through the real server core, the
real safety layer and the real MuJoCo twin (stepped by hand between commands). The TCP must never leave the
workspace box (1 cm tolerance for controller tracking), and every setpoint sent must pass the final check.
"""
from __future__ import annotations

import numpy as np
import pytest

from robot_server.backends.sim import SimTwinBackend
from robot_server.server_core import RobotServerCore
from robot_server.safety import SafetyConfig

N_COMMANDS = 10_000
# Controller tracking. Measured worst case with the shipped box: ~12 mm, only at the far bottom corners
# (x ~ 0.65-0.75 m, |y| ~ 0.3 m, z ~ 0), where the arm is nearly stretched out and the twin's operational-space
# controller cannot follow the setpoint; inside the arm's comfortable reach overshoot stays below ~5 mm.
POS_TOL_M = 0.015
# Orientation: near the reach boundary of the default box (x -> 0.75 m with a tilted gripper) the arm cannot track
# every orientation the limits allow; once the measured orientation is state_margin_rad (0.15) outside, the server
# stops commanding poses and the arm coasts to a stop (measured: up to ~0.19 rad). Position is the hard invariant.
ORI_TOL_RAD = 0.25
STEP_S = 0.01  # physics between two commands (commands at 100 Hz: faster than the contract, on purpose)


def _random_quat(rng):
    return rng.normal(size=4)


def _fuzz_action(rng, wall_dir):
    r = rng.random()
    if r < 0.30:  # valid, uniform
        return rng.uniform(-1, 1, 7)
    if r < 0.55:  # saturated push towards the current wall/corner direction (the dangerous valid case)
        a = np.r_[wall_dir, rng.choice([-1.0, 1.0], 3) * rng.random(), rng.choice([-1.0, 1.0])]
        return a
    if r < 0.65:  # huge
        a = rng.uniform(-1, 1, 7)
        a[rng.integers(7)] = rng.choice([-1, 1]) * 10.0 ** rng.uniform(0, 308)
        return a
    if r < 0.72:  # just over the limit
        a = rng.uniform(-1, 1, 7)
        a[rng.integers(7)] = rng.choice([-1, 1]) * (1.0 + 10.0 ** rng.uniform(-5, 0))
        return a
    if r < 0.85:  # NaN / inf
        a = rng.uniform(-1, 1, 7)
        a[rng.integers(7)] = rng.choice([np.nan, np.inf, -np.inf])
        return a
    if r < 0.93:  # wrong shape
        n = int(rng.integers(0, 13))
        return rng.uniform(-1, 1, n if n != 7 else (7, 1))
    return [None, "abc", {"a": 1}, [[1, 2], [3]], object()][int(rng.integers(5))]  # garbage


def _fuzz_target(rng, cfg):
    lo, hi = np.array(cfg.pos_min), np.array(cfg.pos_max)
    r = rng.random()
    quat = np.array([0.0, 1.0, 0.0, 0.0])
    if rng.random() < 0.3:
        quat = _random_quat(rng)  # usually outside the orientation limits, often not unit
    elif rng.random() < 0.3:
        quat = quat * rng.uniform(0.85, 1.15)  # near-unit (normalized) or not
    if r < 0.5:  # corners and faces of the box: valid targets the arm has to drive to hard
        pos = np.where(rng.random(3) < 0.5, lo, hi) * np.where(rng.random(3) < 0.7, 1.0, 0.0) \
            + np.where(rng.random(3) < 0.7, 0.0, rng.uniform(lo, hi))
        pos = np.clip(pos, lo, hi) if rng.random() < 0.7 else pos
    elif r < 0.8:  # anywhere around the box
        pos = rng.uniform(lo - 0.3, hi + 0.3)
    else:
        pos = rng.uniform(lo, hi)
        pos[rng.integers(3)] = rng.choice([np.nan, np.inf, -np.inf, 1e300])
    if rng.random() < 0.05:
        quat = np.full(4, np.nan)
    return pos, quat


@pytest.fixture(scope="module")
def backend():
    b = SimTwinBackend(task="pick_red_block", seed=0, realtime=False)
    yield b
    b.close()


def _corner(rng, cfg):
    lo, hi = np.array(cfg.pos_min), np.array(cfg.pos_max)
    return np.where(rng.random(3) < 0.5, lo, hi)


def test_fuzz_core_and_twin_never_leave_box(backend):
    cfg = SafetyConfig()
    core = RobotServerCore(backend, safety_config=cfg, task="pick_red_block", seed=0)
    safety = core.safety
    lo, hi = np.array(cfg.pos_min), np.array(cfg.pos_max)
    rng = np.random.default_rng(12345)
    t = 0.0
    max_pos_violation = max_ori_violation = 0.0
    n_sent = n_estops = n_resets = n_targets = n_actions = n_silent = 0
    min_z, max_x = np.inf, -np.inf
    estop_until = None
    mode, mode_left = "random", 0
    wall_dir = np.zeros(3)
    corner = np.array(cfg.pos_max)
    for i in range(N_COMMANDS):
        t += STEP_S
        if mode_left <= 0:
            # Phases: push into a wall/corner with saturated actions, stream a corner/face target, or wander
            # randomly, often followed by silence (watchdog). Garbage is mixed into every commanding phase.
            if mode != "silent" and rng.random() < 0.5:
                mode, mode_left = "silent", int(rng.integers(5, 60))
            else:
                mode = str(rng.choice(["push", "target", "random"], p=[0.45, 0.3, 0.25]))
                mode_left = int(rng.integers(50, 300))
            wall_dir = rng.choice([-1.0, 0.0, 1.0], 3)
            wall_dir[rng.integers(3)] = rng.choice([-1.0, 1.0])
            corner = _corner(rng, cfg)
        mode_left -= 1
        if estop_until is not None and t >= estop_until:
            assert core.estop_reset()[0]
            estop_until = None
        r = rng.random()
        if r < 0.002 and estop_until is None:
            core.estop("fuzz")
            n_estops += 1
            estop_until = t + rng.uniform(0.05, 0.5)
        elif r < 0.0035 and estop_until is None:
            assert core.reset()[0]
            n_resets += 1
        elif mode == "silent":
            n_silent += 1
        elif r < 0.35:  # garbage or random commands of either kind
            if rng.random() < 0.5:
                core.on_target_pose(*_fuzz_target(rng, cfg), now=t)
                n_targets += 1
            else:
                core.on_action(_fuzz_action(rng, wall_dir), now=t)
                n_actions += 1
        elif mode == "push":
            a = np.r_[wall_dir, rng.uniform(-1, 1, 3) * (rng.random() < 0.3), rng.choice([-1.0, 1.0])]
            core.on_action(a, now=t)
            n_actions += 1
        elif mode == "target":
            core.on_target_pose(corner, [0.0, 1.0, 0.0, 0.0], now=t)
            n_targets += 1
        else:
            core.on_action(rng.uniform(-1, 1, 7), now=t)
            n_actions += 1
        res = core.tick(now=t)
        assert res is not None
        if res.setpoint.pose is not None:
            assert safety.in_box(res.setpoint.pose.pos, res.setpoint.pose.quat)
            n_sent += res.sent
        if estop_until is not None:
            assert core.on_action(np.zeros(7), now=t).reason == "estop latched"
        backend.step(STEP_S)
        st = backend.read_state()
        dm, dr = safety.violation(_pose(st))
        max_pos_violation, max_ori_violation = max(max_pos_violation, dm), max(max_ori_violation, dr)
        min_z, max_x = min(min_z, st.ee_pos[2]), max(max_x, st.ee_pos[0])
        assert dm <= POS_TOL_M, f"step {i}: TCP {st.ee_pos} is {dm * 100:.2f} cm outside the box"
        assert dr <= ORI_TOL_RAD, f"step {i}: TCP orientation {dr:.3f} rad outside the limits"
        assert np.all(st.ee_pos >= lo - POS_TOL_M) and np.all(st.ee_pos <= hi + POS_TOL_M)

    stats = safety.stats
    print(f"\nfuzz: {N_COMMANDS} iterations ({n_actions} actions, {n_targets} targets, {n_silent} silent, "
          f"{n_estops} e-stops, {n_resets} resets), setpoints sent {n_sent}")
    print(f"fuzz: accepted={stats['accepted']} rejected={stats['rejected']} clamped={stats['clamped']} "
          f"holds={stats['holds']} reasons={stats['reasons']}")
    print(f"fuzz: max TCP violation {max_pos_violation * 1000:.2f} mm, {max_ori_violation:.4f} rad; "
          f"TCP min z {min_z * 1000:.1f} mm, max x {max_x * 1000:.1f} mm; "
          f"final_check_failures={core.final_check_failures}")
    assert n_actions + n_targets >= N_COMMANDS * 0.75
    assert core.final_check_failures == 0 and core.backend_errors == 0
    assert stats["accepted"] > 2000 and stats["rejected"] > 1000 and stats["clamped"] > 200
    assert stats["holds"] >= 5  # the watchdog fired in the silent phases
    for reason in ("non-finite", "out of range", "wrong shape", "outside workspace", "bad quaternion",
                   "estop latched"):
        assert stats["reasons"].get(reason, 0) > 0, reason


def _pose(st):
    from robot_server.geometry import Pose
    return Pose(np.asarray(st.ee_pos, float), np.asarray(st.ee_quat, float))


@pytest.mark.ros
def test_bench_fuzz_safety_quick(tmp_path):
    """benchmarks/bench_fuzz_safety.py --quick: 3,000 fuzzed inputs (150 of them over DDS to a real robot_node in
    this session's private domain); nothing commanded outside the box, the node survives, the last line is PASS."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "fuzz.json"
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_fuzz_safety.py"), "--quick", "--json",
                        str(out)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    print(r.stdout[-4000:], r.stderr[-2000:])
    assert r.returncode == 0, "the quick fuzz benchmark failed (output above)"
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("PASS:"), last
    doc = json.loads(out.read_text())
    assert doc["inputs"] == 3000 and doc["outside"] == 0 and doc["final_check_failures"] == 0
    assert doc["node_survived"] is True and doc["parts"]["dds"]["inputs"] == 150
    assert doc["commanded"] > 1000 and doc["totals"]["homes"] >= 1
    for reason in ("non-finite", "out of range", "wrong shape", "outside workspace", "bad quaternion", "wrong frame"):
        assert doc["reasons"].get(reason, 0) > 0, reason
