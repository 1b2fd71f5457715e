"""Keep ROS 2 traffic on this machine.

Every script that starts ROS 2 calls `ensure_local_ros()` first: DDS discovery limited to localhost, a domain id of
its own, and, where the OS allows it, a private network namespace with only the loopback device, so not a single
DDS packet can leave the machine.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

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
            env[_MARK] = " ".join(flags)  # which namespace kind: how another terminal joins it
            script = 'ip link set lo up && exec "$@"'
            os.execvpe(unshare, [unshare, *flags, "bash", "-c", script, "irevla", *argv], env)
    print("irevla: warning: no private network namespace available (unshare); DDS limited to localhost only "
          f"(ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']})", file=sys.stderr)
    os.environ[_MARK] = "fallback"
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID")})


# ---------------------------------------------------------------- joining a running graph from another terminal
# `irevla launch` announces its graph in a small record file (pid, domain, namespace); `irevla command` (and any
# command under `irevla join`) finds it and enters the same network namespace with the same domain id, so a second
# terminal needs no guesswork. A graph on the host network (a real cell) is joined by its domain alone.
def graphs_dir() -> Path:
    base = os.environ.get("IREVLA_RUN_DIR") or os.path.join(
        os.environ.get("XDG_RUNTIME_DIR") or os.path.join(os.path.expanduser("~"), ".cache"), "irevla", "graphs")
    return Path(base)


def announce_graph(graph: str) -> Path:
    """Write this launcher's record; the caller removes it when the graph stops."""
    mark = os.environ.get(_MARK, "")
    record = {"graph": graph, "pid": os.getpid(), "domain_id": int(os.environ.get("ROS_DOMAIN_ID", "0")),
              "discovery": os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE", ""),
              "netns": mark if mark.startswith("-") else None, "started": time.time()}
    d = graphs_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return path


def join_hint(record: dict) -> str:
    where = (f"private network namespace of pid {record['pid']}" if record.get("netns")
             else "this machine's network")
    return (f"graph {record['graph']!r}: ROS_DOMAIN_ID={record['domain_id']}, {where}. From another terminal, "
            f"`irevla command ...` joins it by itself; any other tool: `irevla join -- ros2 topic list`")


def running_graphs() -> list[dict]:
    """Records of graphs whose launcher still runs (stale records of killed launchers are removed)."""
    out = []
    d = graphs_dir()
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
            pid = int(rec["pid"])
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable or another user's: not ours to join
        out.append(rec)
    return out


class JoinError(RuntimeError):
    """No graph, or no single graph, to join."""


def pick_graph(which: str | None = None) -> dict | None:
    """The graph named (graph name or launcher pid) or, with none named, the only one running (None if none)."""
    graphs = running_graphs()
    if which:
        found = [g for g in graphs if which in (g["graph"], str(g["pid"]))]
        if len(found) != 1:
            raise JoinError(f"no single running graph {which!r}; running: {_listing(graphs)}")
        return found[0]
    if len(graphs) > 1:
        raise JoinError(f"{len(graphs)} graphs are running ({_listing(graphs)}): choose one with "
                        "IREVLA_JOIN=<graph or pid>, or IREVLA_JOIN=none for none")
    return graphs[0] if graphs else None


def _listing(graphs: list[dict]) -> str:
    return ", ".join(f"{g['graph']} (pid {g['pid']}, domain {g['domain_id']})" for g in graphs) or "none"


def join_graph(record: dict, argv: list[str]) -> None:
    """Run argv inside the graph's network namespace with its domain: re-executes this process (never returns) when
    the namespace differs from ours, else only sets the environment."""
    os.environ.update({"ROS_DOMAIN_ID": str(record["domain_id"]), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                       _MARK: "joined", "IREVLA_JOINED": str(record["pid"])})
    if not record.get("netns"):
        return
    try:
        same = os.readlink(f"/proc/{record['pid']}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError as e:
        raise JoinError(f"cannot see the namespace of graph {record['graph']!r} (pid {record['pid']}): {e}") from e
    if same:
        return
    nsenter = shutil.which("nsenter")
    if not nsenter:
        raise JoinError("nsenter (util-linux) is needed to join a graph's private network namespace")
    flags = ["-n"] if record["netns"] == "-n" else ["-U", "-n", "--preserve-credentials"]
    os.execvpe(nsenter, [nsenter, "-t", str(record["pid"]), *flags, "--", *argv], dict(os.environ))


def join_for_command(command: str, argv: list[str]) -> None:
    """For a command that talks to a running graph: join the one IREVLA_JOIN names, else the only one running."""
    which = os.environ.get("IREVLA_JOIN", "")
    if which == "none" or os.environ.get("IREVLA_JOINED"):
        return
    deadline = time.monotonic() + (15.0 if which else 0.0)  # a graph named may still be starting
    while True:
        try:
            record = pick_graph(which or None)
            break
        except JoinError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    if record is None:
        return
    print(f"irevla {command}: joining {record['graph']!r} (pid {record['pid']}, ROS_DOMAIN_ID={record['domain_id']})",
          file=sys.stderr)
    join_graph(record, argv)
