"""The operator console of a real-robot RL session, driven through a pseudo-terminal exactly as a person's terminal
(or `ssh -t`) drives it: keys mark success / failure, say the scene is reset, pause and resume; the status line and
the prompts are what the terminal shows."""
from __future__ import annotations

import os
import pty
import threading
import time
from pathlib import Path

import pytest

from rl_agent.operator_console import HELP, OperatorConsole, SessionStatus, open_console, status_line
from teleop.devices import KeyboardDevice
from teleop.operator import TerminalView


@pytest.fixture
def terminal():
    master, slave = pty.openpty()
    out = os.fdopen(os.dup(slave), "w")
    yield master, slave, out
    out.close()
    os.close(master)
    os.close(slave)


def _screen(master) -> str:
    import select
    text = b""
    while select.select([master], [], [], 0.2)[0]:
        text += os.read(master, 65536)
    return text.decode(errors="replace")


def test_keys_through_a_pty(terminal):
    master, slave, out = terminal
    marks, starts = [], threading.Event()
    status = SessionStatus(episode=3, successes=1, finished=2, demos=20, transitions=150, params_version=4,
                           time_left_s=3599)
    console = OperatorConsole(KeyboardDevice(fd=slave).open(), TerminalView(out), marks.append, starts.set,
                              lambda: status)
    console.start()
    try:
        os.write(master, b"s")
        deadline = time.monotonic() + 5
        while not marks and time.monotonic() < deadline:
            time.sleep(0.02)
        os.write(master, b"F")  # case does not matter
        os.write(master, b"\r")  # enter: the scene is reset
        assert starts.wait(5)
        while len(marks) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marks == [True, False]
        os.write(master, b"p")
        stop = threading.Event()
        while not console.paused and time.monotonic() < deadline:
            time.sleep(0.02)
        waited = []
        t = threading.Thread(target=lambda: (console.wait_if_paused(stop), waited.append(time.monotonic())))
        t0 = time.monotonic()
        t.start()
        time.sleep(0.4)
        assert not waited  # paused: the actor waits
        os.write(master, b"p")
        t.join(5)
        assert waited and waited[0] - t0 >= 0.35 and not console.paused
        os.write(master, b"x")  # unbound: nothing happens
        time.sleep(0.2)
    finally:
        console.close()
    assert console.handled == ["success", "failure", "start", "pause", "pause"]
    screen = _screen(master)
    assert HELP in screen and "operator: success" in screen and "operator: paused" in screen
    assert "episode 3 | success 1/2 (50 %) | demos 20 | sent 150 transitions | params v4 | 59:59 left" in screen


def test_status_line_says_what_the_operator_must_do():
    s = SessionStatus(episode=1, waiting_for_reset=True, learner_alive=False)
    assert status_line(s, paused=False).endswith("learner silent | reset the scene, then [r]")
    assert status_line(s, paused=True).endswith("PAUSED [p] resumes")


def test_console_needs_a_terminal_only_when_asked(tmp_path, monkeypatch):
    import sys
    r, w = os.pipe()  # stdin that is not a terminal (a service, a CI job)
    monkeypatch.setattr(sys, "stdin", os.fdopen(r))
    try:
        said = []
        assert open_console("auto", "robot", "", print, print, SessionStatus, said.append) is None
        assert "services" in said[0]
        assert open_console("auto", "twin", "", print, print, SessionStatus) is None
        with pytest.raises(Exception, match="TTY"):
            open_console("on", "robot", "", print, print, SessionStatus)
        with pytest.raises(ValueError, match="auto, on or off"):
            open_console("maybe", "robot", "", print, print, SessionStatus)
    finally:
        os.close(w)


class _ScriptedSpaceMouse:
    """The SpaceMouse at its lowest layer (the device read): a person pressing buttons, one sample per read."""

    def __init__(self, samples):
        self.samples = list(samples)

    def open(self):
        return self

    def read(self):
        from teleop.devices import SpaceMouseSample
        return self.samples.pop(0) if self.samples else SpaceMouseSample(time.monotonic())

    def close(self):
        pass


def test_spacemouse_buttons_start_pause_and_mark_without_a_terminal(tmp_path, monkeypatch):
    """A SpaceMouse with the shipped config/teleop_rl_spacemouse.yaml (buttons: close, open, success, failure, start,
    pause):
    between episodes its start button says the scene is reset; during an episode its pause button pauses through
    the same console as the [p] key, and its success button reaches the operator reward with the step."""
    import sys

    import numpy as np

    from rl_agent.interventions import InterventionConfig, make_interventions
    from rl_agent.rewards import OperatorReward
    from teleop.controller import TeleopConfig
    from teleop.devices import SpaceMouseSample
    teleop = TeleopConfig.from_yaml(Path(__file__).resolve().parents[1] / "config" / "teleop_rl_spacemouse.yaml")
    assert teleop.spacemouse.buttons[2:] == ("event:success", "event:failure", "event:start", "event:pause")

    def press(i):  # button i down for one sample, then up
        down = [0] * 6
        down[i] = 1
        return [SpaceMouseSample(0.0, buttons=tuple(down)), SpaceMouseSample(0.0, buttons=(0,) * 6)]

    device = _ScriptedSpaceMouse(press(4) + press(5) + press(2) + [SpaceMouseSample(0.0, x=0.5)] + press(5))
    iv = make_interventions(InterventionConfig(enabled=True, teleop=teleop), device=device).open()
    r, w = os.pipe()  # no terminal: a console of buttons only, its lines in the log
    monkeypatch.setattr(sys, "stdin", os.fdopen(r))
    said, starts, marks = [], [], []
    try:
        console = open_console("auto", "robot", "spacemouse", marks.append, lambda: starts.append(1), SessionStatus,
                               said.append)
    finally:
        os.close(w)
    assert console is not None and console.keyboard is None and "SpaceMouse buttons" in said[0]
    iv.on_events = console.handle_events
    try:
        console.handle_events(iv.poll_events())  # between episodes: the start button
        assert starts == [1]
        console.handle_events(iv.poll_events())  # button up
        iv.reset()
        reward = OperatorReward()
        a, took, events = iv.filter(np.zeros(7, np.float32))  # the pause button during a step
        assert console.paused and "operator: paused (the arm holds; [p] resumes)" in said
        iv.filter(np.zeros(7, np.float32))
        a, took, events = iv.filter(np.zeros(7, np.float32))  # the success button: to the reward, not the console
        assert events == ("success",) and marks == []
        verdict = reward({}, {}, events)
        assert verdict.success and verdict.end
        iv.filter(np.zeros(7, np.float32))
        a, took, _ = iv.filter(np.zeros(7, np.float32))  # motion: the operator takes over
        assert took and np.abs(a[:6]).max() > 0.3
        iv.filter(np.zeros(7, np.float32))  # the pause button again: resumed
        assert not console.paused and "operator: resumed" in said
    finally:
        console.close()
        iv.close()
