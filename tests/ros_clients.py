"""A test-side ROS client of the robot server (real rclpy, real DDS): collectors, publishers, service calls."""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import numpy as np
from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from helpers import unique_name, wait_for
from robot_server import ros_interface as ri


def stamp_s(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


@dataclass
class Received:
    msg: object
    t_recv: float  # wall clock at reception


class Sink:
    """Thread-safe list of (message, receive time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[Received] = []

    def __call__(self, msg) -> None:
        with self._lock:
            self._items.append(Received(msg, time.time()))

    @property
    def items(self) -> list[Received]:
        with self._lock:
            return list(self._items)

    def last(self):
        with self._lock:
            return self._items[-1].msg if self._items else None

    def since(self, t: float) -> list[Received]:
        return [r for r in self.items if r.t_recv >= t]

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[Received]:
        wait_for(lambda: len(self.items) >= count, timeout, message=f"{len(self.items)}/{count} messages")
        return self.items


class RobotClient:
    def __init__(self, context, cameras: tuple[str, ...] = ()):
        import rclpy
        self.node = rclpy.create_node(unique_name("robot_client"), context=context)
        n = self.node
        self.joints, self.pose, self.gripper, self.status, self.success = Sink(), Sink(), Sink(), Sink(), Sink()
        n.create_subscription(JointState, ri.TOPIC_JOINT_STATES, self.joints, ri.STATE_QOS)
        n.create_subscription(PoseStamped, ri.TOPIC_EE_POSE, self.pose, ri.STATE_QOS)
        n.create_subscription(JointState, ri.TOPIC_GRIPPER, self.gripper, ri.STATE_QOS)
        n.create_subscription(String, ri.TOPIC_STATUS, self.status, ri.LATCHED_QOS)
        n.create_subscription(Bool, ri.TOPIC_SUCCESS, self.success, ri.LATCHED_QOS)
        self.scene = Sink()
        n.create_subscription(String, ri.TOPIC_SIM_SCENE, self.scene, ri.LATCHED_QOS)
        self.images = {name: Sink() for name in cameras}
        for name, sink in self.images.items():
            n.create_subscription(Image, ri.camera_topic(name), sink, ri.IMAGE_QOS)
        self.pub_action = n.create_publisher(Float64MultiArray, ri.TOPIC_ACTION, ri.COMMAND_QOS)
        self.pub_target = n.create_publisher(PoseStamped, ri.TOPIC_TARGET_POSE, ri.COMMAND_QOS)
        self.srv = {name: n.create_client(Trigger, name) for name in
                    (ri.SRV_RESET, ri.SRV_RECOVER, ri.SRV_ESTOP, ri.SRV_ESTOP_RESET)}
        self.srv[ri.SRV_GRIPPER] = n.create_client(SetBool, ri.SRV_GRIPPER)

    # -------------------------------------------------------------- helpers
    def wait_ready(self, timeout: float = 15.0) -> None:
        """Discovery done: state arrives, the server sees our command publishers, services are up."""
        self.pose.wait(1, timeout)
        self.status.wait(1, timeout)
        wait_for(lambda: self.pub_action.get_subscription_count() > 0
                 and self.pub_target.get_subscription_count() > 0, timeout, message="server not subscribed")
        for c in self.srv.values():
            assert c.wait_for_service(timeout_sec=timeout), c.srv_name

    def call(self, name: str, data: bool | None = None, timeout: float = 10.0):
        client = self.srv[name]
        req = client.srv_type.Request()
        if data is not None:
            req.data = data
        fut = client.call_async(req)
        wait_for(fut.done, timeout, message=f"no answer from {name}")
        return fut.result()

    def send_action(self, values) -> None:
        self.pub_action.publish(Float64MultiArray(data=[float(v) for v in values]))

    def send_target(self, pos, quat_wxyz, frame_id: str = ri.BASE_FRAME) -> None:
        m = PoseStamped()
        m.header.frame_id = frame_id
        m.header.stamp = self.node.get_clock().now().to_msg()
        m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in pos)
        w, x, y, z = (float(v) for v in quat_wxyz)
        m.pose.orientation.w, m.pose.orientation.x, m.pose.orientation.y, m.pose.orientation.z = w, x, y, z
        self.pub_target.publish(m)

    def ee_pos(self) -> np.ndarray:
        p = self.pose.last().pose.position
        return np.array([p.x, p.y, p.z])

    def latest_status(self) -> dict:
        return json.loads(self.status.last().data)

    def wait_status(self, predicate, timeout: float = 5.0) -> dict:
        def check():
            s = self.latest_status()
            return s if predicate(s) else None
        return wait_for(check, timeout, message=f"status condition not met within {timeout} s")
