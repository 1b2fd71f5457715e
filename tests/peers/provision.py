"""Create (once, cached) everything the protocol-peer tests need, outside the project's venv.

    python tests/peers/provision.py            # all of it (scripts/test.sh runs this before entering its
                                               # network namespace, where the package registry is unreachable)
    python tests/peers/provision.py franky_sim_venv franka_msgs

Cache: $IREVLA_PEER_CACHE or ~/.cache/irevla/peers. Each item is built in a temporary directory, stamped with the
hash of its recipe and renamed into place, under a file lock: concurrent test processes build it once, a crash
leaves no half-built item, and a changed recipe (a version bump) builds a new one beside the old.

Items:
  franky_sim_venv   venv with franky-sim 1.0.4 (pulls mujoco 4.x, so it cannot live in the project venv)
  franka_sim_venv   venv with franka-sim 1.1.7 + numpy 1.26 (+ a local FR3 MJCF: its own would be downloaded)
  franky_client     franky-control 2.0.0 (+ websockets), --no-deps into a directory put on the worker's
                    PYTHONPATH: exactly what `pip install franky-control` into the project venv would add
  panda_client      panda-python 1.1.1 (libfranka 0.9) and its pure-Python dependencies, the same way
  franka_msgs       tests/peers/franka_msgs built with cmake into a prefix (the ROS 2 interface recipe)

pip only talks to the configured package registry. When an install fails, `registry_error()` tells a registry that
cannot be reached (tests then skip, naming it) from a real failure (tests fail).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent
VENV_PY = Path(sys.executable)  # the project's interpreter (tests run in it)

FRANKY_SIM = "franky-sim==1.0.4"
FRANKA_SIM = ("franka-sim==1.1.7", "numpy==1.26.4")
FRANKY_CLIENT = ("franky-control==2.0.0", "websockets==17.4")
PANDA_CLIENT = ("panda-python==1.1.1", "websockets==17.4", "requests==2.34.2", "urllib3==2.8.0",
                "charset-normalizer==3.5.2", "certifi==2026.10.18")


class ProvisionError(RuntimeError):
    """An item could not be built. `registry_unreachable`: pip's complaint when the package registry could not be
    reached at the time (and no earlier attempt failed while it could be); None for a real failure."""

    def __init__(self, message: str, registry_unreachable: Optional[str] = None):
        super().__init__(message)
        self.registry_unreachable = registry_unreachable


def cache_dir() -> Path:
    d = Path(os.environ.get("IREVLA_PEER_CACHE", "~/.cache/irevla/peers")).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run(cmd: list, log: Path, env: Optional[dict] = None, timeout: float = 900) -> None:
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if r.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ProvisionError(f"{cmd[0]} ... failed (exit {r.returncode}); log {log}:\n{tail}")


@contextlib.contextmanager
def _locked(name: str):
    with open(cache_dir() / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _item(name: str, recipe: tuple, build: Callable[[Path, Path], None], needs_registry: bool = True) -> Path:
    """Path of cache item `name` for `recipe`; built by build(dir, log) if missing.

    Built in place (venvs and cmake installs hard-code their own path) under the lock; the stamp file written last
    marks it complete, so a crash mid-build only leaves a directory that the next run wipes and rebuilds.
    """
    final = cache_dir() / f"{name}-{_hash(recipe)}"
    stamp = final / ".irevla-ready"
    if stamp.is_file():
        return final
    with _locked(name):
        if stamp.is_file():  # another process built it while we waited
            return final
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir(parents=True)
        log = final.with_name(final.name + ".log")
        log.write_text("")
        t0 = time.monotonic()
        print(f"[peers] building {name} in {final} (log: {log})", file=sys.stderr, flush=True)
        failed = final.with_name(final.name + ".failed")
        try:
            build(final, log)
        except Exception as exc:
            shutil.rmtree(final, ignore_errors=True)
            unreachable = registry_error() if needs_registry else None
            prior = json.loads(failed.read_text()) if failed.is_file() else None
            if prior is not None and prior["registry_unreachable"] is None and unreachable is not None:
                # e.g. inside the test network namespace after a real failure outside it: report the real one
                raise ProvisionError(f"{name}: an earlier build failed with the registry reachable: "
                                     f"{prior['error']}") from exc
            failed.write_text(json.dumps({"error": str(exc)[-3000:], "registry_unreachable": unreachable}))
            raise ProvisionError(f"{name}: {exc}", registry_unreachable=unreachable) from exc
        failed.unlink(missing_ok=True)
        stamp.write_text(json.dumps({"recipe": recipe, "seconds": round(time.monotonic() - t0, 1)}))
        print(f"[peers] {name} ready ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
        return final


def _pip(python: Path, args: list, log: Path) -> None:
    # Inside scripts/test.sh's network namespace the registry is out of reach: fail fast instead of retrying.
    quick = ["--retries", "0", "--timeout", "5"] if os.environ.get("IREVLA_NETNS") else []
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *quick, *args], log)


def _base_python() -> str:
    # `venv` from inside a venv builds on the underlying interpreter, which is what a peer venv needs.
    return getattr(sys, "_base_executable", None) or sys.executable


def _make_venv(path: Path, log: Path, packages: tuple) -> None:
    _run([_base_python(), "-m", "venv", path], log)
    _pip(path / "bin" / "python", list(packages), log)


def franky_sim_venv() -> Path:
    return _item("franky-sim-venv", (FRANKY_SIM, sys.version_info[:2]),
                 lambda tmp, log: _make_venv(tmp, log, (FRANKY_SIM,)))


def fr3_mjcf() -> Path:
    """franky-sim's FR3 MJCF with its mesh directory made absolute (franka-sim would download a model)."""
    assets = next((franky_sim_venv() / "lib").glob("python3*/site-packages/franky_sim/assets"))
    src = assets / "fr3.xml"
    out = cache_dir() / f"fr3-{_hash(str(src), src.stat().st_size)}.xml"
    if not out.is_file():
        text = src.read_text()
        if 'meshdir="assets"' not in text:
            raise ProvisionError(f"{src}: unexpected layout (no meshdir=\"assets\"); franky-sim changed?")
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text.replace('meshdir="assets"', f'meshdir="{assets / "meshes"}"'))
        tmp.rename(out)
    return out


def franka_sim_venv() -> Path:
    return _item("franka-sim-venv", (FRANKA_SIM, sys.version_info[:2]),
                 lambda tmp, log: _make_venv(tmp, log, FRANKA_SIM))


def _target(tmp: Path, log: Path, packages: tuple) -> None:
    _pip(VENV_PY, ["--no-deps", "--target", tmp, *packages], log)


def franky_client() -> Path:
    return _item("franky-client", (FRANKY_CLIENT, sys.version_info[:2]),
                 lambda tmp, log: _target(tmp, log, FRANKY_CLIENT))


def panda_client() -> Path:
    return _item("panda-client", (PANDA_CLIENT, sys.version_info[:2]),
                 lambda tmp, log: _target(tmp, log, PANDA_CLIENT))


def _ros_wheel_versions() -> list[str]:
    sp = Path(sysconfig.get_paths()["purelib"])
    return sorted(p.name for p in sp.glob("ros_*.dist-info"))


def franka_msgs() -> Path:
    """Install prefix of the franka_msgs fixture package (lib/, share/, lib/python3.X/site-packages/)."""
    src = PEERS / "franka_msgs"
    files = sorted((str(p.relative_to(src)), p.read_bytes().hex()) for p in src.rglob("*") if p.is_file())
    venv = VENV_PY.parent.parent

    def build(tmp: Path, log: Path) -> None:
        missing = [t for t in ("cmake", "ninja", "g++") if shutil.which(t) is None]
        if missing:
            raise ProvisionError(f"building franka_msgs needs {missing} (apt-get install cmake ninja-build g++)")
        env = dict(os.environ, CMAKE_PREFIX_PATH=str(venv), AMENT_PREFIX_PATH=str(venv),
                   PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", _ROS_WHEELS_BOOTSTRAP_COMPLETE="1",
                   LD_LIBRARY_PATH=f"{venv / 'lib'}{os.pathsep}{os.environ.get('LD_LIBRARY_PATH', '')}")
        build_dir = tmp.with_name(tmp.name + ".build")
        shutil.rmtree(build_dir, ignore_errors=True)
        try:
            # -O0: the generated code is only exercised by tests; optimising it costs most of the build time.
            _run(["cmake", "-S", src, "-B", build_dir, "-G", "Ninja", f"-DCMAKE_INSTALL_PREFIX={tmp}",
                  f"-DPython3_EXECUTABLE={VENV_PY}", "-DBUILD_TESTING=OFF", "-DCMAKE_BUILD_TYPE=None",
                  "-DCMAKE_C_FLAGS=-O0", "-DCMAKE_CXX_FLAGS=-O0"], log, env)
            _run(["cmake", "--build", build_dir], log, env)
            _run(["cmake", "--install", build_dir], log, env)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)

    return _item("franka-msgs", (files, _ros_wheel_versions(), sys.version_info[:2]), build, needs_registry=False)


def ros_env(prefix: Path) -> dict:
    """Environment for a process that imports the franka_msgs built into `prefix`."""
    site = next(prefix.glob("lib/python3*/site-packages"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(p for p in (str(prefix), env.get("AMENT_PREFIX_PATH", "")) if p)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(prefix / "lib"), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def registry_error(package: str = "franky-sim") -> Optional[str]:
    """None when pip can reach the package registry, else pip's complaint (the reason a peer test skips)."""
    try:
        r = subprocess.run([str(VENV_PY), "-m", "pip", "index", "versions", package, "--timeout", "10",
                            "--retries", "0", "--disable-pip-version-check"],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "pip index versions timed out after 60 s"
    if r.returncode == 0:
        return None
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip() and "WARNING: Location" not in ln]
    network = [ln for ln in lines if any(k in ln for k in ("NewConnectionError", "Name or service", "resolution",
                                                             "unreachable", "timed out", "ConnectTimeout"))]
    return (network or lines or [f"pip exit {r.returncode}"])[-1][:300]


ITEMS = {"franky_sim_venv": franky_sim_venv, "franka_sim_venv": franka_sim_venv, "fr3_mjcf": fr3_mjcf,
         "franky_client": franky_client, "panda_client": panda_client, "franka_msgs": franka_msgs}


def main(argv: Optional[list[str]] = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(ITEMS)
    unknown = [n for n in names if n not in ITEMS]
    if unknown:
        print(f"unknown item(s) {unknown}; known: {list(ITEMS)}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    failed = []

    def one(n: str) -> None:
        try:
            ITEMS[n]()
        except (ProvisionError, OSError, subprocess.SubprocessError) as e:
            failed.append(n)
            print(f"[peers] {n}: FAILED: {e}", file=sys.stderr)

    # Downloads (venvs) and the cmake build overlap; fr3_mjcf needs the franky-sim venv, so it comes last.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, [n for n in names if n != "fr3_mjcf"]))
    if "fr3_mjcf" in names:
        one("fr3_mjcf")
    print(f"[peers] {len(names) - len(failed)}/{len(names)} protocol-peer items ready in {cache_dir()} "
          f"({time.monotonic() - t0:.1f} s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
