"""ros2 launch irevla teleop_collection.launch.py [task:=... instruction:=... out_dir:=... device:=...] - the graph
is defined in launch/graphs.yaml."""
from robot_server.launch_graph import ros2_launch_description


def generate_launch_description():
    return ros2_launch_description("teleop_collection")
