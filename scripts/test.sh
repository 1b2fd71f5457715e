#!/usr/bin/env bash
# Run the irevla test suite: `bash scripts/test.sh [pytest args...]` (default: all of tests/).
# - Inside a private network namespace (unshare -n, only loopback up) so that DDS traffic of the ROS 2
#   tests can neither leave the machine nor meet another run; falls back to the host network with a
#   warning when unshare is not permitted (ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a per-run
#   ROS_DOMAIN_ID still apply).
# - MUJOCO_GL=egl, or osmesa when a tiny EGL render fails (an explicit MUJOCO_GL is kept).
# - Exit status is pytest's; "no tests collected" (pytest exit 5) counts as a failure.
# Environment: IREVLA_TEST_TIMEOUT (per-test seconds, default 300), IREVLA_NO_NETNS=1 (host network).
# Inside the namespace IREVLA_NETNS=1 is exported (the convention of robot_server/isolation.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VPY="$ROOT/.venv/bin/python"
[[ -x "$VPY" ]] || { echo "[test] ERROR: $VPY missing: run 'bash scripts/setup.sh' first" >&2; exit 2; }

say() { printf '[test] %s\n' "$*"; }

export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( $$ % 100 + 1 ))}"
export PYTHONDONTWRITEBYTECODE=1

# ---------------------------------------------------------------- MuJoCo offscreen backend
# The same choice as every rendering irevla command (robot_server/mujoco_gl.py: EGL, else OSMesa, probed in a child).
if [[ -n "${MUJOCO_GL:-}" ]]; then
  say "MUJOCO_GL=$MUJOCO_GL (from the environment)"
else
  gl="$("$VPY" -c 'from robot_server.mujoco_gl import ensure_mujoco_gl; print(ensure_mujoco_gl() or "")')"
  if [[ -n "$gl" ]]; then
    export MUJOCO_GL="$gl" PYOPENGL_PLATFORM="$gl"
    say "MUJOCO_GL=$gl"
  else
    export MUJOCO_GL=egl
    say "WARNING: neither EGL nor OSMesa rendering works: tests that render will fail (run scripts/setup.sh)"
  fi
fi

# ---------------------------------------------------------------- protocol peers
# franky-sim / franka-sim venvs, robot bindings, the franka_msgs fixture build (tests/peers/provision.py): created once
# in ~/.cache/irevla/peers (IREVLA_PEER_CACHE), here because the namespace below cannot reach the package registry.
# Cached: a fraction of a second. A failure only warns; the peer tests then say why they skip or fail.
if [[ "${IREVLA_SKIP_PEERS:-0}" != 1 && -f tests/peers/provision.py ]]; then
  "$VPY" tests/peers/provision.py || say "WARNING: protocol peers not fully provisioned (details above)"
fi

# ---------------------------------------------------------------- pytest
PYTEST=("$VPY" -m pytest -q --timeout="${IREVLA_TEST_TIMEOUT:-300}")
if (($# == 0)); then PYTEST+=(tests); else PYTEST+=("$@"); fi

# The inner script: bring loopback up, mark the namespace (robot_server.isolation then does not nest
# another one, so processes started by tests share it), then run the command given as its arguments.
INNER='set -e; ip link set lo up; export IREVLA_NETNS=1; exec "$@"'
# root: a plain network namespace; otherwise a user namespace mapping us to root inside it.
if [[ $(id -u) == 0 ]]; then UNSHARE=(unshare -n); else UNSHARE=(unshare -rn); fi
rc=0
if [[ "${IREVLA_NO_NETNS:-0}" != 1 && -z "${IREVLA_NETNS:-}" ]] && command -v unshare >/dev/null 2>&1 \
   && command -v ip >/dev/null 2>&1 && "${UNSHARE[@]}" bash -c 'ip link set lo up' >/dev/null 2>&1; then
  say "private network namespace (${UNSHARE[*]}, lo only); ROS_DOMAIN_ID=$ROS_DOMAIN_ID; ${PYTEST[*]:1}"
  "${UNSHARE[@]}" bash -c "$INNER" bash "${PYTEST[@]}" || rc=$?
elif [[ -n "${IREVLA_NETNS:-}" ]]; then
  say "already inside a private network namespace (IREVLA_NETNS=$IREVLA_NETNS); ROS_DOMAIN_ID=$ROS_DOMAIN_ID"
  "${PYTEST[@]}" || rc=$?
else
  say "WARNING: no private network namespace (unshare -n not permitted or disabled):"
  say "WARNING: running on the host network, DDS limited by ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, ROS_DOMAIN_ID=$ROS_DOMAIN_ID"
  "${PYTEST[@]}" || rc=$?
fi

if ((rc == 5)); then
  say "FAILED: pytest collected no tests (exit 5)"
elif ((rc != 0)); then
  say "FAILED: pytest exit status $rc"
fi
exit "$rc"
