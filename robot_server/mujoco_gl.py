"""MuJoCo's offscreen OpenGL backend for the commands that render.

MuJoCo reads MUJOCO_GL once, when `mujoco` is first imported; unset, it means GLFW, which needs a display and fails on
a headless machine with "an OpenGL platform library has not been loaded". `ensure_mujoco_gl()` (called by the `irevla`
dispatcher and the rendering console scripts before anything imports mujoco) picks the first backend that renders a
tiny scene in a child process (EGL, then OSMesa) and exports it, with PYOPENGL_PLATFORM to match, to this process and
every process it starts. A MUJOCO_GL the user set is kept as it is.
"""
from __future__ import annotations

import os
import subprocess
import sys

CANDIDATES = ("egl", "osmesa")
_none_renders = False  # probed once per process: no second probe (or warning) when nothing works

# A child process renders 16x16 pixels: proves the library loads, a context is made and draws (~0.5 s).
_PROBE = """
import mujoco
m = mujoco.MjModel.from_xml_string(
    '<mujoco><worldbody><light pos="0 0 1"/><geom type="sphere" size=".1"/></worldbody></mujoco>')
d = mujoco.MjData(m)
r = mujoco.Renderer(m, 16, 16)
mujoco.mj_forward(m, d)
r.update_scene(d)
assert r.render().any()
r.close()
"""


def backend_renders(name: str, timeout: float = 60.0) -> bool:
    """True when MuJoCo renders with MUJOCO_GL=name in a fresh process (a failed GL init can abort the process)."""
    env = dict(os.environ, MUJOCO_GL=name, PYOPENGL_PLATFORM=name)
    try:
        return subprocess.run([sys.executable, "-c", _PROBE], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_mujoco_gl() -> str | None:
    """Set MUJOCO_GL and PYOPENGL_PLATFORM unless MUJOCO_GL is already set; returns the backend in use (None: none
    renders, rendering will fail with MuJoCo's own error after the warning printed here). Call it before this
    process imports mujoco; child processes inherit the choice either way."""
    global _none_renders
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        return chosen  # the user's (or a parent irevla process's) choice
    if _none_renders:
        return None
    # A PYOPENGL_PLATFORM the user set must match MUJOCO_GL (mujoco refuses a mismatch), so it is tried first.
    preferred = os.environ.get("PYOPENGL_PLATFORM", "").lower()
    order = sorted(CANDIDATES, key=lambda c: c != preferred)
    for name in order:
        if backend_renders(name):
            os.environ["MUJOCO_GL"] = name
            os.environ["PYOPENGL_PLATFORM"] = name
            return name
    _none_renders = True
    print("irevla: warning: MuJoCo renders neither with EGL nor with OSMesa (install libegl1 or libosmesa6, see "
          "scripts/setup.sh, or set MUJOCO_GL)", file=sys.stderr)
    return None
