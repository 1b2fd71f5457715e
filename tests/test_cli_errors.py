"""A user's mistake on any `irevla` command (missing checkpoint or config, unknown task, bad YAML key) ends with one
line on stderr and exit status 2, never a traceback, and fails fast: before any model loads or process starts.

Each case runs the real dispatcher in its own process, as a user would (`python -m robot_server.cli CMD ...`).
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "policy" / "default_model"


def _cases() -> dict[str, list[tuple[str, list[str]]]]:
    """command -> [(what is wrong, argv after the command)]; paths are under {tmp} (the test's tmp_path)."""
    missing = "{tmp}/missing"
    return {
        "demo": [("missing checkpoint", ["--checkpoint", missing, "--out", "{tmp}/demo"]),
                 ("missing config", ["--config", missing + ".yaml", "--out", "{tmp}/demo"])],
        "scripted-demo": [("unknown task", ["--task", "no_such_task"]),
                          ("task it cannot drive", ["--task", "route_cable"])],
        "experts": [("unknown task", ["--tasks", "no_such_task", "--episodes", "1"])],
        "launch": [("unknown launch argument", ["sim_cell", "no_such_argument:=1"])],
        "collect": [("unknown task", ["--out", "{tmp}/c", "--episodes-per-task", "1", "--tasks", "no_such_task"])],
        "train": [("missing config", ["--config", missing + ".yaml", "--data", "{tmp}", "--out", "{tmp}/t"]),
                  ("missing dataset", ["--data", missing, "--out", "{tmp}/t"]),
                  ("missing checkpoint", ["--checkpoint", missing, "--data", "{tmp}", "--out", "{tmp}/t"])],
        "features": [("missing checkpoint", ["--checkpoint", missing, "--data", "{tmp}"])],
        "command": [("negative timeout", ["pick up the red block", "--timeout", "-1"])],
        "join": [("no running graph", ["--", "true"])],
        "train-classifier": [("missing checkpoint", ["--checkpoint", missing, "--data", "{tmp}",
                                                     "--out", "{tmp}/c.msgpack"])],
        "evaluate": [("missing checkpoint", ["--checkpoint", missing, "--out", "{tmp}/e"]),
                     ("unknown task", ["--checkpoint", str(DEFAULT_MODEL), "--tasks", "no_such_task",
                                       "--out", "{tmp}/e"]),
                     ("bad YAML key", ["--checkpoint", str(DEFAULT_MODEL), "--config", "{tmp}/bad_key.yaml",
                                       "--out", "{tmp}/e"])],
        "rl-session": [("missing checkpoint", ["--checkpoint", missing, "--out", "{tmp}/r"]),
                       ("unknown task", ["--checkpoint", str(DEFAULT_MODEL), "--task", "no_such_task",
                                         "--out", "{tmp}/r"])],
        "iterate": [("unknown curriculum task", ["--out", "{tmp}/i", "--tasks", "no_such_task"]),
                    ("bad YAML key", ["--out", "{tmp}/i", "--config", "{tmp}/bad_key.yaml"])],
        "dataset": [("missing dataset", ["stats", missing])],
    }


CASES = _cases()


def _installed_commands() -> set[str]:
    return {e.name for e in importlib.metadata.entry_points(group="irevla.commands")}


def _env() -> dict[str, str]:
    return dict(os.environ, MUJOCO_GL="egl", HF_HUB_OFFLINE="1", ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                ROS_DOMAIN_ID=os.environ.get("ROS_DOMAIN_ID", str(os.getpid() % 100 + 1)), IREVLA_NO_NETNS="1")


def run_irevla(args: list[str], timeout: float = 60.0) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "robot_server.cli", *args], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t0


def test_every_command_has_a_bad_argument_case():
    assert set(CASES) == _installed_commands(), "add a case for each new `irevla` command"


@pytest.mark.parametrize("command,what,argv", [(c, w, a) for c, cases in CASES.items() for w, a in cases],
                         ids=[f"{c}-{w.replace(' ', '_')}" for c, cases in CASES.items() for w, _ in cases])
def test_user_mistake_gives_one_line_and_exit_2(command, what, argv, tmp_path):
    (tmp_path / "bad_key.yaml").write_text("no_such_key: 1\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out, seconds = run_irevla([command, *args])
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, f"{what}: exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"irevla {command}"), out.stderr
    assert seconds < 30, f"{what}: took {seconds:.0f} s to fail (should fail before loading anything)"
    assert not (tmp_path / "e").exists() and not (tmp_path / "i").exists(), "failed after starting work"


def test_unknown_command_is_one_line_and_exit_2():
    out, _ = run_irevla(["no-such-command"])
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "unknown command 'no-such-command'" in out.stderr


def test_only_user_errors_become_one_line(capsys, monkeypatch):
    """The dispatcher's wrapper: a user error -> one line, exit 2; anything else (a bug) keeps its traceback, and
    IREVLA_DEBUG=1 shows the traceback of a user error too."""
    from robot_server.cli import run_command
    from robot_server.usage import UsageError

    def user_mistake():
        raise UsageError("checkpoint x does not exist")

    assert run_command("evaluate", user_mistake) == 2
    assert capsys.readouterr().err == "irevla evaluate: error: checkpoint x does not exist\n"
    with pytest.raises(ZeroDivisionError):
        run_command("evaluate", lambda: 1 / 0)
    with pytest.raises(KeyError):  # a KeyError is a bug here, not a user's mistake
        run_command("evaluate", lambda: {}["k"])
    monkeypatch.setenv("IREVLA_DEBUG", "1")
    with pytest.raises(UsageError):
        run_command("evaluate", user_mistake)
