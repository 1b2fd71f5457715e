"""RobotClient: the robot server's ROS 2 interface seen from a client node (teleop, policy server, RL actor, demo).

Subscribes to the state topics (newest sample only), publishes contract actions, calls the services with
deadlines. It holds no logic: numbers in, numbers out.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from robot_server import ros_interface as ri


@dataclass
class ClientState:
    stamp: float
    ee_pos: np.ndarray
    ee_quat: np.ndarray  # wxyz
    gripper_width: float


def image_to_array(msg: Image) -> np.ndarray:
    if msg.encoding != "rgb8":
        raise ValueError(f"expected an rgb8 image, got {msg.encoding!r}")
    expected = msg.height * msg.step
    if len(msg.data) != expected or msg.step < msg.width * 3:
        raise ValueError(f"image data is {len(msg.data)} bytes, expected {expected} ({msg.width}x{msg.height})")
    arr = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width * 3]
    return arr.reshape(msg.height, msg.width, 3)


class RobotClient:
    """`history`: frames kept per camera (image_near picks the one a given stamp refers to, e.g. the frames a
    latent was computed from); `joints`: also take the joint states (record())."""

    def __init__(self, node: Node, cameras: tuple[str, ...] = (), history: int = 1, joints: bool = False):
        self.node = node
        self._lock = threading.Lock()
        self._pose: Optional[PoseStamped] = None
        self._joints: Optional[JointState] = None
        self._history = {c: deque(maxlen=max(1, int(history))) for c in cameras}
        self._gripper: float = float("nan")
        self.success = False
        self.scene_json: Optional[str] = None
        self.status_json: Optional[str] = None
        self.images: dict[str, tuple[float, np.ndarray]] = {}
        self.image_counts: dict[str, int] = {c: 0 for c in cameras}
        node.create_subscription(PoseStamped, ri.TOPIC_EE_POSE, self._on_pose, ri.LATEST_QOS)
        node.create_subscription(JointState, ri.TOPIC_GRIPPER, self._on_gripper, ri.LATEST_QOS)
        if joints:  # only for record(): 50 Hz of messages a policy server does not need
            node.create_subscription(JointState, ri.TOPIC_JOINT_STATES, self._on_joints, ri.LATEST_QOS)
        node.create_subscription(Bool, ri.TOPIC_SUCCESS, self._on_success, ri.LATCHED_QOS)
        node.create_subscription(String, ri.TOPIC_STATUS, self._on_status, ri.LATCHED_QOS)
        node.create_subscription(String, ri.TOPIC_SIM_SCENE, self._on_scene, ri.LATCHED_QOS)
        for cam in cameras:
            node.create_subscription(Image, ri.camera_topic(cam), lambda m, c=cam: self._on_image(c, m),
                                     ri.LATEST_QOS)
        self.pub_action = node.create_publisher(Float64MultiArray, ri.TOPIC_ACTION, ri.COMMAND_QOS)
        self._srv = {name: node.create_client(Trigger, srv) for name, srv in
                     [("reset", ri.SRV_RESET), ("recover", ri.SRV_RECOVER), ("estop", ri.SRV_ESTOP),
                      ("estop_reset", ri.SRV_ESTOP_RESET)]}
        self._gripper_srv = node.create_client(SetBool, ri.SRV_GRIPPER)

    # ------------------------------------------------------------------ callbacks
    def _on_pose(self, msg: PoseStamped) -> None:
        with self._lock:
            self._pose = msg

    def _on_joints(self, msg: JointState) -> None:
        with self._lock:
            self._joints = msg

    def _on_gripper(self, msg: JointState) -> None:
        if msg.position:
            self._gripper = float(msg.position[0])

    def _on_success(self, msg: Bool) -> None:
        self.success = bool(msg.data)

    def _on_status(self, msg: String) -> None:
        self.status_json = msg.data

    def _on_scene(self, msg: String) -> None:
        self.scene_json = msg.data

    def _on_image(self, cam: str, msg: Image) -> None:
        try:
            arr = image_to_array(msg)
        except ValueError as e:
            self.node.get_logger().warning(f"camera {cam}: {e}")
            return
        stamped = (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9, arr)
        with self._lock:
            self.images[cam] = stamped
            if cam in self._history:
                self._history[cam].append(stamped)
        self.image_counts[cam] = self.image_counts.get(cam, 0) + 1

    def image_near(self, cam: str, stamp: float, tolerance_s: float = 0.15) -> Optional[np.ndarray]:
        """The kept frame of `cam` closest to `stamp` (None if none is within tolerance)."""
        with self._lock:
            frames = list(self._history.get(cam, ()))
        if not frames:
            return None
        t, arr = min(frames, key=lambda f: abs(f[0] - stamp))
        return arr if abs(t - stamp) <= tolerance_s else None

    def record(self) -> Optional[dict]:
        """The robot state as the episode recorder stores it (joints, TCP pose, gripper), or None before it came."""
        s = self.state()
        with self._lock:
            j = self._joints
        if s is None or j is None:
            return None
        return {"q": np.array(j.position, float), "dq": np.array(j.velocity, float), "ee_pos": s.ee_pos,
                "ee_quat": s.ee_quat, "gripper_width": float(s.gripper_width)}

    # ------------------------------------------------------------------ reading
    def state(self) -> Optional[ClientState]:
        with self._lock:
            msg = self._pose
        if msg is None or not np.isfinite(self._gripper):
            return None
        p, o = msg.pose.position, msg.pose.orientation
        return ClientState(stamp=msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9,
                           ee_pos=np.array([p.x, p.y, p.z]), ee_quat=np.array([o.w, o.x, o.y, o.z]),
                           gripper_width=self._gripper)

    def wait_ready(self, timeout_s: float = 20.0, need_scene: bool = False) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.state() is not None and (not need_scene or self.scene_json is not None) and all(
                    self.image_counts.get(c, 0) > 0 for c in self.image_counts):
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ commanding
    def send_action(self, action) -> None:
        msg = Float64MultiArray()
        msg.data = [float(v) for v in np.asarray(action, float).reshape(-1)]
        self.pub_action.publish(msg)

    def call(self, name: str, timeout_s: float = 15.0) -> tuple[bool, str]:
        return self._call(self._srv[name], Trigger.Request(), timeout_s)

    def set_gripper(self, close: bool, timeout_s: float = 5.0) -> tuple[bool, str]:
        return self._call(self._gripper_srv, SetBool.Request(data=bool(close)), timeout_s)

    def _call(self, client, request, timeout_s: float) -> tuple[bool, str]:
        if not client.wait_for_service(timeout_sec=timeout_s):
            return False, f"service {client.srv_name} not available within {timeout_s:.0f} s"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done():  # spun by the caller's executor thread
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                return False, f"service {client.srv_name} did not answer within {timeout_s:.0f} s"
            time.sleep(0.01)
        res = future.result()
        return bool(res.success), str(res.message)
