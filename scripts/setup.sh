#!/usr/bin/env bash
# Install everything irevla needs, idempotently:
#   1. Debian packages the tests and devices need (only the missing ones; one `apt-get update`).
#   2. .venv with Python 3.11 (created if missing).
#   3. torch==2.13.0+cpu FIRST (the local CPU build), then requirements/requirements.txt with
#      requirements/constraints.txt, then `pip install -e .` (the irevla package itself).
#      Skipped when .venv/.setup-stamp holds the hash of the requirement/package files and the venv
#      still has torch and irevla installed.
#   4. Mirrors the ament data_files (package.xml, launch/, config/, ament index marker) into .venv/share,
#      which an editable install does not do.
#   5. Builds the custom ROS 2 interfaces (interfaces/*, e.g. irevla_interfaces) into .venv without colcon
#      (scripts/build_interfaces.sh); skipped when .venv/share/<pkg>/irevla-build-stamp holds the hash of the
#      interface files, the build script and the installed ROS wheels.
# Environment: IREVLA_PYTHON (interpreter, default python3.11), IREVLA_SKIP_APT=1, IREVLA_FORCE=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
REQ="requirements/requirements.txt"
CON="requirements/constraints.txt"
STAMP="$VENV/.setup-stamp"
TORCH_PIN="torch==2.13.0+cpu"
T0=$SECONDS

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- 1. system packages
APT_PACKAGES=(
  libegl1 libgl1 libosmesa6          # MuJoCo offscreen rendering (MUJOCO_GL=egl, fallback osmesa)
  libusb-1.0-0                       # pyrealsense2 import
  libhidapi-hidraw0 libhidapi-libusb0  # pyspacemouse
  iproute2 util-linux                # `ip` and `unshare` for the private test network namespace
  ffmpeg                             # video encode/decode tools
  cmake ninja-build g++              # build the custom ROS 2 interfaces (scripts/build_interfaces.sh)
)
if [[ "${IREVLA_SKIP_APT:-0}" == 1 ]]; then
  say "apt: skipped (IREVLA_SKIP_APT=1)"
else
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  if ((${#missing[@]} == 0)); then
    say "apt: all ${#APT_PACKAGES[@]} system packages present"
  else
    SUDO=()
    if [[ $(id -u) != 0 ]]; then
      if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
        die "missing system packages (${missing[*]}) and not root / no sudo: install them and re-run"
      fi
    fi
    say "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    say "apt: done ($((SECONDS - T0)) s)"
  fi
fi

# ---------------------------------------------------------------- 2. virtual environment
PY="${IREVLA_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3 /root/.pyenv/versions/3.11*/bin/python3.11 /usr/bin/python3.11; do
    if command -v "$cand" >/dev/null 2>&1 \
       && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then PY="$cand"; break; fi
  done
  PY="${PY:-python3.11}"
fi
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  say "venv: $VENV exists ($("$VENV/bin/python" -V 2>&1))"
else
  command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set IREVLA_PYTHON to a Python 3.11 interpreter)"
  if [[ -e "$VENV" ]]; then say "venv: $VENV is broken or not Python 3.11: recreating"; rm -rf "$VENV"; fi
  say "venv: creating $VENV with $("$PY" -V 2>&1)"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
pip_q() {  # quiet pip; drops the harmless "Location ... is ignored" notes about absent local index folders
  "${PIP[@]}" "$@" 2>&1 | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
}

# ---------------------------------------------------------------- 3. Python packages
hash_inputs() {
  { "$VPY" -V 2>&1; cat "$REQ" "$CON" setup.py setup.cfg package.xml; } | sha256sum | cut -d' ' -f1
}
installed_ok() {
  # cheap check (no imports): torch CPU build and the editable irevla are present
  local sp; sp="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  compgen -G "$sp/torch-2.13.0+cpu.dist-info" >/dev/null && compgen -G "$sp/irevla-*.dist-info" >/dev/null \
    && [[ -x "$VENV/bin/irevla" ]]
}
WANT="$(hash_inputs)"
if [[ "${IREVLA_FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && installed_ok; then
  say "pip: up to date (stamp matches $REQ, $CON, setup.py/cfg, package.xml): skipped"
else
  rm -f "$STAMP"
  t=$SECONDS
  say "pip: pip and setuptools at the pinned versions"
  pip_q install -q -c "$CON" pip setuptools
  say "pip: installing $TORCH_PIN first (local CPU build; never a CUDA torch)"
  pip_q install -q -c "$CON" "$TORCH_PIN"
  say "pip: installing $REQ with $CON"
  pip_q install -q -r "$REQ" -c "$CON"
  say "pip: installing irevla (editable)"
  pip_q install -q --no-build-isolation --no-deps -e .
  tv="$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
  [[ "$tv" == "2.13.0+cpu" ]] || die "torch is $tv, expected 2.13.0+cpu: something pulled another torch"
  say "pip: checking dependency consistency"
  "${PIP[@]}" check
  hash_inputs > "$STAMP"
  say "pip: done ($((SECONDS - t)) s, torch $tv)"
fi

# ---------------------------------------------------------------- 4. ament data files for the editable install
# `pip install -e .` does not install setup.py's data_files; mirror them (as links into the work tree)
# so that ament_index_python.get_package_share_directory('irevla') works from the venv.
SHARE="$VENV/share"
mkdir -p "$SHARE/ament_index/resource_index/packages" "$SHARE/irevla"
: > "$SHARE/ament_index/resource_index/packages/irevla"
ln -sfn "$ROOT/package.xml" "$SHARE/irevla/package.xml"
for d in launch config; do
  if [[ -d "$ROOT/$d" ]]; then ln -sfn "$ROOT/$d" "$SHARE/irevla/$d"; else rm -f "$SHARE/irevla/$d"; fi
done

# ---------------------------------------------------------------- 5. custom ROS 2 interfaces
# Idempotent: build_interfaces.sh hashes interfaces/<pkg>/*, itself and the ROS wheel versions and skips a package
# whose stamp matches (IREVLA_FORCE=1 rebuilds).
bash "$ROOT/scripts/build_interfaces.sh"

say "ready in $((SECONDS - T0)) s: $VENV (run: bash scripts/test.sh)"
