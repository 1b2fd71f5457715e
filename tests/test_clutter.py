"""Training-only clutter: objects no task names, drawn into expert scenes (`irevla collect --clutter K`) so the expert
set shows many more objects and nouns than its targets; replayed from the seed by the object labeller."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sim_twin.scene import CLUTTER_REGION
from sim_twin.tasks.registry import RegistryError, TaskRegistry
from sim_twin.twin import Twin, TwinConfig

HELD_OUT_WORDS = ("purple", "violet", "white", "cup", "mug", "banana", "tomato", "eggplant", "aubergine", "carrot")


def test_clutter_pool_is_training_only():
    reg = TaskRegistry.load()
    assert len(reg.clutter) >= 10
    named = {o for t in reg.tasks.values() for o in t.objects + t.distractors}
    assert not named & set(reg.clutter)
    for o in reg.clutter:  # no word of a held-out (unseen / RL) object leaks into training through the clutter
        assert not any(w in noun for noun in reg.objects[o].nouns for w in HELD_OUT_WORDS), o


def test_an_object_a_task_uses_leaves_the_clutter_pool(tmp_path):
    """A user's new task on a clutter object (say, an RL task "pick the lime") keeps that object out of training."""
    f = tmp_path / "mine.yaml"
    f.write_text("tasks:\n  pick_lime:\n    skill: pick\n    category: rl\n    objects: [lime]\n"
                 "    instructions: ['pick up the {object}']\n")
    assert "lime" in TaskRegistry.load().clutter and "lime" not in TaskRegistry.load([str(f)]).clutter
    f.write_text("clutter: [lime, no_such_object]\n")
    with pytest.raises(RegistryError, match="no_such_object"):
        TaskRegistry.load([str(f)])


@pytest.fixture(scope="module")
def twins():
    plain = Twin(TwinConfig(render_width=64, render_height=64))
    cluttered = Twin(TwinConfig(render_width=64, render_height=64, clutter=3))
    yield plain, cluttered
    plain.close()
    cluttered.close()


def test_clutter_is_drawn_from_the_seed_and_leaves_the_task_scene_alone(twins):
    plain, twin = twins
    (x0, y0), (x1, y1) = CLUTTER_REGION
    drawn = set()
    for seed in range(6):
        plain.reset("pick_red_block", seed=seed)
        twin.reset("pick_red_block", seed=seed)
        names = twin.clutter_objects
        assert 2 <= len(names) <= 3 and set(names) <= set(twin.registry.clutter)
        drawn |= set(names)
        for o in ("red_block", "green_block", "blue_block"):  # the task's own scene is what it is without clutter
            assert np.allclose(plain.object_pos(o), twin.object_pos(o), atol=2e-3)
        target = twin.object_pos("red_block")
        for n in names:
            p = twin.object_pos(n)
            assert x0 - 0.01 <= p[0] <= x1 + 0.01 and y0 - 0.01 <= p[1] <= y1 + 0.01 and 0 < p[2] < 0.05
            assert np.linalg.norm(p[:2] - target[:2]) > 0.06  # the fingers never land on clutter
        parked = [o for o in twin.registry.clutter if o not in names and o in twin._clutter_pool(twin.task)]
        assert all(twin.object_pos(o)[0] < -3 for o in parked)
        assert not np.array_equal(plain.render("front"), twin.render("front"))  # the clutter is in view
        again = twin.clutter_objects
        twin.reset("pick_red_block", seed=seed)
        assert twin.clutter_objects == again
    assert len(drawn) >= 8  # many objects over a few scenes, not the same three
    twin.reset("route_cable", seed=0)  # no objects in the task: no clutter either
    assert twin.clutter_objects == ()


def test_collect_with_clutter_labels_the_clutter(tmp_path):
    out = tmp_path / "clutter"
    cmd = [sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out), "--episodes-per-task", "1",
           "--tasks", "pick_red_block", "--workers", "1", "--image-size", "64", "--clutter", "2", "--seed", "7",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    entry = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    recorded = entry["extra"]["clutter_objects"]
    assert entry["extra"]["clutter"] == 2 and 1 <= len(recorded) <= 2
    label = json.loads((out / "object_labels.jsonl").read_text().splitlines()[0])
    others = {o["object"]: o for o in label["others"]}
    assert set(recorded) <= set(others)  # the labeller replayed the same clutter from the seed
    for name in recorded:
        noun_words = TaskRegistry.load().objects[name].nouns
        assert any(n in others[name]["instruction"] for n in noun_words)
    # One clutter setting per set: appending with another is refused, and what is recorded stays.
    proc = subprocess.run([("0" if c == "2" else c) for c in cmd], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2 and "clutter 2 (wanted 0)" in proc.stderr and "one setting" in proc.stderr
    assert len((out / "index.jsonl").read_text().splitlines()) == 1
