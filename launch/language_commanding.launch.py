"""ros2 launch irevla language_commanding.launch.py [checkpoint:=... task:=... seed:=...] - sim cell + policy server;
the graph is defined in launch/graphs.yaml. Then: irevla command "pick up the red block"."""
from robot_server.launch_graph import ros2_launch_description


def generate_launch_description():
    return ros2_launch_description("language_commanding")
