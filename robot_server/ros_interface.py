"""Names and QoS of the robot server's ROS 2 interface, importable by clients (teleop, policy, tests).

The table in docs/ros_interface.md documents the same things; keep them in sync.

QoS choice (follows REP 2003): every PUBLISHER is reliable, so that both reliable and best-effort subscribers
match; subscribers that only want the newest sample (controllers, policies, viewers) should subscribe best-effort
with depth 1 (`LATEST_QOS`). Command SUBSCRIPTIONS are reliable with depth 1: a command is worthless once a newer one
exists, and the watchdog, not a queue, covers gaps. Command publishers must therefore be reliable (`COMMAND_QOS`).
"""
from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

ROBOT_NS = "/irevla/robot"
CAMERA_NS = "/irevla/camera"

TOPIC_JOINT_STATES = f"{ROBOT_NS}/joint_states"  # sensor_msgs/JointState
TOPIC_EE_POSE = f"{ROBOT_NS}/ee_pose"  # geometry_msgs/PoseStamped
TOPIC_GRIPPER = f"{ROBOT_NS}/gripper"  # sensor_msgs/JointState ["gripper_width"]
TOPIC_STATUS = f"{ROBOT_NS}/status"  # std_msgs/String (JSON)
TOPIC_SUCCESS = f"{ROBOT_NS}/success"  # std_msgs/Bool (sim only)
TOPIC_SIM_SCENE = f"{ROBOT_NS}/sim_scene"  # std_msgs/String, JSON of sim_twin.snapshot.SceneSnapshot.capture (sim only)
TOPIC_ACTION = f"{ROBOT_NS}/action"  # std_msgs/Float64MultiArray (7)
TOPIC_TARGET_POSE = f"{ROBOT_NS}/target_pose"  # geometry_msgs/PoseStamped

SRV_RESET = f"{ROBOT_NS}/reset"  # std_srvs/Trigger
SRV_GRIPPER = f"{ROBOT_NS}/gripper"  # std_srvs/SetBool (true = close)
SRV_RECOVER = f"{ROBOT_NS}/recover"  # std_srvs/Trigger
SRV_ESTOP = f"{ROBOT_NS}/estop"  # std_srvs/Trigger
SRV_ESTOP_RESET = f"{ROBOT_NS}/estop_reset"  # std_srvs/Trigger


def camera_topic(name: str) -> str:
    return f"{CAMERA_NS}/{name}/image_raw"


def camera_info_topic(name: str) -> str:
    """sensor_msgs/CameraInfo beside each image topic, same stamp and frame (IMAGE_QOS)."""
    return f"{CAMERA_NS}/{name}/camera_info"


from robot_server.cell_frames import BASE_FRAME, TCP_FRAME, camera_frame  # noqa: E402,F401 - frames live there
GRIPPER_JOINT = "gripper_width"

# TF as tf2_ros does it: /tf reliable with a deep queue, /tf_static latched (every static transform in one message).
TOPIC_TF, TOPIC_TF_STATIC = "/tf", "/tf_static"

# Robot state at the loop rate (50 Hz).
STATE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
# Status and success: latched, so a late joiner gets the last value at once.
TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Images (about 150 kB each): keep few.
IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
# Commands, on both sides.
COMMAND_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.VOLATILE)
# Recommended for subscribers that only need the newest sample.
LATEST_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                        durability=DurabilityPolicy.VOLATILE)

# Teleop collection (teleop/recorder_node.py, teleop/teleop_node.py).
RECORDER_NS = "/irevla/recorder"
SRV_RECORDER_START = f"{RECORDER_NS}/start"  # std_srvs/Trigger: start an episode (task etc. from its parameters)
SRV_RECORDER_SUCCESS = f"{RECORDER_NS}/stop_success"  # std_srvs/Trigger
SRV_RECORDER_FAILURE = f"{RECORDER_NS}/stop_failure"  # std_srvs/Trigger
SRV_RECORDER_DISCARD = f"{RECORDER_NS}/discard"  # std_srvs/Trigger
SRV_RECORDER_QUIT = f"{RECORDER_NS}/quit"  # std_srvs/Trigger: discard any episode in progress, exit
TOPIC_RECORDER_PROGRESS = f"{RECORDER_NS}/progress"  # std_msgs/String (JSON), latched (LATCHED_QOS)

# Policy server (policy/server_node.py): commanding by language, latents for the RL actor, weight hot swap.
POLICY_NS = "/irevla/policy"
ACTION_EXECUTE_INSTRUCTION = f"{POLICY_NS}/execute_instruction"  # irevla_interfaces/action/ExecuteInstruction
SRV_POLICY_LOAD_WEIGHTS = f"{POLICY_NS}/load_weights"  # irevla_interfaces/srv/LoadWeights
TOPIC_POLICY_LATENTS = f"{POLICY_NS}/latents"  # irevla_interfaces/msg/Latent, one per newly encoded observation
TOPIC_POLICY_STATUS = f"{POLICY_NS}/status"  # std_msgs/String (JSON), latched (LATCHED_QOS), 1 Hz + on change
# Latents: reliable with a short queue, so that an RL actor gets every observation even when it is briefly busy.
LATENT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)
