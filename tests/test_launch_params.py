"""Every parameter a launch graph (launch/graphs.yaml) sets is one its node actually reads.

A misspelt parameter in a launch file is silently ignored by ROS 2 (the node keeps its default), so it is checked
statically here: for each node, the parameter names it declares or reads (string literals passed to
declare_parameter / get_parameter / has_parameter, and the fields of a dataclass passed to declare_config) in its
entry-point module and the irevla modules that module imports. The runtime counterpart (parameters reaching a started node) is in test_launch_graphs.py.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from robot_server.launch_graph import load_graphs

GRAPHS = load_graphs()
IREVLA_PACKAGES = ("robot_server", "teleop", "policy", "rl_agent", "sim_twin")
PARAM_CALLS = {"declare_parameter", "get_parameter", "has_parameter", "get_parameter_or"}


def _entry_modules() -> dict[str, str]:
    return {e.name: e.value.split(":")[0] for e in importlib.metadata.entry_points(group="console_scripts")
            if e.dist is not None and e.dist.name == "irevla"}


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ModuleNotFoundError, ValueError):  # `from pkg.mod import Class`: Class is not a module
        return None
    return Path(spec.origin) if spec and spec.origin else None


def parameter_names(module: str, depth: int = 2) -> set[str]:
    """Parameter names used in `module` and (to `depth`) the irevla modules it imports."""
    seen: set[str] = set()
    names: set[str] = set()

    def visit(mod: str, d: int) -> None:
        if mod in seen:
            return
        seen.add(mod)
        path = _module_file(mod)
        if path is None or not path.is_file():
            return
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if fn in PARAM_CALLS and node.args and isinstance(node.args[0], ast.Constant) \
                        and isinstance(node.args[0].value, str):
                    names.add(node.args[0].value)
                if fn == "declare_config" and len(node.args) == 2 and isinstance(node.args[1], ast.Name):
                    # robot_server.ros_main.declare_config: one parameter per field of the dataclass it is given
                    cls = getattr(importlib.import_module(mod), node.args[1].id)
                    names.update(f.name for f in dataclasses.fields(cls))
            if d > 0 and isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    ([node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module else [])
                for t in targets:
                    if t and t.split(".")[0] in IREVLA_PACKAGES:
                        visit(t, d - 1)

    visit(module, depth)
    return names


@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_every_parameter_in_a_graph_is_read_by_its_node(graph):
    modules = _entry_modules()
    for spec in GRAPHS[graph].resolve():
        assert spec.executable in modules, f"{graph}: {spec.executable} is not an irevla console script"
        known = parameter_names(modules[spec.executable])
        unknown = sorted(set(spec.parameters) - known)
        assert not unknown, (f"{graph}: node {spec.executable} is given parameter(s) {unknown} it never declares "
                             f"or reads (it knows {sorted(known)})")


def test_the_check_catches_a_misspelt_parameter():
    known = parameter_names(_entry_modules()["robot_node"])
    assert "task" in known and "seed" in known
    assert "taks" not in known
    # Nodes that declare a dataclass: its fields, inherited ones included (the learner core's config).
    assert {"checkpoint", "console", "demo_episodes"} <= parameter_names(_entry_modules()["rl_actor"])
    assert {"checkpoint", "online_capacity", "push_every"} <= parameter_names(_entry_modules()["rl_learner"])
