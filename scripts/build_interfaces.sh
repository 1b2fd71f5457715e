#!/usr/bin/env bash
# Build irevla's custom ROS 2 interface packages (every package under interfaces/, e.g. irevla_interfaces) into the
# project's venv WITHOUT colcon: `bash scripts/build_interfaces.sh [--force]`.
#
# Each package is an ordinary ament_cmake / rosidl package (a ROS 2 workspace builds it with colcon as usual). Here
# it is configured with the pip-installed ament_cmake + rosidl_default_generators wheels, built with ninja and
# installed with the venv as the install prefix, so its Python modules land in the venv's site-packages and its C
# libraries in .venv/lib (which the ROS wheels' bootstrapper already puts on LD_LIBRARY_PATH): after this,
# `.venv/bin/python -c "from irevla_interfaces.action import ExecuteInstruction"` works with no environment set.
#
# Idempotent: a package is rebuilt only when the hash of its files, this script, the Python version and the
# installed ROS wheel versions differs from the stamp left by its last successful build
# (.venv/share/<pkg>/irevla-build-stamp), or when its Python package is missing. IREVLA_FORCE=1 or --force rebuilds.
# Needs: cmake >= 3.16, ninja, g++ (scripts/setup.sh installs them) and the pip requirements (ament_cmake,
# rosidl_default_generators wheels: requirements/requirements.txt).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IREVLA_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"
SRC_ROOT="$ROOT/interfaces"
BUILD_ROOT="$VENV/build-interfaces"
FORCE="${IREVLA_FORCE:-0}"
[[ "${1:-}" == "--force" ]] && FORCE=1

say() { printf '[interfaces] %s\n' "$*"; }
die() { printf '[interfaces] ERROR: %s\n' "$*" >&2; exit 1; }

[[ -x "$VPY" ]] || die "$VPY missing: run 'bash scripts/setup.sh' first (it creates the venv)"
[[ -d "$SRC_ROOT" ]] || die "$SRC_ROOT missing"
mapfile -t PACKAGES < <(find "$SRC_ROOT" -mindepth 2 -maxdepth 2 -name package.xml -printf '%h\n' | sort)
((${#PACKAGES[@]} > 0)) || die "no package (folder with a package.xml) under $SRC_ROOT"

SP="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# Everything a build depends on besides the package's own files: the generators and runtime wheels, this script.
toolchain_hash() {
  { "$VPY" -V 2>&1
    (cd "$SP" && ls -d ros_*.dist-info 2>/dev/null | sort)
    cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -d' ' -f1
}
package_hash() {  # $1 = package dir: every file's relative path and content, plus the toolchain hash
  local dir="$1"
  { echo "$TOOLCHAIN"
    (cd "$dir" && find . -type f ! -name '*~' ! -path '*/__pycache__/*' -print0 | sort -z \
       | xargs -0 sha256sum); } | sha256sum | cut -d' ' -f1
}
TOOLCHAIN="$(toolchain_hash)"

# ---------------------------------------------------------------- what needs building
todo=()
for dir in "${PACKAGES[@]}"; do
  pkg="$(basename "$dir")"
  stamp="$VENV/share/$pkg/irevla-build-stamp"
  want="$(package_hash "$dir")"
  if [[ "$FORCE" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$SP/$pkg/__init__.py" ]]; then
    say "$pkg: up to date (stamp matches): skipped"
  else
    todo+=("$dir")
  fi
done
((${#todo[@]} > 0)) || exit 0

# ---------------------------------------------------------------- toolchain checks (only when building)
missing=()
for tool in cmake ninja g++; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
((${#missing[@]} == 0)) || die "missing build tools: ${missing[*]} (apt-get install cmake ninja-build g++; scripts/setup.sh does this)"
for cm in ament_cmake rosidl_default_generators rosidl_core_generators ament_cmake_ros_core; do
  [[ -d "$VENV/share/$cm/cmake" ]] || die "$cm is not installed in $VENV: run 'bash scripts/setup.sh' (requirements/requirements.txt lists the generator wheels)"
done

# The ROS wheels are built on manylinux: their exported CMake targets name that machine's Python and numpy include
# dirs, which do not exist here. Point them at this venv's (idempotent: only files that still contain them).
PY_INC="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NP_INC="$("$VPY" -c 'import numpy; print(numpy.get_include())')"
mapfile -t to_patch < <(grep -rlF '/opt/python/cp311-cp311/' "$VENV"/share/*/cmake 2>/dev/null || true)
if ((${#to_patch[@]} > 0)); then
  say "pointing ${#to_patch[@]} CMake export file(s) of the ROS wheels at this venv's Python/numpy include dirs"
  sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NP_INC#g" \
         -e "s#/opt/python/cp311-cp311/include/python3.11#$PY_INC#g" "${to_patch[@]}"
fi

export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export PATH="$VENV/bin:$PATH"
export _ROS_WHEELS_BOOTSTRAP_COMPLETE=1 LD_LIBRARY_PATH="$VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# ---------------------------------------------------------------- build + install
for dir in "${todo[@]}"; do
  pkg="$(basename "$dir")"
  build="$BUILD_ROOT/$pkg"
  log="$BUILD_ROOT/$pkg.log"
  t=$SECONDS
  mkdir -p "$build"
  say "$pkg: building into $VENV (log: $log)"
  # Files of the previous install first, so that a removed .msg leaves nothing behind.
  if [[ -f "$build/install_manifest.txt" ]]; then
    xargs -r -d '\n' rm -f < "$build/install_manifest.txt"
  fi
  rm -f "$VENV/share/$pkg/irevla-build-stamp"
  if ! { cmake -S "$dir" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$VENV" \
           -DPython3_EXECUTABLE="$VPY" -DPYTHON_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF \
         && cmake --build "$build" \
         && cmake --install "$build"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "$pkg: build failed (full log: $log)"
  fi
  # The proof that matters: the venv's Python imports every generated interface.
  if ! "$VPY" - "$pkg" "$dir" >>"$log" 2>&1 <<'EOF'
import importlib, pathlib, sys
pkg, src = sys.argv[1], pathlib.Path(sys.argv[2])
names = [(kind, f.stem) for kind in ("msg", "srv", "action") for f in sorted((src / kind).glob(f"*.{kind}"))]
for kind, name in names:
    getattr(importlib.import_module(f"{pkg}.{kind}"), name)
print(f"{pkg}: imported {len(names)} interfaces")
EOF
  then
    tail -n 20 "$log" >&2
    die "$pkg: built, but the venv's Python cannot import it (log: $log)"
  fi
  package_hash "$dir" > "$VENV/share/$pkg/irevla-build-stamp"
  say "$pkg: built and importable ($((SECONDS - t)) s)"
done
