"""The `irevla` command line as a whole: every command listed with a one-line description (without importing the
command modules), `irevla dataset` and its deprecated `irevla-dataset` spelling, and one spelling per option across
commands (old spellings still accepted, hidden from --help)."""
from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from robot_server.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, MUJOCO_GL="egl", HF_HUB_OFFLINE="1", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
           ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1)), IREVLA_NO_NETNS="1")


def _setup_py_commands() -> set[str]:
    text = (ROOT / "setup.py").read_text()
    block = text[text.index("'irevla.commands'"):]
    return set(re.findall(r"'([a-z-]+) = [\w.]+:\w+'", block[:block.index("]")]))


def irevla(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robot_server.cli", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def test_every_command_has_a_one_line_description():
    declared = _setup_py_commands()
    installed = {e.name for e in importlib.metadata.entry_points(group="irevla.commands")}
    assert "dataset" in declared
    assert installed == declared, "installed irevla.commands are stale: run scripts/setup.sh"
    assert set(COMMANDS) == declared, "robot_server.cli.COMMANDS must describe exactly the setup.py commands"
    for name, (line, _) in COMMANDS.items():
        assert line and "\n" not in line and len(line) <= 100, name


@pytest.mark.parametrize("args", [["--help"], []], ids=["--help", "no-args"])
def test_help_lists_each_command_with_its_description(args):
    out = irevla(*args)
    assert out.returncode == 0, out.stderr
    for name, (line, _) in COMMANDS.items():
        assert re.search(rf"^  {re.escape(name)} +{re.escape(line)}$", out.stdout, re.M), name


def test_help_imports_no_command_module():
    code = ("import sys; from robot_server.cli import main; main(['--help']); "
            "heavy = [m for m in ('torch', 'jax', 'mujoco', 'policy', 'rl_agent', 'teleop') if m in sys.modules]; "
            "assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_dataset_is_a_subcommand_and_the_old_script_still_works(tmp_path):
    out = irevla("dataset", "--help")
    assert out.returncode == 0 and "usage: irevla dataset" in out.stdout, out.stderr
    assert "label-objects" in out.stdout
    old = Path(sys.executable).parent / "irevla-dataset"
    assert old.is_file(), "irevla-dataset not installed: run scripts/setup.sh"
    dataset = tmp_path / "empty"
    dataset.mkdir()
    res = subprocess.run([str(old), "reindex", str(dataset)], env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "0 episodes" in res.stdout and "deprecated, use `irevla dataset`" in res.stderr


# (command, canonical option, old spelling): the old one must still parse to the same setting and stay out of --help.
RENAMED = [
    ("demo", "--out", "--run-dir"),
    ("iterate", "--out", "--run-dir"),
    ("iterate", "--checkpoint", "--sft-checkpoint"),
    ("experts", "--seed", "--seed0"),
    ("train", "--checkpoint", "--init"),
]


@pytest.mark.parametrize("command,canonical,old", RENAMED, ids=[f"{c}{o}" for c, _, o in RENAMED])
def test_one_spelling_in_help_old_spelling_hidden(command, canonical, old):
    out = irevla(command, "--help")
    assert out.returncode == 0, out.stderr
    assert re.search(rf"(^|\s){re.escape(canonical)}\b", out.stdout), out.stdout
    assert old not in out.stdout


def test_dataset_validate_says_workers_like_every_command():
    out = irevla("dataset", "validate", "--help")
    assert out.returncode == 0 and "--workers" in out.stdout and "--jobs" not in out.stdout, out.stdout


@pytest.mark.parametrize("argv", [
    # The old spelling reaches the same check as the new one: proof it sets the same option.
    ["train", "--init", "{tmp}/missing", "--data", "{tmp}", "--out", "{tmp}/t"],
    ["iterate", "--run-dir", "{tmp}/i", "--sft-checkpoint", "{tmp}/missing"],
    ["demo", "--run-dir", "{tmp}/d", "--checkpoint", "{tmp}/missing"],
], ids=["train--init", "iterate--run-dir--sft-checkpoint", "demo--run-dir"])
def test_old_spellings_still_work_with_a_warning(argv, tmp_path):
    out = irevla(*[a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert out.returncode == 2, out.stderr
    assert f"checkpoint {tmp_path}/missing does not exist" in out.stderr
    assert "is deprecated; use" in out.stderr and "Traceback" not in out.stderr


def test_same_option_same_meaning_across_commands():
    """Across every command's --help: an output directory is --out, a starting VLA checkpoint --checkpoint, a first
    scene seed --seed, a process count --workers (none of the older spellings is offered)."""
    offered = {}
    for name in COMMANDS:
        if name in ("command", "launch"):  # no such options (a ROS action client; graph arguments)
            continue
        out = irevla(name, "--help")
        assert out.returncode == 0, (name, out.stderr)
        offered[name] = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.stdout))
    for name, options in offered.items():
        assert not options & {"--run-dir", "--output-dir", "--seed0", "--init", "--sft-checkpoint", "--jobs"}, name
    for name in ("collect", "train", "evaluate", "rl-session", "iterate", "demo"):
        assert "--out" in offered[name], name
    for name in ("demo", "evaluate", "rl-session", "iterate", "train", "features"):
        assert "--checkpoint" in offered[name], name
