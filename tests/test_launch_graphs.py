"""launch/graphs.yaml is the one source of truth: every executable and parameter it names exists, the ROS 2 launch
files use it, and the pip-only runner starts the graph with the parameters reaching the nodes."""
import ast
import importlib.metadata
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robot_server.launch_graph import load_graphs, ros_args

ROOT = Path(__file__).resolve().parent.parent
GRAPHS = load_graphs(ROOT / "launch" / "graphs.yaml")


def _console_scripts():
    return {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")
            if e.dist is not None and e.dist.name == "irevla"}


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_every_executable_is_an_irevla_console_script(graph):
    scripts = _console_scripts()
    for node in GRAPHS[graph].nodes:
        assert node.executable in scripts, f"{graph}: {node.executable} is not an irevla console script"


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_every_arg_reference_is_declared_and_resolves(graph):
    g = GRAPHS[graph]
    for spec in g.resolve():
        for k, v in spec.parameters.items():
            assert not (isinstance(v, str) and "$(arg" in v), f"{graph}: {k} unresolved"
    with pytest.raises(ValueError, match="no argument"):
        g.resolve({"no_such_argument": "1"})


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_ros2_launch_file_exists_and_reads_the_same_graph(graph):
    f = ROOT / "launch" / f"{graph}.launch.py"
    assert f.is_file(), f"missing {f.name} for graph {graph}"
    tree = ast.parse(f.read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
             "ros2_launch_description"]
    assert calls and ast.literal_eval(calls[0].args[0]) == graph
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_every_launch_argument_has_a_description_shown_by_help(graph):
    g = GRAPHS[graph]
    assert g.description
    for name in g.arguments:
        assert g.argument_help.get(name), f"{graph}: launch argument {name} has no description"
    out = subprocess.run([sys.executable, "-m", "robot_server.cli", "launch", graph, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for name, default in g.arguments.items():
        line = next((l for l in out.stdout.splitlines() if l.split()[:1] == [name]), None)
        assert line is not None, f"{name} missing from `irevla launch {graph} --help`:\n{out.stdout}"
        assert g.argument_help[name] in line and f"(default: {default})" in line, line


def test_bare_default_still_loads_as_an_argument(tmp_path):
    """The short form `name: default` (no description) stays valid YAML for the graphs file."""
    f = tmp_path / "graphs.yaml"
    f.write_text("g:\n  arguments:\n    task: pick_carrot\n  nodes:\n    - executable: sim_bringup\n"
                 "      parameters: {task: $(arg task)}\n")
    g = load_graphs(f)["g"]
    assert g.arguments == {"task": "pick_carrot"} and g.argument_help == {"task": ""}
    assert g.resolve()[0].parameters == {"task": "pick_carrot"}


def test_ros_args_render_parameters():
    spec = GRAPHS["sim_cell"].resolve({"task": "pick_carrot", "seed": "5"})[0]
    args = ros_args(spec)
    assert args[0] == "--ros-args" and "task:=pick_carrot" in args and "seed:=5" in args
    # empty strings and lists reach rcl in a form it parses (it refuses `device:=`)
    spec = next(s for s in GRAPHS["language_commanding"].resolve({"image_size": "96"}) if s.name == "policy_server")
    args = ros_args(spec)
    assert "device:=''" in args and "image_size:=[96, 96]" in args


def test_real_cell_selects_its_nodes_and_refuses_what_cannot_work():
    sim = [s.executable for s in GRAPHS["rl_session"].resolve({})]
    real = [s.name for s in GRAPHS["rl_session"].resolve({"cell": "real", "reward": "operator"})]
    assert "sim_bringup" in sim and "robot_node" not in sim
    assert real[:3] == ["robot_node", "camera_front", "camera_wrist"] and "sim_bringup" not in real
    assert GRAPHS["rl_session"].host_network({"cell": "real", "reward": "operator"})
    assert not GRAPHS["rl_session"].host_network({})
    with pytest.raises(ValueError, match="twin predicate"):
        GRAPHS["rl_session"].resolve({"cell": "real"})
    with pytest.raises(ValueError, match="cell must be one of"):
        GRAPHS["sim_cell"].resolve({"cell": "lab"})


@pytest.mark.ros
def test_pip_only_runner_starts_the_graph_and_parameters_reach_the_nodes(ros_context, spin_thread):
    import rclpy
    from rcl_interfaces.srv import GetParameters

    proc = subprocess.Popen([sys.executable, "-m", "robot_server.launch_graph", "sim_cell", "task:=pick_carrot",
                             "camera_rate:=4.0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        node = rclpy.create_node("launch_probe", context=ros_context)
        spin_thread([node])

        def get(node_name, names):
            cli = node.create_client(GetParameters, f"/irevla/{node_name}/get_parameters")
            assert cli.wait_for_service(timeout_sec=60.0), f"{node_name} did not come up"
            fut = cli.call_async(GetParameters.Request(names=names))
            deadline = time.monotonic() + 10
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.05)
            return fut.result().values

        task, = get("robot_node", ["task"])
        assert task.string_value == "pick_carrot"
        rate, = get("camera_node", ["rate"])
        assert rate.double_value == pytest.approx(4.0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert proc.returncode == 0, out[-2000:]
