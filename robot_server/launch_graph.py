"""One source of truth for irevla's ROS 2 graphs (launch/graphs.yaml), started two ways:

* on a ROS 2 system: `ros2 launch irevla <graph>.launch.py arg:=value` (the launch file calls
  `ros2_launch_description`, which turns the YAML into launch_ros Node actions);
* on a pip-only install (no `launch` / `launch_ros` wheels exist): `irevla launch <graph> arg:=value`, which starts
  the same executables with the same parameters as child processes, in a private network namespace, and stops
  them (by PID) when one dies or on Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
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
    when: dict[str, str] = field(default_factory=dict)  # started only when every named argument has this value


@dataclass(frozen=True)
class Graph:
    name: str
    description: str
    arguments: dict[str, str]  # name -> default
    nodes: tuple[NodeSpec, ...]
    argument_help: dict[str, str] = field(default_factory=dict)  # name -> description
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> the values it may take
    refuse: tuple[tuple[dict, str], ...] = ()  # (argument values, why): combinations that cannot work

    def help_epilog(self) -> str:
        """The graph's launch arguments, one per line with its default and description (`irevla launch G --help`)."""
        width = max((len(k) for k in self.arguments), default=0)
        lines = [f"arguments of {self.name} (ARG:=VALUE):"]
        for k, default in self.arguments.items():
            lines.append(f"  {k:<{width}}  {self.argument_help.get(k, '')} (default: {default})")
        return "\n".join(lines)

    def resolve(self, overrides: Optional[dict[str, str]] = None) -> list[NodeSpec]:
        """Nodes with every $(arg X) replaced by the override or the default."""
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(self.arguments)
        if unknown:
            raise ValueError(f"graph {self.name!r} has no argument(s) {sorted(unknown)}; it takes "
                             f"{sorted(self.arguments)}")
        args = self.values(overrides)
        out = []
        for n in self.nodes:
            if any(str(args[k]) != str(v) for k, v in n.when.items()):
                continue
            params = {k: _subst(v, args) for k, v in n.parameters.items()}
            out.append(NodeSpec(n.executable, n.name, params))
        return out

    def values(self, overrides: Optional[dict[str, str]] = None) -> dict[str, str]:
        """Every argument's value: the override, else the default; a `choices` argument must take one of them."""
        args = {**self.arguments, **dict(overrides or {})}
        for k, allowed in self.choices.items():
            if args[k] not in allowed:
                raise ValueError(f"graph {self.name!r}: {k} must be one of {allowed}, got {args[k]!r}")
        for when, why in self.refuse:
            if all(str(args.get(k)) == str(v) for k, v in when.items()):
                raise ValueError(f"graph {self.name!r}: {why}")
        return args

    def host_network(self, overrides: Optional[dict[str, str]] = None) -> bool:
        """A real cell: the arm and cameras are on the lab's network, so no private namespace."""
        return self.values(overrides).get("cell") == "real"


def _subst(value: Any, args: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("$(arg ") and value.endswith(")"):
        return _typed(args[value[6:-1].strip()])
    if isinstance(value, list):  # e.g. image_size: [$(arg image_size), $(arg image_size)]
        return [_subst(v, args) for v in value]
    return value


def _typed(text: str) -> Any:
    """Parameter text as ROS would type it from the command line (int, float, bool, a list of them, else string)."""
    try:
        loaded = yaml.safe_load(text) if isinstance(text, str) else text
    except yaml.YAMLError:
        return text
    if isinstance(loaded, list) and loaded and all(isinstance(v, (int, float, bool, str)) for v in loaded):
        return loaded
    return loaded if isinstance(loaded, (int, float, bool, str)) else text


def graphs_file() -> Path:
    from robot_server.config import shipped_path
    found = shipped_path("launch/graphs.yaml")
    if found is None:
        raise FileNotFoundError(f"launch/graphs.yaml is neither in share/{PACKAGE} nor in the source tree")
    return found


def _argument(value: Any) -> tuple[str, str]:
    """An `arguments` entry: [default, description], or a bare default (no description)."""
    if isinstance(value, list):
        default, description = (value + ["", ""])[:2]
        return str(default), str(description)
    return str(value), ""


def load_graphs(path: Optional[Path] = None) -> dict[str, Graph]:
    doc = yaml.safe_load(Path(path or graphs_file()).read_text()) or {}
    graphs = {}
    for name, g in doc.items():
        if name.startswith("_"):  # YAML anchors shared by the graphs (_templates), not a graph
            continue
        nodes = tuple(NodeSpec(n["executable"], n.get("name"), dict(n.get("parameters") or {}),
                               {k: str(v) for k, v in (n.get("when") or {}).items()}) for n in g["nodes"])
        args = {k: _argument(v) for k, v in (g.get("arguments") or {}).items()}
        choices = {k: tuple(str(c) for c in v) for k, v in (g.get("choices") or {}).items()}
        refuse = tuple(({k: str(v) for k, v in r["when"].items()}, str(r["why"])) for r in g.get("refuse") or [])
        graphs[name] = Graph(name, g.get("description", ""), {k: d for k, (d, _) in args.items()}, nodes,
                             {k: h for k, (_, h) in args.items()}, choices, refuse)
    return graphs


def ros_args(spec: NodeSpec) -> list[str]:
    args = ["--ros-args"] + (["-r", f"__node:={spec.name}"] if spec.name else [])
    for k, v in spec.parameters.items():
        text = str(v).lower() if isinstance(v, bool) else str(v)
        args += ["-p", f"{k}:={text if text else chr(39) * 2}"]  # an empty string as YAML '' (rcl refuses k:=)
    return args


def ros2_launch_description(graph_name: str):
    """For `ros2 launch`: the graph as launch_ros Node actions with launch arguments (ROS 2 systems only)."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node

    graph = load_graphs()[graph_name]
    actions = [DeclareLaunchArgument(k, default_value=v, description=graph.argument_help.get(k) or k)
               for k, v in graph.arguments.items()]
    for n in graph.nodes:
        params = {}
        for k, v in n.parameters.items():
            if isinstance(v, str) and v.startswith("$(arg "):
                params[k] = LaunchConfiguration(v[6:-1].strip())
            elif isinstance(v, list):
                params[k] = [LaunchConfiguration(x[6:-1].strip()) if isinstance(x, str) and x.startswith("$(arg ")
                             else x for x in v]
            else:
                params[k] = v
        extra = {"name": n.name} if n.name else {}
        if n.when:  # every condition must hold: one Python expression over the launch arguments
            from launch.conditions import IfCondition
            from launch.substitutions import PythonExpression
            expr = []
            for i, (k, v) in enumerate(n.when.items()):
                expr += ([" and "] if i else []) + ["'", LaunchConfiguration(k), f"' == '{v}'"]
            extra["condition"] = IfCondition(PythonExpression(expr))
        actions.append(Node(package=PACKAGE, executable=n.executable, parameters=[params], output="screen", **extra))
    return LaunchDescription(actions)


def executable_path(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not os.path.exists(found):
        raise FileNotFoundError(f"executable {name!r} is not installed (run scripts/setup.sh)")
    return found


STOP_GRACE_S = 30.0


def run_graph(graph: Graph, overrides: dict[str, str], log=print) -> int:
    """Start every node as a child process; stop all of them when one exits or on SIGINT/SIGTERM."""
    specs = graph.resolve(overrides)
    procs: list[tuple[NodeSpec, subprocess.Popen]] = []
    stop = {"flag": False}

    def _stop(*_):
        stop["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    env = {"PYTHONFAULTHANDLER": "1", **os.environ}  # a node that crashes in native code prints its Python stack
    try:
        for s in specs:
            cmd = [executable_path(s.executable), *ros_args(s)]
            log(f"[launch] {s.name or s.executable}: {' '.join(cmd)}")
            procs.append((s, subprocess.Popen(cmd, env=env)))
        rc = 0
        while not stop["flag"]:
            for s, p in procs:
                if p.poll() is not None:
                    log(f"[launch] {s.name or s.executable} exited with code {p.returncode}; stopping the graph")
                    rc = p.returncode  # 0: a node that finished its job (an RL actor's budget) ends the graph
                    stop["flag"] = True
            time.sleep(0.2)
        return rc
    finally:
        for _, p in procs:  # only our own children, by PID
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        # Nodes finish their work on the way out (the learner's last checkpoint and hand-back, the recorder's and
        # the actor's files): a loaded machine needs more than a few seconds for that.
        deadline = time.monotonic() + STOP_GRACE_S
        for s, p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"[launch] {s.name or s.executable} did not stop within {STOP_GRACE_S:.0f} s: killed")
                p.kill()
                p.wait()


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    graphs = load_graphs()
    graph = graphs.get(argv[0]) if argv else None
    # With a graph named first, --help also lists that graph's launch arguments.
    ap = argparse.ArgumentParser(prog="irevla launch", description=(graph.description if graph else
                                 "Start one of irevla's ROS 2 graphs (launch/graphs.yaml) without ros2 launch."),
                                 epilog=graph.help_epilog() if graph else
                                 "graphs: " + ", ".join(sorted(graphs)) + " (`irevla launch GRAPH --help`: its "
                                 "arguments)", formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graph", choices=sorted(graphs))
    ap.add_argument("overrides", nargs="*", metavar="ARG:=VALUE", help="launch arguments of the graph")
    args = ap.parse_args(argv)
    from robot_server.usage import UsageError
    overrides = {}
    for item in args.overrides:
        if ":=" not in item:
            raise UsageError(f"expected ARG:=VALUE, got {item!r}")
        k, v = item.split(":=", 1)
        overrides[k] = v
    try:
        graphs[args.graph].resolve(overrides)  # an unknown argument fails here, before any process starts
    except ValueError as exc:
        raise UsageError(f"{exc} (`irevla launch {args.graph} --help` lists them)") from None
    from robot_server.isolation import announce_graph, ensure_local_ros, join_hint
    if graphs[args.graph].host_network(overrides):
        log_host = os.environ.get("ROS_DOMAIN_ID", "0")
        print(f"[launch] real cell: host network, the lab's ROS_DOMAIN_ID={log_host} and discovery settings",
              flush=True)
    else:
        ensure_local_ros()
    record = announce_graph(args.graph)  # how a second terminal finds this graph (irevla command, irevla join)
    print(f"[launch] {join_hint(json.loads(record.read_text()))}", flush=True)
    try:
        return run_graph(graphs[args.graph], overrides)
    finally:
        record.unlink(missing_ok=True)


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("launch", main))  # user errors as one line, as under `irevla`
