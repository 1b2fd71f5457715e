"""The MetaWorld cell (sim_twin/metaworld_cell.py, robot_server/metaworld_env.py) and the shortened Table I pipeline:
two expert tasks collected with MetaWorld's scripted policies into the expert-set format, stage 0, one "-new" RL
task through stage 1 and stage 2, evaluation, all through `irevla iterate` with `task_files: [metaworld]`.

MetaWorld is an optional install (IREVLA_EXTRAS=metaworld bash scripts/setup.sh; CI installs it)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="MetaWorld is optional: IREVLA_EXTRAS=metaworld bash scripts/setup.sh")

REPO = Path(__file__).resolve().parents[1]


def _run_expert(env, seed: int) -> tuple[bool, int]:
    env.reset(seed=seed)
    for n in range(1, env.spec.max_steps + 1):
        _, _, term, trunc, _ = env.step(env.expert_action())
        if term or trunc:
            return bool(term), n
    return False, n


def test_scripted_experts_through_the_contract_and_the_safety_layer():
    from robot_server.gym_env import make_env
    from robot_server.metaworld_env import MetaWorldEnv
    from robot_server.safety import R_NONFINITE, R_RANGE
    env = make_env("mw_window_open_new", ("front", "wrist"), 64, task_files=("metaworld",))
    assert isinstance(env, MetaWorldEnv) and env.twin.task.category == "rl"
    try:
        obs, info = env.reset(seed=5)
        assert info["instruction"] in ("open the red window", "slide the red window open")
        assert obs["state"].shape == (14,) and np.isfinite(obs["state"]).all()
        front, wrist = obs["images"]["front"], obs["images"]["wrist"]
        assert front.shape == wrist.shape == (64, 64, 3) and front.dtype == np.uint8
        assert front.std() > 10 and not np.array_equal(front, wrist)
        again, _ = env.reset(seed=5)  # the seed is the episode
        assert np.array_equal(again["images"]["front"], front)
        # Bad actions are the safety layer's: rejected, counted, the arm holds.
        before = env.twin.state().ee_pos.copy()
        _, _, _, _, info = env.step(np.array([np.nan, 0, 0, 0, 0, 0, 0]))
        assert info["rejected"] == R_NONFINITE
        _, _, _, _, info = env.step(np.array([3.0, 0, 0, 0, 0, 0, 0]))
        assert info["rejected"] == R_RANGE
        assert np.linalg.norm(env.twin.state().ee_pos - before) < 0.005
        assert env.safety_stats["rejected"] == 2
        # A full step is the contract's 2 cm (two MetaWorld steps of 1 cm; the hand trails its mocap target).
        p0 = env.twin.state().ee_pos.copy()
        for _ in range(5):
            env.step(np.array([0.0, 1.0, 0, 0, 0, 0, -1.0]))
        moved = env.twin.state().ee_pos - p0
        assert 0.05 < moved[1] <= 0.105 and abs(moved[0]) < 0.01, moved
        results = [_run_expert(env, s) for s in (0, 1)]
        assert all(ok for ok, _ in results), results
        # options={"task": ...} switches the task, as in TwinEnv (one env per evaluation worker runs many tasks).
        _, info = env.reset(seed=3, options={"task": "mw_drawer_open"})
        assert (info["task"], info["category"], env.twin.task.name) == ("mw_drawer_open", "expert", "mw_drawer_open")
        assert info["instruction"] in ("open the drawer", "pull the drawer open")
        assert _run_expert(env, 3)[0]
    finally:
        env.close()


def test_variations_recolour_resize_and_shift_the_task_object():
    from sim_twin.metaworld_cell import MetaWorldCell, Variation
    base = MetaWorldCell("button-press-v3", image_size=32)
    new = MetaWorldCell("button-press-v3", Variation(("buttonbox",), (0.1, 0.7, 0.2, 1.0), 1.2, (0.05, 0.0, 0.0)),
                        image_size=32)
    try:
        geoms = new._subtree_geoms("buttonbox")
        assert geoms and np.allclose(new.model.geom_rgba[geoms], (0.1, 0.7, 0.2, 1.0))
        assert not np.allclose(base.model.geom_rgba[geoms], (0.1, 0.7, 0.2, 1.0))
        prim = [g for g in geoms if new.model.geom_type[g] != 7]  # 7: mesh (keeps its size)
        assert prim and np.allclose(new.model.geom_size[prim], 1.2 * base.model.geom_size[prim])
        base.reset(11)
        new.reset(11)
        assert np.allclose(new.env._last_rand_vec[:3] - base.env._last_rand_vec[:3], (0.05, 0.0, 0.0))
        assert not np.array_equal(new.render("front"), base.render("front"))
    finally:
        base.close()
        new.close()


def test_the_paper_split_is_in_the_registry():
    from sim_twin.tasks.registry import RegistryError, TaskRegistry
    reg = TaskRegistry.load(extra_files=["metaworld"], include_default=False)
    by = {c: [t for t in reg.tasks.values() if t.category == c] for c in ("expert", "rl", "unseen")}
    assert (len(by["expert"]), len(by["rl"]), len(by["unseen"])) == (25, 5, 10)
    bases = {t.params["env"] for t in by["expert"]}
    assert {t.params["env"] for t in by["rl"]} == {"button-press-v3", "drawer-open-v3", "door-open-v3",
                                                   "window-open-v3", "window-close-v3"} <= bases
    for t in by["expert"]:
        assert set(t.params) == {"env"}, f"{t.name}: an expert task is MetaWorld's own"
    for t in by["rl"] + by["unseen"]:
        assert "rgba" in t.params and t.params.get("body"), f"{t.name}: a variation needs a new look"
    words = {p for t in reg.tasks.values() for p in t.phrasings(reg)}
    assert len(words) >= 60
    bad = Path(__file__).parent / "_bad_metaworld.yaml"
    try:
        bad.write_text("tasks:\n  x: {skill: metaworld, category: rl, instructions: [go],"
                       " params: {env: button-press-v3, body: buttonbox, rgba: [2, 0, 0, 1]}}\n")
        with pytest.raises(RegistryError, match="rgba"):
            TaskRegistry.load(extra_files=[str(bad)])
        bad.write_text("tasks:\n  x: {skill: metaworld, category: rl, instructions: [go], params: {env: 3}}\n")
        with pytest.raises(RegistryError, match="MetaWorld v3 environment"):
            TaskRegistry.load(extra_files=[str(bad)])
    finally:
        bad.unlink()


def test_shortened_table_one_pipeline(tmp_path):
    """Two expert tasks x 2 scripted episodes, stage 0 of the tiny VLA, RL + stage 2 on one "-new" task, evaluation
    on the three tasks, then the Table I writer over the run: every part of the MetaWorld pipeline, seconds each."""
    from rl_agent.jobs.iterate import IterateConfig, run_iterate
    from teleop.config import from_dict
    from teleop.dataset import validate_dataset
    cfg = from_dict(IterateConfig, {
        "task_files": ["metaworld"],
        "vla_config": "config/policy_tiny.yaml",
        "stage0": {"steps": 6, "batch_size": 4, "warmup_steps": 1, "save_every": 6, "eval_every": 0,
                   "progress": False, "prefetch": False},
        "curriculum": ["mw_button_press_new"],
        "session": {"minutes": None, "max_episodes": 2, "env": {"max_episode_steps": 10},
                    "demos": {"count": 1, "source": "expert", "expert_max_attempts": 3},
                    "train": {"learning_starts": 5, "updates_per_step": 0.5},
                    "eval": {"episodes": 0, "handback": False}, "sac": {"batch_size": 16},
                    "log": {"progress": False, "tensorboard": False, "plot": False}},
        "stage2": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "save_every": 3, "eval_every": 0,
                   "progress": False, "prefetch": False},
        "expert": {"episodes_per_task": 2, "tasks": ["mw_button_press", "mw_drawer_open"], "workers": 1,
                   "image_size": 96, "noise": 0.0},
        "evaluation": {"tasks": ["mw_button_press", "mw_drawer_open", "mw_button_press_new"], "seeds": [0, 1],
                       "max_steps": 10, "videos": 0, "workers": 1},
    })
    run = tmp_path / "run"
    reports = run_iterate(cfg, run)
    assert [r.label for r in reports] == ["sft", "after_mw_button_press_new"]
    expert = run / "expert"
    rep = validate_dataset(expert)
    assert rep.ok and rep.n_files == 4, rep.summary()
    index = [json.loads(line) for line in (expert / "index.jsonl").read_text().splitlines()]
    assert {e["task"] for e in index} == {"mw_button_press", "mw_drawer_open"}
    tasks = {row["task"]: row for row in reports[-1].per_task}
    assert set(tasks) == {"mw_button_press", "mw_drawer_open", "mw_button_press_new"}
    assert all(row["episodes"] == 2 for row in tasks.values())
    # Every task was evaluated in its own scene: the episodes carry their task's category.
    cats = {row["task"]: row["category"] for row in reports[-1].per_task}
    assert cats == {"mw_button_press": "expert", "mw_drawer_open": "expert", "mw_button_press_new": "rl"}, cats
    state = json.loads((run / "state.json").read_text())
    assert Path(state["stage0"]).is_dir() and state["rl:mw_button_press_new"]

    import importlib.util
    spec = importlib.util.spec_from_file_location("metaworld_table", REPO / "benchmarks" / "metaworld_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    table = module.main
    out = tmp_path / "table.md"
    assert table(["--irevla", str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| iRe-VLA (paper) | 0.83 | 1.00 |" in text and "episodes" in text
    ours = next(line for line in text.splitlines() if line.startswith("| iRe-VLA (ours)"))
    assert "(2)" in ours  # filled from the run
    # Notes under the table survive a rewrite; an evaluation of other task definitions (a "-new" task since
    # moved) is left out of the table, never shown as today's column.
    out.write_text(text + "\n## Notes\nkeep me\n")
    key = f"eval:{reports[-1].label}"
    state[key]["key"]["task_definitions"] = "0" * 16
    (run / "state.json").write_text(json.dumps(state))
    assert table(["--irevla", str(run), "--out", str(out)]) == 0
    text = out.read_text()
    assert "keep me" in text
    assert next(line for line in text.splitlines() if line.startswith("| iRe-VLA (ours)")).count("not run") == 7

    # An interrupted or smaller scripted set is topped up (collection resumes), never used short.
    from rl_agent.jobs.iterate import ensure_expert_set
    cfg.expert.episodes_per_task = 3
    ensure_expert_set(cfg.expert, run, log=print)
    rep = validate_dataset(expert)
    assert rep.ok and rep.n_files == 6, rep.summary()
