"""The offscreen GL backend of the commands that render: chosen by probing (EGL, then OSMesa) only when the user did
not set MUJOCO_GL, and really rendering afterwards; a user's setting is kept."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from robot_server import mujoco_gl

ROOT = Path(__file__).resolve().parents[1]

# A scene rendered in a fresh process with the environment the helper chose, as a command's child would see it.
RENDER = """
import os
from robot_server.mujoco_gl import ensure_mujoco_gl
print("chosen", ensure_mujoco_gl(), os.environ.get("PYOPENGL_PLATFORM"))
import mujoco
m = mujoco.MjModel.from_xml_string('<mujoco><worldbody><light pos="0 0 1"/><geom size=".1"/></worldbody></mujoco>')
d = mujoco.MjData(m)
r = mujoco.Renderer(m, 32, 32)
mujoco.mj_forward(m, d)
r.update_scene(d)
print("pixels", int(r.render().any()))
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}


def test_unset_picks_a_backend_that_renders():
    out = subprocess.run([sys.executable, "-c", RENDER], cwd=ROOT, env=_clean_env(), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    chosen = out.stdout.split("chosen ", 1)[1].split()
    assert chosen[0] in mujoco_gl.CANDIDATES and chosen[1] == chosen[0], out.stdout  # PYOPENGL_PLATFORM matches
    assert "pixels 1" in out.stdout


def test_a_users_setting_is_kept(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.delenv("PYOPENGL_PLATFORM", raising=False)
    assert mujoco_gl.ensure_mujoco_gl() == "osmesa"
    assert os.environ["MUJOCO_GL"] == "osmesa" and "PYOPENGL_PLATFORM" not in os.environ


def test_the_probe_can_fail():
    assert mujoco_gl.backend_renders("no_such_backend") is False


@pytest.mark.parametrize("name", mujoco_gl.CANDIDATES)
def test_probe_agrees_with_a_real_render(name):
    """backend_renders(name) is True exactly when a process with MUJOCO_GL=name renders the scene."""
    env = dict(_clean_env(), MUJOCO_GL=name, PYOPENGL_PLATFORM=name)
    real = subprocess.run([sys.executable, "-c", RENDER], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert mujoco_gl.backend_renders(name) == (real.returncode == 0 and "pixels 1" in real.stdout)
