"""`irevla demo`: the main job on the twin with the embedded default model, start to finish.

1. Commands a task by language over ROS 2: the sim cell and the policy server run as their own processes (the
   `language_commanding` launch graph), `irevla command "<instruction>"` sends the goal and prints its feedback.
2. Collects a small scripted expert set (for stage 2's replay), evaluates the default (SFT) model per category.
3. Stage 1: an RL session on an RL-category task (SACfD on cached latents, VLM frozen).
4. Stage 2: supervised on expert + harvested RL data (LoRA + head), then evaluates again.
5. Prints the before/after success table and writes plots, under --out.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rl_agent.jobs.iterate import IterateConfig, check_inputs, load_run_config, run_iterate


@dataclass
class CommandDemoConfig:
    enabled: bool = True
    instruction: str = "pick up the red block"
    task: str = "pick_red_block"
    seed: int = 3
    timeout_s: float = 25.0


@dataclass
class MainJobConfig:
    checkpoint: Optional[str] = None  # None: the embedded default model (policy/default_model)
    command: CommandDemoConfig = field(default_factory=CommandDemoConfig)
    iterate: IterateConfig = field(default_factory=IterateConfig)


def default_model_dir() -> Path:
    import policy
    d = Path(policy.__file__).resolve().parent / "default_model"
    if not (d / "vla_config.yaml").is_file():
        raise FileNotFoundError(f"the embedded default model is missing at {d} (see scripts/train_default_model.sh)")
    return d


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def command_by_language(ckpt: str, cfg: CommandDemoConfig, log_dir: Path) -> int:
    """Start the language_commanding graph, send one instruction with `irevla command`, stop the graph."""
    exe = Path(sys.executable).parent / "irevla"
    irevla = [str(exe)] if exe.exists() else [sys.executable, "-m", "robot_server.cli"]
    log_dir.mkdir(parents=True, exist_ok=True)
    graph_log = open(log_dir / "language_commanding.log", "w")
    _say(f"ROS 2: starting the sim cell + policy server ({ckpt})")
    graph = subprocess.Popen(irevla + ["launch", "language_commanding", f"checkpoint:={ckpt}", f"task:={cfg.task}",
                                       f"seed:={cfg.seed}"], stdout=graph_log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        _say(f'ROS 2: irevla command "{cfg.instruction}"')
        rc = subprocess.call(irevla + ["command", cfg.instruction, "--timeout", str(cfg.timeout_s),
                                       "--task", cfg.task, "--server-timeout", "60"],
                             env={**os.environ, "IREVLA_JOIN": str(graph.pid)})  # this graph, not a user's own
        _say(f"command finished with exit code {rc} ({'success' if rc == 0 else 'not a success'})")
        return rc
    finally:
        if graph.poll() is None:
            os.killpg(graph.pid, signal.SIGINT)
            try:
                graph.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(graph.pid, signal.SIGKILL)
                graph.wait()
        graph_log.close()


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="irevla demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="MainJobConfig YAML (default config/main_job.yaml)")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; an existing one is resumed)")
    p.add_argument("--checkpoint", help="start from this VLA checkpoint instead of the embedded default model")
    p.add_argument("--rl-minutes", type=float, help="RL session budget")
    p.add_argument("--seeds", help="evaluation seeds per task ('0-9' or a count)")
    p.add_argument("--seed", type=int, help="the run's seed (RL session, stage 2); the evaluation seeds stay the same")
    p.add_argument("--skip-stage0-eval", action="store_true",
                   help="do not evaluate the starting model (another run of the same model and seeds has it)")
    p.add_argument("--skip-command", action="store_true", help="skip the ROS 2 language-command step")
    from robot_server.usage import add_hidden_alias
    add_hidden_alias(p, "--run-dir", "--out", dest="out")  # the spelling before all commands shared --out
    args = p.parse_args(argv)

    # Everything the user named is checked here, before the re-exec into a network namespace and hours of work.
    cfg = load_run_config(MainJobConfig, args.config, "config/main_job.yaml")
    ckpt = args.checkpoint or cfg.checkpoint or str(default_model_dir())
    it = cfg.iterate
    it.sft_checkpoint = ckpt
    if args.rl_minutes is not None:
        it.session["minutes"] = args.rl_minutes
    if args.seed is not None:
        it.seed = args.seed
    if args.skip_stage0_eval:
        it.evaluate_stage0 = False
    if args.seeds:
        from policy.evaluate import parse_seeds
        it.evaluation.seeds = parse_seeds(args.seeds)
    check_inputs(it)

    from robot_server.isolation import ensure_local_ros
    ensure_local_ros()
    t0 = time.perf_counter()
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    _say(f"main job: model {ckpt}; run directory {run_dir}")
    if cfg.command.enabled and not args.skip_command:
        command_by_language(ckpt, cfg.command, run_dir / "logs")
    reports = run_iterate(it, run_dir)
    from policy.evaluate import markdown_table
    print()
    print(markdown_table(reports, "category"))
    print()
    print(markdown_table(reports, "task"))
    print(f"\nresults: {run_dir / 'results.md'}; plots: {run_dir / 'success_by_category.png'}, "
          f"{run_dir / 'success_by_task.png'}; total {(time.perf_counter() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("demo", main))  # user errors as one line, as under `irevla`
