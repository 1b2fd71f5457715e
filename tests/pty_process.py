"""A process on a pseudo-terminal (what a person's terminal or `ssh -t` gives): what it prints, keys typed into it."""
from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ProcessTerminal:
    """`cmd` started on a fresh pty (its own session: stopped with SIGINT to its process group)."""

    def __init__(self, cmd, env):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO,
                                     start_new_session=True)
        os.close(slave)
        self.screen = ""

    def read(self, timeout: float = 0.2) -> str:
        while select.select([self.master], [], [], timeout)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                break
            if not data:
                break
            self.screen += data.decode(errors="replace")
            timeout = 0.0
        return self.screen

    def expect(self, pattern: str, timeout: float, since: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.read()[since:])
            if m:
                return since + m.end()
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"no {pattern!r} within {timeout} s; screen tail:\n{self.screen[-4000:]}")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.read(0.5)
        os.close(self.master)
        return self.screen

    def press_until(self, key: str, pattern: str, timeout: float, since: int = 0, every: float = 3.0) -> int:
        """Type `key` every `every` s until `pattern` shows (a mark typed before the episode started is cleared by
        its reset, as a person would press again)."""
        deadline = time.monotonic() + timeout
        while True:
            self.type(key)
            try:
                return self.expect(pattern, min(every, max(0.1, deadline - time.monotonic())), since)
            except AssertionError:
                if time.monotonic() >= deadline or self.proc.poll() is not None:
                    raise

