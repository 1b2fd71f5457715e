"""`irevla rl-session`: one per-task online RL session (stage 1 of iRe-VLA) on the twin, in-process.

    irevla rl-session --checkpoint runs/stage0 --task pick_eggplant --minutes 60 --out runs/rl_eggplant

Collects 20 zero-shot demos with the VLA (--demo-source vla|expert|mixed), trains SACfD in the latent space of the
frozen VLM for the budget, harvests the successful episodes into <out>/harvest (expert-set format), writes the RL
head back into <out>/rl_head_ckpt and <out>/summary.json (success before/after). Rerun the same command after a
crash or kill: it resumes from <out>/checkpoints. Settings: config/rl_session.yaml (--config); flags override it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

DEFAULT_CONFIG = "config/rl_session.yaml"  # resolved through robot_server.config (share dir, else source tree)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="irevla rl-session", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--checkpoint", required=True, help="stage-0 VLA checkpoint directory (policy.model.VLA.save)")
    ap.add_argument("--task", help="task name in the twin's registry (default: the config's)")
    ap.add_argument("--out", required=True, help="run directory (created; an existing one is resumed)")
    ap.add_argument("--config", default=DEFAULT_CONFIG, help=f"session YAML (default {DEFAULT_CONFIG})")
    ap.add_argument("--minutes", type=float, help="wall-clock budget of the training phase")
    ap.add_argument("--episodes", type=int, help="training episodes budget (whichever ends first)")
    ap.add_argument("--steps", type=int, help="online env steps budget")
    ap.add_argument("--demo-source", choices=("vla", "expert", "mixed"), help="where the demos come from")
    ap.add_argument("--demos", type=int, help="successful demos wanted (default 20)")
    ap.add_argument("--utd", type=float, help="updates per env step (update-to-data ratio)")
    ap.add_argument("--eval-episodes", type=int, help="deterministic evaluation episodes before and after")
    ap.add_argument("--task-file", action="append", default=[], help="extra task registry YAML (repeatable)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--reward", choices=("twin", "classifier", "operator"), help="success source")
    ap.add_argument("--classifier", help="SuccessClassifier path (with --reward classifier)")
    ap.add_argument("--checkpoint-every", type=int, help="checkpoint after this many new transitions")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm line")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="any other session setting, e.g. --set sac.bc_weight=0 (value read as YAML; repeatable)")
    return ap


def config_from_args(args) -> "SessionConfig":
    from rl_agent.session_config import SessionConfig, session_section
    data = session_section(args.config)
    if args.task:
        data["task"] = args.task
    if args.seed is not None:
        data["seed"] = args.seed
    if any(v is not None for v in (args.minutes, args.episodes, args.steps)):
        data["minutes"], data["max_episodes"], data["max_env_steps"] = args.minutes, args.episodes, args.steps
    for section, key, value in (("demos", "source", args.demo_source), ("demos", "count", args.demos),
                                ("train", "updates_per_step", args.utd), ("eval", "episodes", args.eval_episodes),
                                ("reward", "source", args.reward), ("reward", "classifier_path", args.classifier),
                                ("checkpoint", "every_transitions", args.checkpoint_every)):
        if value is not None:
            data.setdefault(section, {})[key] = value
    if args.task_file:
        data.setdefault("env", {})["task_files"] = list(data.get("env", {}).get("task_files", [])) + args.task_file
    if args.no_progress:
        data.setdefault("log", {})["progress"] = False
    for item in args.set:
        apply_setting(data, item)
    return SessionConfig.from_dict(data)


def apply_setting(data: dict, item: str) -> None:
    """`section.key=value` (or `key=value`) into the session dict; the value is read as YAML (numbers, lists)."""
    import yaml
    path, sep, text = item.partition("=")
    keys = [k for k in path.strip().split(".") if k]
    if not sep or not keys:
        raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. sac.bc_weight=0")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {item!r}: {k!r} is not a section")
    node[keys[-1]] = yaml.safe_load(text)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from robot_server.config import resolve_config
    from robot_server.usage import require_checkpoint, require_file
    from teleop.config import ConfigError
    require_checkpoint(args.checkpoint)  # train one with `irevla train` (stage 0) first
    if args.config:
        args.config = str(require_file(resolve_config(args.config), "--config"))
    try:
        cfg = config_from_args(args)
    except (ConfigError, ValueError, OSError) as exc:
        print(f"irevla rl-session: bad configuration: {exc}", file=sys.stderr)
        return 2
    from sim_twin.tasks.registry import RegistryError, TaskRegistry
    try:
        TaskRegistry.load(cfg.env.task_files).get(cfg.task)
    except RegistryError as exc:
        print(f"irevla rl-session: {exc}", file=sys.stderr)
        return 2
    from rl_agent.jobs.session import Session
    try:
        summary = Session(cfg, args.checkpoint, args.out).run()
    except KeyboardInterrupt:
        print(f"irevla rl-session: interrupted; rerun the same command to resume from {args.out}/checkpoints",
              file=sys.stderr)
        return 130
    ev = summary.get("eval", {})

    def rate(k):
        r = ev.get(k, {}).get("success_rate")
        return "-" if r is None else f"{r:.2f}"
    print(json.dumps({"task": summary["task"], "episodes": summary["episodes"], "env_steps": summary["env_steps"],
                      "updates": summary["updates"], "success_before": rate("before"), "success_after": rate("after"),
                      "success_after_handback": rate("after_handback"), "harvested": summary["harvested"],
                      "summary": str(Path(args.out) / "summary.json")}))
    return 0


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("rl-session", main))  # user errors as one line, as under `irevla`
