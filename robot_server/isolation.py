"""Keep ROS 2 traffic on this machine.

Every script that starts ROS 2 calls `ensure_local_ros()` first: DDS discovery limited to localhost, a domain id of
its own, and, where the OS allows it, a private network namespace with only the loopback device, so not a single
DDS packet can leave the machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

_MARK = "IREVLA_NETNS"


def ros_env(domain_id: int | None = None) -> dict[str, str]:
    from robot_server.mujoco_gl import ensure_mujoco_gl
    ensure_mujoco_gl()  # the graphs render: their processes inherit a working MUJOCO_GL (a no-op when set)
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    else:
        env.setdefault("ROS_DOMAIN_ID", str(20 + os.getpid() % 80))
    return env


def ensure_local_ros(argv: list[str] | None = None, domain_id: int | None = None) -> None:
    """Re-exec this program inside a private network namespace (root: `unshare -n`; otherwise a user namespace
    `unshare -rn`), with localhost-only DDS settings. Falls back to the settings alone, with a warning."""
    env = ros_env(domain_id)
    if os.environ.get(_MARK) or os.environ.get("IREVLA_NO_NETNS"):
        os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})
        return
    argv = argv if argv is not None else [sys.executable, *sys.argv]
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare and ip:
        flags = ["-n"] if os.geteuid() == 0 else ["-rn"]
        probe = subprocess.run([unshare, *flags, ip, "link", "set", "lo", "up"], capture_output=True)
        if probe.returncode == 0:
            env[_MARK] = "1"
            script = 'ip link set lo up && exec "$@"'
            os.execvpe(unshare, [unshare, *flags, "bash", "-c", script, "irevla", *argv], env)
    print("irevla: warning: no private network namespace available (unshare); DDS limited to localhost only "
          f"(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']})", file=sys.stderr)
    os.environ[_MARK] = "fallback"
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})
