"""Typed dataclass configs from YAML: the loader lives in robot_server.typed_config (the lowest package that needs
it, so robot_server's backends share it); re-exported here for teleop, policy and rl_agent."""
from robot_server.typed_config import ConfigError, from_dict, load_yaml, to_dict  # noqa: F401
