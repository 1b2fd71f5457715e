"""The import graph flows one way (docs/ARCHITECTURE.md): sim_twin <- robot_server <- teleop <- policy <- rl_agent,
libraries below the jobs (rl_agent/jobs), no node importing another node, no file in rl_agent/ over 400 lines.

Every import counts, including the ones inside functions (a lazy import is still a dependency)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["sim_twin", "robot_server", "teleop", "policy", "rl_agent"]  # lower layers first
JOBS = "rl_agent.jobs"
NODES = {"robot_server.robot_node", "robot_server.camera_node", "teleop.teleop_node",
         "teleop.recorder_node", "policy.server_node", "rl_agent.actor_node", "rl_agent.learner_node"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            if "__pycache__" not in p.parts:
                out[module_name(p)] = p
    return out


def imports_of(path: Path, name: str) -> set[str]:
    """Absolute names of the project modules `path` imports (relative imports resolved against `name`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PACKAGES}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


GRAPH = {name: imports_of(path, name) for name, path in modules().items()}


@pytest.mark.parametrize("lower", PACKAGES[:-1])
def test_lower_layers_never_import_higher_ones(lower):
    higher = PACKAGES[PACKAGES.index(lower) + 1:]
    bad = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() if in_package(m, lower)
                 for i in deps if any(in_package(i, h) for h in higher))
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_libraries_never_import_the_jobs():
    bad = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() if not in_package(m, JOBS)
                 for i in deps if in_package(i, JOBS))
    assert not bad, "a library or node imports a job:\n" + "\n".join(bad)


# sim_bringup is the one composer: the robot node and the camera node in one process sharing one twin (like a
# ROS 2 component container); it is a launcher, not a node.
COMPOSERS = {"robot_server.sim_bringup"}


def test_no_node_imports_another_node():
    bad = sorted(f"{m} imports {i}" for m, deps in GRAPH.items() for i in deps
                 if i in NODES and i != m and m not in COMPOSERS)
    assert not bad, "\n".join(bad)


def test_every_node_is_known_to_this_test():
    """A new *_node.py joins NODES, so the rule above covers it."""
    found = {m for m in GRAPH if m.endswith("_node")}
    assert found <= NODES, f"nodes missing from NODES: {sorted(found - NODES)}"


def test_rl_agent_files_stay_readable():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "rl_agent").rglob("*.py")
            if "__pycache__" not in p.parts and (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"rl_agent files over 400 lines: {long}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rules can fail: a function-local import and a relative import are both found."""
    pkg = tmp_path / "rl_agent"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from rl_agent.jobs.iterate import run\n")
    (pkg / "y.py").write_text("from .jobs import main_job\nfrom . import actor_node\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert imports_of(pkg / "x.py", "rl_agent.x") >= {"rl_agent.jobs.iterate"}
        assert imports_of(pkg / "y.py", "rl_agent.y") >= {"rl_agent.jobs.main_job", "rl_agent.actor_node"}
    finally:
        ROOT = saved


def _receiver(call: ast.Call) -> str:
    v = call.func.value
    return v.id if isinstance(v, ast.Name) else v.attr if isinstance(v, ast.Attribute) else ""


def episode_loops(tree: ast.AST) -> list[int]:
    """Line numbers of functions that reset an env and then step it in a loop: an episode loop of their own."""
    def env_calls(node, method):
        return [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                and n.func.attr == method and "env" in _receiver(n).lower()]
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and env_calls(fn, "reset"):
            loops = [n for n in ast.walk(fn) if isinstance(n, (ast.For, ast.While))]
            if any(env_calls(loop, "step") for loop in loops):
                found.append(fn.lineno)
    return found


def test_one_rollout_loop():
    """Evaluation, collection, `irevla experts`, PPO and the RL episodes all run robot_server.rollout.run_steps;
    no library keeps an episode loop of its own."""
    own = {name: lines for name, path in modules().items()
           if (lines := episode_loops(ast.parse(path.read_text(encoding="utf-8"))))}
    assert not own, f"episode loops outside robot_server.rollout.run_steps: {own}"


def test_the_loop_checker_finds_an_episode_loop():
    old = ("def run(env, policy):\n    obs, info = env.reset(0)\n    while True:\n"
           "        obs, r, term, trunc, info = env.step(policy(obs))\n        if term or trunc:\n            break\n")
    assert episode_loops(ast.parse(old)) == [1]
