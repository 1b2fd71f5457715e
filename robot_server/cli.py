"""`irevla <command> ...`: one entry point; each package contributes its commands through the entry point group
`irevla.commands` (name = module:function taking argv), so this dispatcher imports nothing above robot_server.

What every command gets from here: a working MuJoCo GL backend before it imports mujoco (for the commands that
render), and a user's mistake (missing file, unknown task, bad config key: see `user_errors`) reported as one line
`irevla CMD: error: ...` with exit status 2 instead of a traceback (IREVLA_DEBUG=1 shows the traceback).
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

GROUP = "irevla.commands"

# name: (one line for `irevla --help`, whether it renders with MuJoCo). Static, so that help imports no command
# module (some import torch or jax at the top); tests/test_cli.py checks it covers every entry point.
COMMANDS: dict[str, tuple[str, bool]] = {
    "demo": ("the main job on the twin: language command over ROS 2, RL session, stage 2, before/after table", True),
    "scripted-demo": ("a scripted pick or place on the twin, commanded over ROS 2 through the robot server", True),
    "experts": ("success rate of every task's scripted expert through the safety layer (no rendering)", False),
    "launch": ("start one of the ROS 2 graphs of launch/graphs.yaml without ros2 launch", True),
    "collect": ("record a scripted expert set on the twin in the episode format", True),
    "train": ("supervised training of the VLA: stage 0 on the expert set, stage 2 on expert + RL data", False),
    "features": ("cache the frozen vision tower's features of datasets ahead of training", False),
    "command": ("command the running policy server by language (ROS 2 action), showing its feedback", False),
    "evaluate": ("success per task and category of a VLA checkpoint on the twin: tables, plot, videos", True),
    "rl-session": ("one online RL session on one task (stage 1, VLM frozen), resumable", True),
    "iterate": ("Algorithm 1 of iRe-VLA: stage 0, then RL + stage 2 per curriculum task, resumable", True),
    "dataset": ("inspect recorded datasets: validate, stats, view, reindex, cache, label-objects, label-grasps", False),
    "join": ("run a command inside a running graph's network namespace and ROS domain (second terminal)", False),
    "train-classifier": ("train a success classifier (reward source) from marked episodes, on the VLA's latents", False),
}
# Commands that talk to a running graph: they join the one `irevla launch` started (robot_server/isolation.py).
JOINS_RUNNING_GRAPH = {"command"}

# Errors that mean "the input was wrong", by module:class; a class counts only once its module is loaded (it raised,
# so it is), which keeps this module free of heavy imports (sim_twin.tasks.registry imports mujoco).
_USER_ERROR_CLASSES = (
    "robot_server.usage:UsageError",
    "robot_server.typed_config:ConfigError",
    "sim_twin.tasks.registry:RegistryError",
    "sim_twin.seeds:SeedRangeError",
    "policy.data:DataError",
    "yaml:YAMLError",
)


def user_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [FileNotFoundError, NotADirectoryError, IsADirectoryError]
    for spec in _USER_ERROR_CLASSES:
        module, cls = spec.split(":")
        if module in sys.modules and isinstance(getattr(sys.modules[module], cls, None), type):
            found.append(getattr(sys.modules[module], cls))
    return tuple(found)


def _commands() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def help_text(names) -> str:
    width = max(len(n) for n in names) if names else 0
    lines = ["usage: irevla <command> [options]", "", "commands:"]
    for name in sorted(names):
        lines.append(f"  {name:<{width}}  {COMMANDS.get(name, ('(no description)', False))[0]}")
    lines += ["", "`irevla <command> --help` for a command's options."]
    return "\n".join(lines)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # YAML and registry errors span lines
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmds = _commands()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text(cmds))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in cmds:
        print(f"irevla: unknown command {name!r}; known: {', '.join(sorted(cmds))}", file=sys.stderr)
        return 2
    if COMMANDS.get(name, ("", False))[1] and not {"-h", "--help"} & set(rest):  # help renders nothing
        from robot_server.mujoco_gl import ensure_mujoco_gl
        ensure_mujoco_gl()
    if name in JOINS_RUNNING_GRAPH and not {"-h", "--help"} & set(rest):
        from robot_server.isolation import JoinError, join_for_command
        try:  # may re-execute this command inside the graph's namespace
            join_for_command(name, [sys.executable, "-m", "robot_server.cli", *argv])
        except JoinError as e:
            print(f"irevla {name}: error: {e}", file=sys.stderr)
            return 2
    return run_command(name, lambda: cmds[name].load()(rest))


def run_command(name: str, run) -> int:
    """`run()` (a command's main), with a user error printed as one line and exit status 2. Also for a command
    module run as `python -m` (e.g. torchrun -m policy.train_cli)."""
    try:
        return int(run() or 0)
    except Exception as exc:  # noqa: BLE001 - only user errors are turned into a message; the rest re-raise
        if not isinstance(exc, user_errors()) or os.environ.get("IREVLA_DEBUG"):
            raise
        print(f"irevla {name}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
