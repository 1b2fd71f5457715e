"""robot_server.ros_main.declare_config on a real rclpy node: ROS parameters onto a typed dataclass, with the
overrides a launch file or `--ros-args -p` gives, and clear errors for wrong values."""
from __future__ import annotations

import dataclasses
from typing import Union

import pytest

from robot_server.ros_main import declare_config
from robot_server.typed_config import ConfigError

pytestmark = pytest.mark.ros


@dataclasses.dataclass(frozen=True)
class Params:
    task: str = "pick_eggplant"
    seed: int = 0
    rate_hz: float = 10  # an int default: still a DOUBLE parameter
    harvest: bool = True
    home: tuple[float, ...] = (0.4, 0.0, 0.3)
    console: Union[bool, str] = "auto"
    cameras: list[str] = dataclasses.field(default_factory=list)
    help_me: str = dataclasses.field(default="", metadata={"help": "shown by ros2 param describe"})

    def __post_init__(self):
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


def _node(ros_context, name, **overrides):
    import rclpy
    from rclpy.parameter import Parameter
    return rclpy.create_node(name, context=ros_context,
                             parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def test_defaults_and_overrides_reach_the_dataclass(ros_context):
    node = _node(ros_context, "params_defaults")
    try:
        p = declare_config(node, Params)
        assert p == Params(rate_hz=10.0, home=(0.4, 0.0, 0.3)) and p.cameras == []
        assert isinstance(p.rate_hz, float) and isinstance(p.home, tuple)
        assert node.describe_parameter("help_me").description == "shown by ros2 param describe"
    finally:
        node.destroy_node()
    node = _node(ros_context, "params_overrides", task="press_green_button", seed=3, rate_hz=30.0, harvest=False,
                 home=[0.5, 0.1, 0.2], console=False, cameras=["front", "wrist"])
    try:
        p = declare_config(node, Params)
        assert (p.task, p.seed, p.rate_hz, p.harvest, p.home, p.console, p.cameras) == \
            ("press_green_button", 3, 30.0, False, (0.5, 0.1, 0.2), False, ["front", "wrist"])
        node_on = _node(ros_context, "params_console", console="on")
        assert declare_config(node_on, Params).console == "on"  # Union: any ROS type
        node_on.destroy_node()
    finally:
        node.destroy_node()


@pytest.mark.parametrize("override, message", [
    ({"seed": "three"}, r"params_bad\.seed: expected int"),
    ({"seed": -1}, r"params_bad: seed must be >= 0, got -1"),
])
def test_a_wrong_value_names_the_parameter(ros_context, override, message):
    node = _node(ros_context, "params_bad", **override)
    try:
        with pytest.raises(ConfigError, match=message):
            declare_config(node, Params)
    finally:
        node.destroy_node()


def test_a_field_without_a_default_is_refused(ros_context):
    @dataclasses.dataclass
    class NoDefault:
        checkpoint: str

    node = _node(ros_context, "params_required")
    try:
        with pytest.raises(TypeError, match="NoDefault.checkpoint: a ROS parameter needs a default"):
            declare_config(node, NoDefault)
    finally:
        node.destroy_node()


def test_a_later_set_is_checked_and_current_config_reads_it(ros_context):
    from rclpy.parameter import Parameter

    from robot_server.ros_main import current_config

    node = _node(ros_context, "params_set")
    try:
        declare_config(node, Params)
        bad = node.set_parameters([Parameter("seed", value=-4)])[0]
        assert not bad.successful and "seed must be >= 0, got -4" in bad.reason
        assert node.set_parameters([Parameter("seed", value=7), Parameter("task", value="open_drawer")])[0].successful
        p = current_config(node, Params)
        assert (p.seed, p.task, p.cameras) == (7, "open_drawer", [])
    finally:
        node.destroy_node()


def test_every_node_parameter_is_documented():
    """Each node's parameters (its dataclass) appear in docs/ros_interface.md or, for the teleop nodes,
    teleop/README.md: a new field without a line there fails here."""
    import re
    from pathlib import Path

    from policy.server_node import PolicyServerParams
    from rl_agent.actor_core import ActorParams
    from rl_agent.learner_node import LearnerParams
    from robot_server.camera_node import CameraParams
    from robot_server.robot_node import RobotParams
    from teleop.recorder_node import RecorderParams
    from teleop.teleop_node import TeleopParams

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "ros_interface.md").read_text() + (root / "teleop" / "README.md").read_text()
    named = set(re.findall(r"`([a-z_]+)[`:=]", docs))
    for cls in (RobotParams, CameraParams, PolicyServerParams, RecorderParams, TeleopParams, ActorParams,
                LearnerParams):
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in named)
        assert not missing, f"{cls.__name__}: undocumented parameter(s) {missing}"
