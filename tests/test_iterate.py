"""A shortened iRe-VLA loop (Algorithm 1) on the twin, end to end, and its resume.

Real parts throughout: scripted expert collection into MCAP episodes, the embedded default VLA, an in-process RL
session (SACfD on cached latents, VLM frozen), harvest, stage-2 supervised training with LoRA, evaluation. Every
budget is cut to seconds; what is checked is that the stages hand their outputs to each other correctly.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_agent.jobs.iterate import IterateConfig, run_iterate
from rl_agent.jobs.main_job import default_model_dir
from teleop.config import from_dict


def _cfg(tmp: Path) -> IterateConfig:
    return from_dict(IterateConfig, {
        "sft_checkpoint": str(default_model_dir()),
        "curriculum": ["pick_eggplant"],
        "session": {"minutes": None, "max_episodes": 2,
                    "env": {"max_episode_steps": 12},
                    "demos": {"count": 1, "source": "expert", "expert_max_attempts": 3},
                    "train": {"learning_starts": 5, "updates_per_step": 0.5},
                    "eval": {"episodes": 0, "handback": False},
                    "sac": {"batch_size": 16},
                    "log": {"progress": False, "tensorboard": True, "plot": False}},
        "stage2": {"steps": 4, "batch_size": 4, "warmup_steps": 1, "save_every": 2, "eval_every": 0,
                   "progress": False, "prefetch": False},
        "expert": {"episodes_per_task": 1, "tasks": ["press_button"], "workers": 1},
        "evaluation": {"tasks": ["press_button", "pick_eggplant"], "seeds": [0], "max_steps": 12, "videos": 1,
                       "workers": 1},
    })


def test_shortened_loop_runs_every_stage_and_resumes(tmp_path):
    from policy.model import load_vla
    run = tmp_path / "run"
    cfg = _cfg(tmp_path)
    reports = run_iterate(cfg, run)
    assert [r.label for r in reports] == ["sft", "after_pick_eggplant"]
    state = json.loads((run / "state.json").read_text())
    assert state["eval:sft"] and state["eval:after_pick_eggplant"]
    summary = state["rl:pick_eggplant"]
    assert summary["episodes"] >= 2 if "episodes" in summary else True
    stage2 = Path(state["task:pick_eggplant"])
    assert (stage2 / "adapter" / "adapter_config.json").is_file(), "stage 2 trains a LoRA adapter on the VLM"
    before, after = load_vla(default_model_dir()), load_vla(stage2)
    assert after.vlm_id() != before.vlm_id(), "stage 2 must change the VLM (and so the latent cache key)"
    for label in ("sft", "after_pick_eggplant"):
        assert (run / "eval" / label / "per_category.csv").is_file()
        assert list((run / "eval" / label / "videos").glob("*.mp4"))
    md = (run / "results.md").read_text()
    assert "| sft | after_pick_eggplant |" in md.replace("category", "").replace("task", "").replace("|  |", "|") \
        or ("sft" in md and "after_pick_eggplant" in md)
    assert (run / "success_by_category.png").stat().st_size > 1000

    # A second run of the same directory resumes: every stage is done, nothing retrains.
    mtime = (stage2 / "head.safetensors").stat().st_mtime_ns
    again = run_iterate(cfg, run)
    assert [r.label for r in again] == ["sft", "after_pick_eggplant"]
    assert (stage2 / "head.safetensors").stat().st_mtime_ns == mtime

    # Other settings for a finished task are never reused silently: the run stops and names what changed.
    from robot_server.usage import UsageError
    changed = _cfg(tmp_path)
    changed.session["max_episodes"] = 3
    with pytest.raises(UsageError, match=r"pick_eggplant was made with other settings \(changed: rl\)"):
        run_iterate(changed, run)
    changed = _cfg(tmp_path)
    changed.stage2["steps"] = 5
    with pytest.raises(UsageError, match=r"changed: stage2"):
        run_iterate(changed, run)
    changed = _cfg(tmp_path)
    changed.stage2_grasp_labels = True
    with pytest.raises(UsageError, match=r"changed: stage2"):
        run_iterate(changed, run)


def test_stage2_labels_the_harvests_grasps_first(tmp_path):
    """With `stage2_grasp_labels: true`, every harvested set's picks get grasp labels (teleop/object_labels.py) before
    stage 2 trains, so the object readout trains on the RL task's object; with false (the default) the harvest is
    left as it was."""
    import subprocess
    import sys

    from rl_agent.jobs.iterate import stage2
    from teleop.object_labels import LABELS_FILE, read_object_labels
    expert, harvest = tmp_path / "expert", tmp_path / "harvest"
    for out, task in ((expert, "press_button"), (harvest, "pick_red_block")):
        proc = subprocess.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(out),
                               "--episodes-per-task", "1", "--tasks", task, "--workers", "1", "--image-size", "128",
                               "--no-progress"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    (harvest / LABELS_FILE).unlink()  # the twin's privileged labels: a real cell's harvest has none
    cfg = _cfg(tmp_path)
    cfg.stage2_grasp_labels = False
    stage2(cfg, tmp_path / "off", str(default_model_dir()), expert, [str(harvest)], "pick_red_block")
    assert not (harvest / LABELS_FILE).exists()
    cfg.stage2_grasp_labels = True
    final = stage2(cfg, tmp_path / "on", str(default_model_dir()), expert, [str(harvest)], "pick_red_block")
    labels = read_object_labels(harvest)
    assert len(labels) == 1 and Path(final, "adapter", "adapter_config.json").is_file()
    row = json.loads((harvest / LABELS_FILE).read_text().splitlines()[0])
    assert row["source"] == "grasp" and row["object"] == "red_block"


def test_bad_variant_and_weights_are_rejected():
    with pytest.raises(ValueError, match="variant"):
        IterateConfig(variant="magic")
    with pytest.raises(ValueError, match="stage2_rl_weight"):
        IterateConfig(stage2_rl_weight=1.5)


def test_ppo_baseline_updates_the_whole_vla(tmp_path):
    """PPO-Replay's RL half: the policy gradient reaches the VLM (LoRA), unlike stage 1, and a checkpoint results."""
    from policy.model import load_vla
    from rl_agent.ppo import PPOConfig, run_ppo
    cfg = PPOConfig(iterations=1, episodes_per_iteration=1, max_steps=6, epochs=1, minibatch=4, lr=1e-3)
    res = run_ppo(str(default_model_dir()), "press_button", cfg, tmp_path / "ppo", progress=False)
    assert len(res["log"]) == 1 and res["log"][0]["steps"] >= 1
    after = load_vla(res["checkpoint"])
    assert (Path(res["checkpoint"]) / "adapter" / "adapter_config.json").is_file()
    assert after.vlm_id() != load_vla(default_model_dir()).vlm_id()


def test_ppo_replay_starts_from_the_same_demonstrations(tmp_path):
    """PPO-Replay's warm start: the session's demo settings and scene seeds, cloned before the policy gradient."""
    from rl_agent.ppo import PPOConfig, run_ppo
    from rl_agent.session_config import DemoConfig
    cfg = PPOConfig(iterations=1, episodes_per_iteration=1, max_steps=60, epochs=1, minibatch=8, bc_steps=4,
                    demos=DemoConfig(count=2, source="expert", expert_max_attempts=3))
    res = run_ppo(str(default_model_dir()), "press_button", cfg, tmp_path / "ppo", progress=False)
    warm = res["warm_start"]
    assert warm["expert"] == 2 and warm["vla_attempts"] == 0 and warm["steps"] > 10, warm
    assert warm["bc_steps"] == 4 and warm["bc_loss_last"] is not None
    log = json.loads((tmp_path / "ppo" / "ppo_log.json").read_text())
    assert log["warm_start"] == warm and len(log["iterations"]) == 1


def test_ppo_with_a_wall_clock_budget_runs_until_it_is_spent(tmp_path):
    """PPO-Replay is compared with SAC sessions of the same minutes: with `minutes` set, the iteration count does
    not end it early; it stops after the first iteration past the budget."""
    from rl_agent.ppo import PPOConfig, run_ppo
    cfg = PPOConfig(iterations=1, minutes=0.05, episodes_per_iteration=1, max_steps=2, epochs=1, minibatch=4)
    log = run_ppo(str(default_model_dir()), "press_button", cfg, tmp_path / "ppo", progress=False)["log"]
    assert log[-1]["elapsed_s"] > 3.0 and all(row["elapsed_s"] <= 3.0 for row in log[:-1]), log


def test_shipped_main_job_config_names_real_tasks_in_the_right_categories():
    """config/main_job.yaml (the README's first command) loads as typed config; its RL curriculum is RL-category
    tasks the twin knows, its evaluation covers every category and its RL task, and its language command task exists."""
    from rl_agent.jobs.main_job import MainJobConfig
    from sim_twin.tasks.registry import TaskRegistry
    from teleop.config import load_yaml
    cfg = load_yaml(MainJobConfig, Path(__file__).resolve().parents[1] / "config" / "main_job.yaml")
    reg = TaskRegistry.load()
    it = cfg.iterate
    assert it.curriculum and all(reg.get(t).category == "rl" for t in it.curriculum), it.curriculum
    evaluated = {reg.get(t).category for t in it.evaluation.tasks}
    assert evaluated == {"expert", "rl", "unseen"} and set(it.curriculum) <= set(it.evaluation.tasks)
    assert reg.get(cfg.command.task).category == "expert" and cfg.command.instruction.strip()


def test_evaluation_cache_key_follows_checkpoint_content_tasks_seeds_and_words(tmp_path):
    """iterate reuses an evaluation only when nothing it depends on changed: a copy of the same checkpoint elsewhere
    keeps the key; other seeds, another render size, other instructions or other weights change it."""
    import shutil

    import yaml
    from policy.evaluate import EvalConfig
    from rl_agent.jobs.run_records import evaluation_key
    src = default_model_dir()
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    ev = EvalConfig(tasks=["press_button"], seeds=[0, 1])
    key = evaluation_key(str(src), ev)
    assert evaluation_key(str(copy), ev) == key
    assert evaluation_key(str(src), EvalConfig(tasks=["press_button"], seeds=[0, 2]))["seeds"] != key["seeds"]
    assert evaluation_key(str(src), EvalConfig(tasks=["press_button"], seeds=[0, 1], image_size=64)) != key
    words = tmp_path / "words.yaml"
    words.write_text(yaml.safe_dump({"tasks": {"press_button": {
        "skill": "button_press", "category": "expert", "instructions": ["push the button down"]}}}))
    other_words = evaluation_key(str(src), EvalConfig(tasks=["press_button"], seeds=[0, 1], task_files=[str(words)]))
    assert other_words["instructions"] != key["instructions"] and other_words["checkpoint"] == key["checkpoint"]
    # the same name and words, another scene (a task file moving or recolouring it): never the old numbers
    from sim_twin.tasks.registry import TaskRegistry
    spec = TaskRegistry.load().get("press_button")
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump({"tasks": {"press_button": {
        "skill": spec.skill, "category": spec.category, "instructions": list(spec.instructions),
        "params": {**spec.params, "moved_for_the_test": 1}}}}))
    other_scene = evaluation_key(str(src), EvalConfig(tasks=["press_button"], seeds=[0, 1], task_files=[str(moved)]))
    assert other_scene["instructions"] == key["instructions"]
    assert other_scene["task_definitions"] != key["task_definitions"]
    meta = json.loads((copy / "meta.json").read_text())
    meta["head_id"] = "0" * 16  # another head (e.g. after stage 1's hand-back)
    (copy / "meta.json").write_text(json.dumps(meta))
    assert evaluation_key(str(copy), ev)["checkpoint"] != key["checkpoint"]


@pytest.mark.ros
def test_stage1_over_the_ros_graph_gives_the_same_result_format(tmp_path):
    """`stage1: ros`: the RL session runs as the rl_session graph (processes over DDS); iterate gets the same
    summary (harvest, RL head, counts), then stage 2 and the evaluation as in-process; a rerun reuses it."""
    cfg = _cfg(tmp_path)
    cfg.stage1 = "ros"
    cfg.curriculum = ["press_green_button"]
    cfg.session = {"minutes": 0.3, "demos": {"count": 0}, "train": {"learning_starts": 20},
                   "env": {"max_episode_steps": 12}}
    cfg.evaluation.tasks = ["press_green_button"]
    run = tmp_path / "run"
    reports = run_iterate(cfg, run)
    assert [r.label for r in reports] == ["sft", "after_press_green_button"]
    rl = run / "tasks" / "press_green_button" / "rl"
    summary = json.loads((rl / "summary.json").read_text())
    assert summary["via"].startswith("ros2") and summary["episodes"] >= 2 and summary["updates"] > 0, summary
    assert (rl / "learner" / "rl_head_ckpt" / "meta.json").is_file() and (rl / "actor" / "tb").is_dir()
    # the session's SAC settings reach the nodes (config/rl_session.yaml: batch 64 x critic_actor_ratio 2, pooled
    # latents); the nodes' own defaults are SERL's GPU settings (batch 256 x 4, all 19 tokens)
    assert "latents (8, 128), batch 128," in (rl / "graph.log").read_text()
    state = json.loads((run / "state.json").read_text())
    assert state["rl:press_green_button"] == summary and Path(state["task:press_green_button"]).is_dir()
    again = run_iterate(cfg, run)  # finished: nothing runs again
    assert [r.label for r in again] == ["sft", "after_press_green_button"]
    assert json.loads((rl / "summary.json").read_text()) == summary


def test_the_run_seed_reaches_the_session_stage2_and_ppo_unless_a_section_names_its_own():
    """`irevla iterate --seed N` / `irevla demo --seed N`: one seed for the run's RL session, stage 2 and PPO;
    evaluation seeds stay. A section's own seed wins; a run recorded with another seed is not silently resumed."""
    from rl_agent.jobs.iterate import rl_settings, session_settings, stage2_settings
    cfg = from_dict(IterateConfig, {"seed": 3, "session_config": None, "stage2": {"steps": 5}})
    assert session_settings(cfg, "pick_green_can")["seed"] == 3
    assert stage2_settings(cfg) == {"seed": 3, "steps": 5}
    assert from_dict(IterateConfig, {"seed": 3, "variant": "ppo_replay"}).seed == 3
    assert rl_settings(from_dict(IterateConfig, {"seed": 3, "variant": "ppo_replay", "session_config": None}),
                       "pick_green_can")["ppo"]["seed"] == 3
    own = from_dict(IterateConfig, {"seed": 3, "session_config": None, "session": {"seed": 9},
                                    "stage2": {"seed": 4}})
    assert session_settings(own, "pick_green_can")["seed"] == 9 and stage2_settings(own)["seed"] == 4
    other = from_dict(IterateConfig, {"seed": 4, "session_config": None, "stage2": {"steps": 5}})
    assert rl_settings(cfg, "t") != rl_settings(other, "t")  # part of the task key: a changed seed is reported


def test_main_job_seed_flag_sets_the_run_seed(monkeypatch, tmp_path):
    from rl_agent.jobs import main_job
    seen = {}
    monkeypatch.setattr(main_job, "run_iterate", lambda it, run_dir: seen.setdefault("it", it) and [])
    monkeypatch.setattr("robot_server.isolation.ensure_local_ros", lambda: None)
    main_job.main(["--skip-command", "--seed", "2", "--out", str(tmp_path / "demo")])
    assert seen["it"].seed == 2 and seen["it"].evaluation.seeds == list(range(20))
