"""The place, button_press and drawer_open skills: predicates, scripted experts and their YAML tasks.

Each expert is run the way the robot server applies actions (target = measured pose + clipped delta, binary
gripper) on a few seeds; the predicates are also probed with states that must not count as success.
"""
from __future__ import annotations

import mujoco
import numpy as np
import pytest

from sim_twin.fixtures import BUTTON_TRAVEL
from sim_twin.geometry import apply_rotvec
from sim_twin.tasks.skills import SKILLS
from sim_twin.tasks.skills.button_press import PRESSED_FRACTION, button_depth, cap_top
from sim_twin.tasks.skills.drawer_open import OPEN_DISTANCE, drawer_opening
from sim_twin.tasks.skills.place import target_geometry
from sim_twin.twin import Twin

WORKSPACE = np.array([[0.25, -0.35, 0.005], [0.75, 0.35, 0.50]])
MARGIN = 0.03


@pytest.fixture(scope="module")
def twin():
    tw = Twin()
    yield tw
    tw.close()


def _set_joint(tw, joint: str, value: float) -> None:
    m = tw.model
    tw.data.qpos[m.jnt_qposadr[m.joint(joint).id]] = value
    mujoco.mj_forward(m, tw.data)


def _step(tw, expert) -> np.ndarray:
    a = expert.act(tw)
    s = tw.state()
    tw.set_target(s.ee_pos + np.clip(a[:3], -0.02, 0.02), apply_rotvec(s.ee_quat, a[3:6]), float(a[6] > 0.5))
    tw.advance(0.1)
    return a


def _expert(tw, seed: int, noise: float = 0.1):
    return SKILLS[tw.task.skill].expert(tw, tw.task, np.random.default_rng(seed + 1000), noise)


def _hold(tw, seconds: float) -> None:
    s = tw.state()
    tw.set_target(s.ee_pos, s.ee_quat, tw.target[2])
    tw.advance(seconds)


def test_tasks_registered(twin):
    reg = twin.registry
    for skill in ("place", "button_press", "drawer_open"):
        tasks = [t for t in reg.tasks.values() if t.skill == skill]
        assert any(t.category == "expert" for t in tasks), skill
        for t in tasks:
            assert len(t.phrasings(reg)) >= 2, t.name
            assert t.max_steps <= 150
    assert {reg.tasks[n].params["target"] for n in reg.tasks if reg.tasks[n].skill == "place"} == {"plate", "bin"}


@pytest.mark.parametrize("task,seeds", [
    ("place_red_block_on_plate", (0, 1)),
    ("place_blue_block_in_bin", (2, 3)),
    ("place_eggplant_in_bin", (4,)),
    ("press_button", (0, 1)),
    ("open_drawer", (0, 1)),
])
def test_expert_succeeds_and_predicate_starts_false(twin, task, seeds):
    for seed in seeds:
        twin.reset(task, seed=seed)
        assert not twin.success(), f"{task} seed {seed}: success right after reset"
        expert = _expert(twin, seed)
        ok = False
        for _ in range(twin.task.max_steps):
            a = _step(twin, expert)
            p = twin.state().ee_pos
            assert np.all(p > WORKSPACE[0] + [MARGIN, MARGIN, 0]) and np.all(p < WORKSPACE[1] - MARGIN), \
                f"{task} seed {seed}: TCP {p} leaves the workspace (with margin)"
            if twin.success():
                if twin.task.skill == "place":
                    assert a[6] < 0.5, "placed while the gripper is commanded closed"
                ok = True
                break
        assert ok, f"{task} seed {seed}: expert failed (phase {expert.phase})"


def test_place_not_fooled(twin):
    task = "place_red_block_on_plate"
    twin.reset(task, seed=7)
    expert = _expert(twin, 7, noise=0.0)
    # Carry the block over the plate and hold it there, then lower it onto the plate without letting go.
    for _ in range(twin.task.max_steps):
        _step(twin, expert)
        assert not twin.success()
        if expert.phase == 5:  # over the plate, at carrying height
            break
    assert expert.phase == 5
    _hold(twin, 1.0)
    assert not twin.success(), "a block held above the plate counts as placed"
    for _ in range(30):
        _step(twin, expert)
        if expert.phase == 6:  # at the release height, gripper still closed
            break
    _hold(twin, 1.0)
    geo = target_geometry(twin, "plate")
    pos = twin.object_pos("red_block")
    assert np.hypot(*(pos - geo["centre"])[:2]) < geo["radius"] and pos[2] < 0.05  # really low over the plate
    assert not twin.success(), "a block still gripped on the plate counts as placed"

    # Teleported states, arm at home with the gripper open.
    twin.reset(task, seed=8)
    plate = target_geometry(twin, "plate")["centre"]
    bin_ = target_geometry(twin, "bin")["centre"]
    z = twin.registry.objects["red_block"].rest_height + 0.01
    for where, expected in [(plate + [0.0, 0.0, z], True), (plate + [0.10, 0.0, z - 0.008], False),
                            (bin_ + [0.0, 0.0, z], False)]:
        twin.set_object_pose("red_block", where)
        mujoco.mj_forward(twin.model, twin.data)
        _hold(twin, 0.8)
        assert twin.success() is expected, f"block at {where}"
    twin.set_object_pose("red_block", plate + [0.0, 0.0, 0.2])  # falling onto the plate: not yet
    mujoco.mj_forward(twin.model, twin.data)
    _hold(twin, 0.02)
    assert not twin.success()


def test_button_not_fooled(twin):
    twin.reset("press_button", seed=3)
    twin.advance(1.0)
    assert button_depth(twin) < 0.001 and not twin.success()
    _set_joint(twin, "fixture/button", -0.4 * BUTTON_TRAVEL)
    assert not twin.success(), "a half-pressed button counts as pressed"
    _set_joint(twin, "fixture/button", -(PRESSED_FRACTION + 0.2) * BUTTON_TRAVEL)
    assert twin.success()
    # Closed fingers resting just above the cap do not press it.
    twin.reset("press_button", seed=3)
    top = cap_top(twin)
    for _ in range(20):
        s = twin.state()
        goal = top + [0.0, 0.0, 0.018 + 0.008]
        step = np.clip(goal - s.ee_pos, -0.02, 0.02)
        twin.set_target(s.ee_pos + step, twin.home_quat, 1.0)
        twin.advance(0.1)
    assert np.linalg.norm(twin.state().ee_pos - goal) < 0.01
    assert not twin.success(), "hovering over the button counts as pressed"


def test_drawer_not_fooled(twin):
    twin.reset("open_drawer", seed=3)
    twin.advance(1.0)
    assert abs(drawer_opening(twin)) < 0.002 and not twin.success()
    _set_joint(twin, "fixture/drawer", 0.5 * OPEN_DISTANCE)
    assert not twin.success(), "a drawer opened a few cm counts as open"
    _set_joint(twin, "fixture/drawer", OPEN_DISTANCE + 0.02)
    assert twin.success()
    # Grasping the handle without pulling is not opening.
    twin.reset("open_drawer", seed=4)
    expert = _expert(twin, 4, noise=0.0)
    for _ in range(60):
        _step(twin, expert)
        if expert.phase == 3:  # handle grasped, about to pull
            break
    assert expert.phase == 3
    _hold(twin, 1.0)
    assert drawer_opening(twin) < 0.02 and not twin.success()
