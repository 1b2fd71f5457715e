"""scripts/setup.sh's torch decision (scripts/torch_plan.py) with fake inputs; nothing is installed.

The CPU path must stay exactly today's commands (CI runs `bash scripts/setup.sh` on a fresh clone); a CUDA torch
already there is kept, never replaced by the CPU wheel; `--cuda TAG` installs torch 2.13.0+TAG from the PyTorch index.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup.sh"
HELPER = ROOT / "scripts" / "torch_plan.py"


def _helper():
    spec = importlib.util.spec_from_file_location("torch_plan", HELPER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


tp = _helper()


def _parse(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.strip().splitlines())


# ---------------------------------------------------------------------------------------------- the decision
def test_no_torch_is_the_cpu_pin():
    p = tp.plan(None, None)
    assert (p["action"], p["spec"], p["version"], p["index"]) == ("cpu", "torch==2.13.0+cpu", "2.13.0+cpu", "")


def test_cpu_torch_stays_the_cpu_pin():
    assert tp.plan("2.13.0+cpu", None)["action"] == "cpu"
    assert tp.plan("2.12.1+cpu", None)["spec"] == "torch==2.13.0+cpu"  # an older CPU build: today's pin


def test_cuda_torch_is_kept_never_downgraded():
    p = tp.plan("2.13.0+cu128", "12.8")
    assert p["action"] == "keep" and p["version"] == "2.13.0+cu128" and p["spec"] == ""
    other = tp.plan("2.12.0+cu126", "12.6")  # another version the lab installed: kept too, with a warning
    assert other["action"] == "keep" and other["version"] == "2.12.0+cu126" and "2.13.0" in other["note"]
    assert tp.plan("2.13.0", "12.8")["action"] == "keep"  # a PyPI-default CUDA wheel has no local tag
    assert tp.plan("2.13.0+rocm6.4", "rocm 6.4")["action"] == "keep"


def test_explicit_cuda_option():
    p = tp.plan(None, None, "cu128")
    assert p == {**p, "action": "install-cuda", "spec": "torch==2.13.0+cu128", "version": "2.13.0+cu128",
                 "index": "https://download.pytorch.org/whl/cu128"}
    assert tp.plan("2.13.0+cpu", None, "cu130")["action"] == "install-cuda"  # replaces the CPU build
    assert tp.plan("2.13.0+cu126", "12.6", "cu128")["action"] == "install-cuda"  # asked for another CUDA build
    assert tp.plan("2.13.0+cu128", "12.8", "cu128")["action"] == "keep"  # already exactly that: no reinstall
    assert tp.plan(None, None, "cu128", "https://mirror.lab/whl/cu128")["index"] == "https://mirror.lab/whl/cu128"
    with pytest.raises(ValueError):
        tp.plan(None, None, "cpu; rm -rf /")


# ---------------------------------------------------------------------------------------------- probing
def _fake_site(tmp_path: Path, version: str, cuda) -> Path:
    site = tmp_path / "site"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text("raise ImportError('the probe must not import torch')\n")
    cuda_s = "None" if cuda is None else repr(cuda)
    (site / "torch" / "version.py").write_text(
        f"from typing import Optional\n__version__ = '{version}'\ndebug = False\ncuda: Optional[str] = {cuda_s}\n"
        "hip: Optional[str] = None\n")
    dist = site / f"torch-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    return site


@pytest.mark.parametrize("version,cuda,action", [("2.13.0+cu128", "12.8", "keep"), ("2.13.0+cpu", None, "cpu")])
def test_probe_reads_version_py_without_importing(tmp_path, version, cuda, action):
    site = _fake_site(tmp_path, version, cuda)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("IREVLA_TORCH_PROBE", None)
    env.pop("IREVLA_TORCH_CUDA", None)
    out = subprocess.run([sys.executable, str(HELPER)], env=env, capture_output=True, text=True, check=True).stdout
    p = _parse(out)
    assert p["action"] == action and p["version"] == (version if action == "keep" else "2.13.0+cpu")


def test_probe_of_this_venv_is_the_cpu_build():
    env = {k: v for k, v in os.environ.items() if not k.startswith("IREVLA_TORCH")}
    out = subprocess.run([sys.executable, str(HELPER)], env=env, capture_output=True, text=True, check=True).stdout
    assert _parse(out)["action"] == "cpu"


# ---------------------------------------------------------------------------------------------- setup.sh wiring
def _setup(*args, probe=None, extra_env=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IREVLA_TORCH")}
    if probe is not None:
        env["IREVLA_TORCH_PROBE"] = probe
    env.update(extra_env or {})
    return subprocess.run(["bash", str(SETUP), *args], env=env, capture_output=True, text=True, timeout=60)


def test_setup_torch_plan_option():
    r = _setup("--torch-plan", probe="none")
    assert r.returncode == 0, r.stderr
    assert _parse(r.stdout)["action"] == "cpu"
    keep = _parse(_setup("--torch-plan", probe="2.13.0+cu128 12.8").stdout)
    assert keep["action"] == "keep" and keep["version"] == "2.13.0+cu128"
    asked = _parse(_setup("--cuda", "cu128", "--torch-plan", probe="2.13.0+cpu none").stdout)
    assert asked["action"] == "install-cuda" and asked["index"].endswith("/cu128")
    env_asked = _parse(_setup("--torch-plan", probe="none", extra_env={"IREVLA_TORCH_CUDA": "cu126"}).stdout)
    assert env_asked["spec"] == "torch==2.13.0+cu126"
    assert _setup("--no-such-option").returncode != 0
    assert _setup("--cuda", "nonsense", "--torch-plan", probe="none").returncode != 0


FAKE_PY = r"""#!/usr/bin/env bash
# A stand-in interpreter: logs every call; `-m venv` / `-m pip` do nothing; everything else runs the real Python.
echo "$(basename "$0") $*" >> "$SIMLOG"
if [[ "$1" == -m && "$2" == venv ]]; then d="${@: -1}"; mkdir -p "$d/bin"; cp "$SIMPY" "$d/bin/python"
  [[ "$3" == --system-site-packages ]] && echo "include-system-site-packages = true" > "$d/pyvenv.cfg"; exit 0; fi
if [[ "$1" == -m && "$2" == pip ]]; then exit 0; fi
if [[ "$1" == -V ]]; then echo "Python 3.11.9"; exit 0; fi
if [[ "$*" == *'m.version("torch")'* && -n "${SIMTORCH:-}" ]]; then echo "$SIMTORCH"; exit 0; fi
exec "$REALPY" "$@"
"""


def _fresh_clone(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("requirements", "launch", "config"):
        (repo / name).mkdir()
    for f in ("requirements/requirements.txt", "requirements/constraints.txt", "setup.py", "setup.cfg", "package.xml",
              "scripts/setup.sh", "scripts/torch_plan.py"):
        shutil.copy(ROOT / f, repo / f)
    (repo / "scripts" / "build_interfaces.sh").write_text("#!/usr/bin/env bash\necho interfaces\n")
    return repo


def _run_fresh(tmp_path: Path, *args, probe: str, torch_after: str):
    repo = _fresh_clone(tmp_path)
    fake = tmp_path / "python3.11"
    fake.write_text(FAKE_PY)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IREVLA_")}
    env.update(IREVLA_PYTHON=str(fake), IREVLA_SKIP_APT="1", IREVLA_TORCH_PROBE=probe, SIMLOG=str(log),
               SIMPY=str(fake), REALPY=sys.executable, SIMTORCH=torch_after, TMPDIR=str(tmp_path))
    r = subprocess.run(["bash", str(repo / "scripts" / "setup.sh"), *args], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = [line for line in log.read_text().splitlines() if "torch_plan.py" not in line]
    pip = [line.split(" -m pip --disable-pip-version-check ", 1)[1] for line in calls if " -m pip " in line]
    venv = [line for line in calls if " -m venv " in line]
    return pip, venv, r.stdout


def test_fresh_machine_runs_todays_commands(tmp_path):
    pip, venv, out = _run_fresh(tmp_path, probe="none", torch_after="2.13.0+cpu")
    assert pip == ["install -q -c requirements/constraints.txt pip setuptools",
                   "install -q -c requirements/constraints.txt torch==2.13.0+cpu",
                   "install -q -r requirements/requirements.txt -c requirements/constraints.txt",
                   "install -q --no-build-isolation --no-deps -e .",
                   "check"]
    assert venv == [f"python3.11 -m venv {tmp_path / 'repo' / '.venv'}"]
    assert "installing torch==2.13.0+cpu first" in out


def test_cuda_torch_in_base_interpreter_is_kept(tmp_path):
    pip, venv, out = _run_fresh(tmp_path, probe="2.13.0+cu128 12.8", torch_after="2.13.0+cu128")
    assert venv == [f"python3.11 -m venv --system-site-packages {tmp_path / 'repo' / '.venv'}"]
    assert not any("torch==2.13.0+cpu" in c for c in pip)
    req = [c for c in pip if c.startswith("install -q -r requirements/requirements.txt")]
    assert len(req) == 1 and "requirements/constraints.txt" not in req[0].split("-c ", 1)[1]
    assert "done" in out and "torch 2.13.0+cu128" in out


def test_explicit_cuda_installs_from_the_pytorch_index(tmp_path):
    pip, venv, out = _run_fresh(tmp_path, "--cuda", "cu128", probe="none", torch_after="2.13.0+cu128")
    assert venv == [f"python3.11 -m venv {tmp_path / 'repo' / '.venv'}"]
    torch_calls = [c for c in pip if "torch==" in c]
    assert len(torch_calls) == 1
    assert torch_calls[0].endswith("--extra-index-url https://download.pytorch.org/whl/cu128 torch==2.13.0+cu128")
    assert not any("torch==2.13.0+cpu" in c for c in pip)
