#!/usr/bin/env bash
# Install everything irevla needs, idempotently:
#   1. Debian packages the tests and devices need (only the missing ones; one `apt-get update`).
#   2. .venv with Python 3.11 (created if missing).
#   3. torch==2.13.0+cpu FIRST (the local CPU build), then requirements/requirements.txt with
#      requirements/constraints.txt, then `pip install -e .` (the irevla package itself).
#      Skipped when .venv/.setup-stamp holds the hash of the requirement/package files and the venv
#      still has torch and irevla installed.
#      GPU workstations (docs/gpu_workstation.md; the decision is scripts/torch_plan.py):
#      - a torch whose build reports CUDA (torch.version.cuda) already in .venv, or in the interpreter a new
#        .venv is made from (the venv then sees its site-packages), is KEPT: never replaced by the CPU wheel;
#        the rest installs with constraints.txt minus its torch pin, plus a pin to the installed version;
#      - `--cuda TAG` (or IREVLA_TORCH_CUDA=TAG), e.g. `bash scripts/setup.sh --cuda cu128`, installs
#        torch==2.13.0+TAG from https://download.pytorch.org/whl/TAG (IREVLA_TORCH_INDEX: another index);
#      - otherwise (no torch, or the CPU one) exactly the CPU path above.
#      `--torch-plan` prints the decision and exits (installs nothing).
#   4. Mirrors the ament data_files (package.xml, launch/, config/, ament index marker) into .venv/share,
#      which an editable install does not do.
#   5. Builds the custom ROS 2 interfaces (interfaces/*, e.g. irevla_interfaces) into .venv without colcon
#      (scripts/build_interfaces.sh); skipped when .venv/share/<pkg>/irevla-build-stamp holds the hash of the
#      interface files, the build script and the installed ROS wheels.
# Options: --cuda TAG, --torch-plan, --help.
# Environment: IREVLA_PYTHON (interpreter, default python3.11), IREVLA_SKIP_APT=1, IREVLA_FORCE=1,
#              IREVLA_TORCH_CUDA=TAG (= --cuda TAG), IREVLA_TORCH_INDEX=URL.
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

TORCH_ARGS=()   # for scripts/torch_plan.py
PLAN_ONLY=0
while (($#)); do
  case "$1" in
    --cuda) [[ $# -ge 2 ]] || die "--cuda needs a PyTorch wheel tag, e.g. --cuda cu128"
            TORCH_ARGS+=(--cuda "$2"); shift 2 ;;
    --cuda=*) TORCH_ARGS+=(--cuda "${1#--cuda=}"); shift ;;
    --torch-plan) PLAN_ONLY=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (bash scripts/setup.sh --help)" ;;
  esac
done
# The torch decision for interpreter $1 (scripts/torch_plan.py): T_ACTION cpu | keep | install-cuda, T_SPEC,
# T_INDEX, T_VERSION (what the venv must end with), T_NOTE.
T_ACTION=cpu T_SPEC="$TORCH_PIN" T_INDEX="" T_VERSION="2.13.0+cpu" T_NOTE=""
torch_plan() {
  local out k v
  out="$("$1" "$ROOT/scripts/torch_plan.py" ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"})" || die "scripts/torch_plan.py failed"
  while IFS='=' read -r k v; do
    case "$k" in
      action) T_ACTION=$v ;; spec) T_SPEC=$v ;; index) T_INDEX=$v ;; version) T_VERSION=$v ;; note) T_NOTE=$v ;;
    esac
  done <<< "$out"
  [[ $T_ACTION == cpu || $T_ACTION == keep || $T_ACTION == install-cuda ]] || die "torch_plan: bad action $T_ACTION"
}

# ---------------------------------------------------------------- 1. system packages
APT_PACKAGES=(
  libegl1 libgl1 libosmesa6          # MuJoCo offscreen rendering (MUJOCO_GL=egl, fallback osmesa)
  libusb-1.0-0                       # pyrealsense2 import
  libhidapi-hidraw0 libhidapi-libusb0  # pyspacemouse
  iproute2 util-linux                # `ip` and `unshare` for the private test network namespace
  ffmpeg                             # video encode/decode tools
  cmake ninja-build g++              # build the custom ROS 2 interfaces (scripts/build_interfaces.sh)
)
if ((PLAN_ONLY)); then
  :  # --torch-plan: nothing is installed
elif [[ "${IREVLA_SKIP_APT:-0}" == 1 ]]; then
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
if ((PLAN_ONLY)); then
  if [[ -x "$VENV/bin/python" ]]; then torch_plan "$VENV/bin/python"; else
    command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set IREVLA_PYTHON to a Python 3.11 interpreter)"
    torch_plan "$PY"
  fi
  printf 'action=%s\nspec=%s\nindex=%s\nversion=%s\nnote=%s\n' \
    "$T_ACTION" "$T_SPEC" "$T_INDEX" "$T_VERSION" "$T_NOTE"
  exit 0
fi
if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
  say "venv: $VENV exists ($("$VENV/bin/python" -V 2>&1))"
else
  command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set IREVLA_PYTHON to a Python 3.11 interpreter)"
  if [[ -e "$VENV" ]]; then say "venv: $VENV is broken or not Python 3.11: recreating"; rm -rf "$VENV"; fi
  torch_plan "$PY"
  if [[ $T_ACTION == keep ]]; then  # the lab's GPU torch in the base interpreter: reuse it, never a CPU one
    say "venv: creating $VENV with $("$PY" -V 2>&1), seeing its site-packages ($T_NOTE)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    say "venv: creating $VENV with $("$PY" -V 2>&1)"
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
pip_q() {  # quiet pip; drops the harmless "Location ... is ignored" notes about absent local index folders
  "${PIP[@]}" "$@" 2>&1 | { grep -v -e 'is ignored: it is neither a file nor a directory' || true; }
}

# ---------------------------------------------------------------- 3. Python packages
torch_plan "$VPY"
hash_inputs() {  # (the CPU path hashes exactly what it always did; a kept / CUDA torch adds its version)
  { "$VPY" -V 2>&1; cat "$REQ" "$CON" setup.py setup.cfg package.xml
    [[ $T_ACTION == cpu ]] || echo "torch $T_VERSION"; } | sha256sum | cut -d' ' -f1
}
installed_ok() {
  # cheap check (no imports): torch CPU build (or the kept / asked-for GPU build) and the editable irevla are present
  local sp; sp="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  if [[ $T_ACTION == cpu ]]; then
    compgen -G "$sp/torch-2.13.0+cpu.dist-info" >/dev/null || return 1
  else
    [[ "$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)" == "$T_VERSION" ]] \
      || return 1
  fi
  compgen -G "$sp/irevla-*.dist-info" >/dev/null && [[ -x "$VENV/bin/irevla" ]]
}
WANT="$(hash_inputs)"
if [[ "${IREVLA_FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && installed_ok; then
  say "pip: up to date (stamp matches $REQ, $CON, setup.py/cfg, package.xml): skipped"
else
  rm -f "$STAMP"
  t=$SECONDS
  say "pip: pip and setuptools at the pinned versions"
  pip_q install -q -c "$CON" pip setuptools
  RUN_CON="$CON"
  if [[ $T_ACTION == cpu ]]; then
    say "pip: installing $TORCH_PIN first (local CPU build; never a CUDA torch)"
    pip_q install -q -c "$CON" "$TORCH_PIN"
  else
    # constraints.txt pins the CPU build: a copy pinning this torch instead, so nothing replaces it
    RUN_CON="$(mktemp "${TMPDIR:-/tmp}/irevla-constraints.XXXXXX")"
    trap 'rm -f "$RUN_CON"' EXIT
    { grep -v -E '^[[:space:]]*torch[[:space:]]*==' "$CON"; echo "torch==$T_VERSION"; } > "$RUN_CON"
    say "pip: $T_NOTE"
    if [[ $T_ACTION == install-cuda ]]; then
      pip_q install -q -c "$RUN_CON" --extra-index-url "$T_INDEX" "$T_SPEC"
    fi
  fi
  if [[ $RUN_CON == "$CON" ]]; then say "pip: installing $REQ with $CON"; else
    say "pip: installing $REQ with $CON (its torch pin replaced by torch==$T_VERSION)"; fi
  pip_q install -q -r "$REQ" -c "$RUN_CON"
  say "pip: installing irevla (editable)"
  pip_q install -q --no-build-isolation --no-deps -e .
  tv="$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
  [[ "$tv" == "$T_VERSION" ]] || die "torch is $tv, expected $T_VERSION: something pulled another torch"
  say "pip: checking dependency consistency"
  if grep -qi '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" 2>/dev/null; then
    # the venv sees the base interpreter's packages (its GPU torch): their own conflicts are reported, not fatal
    "${PIP[@]}" check || say "pip: WARNING: pip check found conflicts (packages of the base interpreter included)"
  else
    "${PIP[@]}" check
  fi
  hash_inputs > "$STAMP"
  say "pip: done ($((SECONDS - t)) s, torch $tv)"
fi

# ---------------------------------------------------------------- 3b. optional groups
# IREVLA_EXTRAS=metaworld (comma- or space-separated): requirements/<group>.txt under the same constraints; pip
# leaves an installed group alone (a few seconds), and torch must stay the pinned build.
EXTRAS="${IREVLA_EXTRAS:-}"
for extra in ${EXTRAS//,/ }; do
  f="$ROOT/requirements/$extra.txt"
  [[ -f "$f" ]] || die "IREVLA_EXTRAS: no optional group '$extra' (requirements/$extra.txt)"
  say "pip: optional group $extra ($f)"
  pip_q install -q -r "$f" -c "${RUN_CON:-$CON}"
  tv="$("$VPY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
  [[ "$tv" == "$T_VERSION" ]] || die "torch is $tv after '$extra', expected $T_VERSION"
done

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
