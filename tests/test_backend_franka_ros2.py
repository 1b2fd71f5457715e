"""The franka_ros2 backend against a ROS 2 node with franka_ros2's real message layouts.

franka_msgs has no pip wheel: the fixture package tests/peers/franka_msgs (the interfaces the backend uses, with
franka_ros2's names and field layouts) is built with cmake into a cached prefix (tests/peers/provision.py). The
scenario (tests/peers/franka_ros2_inner.py: robot_node + the stand-in peer process, over DDS) then runs in a
subprocess with that prefix on PYTHONPATH / AMENT_PREFIX_PATH / LD_LIBRARY_PATH.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peers import provision, servers

ROOT = Path(__file__).resolve().parents[1]
INNER = ROOT / "tests" / "peers" / "franka_ros2_inner.py"

pytestmark = pytest.mark.ros


def test_franka_ros2_backend_against_ros2_peer():
    prefix = servers.provisioned(provision.franka_msgs)
    env = provision.ros_env(prefix)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "--timeout=180",
                        str(INNER)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    print(f"\ninner scenario: {time.monotonic() - t0:.1f} s\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}")
    assert r.returncode == 0, "the franka_ros2 scenario failed (output above)"


@pytest.mark.skipif(importlib.util.find_spec("franka_msgs") is not None, reason="franka_msgs is installed here")
def test_missing_franka_msgs_is_named():
    from robot_server.backends import make_backend
    with pytest.raises(RuntimeError, match=r"(?is)franka_msgs.*not importable.*source the franka_ros2 workspace"):
        make_backend("franka_ros2")


def test_shipped_configs_load_and_match_the_controller():
    """Every example config loads into its typed config; the controller YAML names exactly the parameters the
    C++ controller declares (it is built on a ROS 2 system, not here, so this is its check on this machine)."""
    import re

    import yaml

    from robot_server.backends import load_config
    from robot_server.backends.franka_libfranka import FrankaLibfrankaConfig
    from robot_server.backends.franka_ros2 import FrankaRos2Config
    from robot_server.backends.panda_py import PandaPyConfig
    from robot_server.cameras.realsense import RealSenseConfig

    cfg = ROOT / "config" / "backends"
    fr3 = load_config(FrankaLibfrankaConfig, cfg / "franka_libfranka.yaml", section="franka_libfranka")
    assert fr3.impedance.translational_error_clip == 0.01 and fr3.realtime
    assert load_config(PandaPyConfig, cfg / "panda_py.yaml", section="panda_py").arm_id == "panda"
    ros2 = load_config(FrankaRos2Config, cfg / "franka_ros2.yaml", section="franka_ros2")
    assert ros2.target_topic == "/cartesian_impedance_controller/target_pose"
    cams = load_config(RealSenseConfig, cfg / "realsense.yaml", section="realsense")
    assert [c.name for c in cams.cameras] == ["front", "wrist"] and cams.cameras[0].resize == (128, 128)

    doc = yaml.safe_load((ROOT / "config" / "franka_ros2_cartesian_impedance.yaml").read_text())
    params = set(doc["cartesian_impedance_controller"]["ros__parameters"])
    src = (ROOT / "hardware" / "franka_cartesian_impedance_controller" / "src" /
           "cartesian_impedance_controller.cpp").read_text()
    declared = set(re.findall(r'auto_declare<[^>]+>\("(\w+)"', src))
    assert params == declared, (params ^ declared)
    assert doc["controller_manager"]["ros__parameters"]["cartesian_impedance_controller"]["type"] in \
        (ROOT / "hardware" / "franka_cartesian_impedance_controller" /
         "franka_cartesian_impedance_controller.xml").read_text()
    # The backend publishes where the controller listens: ~/target_pose of a controller named like the YAML's.
    assert "~/target_pose" in src and ros2.target_topic == "/cartesian_impedance_controller/target_pose"
