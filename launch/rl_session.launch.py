"""ros2 launch irevla rl_session.launch.py [task:=... instruction:=... checkpoint:=... reward:=twin|operator] - the
graph (sim cell, policy server with latents, RL learner, RL actor) is defined in launch/graphs.yaml."""
from robot_server.launch_graph import ros2_launch_description


def generate_launch_description():
    return ros2_launch_description("rl_session")
