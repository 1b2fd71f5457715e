"""One source of truth for irevla's ROS 2 graphs (launch/graphs.yaml), started two ways:

* on a ROS 2 system: `ros2 launch irevla <graph>.launch.py arg:=value` (the launch file calls
  `ros2_launch_description`, which turns the YAML into launch_ros Node actions);
* on a pip-only install (no `launch` / `launch_ros` wheels exist): `irevla launch <graph> arg:=value`, which starts
  the same executables with the same parameters as child processes, in a private network namespace, and stops
  them (by PID) when one dies or on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

PACKAGE = "irevla"


@dataclass(frozen=True)
class NodeSpec:
    executable: str
    name: Optional[str]  # None: keep the node names the executable gives (processes with several nodes)
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Graph:
    name: str
    description: str
    arguments: dict[str, str]
    nodes: tuple[NodeSpec, ...]

    def resolve(self, overrides: Optional[dict[str, str]] = None) -> list[NodeSpec]:
        """Nodes with every $(arg X) replaced by the override or the default."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self.arguments)
        if unknown:
            raise ValueError(f"graph {self.name!r} has no argument(s) {sorted(unknown)}; it takes "
                             f"{sorted(self.arguments)}")
        args = {**self.arguments, **overrides}
        out = []
        for n in self.nodes:
            params = {k: _subst(v, args) for k, v in n.parameters.items()}
            out.append(NodeSpec(n.executable, n.name, params))
        return out


def _subst(value: Any, args: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("$(arg ") and value.endswith(")"):
        return _typed(args[value[6:-1].strip()])
    return value


def _typed(text: str) -> Any:
    """Parameter text as ROS would type it from the command line (int, float, bool, else string)."""
    loaded = yaml.safe_load(text) if isinstance(text, str) else text
    return loaded if isinstance(loaded, (int, float, bool, str)) else text


def graphs_file() -> Path:
    local = Path(__file__).resolve().parent.parent / "launch" / "graphs.yaml"
    if local.is_file():
        return local
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE)) / "launch" / "graphs.yaml"
    except Exception as e:
        raise FileNotFoundError(f"launch/graphs.yaml not found next to the sources nor in share/{PACKAGE}") from e


def load_graphs(path: Optional[Path] = None) -> dict[str, Graph]:
    doc = yaml.safe_load(Path(path or graphs_file()).read_text()) or {}
    graphs = {}
    for name, g in doc.items():
        nodes = tuple(NodeSpec(n["executable"], n.get("name"), dict(n.get("parameters") or {}))
                      for n in g["nodes"])
        graphs[name] = Graph(name, g.get("description", ""), {k: str(v) for k, v in (g.get("arguments") or {}).items()},
                             nodes)
    return graphs


def ros_args(spec: NodeSpec) -> list[str]:
    args = ["--ros-args"] + (["-r", f"__node:={spec.name}"] if spec.name else [])
    for k, v in spec.parameters.items():
        text = str(v).lower() if isinstance(v, bool) else str(v)
        args += ["-p", f"{k}:={text}"]
    return args


def ros2_launch_description(graph_name: str):
    """For `ros2 launch`: the graph as launch_ros Node actions with launch arguments (ROS 2 systems only)."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    graph = load_graphs()[graph_name]
    actions = [DeclareLaunchArgument(k, default_value=v) for k, v in graph.arguments.items()]
    for n in graph.nodes:
        params = {}
        for k, v in n.parameters.items():
            if isinstance(v, str) and v.startswith("$(arg "):
                params[k] = LaunchConfiguration(v[6:-1].strip())
            else:
                params[k] = v
        extra = {"name": n.name} if n.name else {}
        actions.append(Node(package=PACKAGE, executable=n.executable, parameters=[params], output="screen", **extra))
    return LaunchDescription(actions)


def executable_path(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not os.path.exists(found):
        raise FileNotFoundError(f"executable {name!r} is not installed (run scripts/setup.sh)")
    return found


def run_graph(graph: Graph, overrides: dict[str, str], log=print) -> int:
    """Start every node as a child process; stop all of them when one exits or on SIGINT/SIGTERM."""
    specs = graph.resolve(overrides)
    procs: list[tuple[NodeSpec, subprocess.Popen]] = []
    stop = {"flag": False}

    def _stop(*_):
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        for s in specs:
            cmd = [executable_path(s.executable), *ros_args(s)]
            log(f"[launch] {s.name or s.executable}: {' '.join(cmd)}")
            procs.append((s, subprocess.Popen(cmd)))
        rc = 0
        while not stop["flag"]:
            for s, p in procs:
                if p.poll() is not None:
                    log(f"[launch] {s.name or s.executable} exited with code {p.returncode}; stopping the graph")
                    rc = p.returncode or 1
                    stop["flag"] = True
            time.sleep(0.2)
        return rc
    finally:
        for _, p in procs:  # only our own children, by PID
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        for _, p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main(argv: Optional[list[str]] = None) -> int:
    graphs = load_graphs()
    ap = argparse.ArgumentParser(prog="irevla launch", description="Start one of irevla's ROS 2 graphs "
                                 "(launch/graphs.yaml) without ros2 launch.")
    ap.add_argument("graph", choices=sorted(graphs))
    ap.add_argument("overrides", nargs="*", metavar="ARG:=VALUE")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.overrides:
        if ":=" not in item:
            ap.error(f"expected ARG:=VALUE, got {item!r}")
        k, v = item.split(":=", 1)
        overrides[k] = v
    from robot_server.isolation import ensure_local_ros
    ensure_local_ros()
    return run_graph(graphs[args.graph], overrides)


if __name__ == "__main__":
    sys.exit(main())
