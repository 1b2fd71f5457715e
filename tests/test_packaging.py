"""Packaging checks: package.xml, setup.py, entry points, requirements, README / CI command."""
from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL_PACKAGES = ['sim_twin', 'robot_server', 'teleop', 'policy', 'rl_agent']
# Python code scanned for ROS imports: the packages, launch files, tests and scripts.
SCAN_DIRS = TOP_LEVEL_PACKAGES + ['launch', 'tests', 'scripts']
SKIP_PARTS = {'.venv', 'build', 'install', 'log', '__pycache__', '.git'}
# ROS packages without pip wheels here: declared in package.xml, not importable in the venv.
NO_WHEEL = {'launch', 'launch_ros', 'launch_testing', 'launch_testing_ros'}


def is_ros_module(name: str) -> bool:
    return (name in {'rclpy', 'ament_index_python', 'rosidl_runtime_py', 'message_filters', 'cv_bridge',
                     'rosbag2_py'}
            or name.startswith(('launch', 'tf2_'))
            or name.endswith(('_msgs', '_srvs', '_interfaces')))


# ---------------------------------------------------------------------------------------------- helpers
@lru_cache(maxsize=None)
def setup_kwargs() -> dict:
    """Run setup.py with setuptools.setup() replaced by a recorder; return its keyword arguments."""
    code = (
        'import json, runpy, setuptools\n'
        'captured = {}\n'
        'setuptools.setup = lambda **kw: captured.update(kw)\n'
        "runpy.run_path('setup.py', run_name='__main__')\n"
        'print(json.dumps(captured, default=str))\n'
    )
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f'setup.py failed:\n{out.stderr}'
    return json.loads(out.stdout.strip().splitlines()[-1])


@lru_cache(maxsize=None)
def package_xml() -> ET.Element:
    return ET.parse(ROOT / 'package.xml').getroot()


def declared(*tags: str) -> set[str]:
    return {(e.text or '').strip() for tag in tags for e in package_xml().findall(tag)}


def python_files() -> list[Path]:
    files = []
    for d in SCAN_DIRS:
        base = ROOT / d
        if base.is_dir():
            files += [p for p in base.rglob('*.py') if not SKIP_PARTS.intersection(p.relative_to(ROOT).parts)]
    return sorted(files)


def ros_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split('.')[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split('.')[0])
    return {n for n in names if is_ros_module(n)}


def console_scripts() -> list[str]:
    return list(setup_kwargs().get('entry_points', {}).get('console_scripts', []))


def _entry_point_ids():
    try:
        return console_scripts()
    except Exception:  # reported by test_setup_py_runs
        return []


# ---------------------------------------------------------------------------------------------- package.xml
def test_package_xml_is_format3_ament_python():
    root = package_xml()
    assert root.tag == 'package' and root.get('format') == '3'
    assert root.findtext('name') == 'irevla'
    assert root.findtext('export/build_type') == 'ament_python'
    for tag in ('version', 'description', 'maintainer', 'license'):
        assert (root.findtext(tag) or '').strip(), f'package.xml: <{tag}> is empty'
    assert root.find('maintainer').get('email'), 'package.xml: <maintainer> needs an email attribute'


def test_package_xml_declares_required_ros_dependencies():
    required = {'rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'std_srvs', 'builtin_interfaces',
                'action_msgs', 'launch', 'launch_ros'}
    missing = required - declared('exec_depend', 'depend')
    assert not missing, f'package.xml lacks <exec_depend> for {sorted(missing)}'


def test_package_xml_names_every_imported_ros_package():
    run_deps = declared('exec_depend', 'depend')
    test_deps = run_deps | declared('test_depend')
    problems, syntax_errors = [], []
    for path in python_files():
        rel = path.relative_to(ROOT)
        try:
            names = ros_imports(path)
        except SyntaxError as exc:
            syntax_errors.append(f'{rel}: {exc}')
            continue
        allowed = test_deps if rel.parts[0] == 'tests' else run_deps
        for name in sorted(names - allowed):
            problems.append(f'{rel} imports {name}')
    assert not syntax_errors, 'files that do not parse:\n' + '\n'.join(syntax_errors)
    assert not problems, 'ROS packages imported but not declared in package.xml:\n' + '\n'.join(problems)


def test_imported_ros_packages_are_installed():
    """Every ROS package the code imports (except launch*, which has no wheels) is in the venv."""
    missing = set()
    for path in python_files():
        try:
            names = ros_imports(path)
        except SyntaxError:
            continue  # reported above
        missing |= {n for n in names - NO_WHEEL if importlib.util.find_spec(n) is None}
    assert not missing, f'imported but not installed (add its wheel to requirements/): {sorted(missing)}'


def test_package_xml_version_matches_setup_and_installed_metadata():
    version = package_xml().findtext('version').strip()
    assert setup_kwargs()['version'] == version
    assert setup_kwargs()['name'] == 'irevla'
    assert importlib.metadata.version('irevla') == version, 'installed irevla is stale: run scripts/setup.sh'


# ---------------------------------------------------------------------------------------------- setup.py
def test_setup_py_runs():
    kw = setup_kwargs()
    assert kw['name'] == 'irevla'
    assert console_scripts(), 'setup.py defines no console_scripts'


def test_setup_py_packages_cover_all_python_packages():
    packages = set(setup_kwargs()['packages'])
    for top in TOP_LEVEL_PACKAGES:
        assert top in packages, f'{top} missing from setup.py packages (no {top}/__init__.py?)'
    on_disk = {
        '.'.join(p.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL_PACKAGES
        for p in (ROOT / top).rglob('__init__.py')
        if not SKIP_PARTS.intersection(p.relative_to(ROOT).parts)
    }
    assert on_disk <= packages, f'packages not installed by setup.py: {sorted(on_disk - packages)}'
    for pkg in packages:
        assert (ROOT / pkg.replace('.', '/') / '__init__.py').is_file(), pkg


def test_setup_py_data_files_exist():
    data_files = setup_kwargs()['data_files']
    sources = {}
    for dest, files in data_files:
        for f in files:
            assert (ROOT / f).is_file(), f'data_files: {f} (-> {dest}) does not exist'
            sources[f] = dest
    assert sources.get('resource/irevla') == 'share/ament_index/resource_index/packages'
    assert sources.get('package.xml') == 'share/irevla'
    dests = {dest for dest, _ in data_files}
    assert {'share/irevla/launch', 'share/irevla/config'} <= dests


def test_setup_py_installs_every_config_yaml_including_backends():
    """Every YAML under config/ (the backends' too) is installed to the same relative place in share/irevla."""
    installed = {f: dest for dest, files in setup_kwargs()['data_files'] for f in files}
    shipped = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / 'config').rglob('*.yaml'))
    assert any(f.startswith('config/backends/') for f in shipped)
    for f in shipped:
        assert installed.get(f) == 'share/irevla/' + f.rsplit('/', 1)[0], f'{f} is not installed (setup.py data_files)'


def test_shipped_paths_resolve_through_the_share_directory(monkeypatch, tmp_path):
    """Default config paths come from share/irevla (ament index, else the interpreter's prefix), not from beside
    the sources; a relative `config/...` path works from any working directory."""
    from robot_server import config
    monkeypatch.setenv('AMENT_PREFIX_PATH', sys.prefix)
    share = config.share_dir()
    assert share == Path(sys.prefix) / 'share' / 'irevla' and (share / 'package.xml').is_file()
    found = config.shipped_path('config/backends/realsense.yaml')
    assert found == share / 'config' / 'backends' / 'realsense.yaml' and found.is_file()
    assert config.shipped_config_path('rl_session.yaml') == str(share / 'config' / 'rl_session.yaml')
    monkeypatch.chdir(tmp_path)
    assert config.resolve_config('config/backends/panda_py.yaml') == share / 'config' / 'backends' / 'panda_py.yaml'
    assert config.resolve_config('config/no_such.yaml') == Path('config/no_such.yaml')  # the error names it
    (tmp_path / 'config').mkdir()
    (tmp_path / 'config' / 'safety.yaml').write_text('{}')
    assert config.resolve_config('config/safety.yaml') == Path('config/safety.yaml')  # the user's own file wins
    # Without the ament index (pip only): the prefix's share directory still serves the files.
    monkeypatch.delenv('AMENT_PREFIX_PATH')
    assert config.share_dir() == share


def test_no_default_config_path_is_built_beside_the_sources():
    """Code reaches config/ and launch/ through robot_server.config, not Path(__file__).parents[...] / "config"."""
    offenders = []
    for path in python_files():
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ('tests', 'scripts') or rel.as_posix() == 'robot_server/config.py':
            continue
        for line in path.read_text(encoding='utf-8').splitlines():
            if '__file__' in line and re.search(r'["\'](config|launch)["\']', line):
                offenders.append(f'{rel}: {line.strip()}')
    assert not offenders, '\n'.join(offenders)


def test_setup_py_package_data_matches_files():
    package_data = setup_kwargs().get('package_data', {})
    assert 'tasks/*.yaml' in package_data.get('sim_twin', [])
    for pkg, patterns in package_data.items():
        for pattern in patterns:
            matches = list((ROOT / pkg.replace('.', '/')).glob(pattern))
            assert matches, f'package_data {pkg}: {pattern} matches no file'


@pytest.mark.parametrize('spec', _entry_point_ids())
def test_console_script_entry_point_exists(spec):
    name, target = (s.strip() for s in spec.split('=', 1))
    module_name, _, func_name = target.partition(':')
    module = importlib.import_module(module_name)  # fails if the module is missing or broken
    func = module
    for attr in func_name.split('.'):
        func = getattr(func, attr, None)
        assert func is not None, f'{name}: {module_name} has no {func_name}'
    assert callable(func), f'{name}: {target} is not callable'
    script = Path(sys.prefix) / 'bin' / name
    assert script.is_file(), f'{script} not installed: run scripts/setup.sh'


def test_installed_entry_points_match_setup_py():
    installed = sorted(f'{e.name} = {e.value}' for e in importlib.metadata.entry_points(group='console_scripts')
                       if e.dist is not None and e.dist.name == 'irevla')
    wanted = sorted(re.sub(r'\s*=\s*', ' = ', s.strip(), count=1) for s in console_scripts())
    assert installed == wanted, 'installed console_scripts are stale: run scripts/setup.sh'


def test_ament_index_finds_package(monkeypatch):
    monkeypatch.setenv('AMENT_PREFIX_PATH', sys.prefix)
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory('irevla'))
    assert (share / 'package.xml').is_file()


# ---------------------------------------------------------------------------------------------- requirements
def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / 'requirements/constraints.txt').read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r'([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)', line)
        assert m, f'constraints.txt: not an exact pin: {line!r}'
        key = re.sub(r'[-_.]+', '-', m.group(1)).lower()
        assert key not in pins, f'constraints.txt: {key} pinned twice'
        pins[key] = m.group(2)
    return pins


def test_constraints_pin_every_requirement():
    pins = _pins()
    assert pins['torch'] == '2.13.0+cpu'
    assert pins['mujoco'] == '3.3.0'
    assert pins['gym-hil'] == '0.1.14'
    for line in (ROOT / 'requirements/requirements.txt').read_text().splitlines():
        line = line.split('#', 1)[0].strip()
        if line:
            name = re.sub(r'[-_.]+', '-', re.split(r'[\[<>=!~; ]', line, maxsplit=1)[0]).lower()
            assert name in pins, f'requirements.txt: {name} not pinned in constraints.txt'


def test_installed_versions_match_constraints():
    pins = _pins()
    wrong = []
    for dist in importlib.metadata.distributions():
        key = re.sub(r'[-_.]+', '-', dist.metadata['Name']).lower()
        if key == 'torch' and dist.version.split('+')[0] == pins[key].split('+')[0]:
            continue  # a lab's CUDA build of the pinned torch (scripts/setup.sh keeps it) counts as the pin
        if key in pins and dist.version != pins[key]:
            wrong.append(f'{key}: installed {dist.version}, pinned {pins[key]}')
    assert not wrong, 'venv differs from constraints.txt (run scripts/setup.sh):\n' + '\n'.join(wrong)


# ---------------------------------------------------------------------------------------------- README / CI
README_COMMANDS = [
    'bash scripts/setup.sh && .venv/bin/irevla demo',
    'bash scripts/setup.sh && bash scripts/test.sh',
]


def test_readme_starts_with_the_two_commands():
    lines = (ROOT / 'README.md').read_text().splitlines()
    assert lines[0].startswith('```'), 'README.md must start with a code block'
    commands = [line.split('#', 1)[0].strip() for line in lines[1:3]]
    assert commands == README_COMMANDS
    assert lines[3].strip() == '```'


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / '.ci/run').read_text()
    assert ci.startswith('#!/usr/bin/env bash') or ci.startswith('#!/bin/bash')
    assert 'set -euo pipefail' in ci
    body = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith('#')]
    assert README_COMMANDS[1] in body
