"""franka-sim's server on 127.0.0.1 with a local FR3 model; runs in franka-sim's own venv (tests/peers/provision.py).

Why not its CLI: `run-franka-sim-server` binds all interfaces and downloads the FR3 model through
robot_descriptions. Its Python class takes the host, and FR3_MJCF points it at a local model.

    <franka-sim venv>/bin/python tests/peers/franka_sim_peer.py --mjcf fr3.xml [--enforce-limits] [--no-gripper]
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mjcf", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--enforce-limits", action="store_true",
                    help="abort motions on FCI limit violations and lost command cycles, as the real robot does")
    ap.add_argument("--no-gripper", action="store_true")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ["FR3_MJCF"] = a.mjcf
    from franka_sim import FrankaSimServer

    server = FrankaSimServer(host=a.host, enable_gripper=not a.no_gripper,
                             enforce_motion_limits=a.enforce_limits, enforce_comm_constraints=a.enforce_limits)
    stopping = threading.Event()

    def stop(*_):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.start()  # blocks until stopped
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
