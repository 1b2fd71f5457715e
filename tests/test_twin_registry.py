"""The twin's task registry, scene and controller (pure core, no ROS)."""
import numpy as np
import pytest

from sim_twin.tasks.registry import CATEGORIES, RegistryError, TaskRegistry
from sim_twin.twin import Twin, TwinConfig


@pytest.fixture(scope="module")
def twin():
    t = Twin(TwinConfig(render_width=96, render_height=96))
    yield t
    t.close()


def test_suite_covers_the_paper_cell():
    reg = TaskRegistry.load()
    skills = {t.skill for t in reg.tasks.values()}
    assert {"pick", "place", "button_press", "drawer_open", "cable_route"} <= skills
    picked_colours = {t.objects[0] for t in reg.tasks.values() if t.skill == "pick" and t.category == "expert"}
    assert {"red_block", "green_block", "blue_block", "yellow_block"} <= picked_colours
    expert_objects = {o for t in reg.by_category("expert") for o in t.objects}
    novel = {o for t in reg.tasks.values() if t.category != "expert" for o in t.objects} - expert_objects
    assert {"eggplant", "carrot"} <= novel and len(novel) >= 5
    for t in reg.tasks.values():
        assert t.category in CATEGORIES
        assert len(t.phrasings(reg)) >= 2, t.name


def test_user_yaml_adds_objects_and_tasks_without_code(tmp_path):
    extra = tmp_path / "mine.yaml"
    extra.write_text("""
objects:
  orange_ball: {shape: sphere, size: [0.02], rgba: [1, 0.5, 0, 1], nouns: [orange ball]}
tasks:
  pick_orange_ball:
    skill: pick
    category: unseen
    objects: [orange_ball]
    distractors: [red_block]
    instructions: ["pick up the {object}", "lift the {object}"]
""")
    reg = TaskRegistry.load([str(extra)])
    assert "pick_orange_ball" in reg.tasks and "pick_red_block" in reg.tasks
    assert "lift the orange ball" in reg.tasks["pick_orange_ball"].phrasings(reg)
    tw = Twin(TwinConfig(render_width=64, render_height=64), registry=reg)
    tw.reset("pick_orange_ball", seed=1)
    assert tw.object_pos("orange_ball")[2] == pytest.approx(0.02, abs=0.01)
    tw.close()


@pytest.mark.parametrize("doc, message", [
    ("tasks: {t: {skill: fly, category: rl, objects: [red_block], instructions: [x]}}", "unknown skill"),
    ("tasks: {t: {skill: pick, category: sometimes, objects: [red_block], instructions: [x]}}", "category"),
    ("tasks: {t: {skill: pick, category: rl, objects: [unicorn], instructions: [x]}}", "unknown object"),
    ("objects: {o: {shape: box}}", "malformed"),
    ("- just a list", "mapping"),
    ("tasks: {t: [unclosed", "cannot read"),
])
def test_bad_yaml_gets_a_clear_error(tmp_path, doc, message):
    f = tmp_path / "bad.yaml"
    f.write_text(doc)
    with pytest.raises(RegistryError, match=message):
        TaskRegistry.load([str(f)])


def test_unknown_task_names_the_known_ones():
    with pytest.raises(RegistryError, match="pick_red_block"):
        TaskRegistry.load().get("pick_unicorn")


def test_reset_randomizes_objects_per_seed_and_is_reproducible(twin):
    twin.reset("pick_red_block", seed=3)
    a = twin.object_pos("red_block")
    twin.reset("pick_red_block", seed=4)
    b = twin.object_pos("red_block")
    twin.reset("pick_red_block", seed=3)
    c = twin.object_pos("red_block")
    assert np.linalg.norm(a[:2] - b[:2]) > 1e-3
    np.testing.assert_allclose(a, c, atol=1e-6)
    # objects never overlap at reset
    names = twin.task.objects + twin.task.distractors
    pos = [twin.object_pos(n)[:2] for n in names]
    assert min(np.linalg.norm(p - q) for i, p in enumerate(pos) for q in pos[i + 1:]) > 0.04


def test_controller_tracks_a_target_and_holds_the_home_pose(twin):
    s = twin.reset("pick_red_block", seed=0)
    np.testing.assert_allclose(s.ee_pos, twin.home_pos, atol=2e-3)
    goal = twin.home_pos + np.array([0.05, -0.04, -0.06])
    twin.set_target(goal, twin.home_quat, 0.0)
    twin.advance(1.0)
    s = twin.state()
    assert np.linalg.norm(s.ee_pos - goal) < 3e-3
    assert abs(abs(np.dot(s.ee_quat, twin.home_quat)) - 1.0) < 1e-3
    assert np.linalg.norm(s.ee_vel[:3]) < 0.01  # settled, no oscillation


def test_gripper_opens_and_closes(twin):
    twin.reset("pick_red_block", seed=0)
    open_w = twin.state().gripper_width
    pos, quat, _ = twin.target
    twin.set_target(pos, quat, 1.0)
    twin.advance(1.0)
    closed_w = twin.state().gripper_width
    assert open_w > 0.08 and closed_w < 0.03


def test_cameras_render_the_configured_size(twin):
    twin.reset("pick_red_block", seed=0)
    for cam in ("front", "wrist"):
        img = twin.render(cam)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8 and img.std() > 5
    with pytest.raises(ValueError, match="unknown camera"):
        twin.render("ceiling")


def test_seed_blocks_are_disjoint_and_refuse_overlap():
    """Every kind of twin episode draws its scene seeds from its own block: evaluation never replays a training
    scene, and an index that would reach another block is refused."""
    from sim_twin import seeds
    spans = sorted(seeds.BLOCKS.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert seeds.kind_of(seeds.seed("evaluation", 19)) == "evaluation"
    assert seeds.kind_of(seeds.seed("collection", 100000 * 21 + 500)) == "collection"
    with pytest.raises(seeds.SeedRangeError, match="overlap"):
        seeds.seed("session_demos", seeds.BLOCKS["session_demos"][1])
    with pytest.raises(seeds.SeedRangeError):
        seeds.seed("evaluation", -1)
    from rl_agent.jobs.session import session_seed
    kinds = {seeds.kind_of(session_seed(s, base, k)) for s in (0, 7) for base in (0, 3000, 6000) for k in (0, 2999)}
    assert kinds == {"session_demos"}
    used = {session_seed(0, base, k) for base in (0, 3000, 6000) for k in range(3000)}
    assert len(used) == 9000  # demo, scripted-demo and evaluation slices do not overlap
