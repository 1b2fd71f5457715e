"""Start / stop the libfranka-protocol simulators as subprocesses on 127.0.0.1 (used by the test fixtures).

Both listen on libfranka's fixed ports (robot 1337, gripper 1338), so at most one runs at a time; the fixtures are
module scoped and stop theirs before the next module starts its own. Output goes to a log file, not a pipe (a full
pipe would stall a 1 kHz server); the tail is shown when a start fails.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from peers import provision

HOST = "127.0.0.1"
ROBOT_PORT, GRIPPER_PORT = 1337, 1338


class PeerError(RuntimeError):
    pass


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


class Peer:
    def __init__(self, name: str, cmd: list, ready_line: str, timeout: float = 90.0, env: Optional[dict] = None):
        self.name = name
        for port in (ROBOT_PORT, GRIPPER_PORT):
            if _port_open(port):
                raise PeerError(f"{name}: {HOST}:{port} is already taken (another simulator still running?)")
        fd, path = tempfile.mkstemp(prefix=f"irevla-{name}-", suffix=".log")
        self.log_path = Path(path)
        with os.fdopen(fd, "w") as log:
            self.proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        # Ready = the server announced itself and its command port accepts connections. The log line matters:
        # franka-sim binds before its physics is built, and a client arriving then would be refused.
        while not (ready_line in self.log_tail(100_000) and _port_open(ROBOT_PORT)):
            if self.proc.poll() is not None:
                raise PeerError(f"{name} exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PeerError(f"{name} not ready within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while (_port_open(ROBOT_PORT) or _port_open(GRIPPER_PORT)) and time.monotonic() < deadline:
            time.sleep(0.1)


def start_franky_sim() -> Peer:
    venv = provision.franky_sim_venv()
    return Peer("franky-sim", [venv / "bin" / "franky-sim", "-s", "mujoco", "--hostname", HOST],
                ready_line="Connect to the server using")


def start_franka_sim(enforce_limits: bool = True, gripper: bool = False) -> Peer:
    venv = provision.franka_sim_venv()
    cmd = [venv / "bin" / "python", Path(__file__).with_name("franka_sim_peer.py"), "--mjcf", provision.fr3_mjcf(),
           "--host", HOST]
    if enforce_limits:
        cmd.append("--enforce-limits")
    if not gripper:
        cmd.append("--no-gripper")
    return Peer("franka-sim", cmd, ready_line="Server ready for new client connection")


def provisioned(fn, *args, **kwargs):
    """fn(*args) (a provision / start call); when it fails because the package registry cannot be reached, skip the
    calling test naming the reason, otherwise let the failure fail it."""
    import pytest
    try:
        return fn(*args, **kwargs)
    except provision.ProvisionError as e:
        if e.registry_unreachable is not None:
            pytest.skip(f"peer not provisioned and the package registry is unreachable ({e.registry_unreachable}); "
                        "run `python tests/peers/provision.py` where it is reachable (scripts/test.sh does)")
        raise PeerError(f"provisioning failed although the registry is reachable: {e}") from e
