"""`irevla iterate`: Algorithm 1 of iRe-VLA as one resumable tool.

    stage 0   supervised on the expert set (skipped when an SFT checkpoint is given)
    for each task of the curriculum:
      stage 1 online RL with the VLM frozen (rl_agent.jobs.session: SACfD on cached latents)
      harvest the successful trajectories (expert-set format)
      stage 2 supervised on expert data + everything harvested so far (LoRA + head trainable)
      evaluate (expert / RL / unseen categories)

One run directory holds everything: state.json (which stages are done; a restarted run skips them and resumes the
one in progress), the expert set, per-task RL sessions and harvested datasets, checkpoints, evaluations, plots and
results.md. Variants for the paper's comparisons: `irevla` (default), `freeze` (iRe-VLA-freeze: the VLM stays
frozen in stage 2 too), `sft_only` (evaluate the SFT model only), `ppo_replay` (PPO on the whole VLA per task,
then supervised replay of the expert data).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from policy.evaluate import (EvalConfig, EvalReport, evaluate, markdown_table, plot_reports, select_tasks,
                             summarize)
from rl_agent.jobs.expert_replay import ExpertSetConfig, ensure_expert_set
from rl_agent.jobs.run_records import (RunState, check_same_settings, evaluation_key, stage0_key,
                                       task_key)
from teleop.config import from_dict, load_yaml, to_dict

VARIANTS = ("irevla", "freeze", "sft_only", "ppo_replay")


@dataclass
class IterateConfig:
    variant: str = "irevla"
    sft_checkpoint: Optional[str] = None  # None: stage 0 trains one from vla_config on the expert set
    vla_config: str = "config/policy_towers.yaml"
    stage0: dict[str, Any] = field(default_factory=dict)  # policy.train.TrainConfig overrides
    stage2: dict[str, Any] = field(default_factory=lambda: {"steps": 300})
    # share of harvested RL data in stage-2 batches (the rest: expert data); unused with stage2 balance: task
    stage2_rl_weight: float = 0.5
    # with stage2 balance: task, the harvested sets' share of a batch (their tasks split it; the expert set's tasks
    # split the rest equally). None: every task, harvested or expert, the same share.
    stage2_rl_share: Optional[float] = None
    curriculum: list[str] = field(default_factory=lambda: ["pick_eggplant"])
    session_config: Optional[str] = "config/rl_session.yaml"
    session: dict[str, Any] = field(default_factory=dict)  # rl_agent.jobs.session.SessionConfig overrides
    ppo: dict[str, Any] = field(default_factory=dict)  # rl_agent.ppo.PPOConfig overrides (ppo_replay)
    replay_steps: int = 300  # ppo_replay: supervised expert replay after each task
    # Skip stage 2 for a task whose RL session harvested nothing: it would only re-fit the (possibly small) expert
    # replay set, which can cost the model what it knew (seen in the main job with 3 episodes per task).
    skip_stage2_without_harvest: bool = False
    # Label each harvested set's picks and places with where the hand closed on the object (teleop/object_labels.py
    # grasp labels): stage 2 then trains the object readout on the RL task's new object too. Off by default: on the
    # green can it moved the readout 4.1 -> 2.9 cm but not the pick (docs/results/rl_pick_stage1.md).
    stage2_grasp_labels: bool = False
    expert: ExpertSetConfig = field(default_factory=ExpertSetConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    evaluate_stage0: bool = True
    evaluate_each_task: bool = True  # false: only after the last curriculum task (long evaluations, Table I)
    stage1: str = "inprocess"  # inprocess | ros (the rl_session graph on the twin: processes over DDS)
    seed: int = 0  # the run's seed: the RL sessions', PPO's and stage 2's unless their own section names one
    # Task files the whole run uses (a path, or a shipped name: [metaworld]). With them the run stays on their
    # tasks: the expert set is their expert tasks, the evaluation their tasks, every cell reads them.
    task_files: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if not 0.0 <= self.stage2_rl_weight < 1.0:
            raise ValueError("stage2_rl_weight must be in [0, 1)")
        if self.stage2_rl_share is not None and not 0.0 < self.stage2_rl_share < 1.0:
            raise ValueError("stage2_rl_share must be in (0, 1) or null")
        if self.stage1 not in ("inprocess", "ros"):
            raise ValueError(f"stage1 must be inprocess or ros, got {self.stage1!r}")
        if self.stage1 == "ros" and self.task_files:
            raise ValueError("stage1: ros runs the twin's rl_session graph; tasks of other task files run in-process")

    def apply_task_files(self) -> None:
        """Hand `task_files` to every part of the run (expert collection, RL sessions, PPO, evaluation)."""
        if not self.task_files:
            return
        from sim_twin.tasks.registry import TaskRegistry
        files = list(self.task_files)
        self.expert.task_files = files
        self.evaluation.task_files = list(dict.fromkeys([*files, *self.evaluation.task_files]))
        if not self.evaluation.tasks:
            self.evaluation.tasks = list(TaskRegistry.load(extra_files=files, include_default=False).tasks)
        env = dict(self.session.get("env") or {})
        env["task_files"] = list(dict.fromkeys([*files, *env.get("task_files", [])]))
        self.session["env"] = env
        self.ppo = {**self.ppo, "task_files": files}


def _repo_path(p: str) -> Path:
    """Config paths are relative to the working directory, else shipped ones (installed share dir / source tree)."""
    from robot_server.config import resolve_config
    return resolve_config(p)


def _say(msg: str) -> None:
    print(f"[iterate {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _train(train_overrides: dict, init, datasets: list, mix: list[float], out: Path,
           backbone_training: Optional[str]) -> Path:
    from policy.train import TrainConfig, train_sft
    d = dict(train_overrides)
    if backbone_training is not None:
        d["backbone_training"] = backbone_training
    if mix:
        d["mix"] = mix
    cfg = TrainConfig.from_dict(d)
    return Path(train_sft(cfg, init, [str(x) for x in datasets], out, resume=True))


def stage0(cfg: IterateConfig, run_dir: Path, expert: Path, state: RunState) -> str:
    if cfg.sft_checkpoint:
        return cfg.sft_checkpoint
    want = stage0_key(_repo_path(cfg.vla_config).read_text(), cfg.stage0, expert)
    if state.get("stage0") and state.get("stage0_key") is None:
        state.set("stage0_key", "unrecorded")
    check_same_settings(state, "stage0_key", want, "stage 0", _say)
    if state.get("stage0"):
        return state.get("stage0")
    state.set("stage0_key", want)
    from policy.config import VLAConfig
    from policy.train import TrainConfig
    vla_yaml = _repo_path(cfg.vla_config)
    vcfg = VLAConfig.from_yaml(vla_yaml, "vla") if "vla:" in vla_yaml.read_text() else VLAConfig.from_yaml(vla_yaml)
    base = to_dict(TrainConfig.from_yaml(vla_yaml)) if "train:" in vla_yaml.read_text() else {}
    base.update(cfg.stage0)
    _say(f"stage 0: supervised on {expert} ({base.get('steps')} steps)")
    ckpt = _train(base, vcfg, [expert], [], run_dir / "stage0", None)
    state.set("stage0", str(ckpt))
    return str(ckpt)


def session_settings(cfg: IterateConfig, task: str) -> dict:
    """The stage-1 session's settings for `task`: the session file's `session:` section under the run's overrides."""
    from rl_agent.session_config import merge_sections, session_section
    base = merge_sections(session_section(_repo_path(cfg.session_config) if cfg.session_config else None),
                          cfg.session)
    base["task"] = task
    if "seed" not in cfg.session and cfg.seed:  # seed 0: the session file's (keys of earlier runs stay valid)
        base["seed"] = cfg.seed
    return base


def rl_settings(cfg: IterateConfig, task: str) -> dict:
    """The RL half of a curriculum task: PPO's settings, or the stage-1 session's and how it runs."""
    if cfg.variant == "ppo_replay":
        return {"ppo": {"seed": cfg.seed, **cfg.ppo} if cfg.seed else cfg.ppo,
                "demos": session_settings(cfg, task).get("demos")}
    return {"session": session_settings(cfg, task), "stage1": cfg.stage1}


def stage1(cfg: IterateConfig, run_dir: Path, ckpt: str, task: str) -> dict:
    from rl_agent.jobs.session import run_session
    from rl_agent.session_config import SessionConfig
    scfg = SessionConfig.from_dict(session_settings(cfg, task))
    out = run_dir / "tasks" / task / "rl"
    _say(f"stage 1: RL on {task} from {ckpt} (VLM frozen) -> {out}{' over ROS 2' if cfg.stage1 == 'ros' else ''}")
    if cfg.stage1 == "ros":
        from rl_agent.jobs.ros_stage1 import run_ros_session
        return run_ros_session(ckpt, scfg, out, log=_say)
    return run_session(scfg, ckpt, out)


def stage2(cfg: IterateConfig, run_dir: Path, ckpt: str, expert: Path, harvested: list[str], task: str) -> str:
    n_rl = len(harvested)
    mix = [1.0 - cfg.stage2_rl_weight] + [cfg.stage2_rl_weight / n_rl] * n_rl if n_rl else []
    if cfg.stage2.get("balance") == "task":  # every task its share, the RL task beside each expert task
        w = cfg.stage2_rl_share
        mix = [1.0 - w] + [w / n_rl] * n_rl if (n_rl and w is not None) else []
    mode = "frozen" if cfg.variant == "freeze" else "lora"
    if cfg.stage2_grasp_labels:
        from teleop.object_labels import label_grasps
        for h in harvested:
            _say(f"grasp labels of {h}: {label_grasps(h, task_files=tuple(cfg.task_files))}")
    _say(f"stage 2: supervised on expert + {n_rl} harvested set(s), VLM {mode}")
    return str(_train(stage2_settings(cfg), ckpt, [expert, *harvested], mix, run_dir / "tasks" / task / "stage2",
                      mode))


def stage2_settings(cfg: IterateConfig) -> dict:
    """policy.train.TrainConfig overrides of stage 2 (and of PPO-Replay's expert replay), seeded by the run."""
    return {"seed": cfg.seed, **cfg.stage2}


def evaluate_stage(cfg: IterateConfig, run_dir: Path, ckpt: str, label: str, state: RunState) -> EvalReport:
    """Evaluate (or reuse a finished evaluation whose key matches: same checkpoint content, tasks, instructions,
    seeds and render settings; a changed one is reported and re-evaluated, never silently reused)."""
    key = f"eval:{label}"
    out = run_dir / "eval" / label
    want = evaluation_key(ckpt, cfg.evaluation)
    have = state.get(key)
    if isinstance(have, dict) and have.get("key") == want and (out / "episodes.json").exists():
        return summarize(json.loads((out / "episodes.json").read_text()), label)
    if have:
        old = have.get("key", {}) if isinstance(have, dict) else {}
        changed = sorted(k for k in want if old.get(k) != want[k]) or ["(no key recorded)"]
        _say(f"evaluate {label}: the earlier evaluation differs in {', '.join(changed)}: evaluating again")
    _say(f"evaluate {label}: {ckpt}")
    report = evaluate(ckpt, cfg.evaluation, out, label)
    state.set(key, {"out": str(out), "key": want})
    return report


def _has_successes(path: Optional[str]) -> bool:
    if not path:
        return False
    from teleop.dataset import selected_entries
    try:
        return len(selected_entries(path)) > 0
    except Exception:
        return False


def run_iterate(cfg: IterateConfig, run_dir: Path) -> list[EvalReport]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.apply_task_files()
    (run_dir / "iterate_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    state = RunState(run_dir)
    expert = ensure_expert_set(cfg.expert, run_dir)
    ckpt = stage0(cfg, run_dir, expert, state)
    reports = []
    if cfg.evaluate_stage0 or cfg.variant == "sft_only":
        reports.append(evaluate_stage(cfg, run_dir, ckpt, "sft", state))
    if cfg.variant != "sft_only":
        harvested: list[str] = list(state.get("harvested") or [])
        for task in cfg.curriculum:
            done = state.get(f"task:{task}")
            if done and state.get(f"task_key:{task}") is None:
                state.set(f"task_key:{task}", "unrecorded")
            want = task_key(task, cfg.evaluation.task_files, ckpt, cfg.variant, rl_settings(cfg, task),
                            {"stage2": stage2_settings(cfg) if cfg.seed else cfg.stage2, "rl_weight": cfg.stage2_rl_weight,
                             **({"rl_share": cfg.stage2_rl_share} if cfg.stage2_rl_share is not None else {}),
                             "skip_without_harvest": cfg.skip_stage2_without_harvest, "replay_steps": cfg.replay_steps,
                             **({"grasp_labels": True} if cfg.stage2_grasp_labels else {})},
                            expert)
            check_same_settings(state, f"task_key:{task}", want, f"the curriculum task {task}", _say)
            state.set(f"task_key:{task}", state.get(f"task_key:{task}") or want)  # recorded before it starts
            if done:
                ckpt = done
            elif cfg.variant == "ppo_replay":
                from rl_agent.ppo import PPOConfig, run_ppo
                # the same demonstrations as the SAC session's (ppo.demos overrides; count 0: none)
                pcfg = from_dict(PPOConfig, {"demos": session_settings(cfg, task).get("demos", {}), "seed": cfg.seed,
                                             **cfg.ppo})
                _say(f"PPO on the whole VLA: {task}")
                res = run_ppo(ckpt, task, pcfg, run_dir / "tasks" / task / "ppo")
                _say("expert replay (supervised on the expert set)")
                ckpt = str(_train(dict(stage2_settings(cfg), steps=cfg.replay_steps), res["checkpoint"], [expert], [],
                                  run_dir / "tasks" / task / "replay", "lora"))
                state.set(f"task:{task}", ckpt)
            else:
                summary = stage1(cfg, run_dir, ckpt, task)
                state.set(f"rl:{task}", summary)
                h = summary.get("harvest_dir")
                new_data = _has_successes(h) and h not in harvested
                if new_data:
                    harvested.append(h)
                    state.set("harvested", harvested)
                if new_data or not cfg.skip_stage2_without_harvest:
                    ckpt = stage2(cfg, run_dir, ckpt, expert, harvested, task)
                else:
                    _say(f"stage 2 skipped: the RL session on {task} harvested no successful episode")
                state.set(f"task:{task}", ckpt)
            if cfg.evaluate_each_task or task == cfg.curriculum[-1]:
                reports.append(evaluate_stage(cfg, run_dir, ckpt, f"after_{task}", state))
    write_results(reports, run_dir, cfg)
    return reports


def write_results(reports: list[EvalReport], run_dir: Path, cfg: IterateConfig) -> None:
    if not reports:
        return
    md = [f"# irevla iterate ({cfg.variant})", "", "## Success per category", "",
          markdown_table(reports, "category"), "", "## Success per task", "", markdown_table(reports, "task"), ""]
    (run_dir / "results.md").write_text("\n".join(md))
    plot_reports(reports, run_dir / "success_by_category.png", "category")
    plot_reports(reports, run_dir / "success_by_task.png", "task")


def check_inputs(cfg: IterateConfig) -> None:
    """The files and task names a run will need, checked before it starts (a user's mistake: UsageError)."""
    from robot_server.usage import UsageError, require_checkpoint, require_file
    from sim_twin.tasks.registry import TaskRegistry
    if cfg.sft_checkpoint:
        require_checkpoint(cfg.sft_checkpoint)
    else:
        require_file(_repo_path(cfg.vla_config), "vla_config")
    if cfg.session_config and cfg.variant not in ("sft_only", "ppo_replay"):
        require_file(_repo_path(cfg.session_config), "session_config")
    registry = TaskRegistry.load(extra_files=cfg.evaluation.task_files)
    unknown = [t for t in cfg.curriculum if t not in registry.tasks]
    if unknown:
        raise UsageError(f"unknown curriculum task(s) {unknown}; known: {sorted(registry.tasks)}")
    select_tasks(cfg.evaluation)  # unknown evaluation tasks / categories


def load_run_config(cls, path: Optional[str], default: str):
    """The run's typed config `cls`: an explicit --config must exist; the default one is optional (built-in
    defaults)."""
    from robot_server.usage import require_file
    if path:
        return load_yaml(cls, require_file(_repo_path(path), "--config"))
    found = _repo_path(default)
    return load_yaml(cls, found) if found.exists() else cls()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="irevla iterate", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="IterateConfig YAML (default config/iterate.yaml)")
    p.add_argument("--out", help="run directory, required (created; an existing one is resumed)")
    p.add_argument("--variant", choices=VARIANTS)
    p.add_argument("--checkpoint", help="skip stage 0: start from this VLA checkpoint")
    p.add_argument("--tasks", nargs="+", help="curriculum (RL-category tasks)")
    p.add_argument("--rl-minutes", type=float, help="RL session budget per task")
    p.add_argument("--stage1", choices=("inprocess", "ros"),
                   help="stage 1 in-process, or over the ROS 2 rl_session graph")
    p.add_argument("--skip-stage0-eval", action="store_true",
                   help="do not evaluate the starting model (another run of the same checkpoint and seeds has it)")
    p.add_argument("--seeds", help="evaluation seeds ('0-19' or a count)")
    p.add_argument("--seed", type=int, help="the run's seed (RL sessions, PPO, stage 2); evaluation seeds stay")
    from robot_server.usage import add_hidden_alias
    add_hidden_alias(p, "--run-dir", "--out", dest="out")  # the spellings before all commands shared --out
    add_hidden_alias(p, "--sft-checkpoint", "--checkpoint", dest="checkpoint")
    args = p.parse_args(argv)
    if not args.out:
        p.error("the following arguments are required: --out")
    cfg = load_run_config(IterateConfig, args.config, "config/iterate.yaml")
    if args.variant:
        cfg.variant = args.variant
    if args.checkpoint:
        cfg.sft_checkpoint = args.checkpoint
    if args.tasks:
        cfg.curriculum = args.tasks
    if args.rl_minutes is not None:
        cfg.session["minutes"] = args.rl_minutes
    if args.stage1:
        cfg.stage1 = args.stage1
        cfg.__post_init__()
    if args.skip_stage0_eval:
        cfg.evaluate_stage0 = False
    if args.seed is not None:
        cfg.seed = args.seed
    if args.seeds:
        from policy.evaluate import parse_seeds
        cfg.evaluation.seeds = parse_seeds(args.seeds)
    cfg.apply_task_files()
    check_inputs(cfg)
    reports = run_iterate(cfg, Path(args.out))
    print(markdown_table(reports, "category"))
    print(f"results: {Path(args.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("iterate", main))  # user errors as one line, as under `irevla`
