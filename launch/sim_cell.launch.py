"""ros2 launch irevla sim_cell.launch.py [task:=... seed:=...] - the graph is defined in launch/graphs.yaml."""
from robot_server.launch_graph import ros2_launch_description


def generate_launch_description():
    return ros2_launch_description("sim_cell")
