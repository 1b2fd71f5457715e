"""The operator's console of a real-robot RL session: keys in the actor's terminal (works over `ssh -t`), a prompt
when the scene needs a person, and one status line redrawn in place.

    [s] success   [f] failure   [r] / [enter] scene is reset: start   [p] pause / resume   [h] help

Keys do what the ROS services /irevla/rl/mark_success, mark_failure and start_episode do (both stay available);
SpaceMouse buttons do the same (the intervention device's teleop config, e.g. `buttons: [close, open, event:success,
event:failure, event:start, event:pause]`): success / failure reach the reward with the step's events, start and
pause come here, also between episodes and without a terminal. The console reads the terminal at its lowest layer
(teleop.devices.KeyboardDevice); everything above it is plain Python, so a pty drives it in tests exactly as a
person does.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

KEYS = {"s": "success", "f": "failure", "r": "start", "enter": "start", "p": "pause", "h": "help", "?": "help"}
# Device button events handled here; "success" / "failure" reach the reward with the step (rl_agent.rewards).
BUTTON_EVENTS = ("start", "pause", "help")
HELP = "keys: [s] success  [f] failure  [r]/[enter] scene is reset: start  [p] pause/resume  [h] help"


@dataclass
class SessionStatus:
    """What the status line shows."""
    episode: int = 0
    successes: int = 0
    finished: int = 0
    demos: int = 0
    transitions: int = 0
    params_version: int = 0
    learner_alive: bool = True
    waiting_for_reset: bool = False
    time_left_s: Optional[float] = None


def status_line(s: SessionStatus, paused: bool) -> str:
    rate = f"{s.successes}/{s.finished} ({100.0 * s.successes / s.finished:.0f} %)" if s.finished else "0/0"
    left = ""
    if s.time_left_s is not None:
        m, sec = divmod(max(0, int(s.time_left_s)), 60)
        left = f" | {m:d}:{sec:02d} left"
    state = "PAUSED [p] resumes" if paused else ("reset the scene, then [r]" if s.waiting_for_reset else "running")
    learner = "" if s.learner_alive else " | learner silent"
    return (f"episode {s.episode} | success {rate} | demos {s.demos} | sent {s.transitions} transitions | "
            f"params v{s.params_version}{learner}{left} | {state}")


class OperatorConsole:
    """Turns keys into the session's actions and keeps the status line current.

    on_mark(success) ends the episode with the operator's verdict, on_start() says the scene is reset; pause blocks
    `wait_if_paused()` (the actor calls it between steps: the robot server holds the arm while no action comes).
    """

    def __init__(self, keyboard, view, on_mark: Callable[[bool], None], on_start: Callable[[], None],
                 status: Callable[[], SessionStatus], period_s: float = 0.05):
        self.keyboard, self.view = keyboard, view
        self.on_mark, self.on_start, self.status = on_mark, on_start, status
        self.period_s = float(period_s)
        self._running = threading.Event()
        self._running.set()  # set = not paused
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self.handled: list[str] = []

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def handle(self, key: str) -> Optional[str]:
        """One key -> its action; returns the action name (None for an unbound key)."""
        return self.do(KEYS.get(key.lower() if len(key) == 1 else key))

    def handle_events(self, events) -> None:
        """Button events of the intervention device (teleop `event:start`, `event:pause`, `event:help`)."""
        for event in events:
            if event in BUTTON_EVENTS:
                self.do(event)

    def do(self, action: Optional[str]) -> Optional[str]:
        if action == "success" or action == "failure":
            self.on_mark(action == "success")
            self.view.print_lines([f"operator: {action}"])
        elif action == "start":
            self.on_start()
        elif action == "pause":
            if self.paused:
                self._running.set()
                self.view.print_lines(["operator: resumed"])
            else:
                self._running.clear()
                self.view.print_lines(["operator: paused (the arm holds; [p] resumes)"])
        elif action == "help":
            self.view.print_lines([HELP])
        if action is not None:
            self.handled.append(action)
        return action

    def poll(self) -> None:
        for key in (self.keyboard.read().keys if self.keyboard is not None else ()):
            self.handle(key)
        self.view.set_status(status_line(self.status(), self.paused))

    def prompt(self, text: str) -> None:
        self.view.print_lines([text])

    def wait_if_paused(self, stop: threading.Event) -> None:
        while not self._running.wait(0.1):
            if stop.is_set():
                return

    def start(self) -> None:
        self.view.print_lines([HELP])

        def loop():
            while not self._stop.is_set():
                try:
                    self.poll()
                except Exception as exc:  # noqa: BLE001 - a console hiccup must not end the session
                    self.view.print_lines([f"console: {type(exc).__name__}: {exc}"])
                    time.sleep(1.0)
                self._stop.wait(self.period_s)

        self._thread = threading.Thread(target=loop, name="operator-console", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self.keyboard is not None:
            self.keyboard.close()
        self.view.close()


class LogView:
    """The console's output without a terminal: its lines go to the log, no status line."""

    def __init__(self, log=print):
        self.log = log

    def print_lines(self, lines) -> None:
        for line in lines:
            self.log(line)

    def set_status(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def open_console(setting: str, mode: str, intervention_device: str, on_mark, on_start, status,
                 log=print) -> Optional[OperatorConsole]:
    """The console for the actor's terminal, or None. setting: auto (on in robot mode with a terminal on stdin),
    on (a terminal is required), off. Without a terminal a SpaceMouse still gets a console (its buttons, no keys)."""
    import os
    import sys
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"console must be auto, on or off, got {setting!r}")
    if setting == "off" or (setting == "auto" and mode != "robot"):
        return None
    if intervention_device == "keyboard":
        log("operator console off: the keyboard drives the interventions (its enter / backspace mark success / "
            "failure)")
        return None
    from teleop.devices import DeviceError, KeyboardDevice
    from teleop.operator import TerminalView
    try:
        keyboard = KeyboardDevice(mode="cbreak").open()
    except (DeviceError, OSError, ValueError) as exc:
        if setting == "on":
            raise
        if intervention_device == "spacemouse":
            log(f"operator console: no terminal ({exc}); the SpaceMouse buttons and the services remain")
            console = OperatorConsole(None, LogView(log), on_mark, on_start, status)
            console.start()
            return console
        log(f"operator console off ({exc}); the services /irevla/rl/mark_success, mark_failure and start_episode "
            "remain")
        return None
    console = OperatorConsole(keyboard, TerminalView(sys.stdout), on_mark, on_start, status)
    console.start()
    return console
