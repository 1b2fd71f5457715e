"""The README's main job (issue 2 version): a scripted task driven to success over ROS 2 through robot_server only.

Runs the real CLI in a subprocess: it starts the sim cell (robot + camera nodes) as another process and commands it
over DDS. tests/conftest.py and scripts/test.sh keep DDS on loopback in a private network namespace.
"""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ros


def test_irevla_demo_drives_a_scripted_pick_to_success_over_ros():
    env = dict(os.environ, IREVLA_NO_NETNS=os.environ.get("IREVLA_NO_NETNS", ""))
    out = subprocess.run([sys.executable, "-m", "robot_server.cli", "scripted-demo", "--episodes", "1", "--seed", "4"],
                         capture_output=True, text=True, timeout=240, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "SUCCESS" in text and "1/1 episodes succeeded" in text
    assert "discovery=LOCALHOST" in text
    # both cameras streamed while the task ran
    line = next(l for l in text.splitlines() if "images received" in l)
    counts = [int(part.split()[1]) for part in line.split(":", 1)[1].split(",")]
    assert all(c > 5 for c in counts), line


def test_the_drawer_expert_runs_over_ros_from_the_scene_topic():
    """A fixture task: the expert reads the drawer's body frame and joint from the scene topic at every step."""
    out = subprocess.run([sys.executable, "-m", "robot_server.cli", "scripted-demo", "--task", "open_drawer",
                          "--episodes", "1", "--seed", "2"], capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "1/1 episodes succeeded" in text, text[-3000:]


def test_demo_refuses_tasks_it_cannot_drive_over_ros():
    out = subprocess.run([sys.executable, "-m", "robot_server.cli", "scripted-demo", "--task", "route_cable"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "route_cable' is cable_route" in out.stdout + out.stderr
