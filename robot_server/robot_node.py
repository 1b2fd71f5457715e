"""robot_node: the thin rclpy shell over RobotServerCore (see docs/ros_interface.md for the interface table).

Everything that decides anything lives in server_core.py / safety.py; this file converts messages, runs the loop
timer, and makes sure no message, however malformed, can raise out of a callback.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from typing import Optional

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from robot_server import ros_interface as ri
from robot_server.backends.base import RobotBackend, RobotState
from robot_server.cell_frames import tcp_transform
from robot_server.config import check_backend_home, load_safety_config, resolve_config
from robot_server.server_core import RobotServerCore
from robot_server.ros_main import SteadyMultiThreadedExecutor, declare_config, init_with_stop_event, stamp_msg

LOG = logging.getLogger("robot_server.robot_node")


def make_backend(kind: str, task: Optional[str], seed: Optional[int], config="") -> RobotBackend:
    """The backend registered as `kind` (robot_server/backends/__init__.py), configured from the YAML `config`."""
    from robot_server.backends import make_backend as make
    return make(kind, config or None, task=task, seed=seed)


@dataclasses.dataclass(frozen=True)
class RobotParams:
    """robot_node's ROS parameters (robot_server.ros_main.declare_config declares one per field)."""
    backend: str = "sim"  # robot_server/backends: sim | fr3 | panda | franka_ros2 | ...
    backend_config: str = ""  # YAML for hardware backends (config/backends/*.yaml)
    sim_image_size: int = 0  # sim backend: camera render size (0: the twin's default)
    task: str = ""
    seed: int = 0
    rate: float = 50.0
    safety_config: str = ""
    base_frame: str = ri.BASE_FRAME
    status_rate: float = 10.0
    scene_rate: float = 10.0
    # Camera extrinsics for TF (robot_server/cell_frames.py): a calibration YAML, or "" for the backend's own
    # (the twin's model); a real cell without one publishes the TCP frame alone.
    calibration: str = ""

    def __post_init__(self):
        if not (0.0 < self.rate <= 1000.0):
            raise ValueError(f"rate must be in (0, 1000] Hz, got {self.rate}")


class RobotNode(Node):
    """Publishes robot state, takes actions / target poses, offers the services. Owns no logic of its own."""

    def __init__(self, backend: Optional[RobotBackend] = None, *, context: Optional[Context] = None,
                 node_name: str = "robot_node", namespace: str = "/irevla",
                 parameter_overrides: Optional[list[Parameter]] = None):
        super().__init__(node_name, context=context, namespace=namespace,
                         parameter_overrides=parameter_overrides or [])
        p = self.params = declare_config(self, RobotParams)
        from robot_server.backends import backend_name, default_backend_config
        kind = backend_name(p.backend)  # fr3 / panda as the launch graphs name them
        rate = p.rate
        self.owns_backend = backend is None
        backend_config = p.backend_config
        if backend_config:  # config/backends/... works from any directory (robot_server/config.py)
            backend_config = str(resolve_config(backend_config))
        elif backend is None:
            backend_config = default_backend_config(kind) or ""
        if kind == "sim" and p.sim_image_size > 0 and not backend_config:
            backend_config = {"image_size": p.sim_image_size}
        safety_config = load_safety_config(p.safety_config or None)
        if backend is None:
            # The backend's home against the safety box, before connecting to anything: a Cartesian home outside
            # it is a ConfigError naming the field (robot_server/config.py).
            check_backend_home(kind, backend_config or None, safety_config)
        self.backend = backend if backend is not None else make_backend(kind, p.task, p.seed, backend_config)
        self.base_frame = p.base_frame
        try:
            self.core = RobotServerCore(self.backend, safety_config=safety_config, task=p.task or None,
                                        seed=p.seed, base_frame=self.base_frame)
        except Exception:
            if self.owns_backend:
                self.backend.close()
                self.backend = None
            raise
        self._has_success = callable(getattr(self.backend, "success", None))
        self._has_scene = callable(getattr(self.backend, "scene_json", None))
        # Status/success and the scene ground truth (sim only: object poses for out-of-process scripted experts)
        # every n-th tick: they change slowly and cost more than the state messages.
        self._status_every = self._every(rate, p.status_rate)
        self._scene_every = self._every(rate, p.scene_rate)
        self._tick_count = 0
        self.callback_errors = 0

        # One mutually exclusive group: commands, services and the loop never run concurrently, so the order of
        # events is the order of arrival (the core has its own lock as well).
        group = MutuallyExclusiveCallbackGroup()
        self.pub_joints = self.create_publisher(JointState, ri.TOPIC_JOINT_STATES, ri.STATE_QOS)
        self.pub_pose = self.create_publisher(PoseStamped, ri.TOPIC_EE_POSE, ri.STATE_QOS)
        self.pub_gripper = self.create_publisher(JointState, ri.TOPIC_GRIPPER, ri.STATE_QOS)
        self.pub_status = self.create_publisher(String, ri.TOPIC_STATUS, ri.LATCHED_QOS)
        self.pub_success = (self.create_publisher(Bool, ri.TOPIC_SUCCESS, ri.LATCHED_QOS)
                            if self._has_success else None)
        self.pub_scene = (self.create_publisher(String, ri.TOPIC_SIM_SCENE, ri.LATCHED_QOS)
                          if self._has_scene else None)
        self.create_subscription(Float64MultiArray, ri.TOPIC_ACTION, self._guard(self._on_action), ri.COMMAND_QOS,
                                 callback_group=group)
        self.create_subscription(PoseStamped, ri.TOPIC_TARGET_POSE, self._guard(self._on_target), ri.COMMAND_QOS,
                                 callback_group=group)
        self.create_service(Trigger, ri.SRV_RESET, self._trigger(self._reset), callback_group=group)
        self.create_service(Trigger, ri.SRV_RECOVER, self._trigger(self.core.recover), callback_group=group)
        self.create_service(Trigger, ri.SRV_ESTOP, self._trigger(lambda: self.core.estop("estop service")),
                            callback_group=group)
        self.create_service(Trigger, ri.SRV_ESTOP_RESET, self._trigger(self.core.estop_reset), callback_group=group)
        self.create_service(SetBool, ri.SRV_GRIPPER, self._on_gripper, callback_group=group)
        self._setup_tf()
        self.timer = self.create_timer(1.0 / rate, self._guard(self._on_tick), callback_group=group)
        self.get_logger().info(f"robot_node up: backend={kind} task={p.task or '-'} seed={p.seed} "
                               f"rate={rate} Hz")

    def _setup_tf(self) -> None:
        """/tf_static: the cameras' optical frames (calibration); /tf: base -> TCP with every state message."""
        from robot_server import cell_frames as cf
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:  # a pip-only install without scripts/build_interfaces.sh
            self.pub_tf = None
            self.get_logger().warning("tf2_msgs is not installed: no TF (run scripts/setup.sh)")
            return
        self._tf_msg = TFMessage
        self.pub_tf = self.create_publisher(TFMessage, ri.TOPIC_TF, ri.TF_QOS)
        self.pub_tf_static = self.create_publisher(TFMessage, ri.TOPIC_TF_STATIC, ri.TF_STATIC_QOS)
        path = self.params.calibration
        if path:
            cams = cf.load_calibration(resolve_config(path))
        elif callable(getattr(self.backend, "camera_calibration", None)):
            cams = self.backend.camera_calibration()
        else:
            cams = []
            self.get_logger().warning("no camera calibration (parameter `calibration`): TF has the TCP frame only")
        self.camera_transforms = cams
        if cams:
            self.pub_tf_static.publish(TFMessage(transforms=[self._transform_msg(t, time.time()) for t in cams]))

    def _transform_msg(self, t, stamp: float):
        from geometry_msgs.msg import TransformStamped
        msg = TransformStamped()
        msg.header.stamp = stamp_msg(stamp)
        msg.header.frame_id = self.base_frame if t.parent == ri.BASE_FRAME else t.parent
        msg.child_frame_id = t.child
        tr, rot = msg.transform.translation, msg.transform.rotation
        tr.x, tr.y, tr.z = t.xyz
        rot.w, rot.x, rot.y, rot.z = t.quat_wxyz
        return msg

    @staticmethod
    def _every(rate: float, every_hz: float) -> int:
        return max(1, int(round(rate / max(1e-3, every_hz))))

    # ------------------------------------------------------------------ callbacks
    def _guard(self, fn):
        """No exception may escape a callback: it would stop the executor and with it the watchdog."""
        def wrapped(*args):
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - deliberately broad, see docstring
                self.callback_errors += 1
                self.get_logger().error(f"{fn.__name__} failed: {type(e).__name__}: {e}",
                                        throttle_duration_sec=1.0)
        return wrapped

    def _on_action(self, msg: Float64MultiArray) -> None:
        # Wrong lengths, NaN, inf, huge values: all rejected (and counted) by the safety layer.
        self.core.on_action(np.asarray(msg.data, dtype=float), time.monotonic())

    def _on_target(self, msg: PoseStamped) -> None:
        p, o = msg.pose.position, msg.pose.orientation
        self.core.on_target_pose([p.x, p.y, p.z], [o.w, o.x, o.y, o.z], time.monotonic(),
                                 frame_id=msg.header.frame_id)

    def _on_tick(self) -> None:
        res = self.core.tick(time.monotonic())
        if res is not None:
            self._publish_state(res.state)
        if self._tick_count % self._status_every == 0:
            self.pub_status.publish(String(data=json.dumps(self.core.status())))
            if self.pub_success is not None:
                self.pub_success.publish(Bool(data=bool(self.backend.success())))
        if self.pub_scene is not None and self._tick_count % self._scene_every == 0:
            self.pub_scene.publish(String(data=self.backend.scene_json()))
        self._tick_count += 1

    def _reset(self) -> tuple[bool, str]:
        ok, message = self.core.reset()
        if self.pub_scene is not None:  # the new scene at once, before the reset's answer
            self.pub_scene.publish(String(data=self.backend.scene_json()))
        return ok, message

    def _publish_state(self, s: RobotState) -> None:
        stamp = stamp_msg(s.stamp)
        js = JointState()
        js.header.stamp = stamp
        js.header.frame_id = self.base_frame
        js.name = list(s.joint_names)
        js.position = [float(v) for v in s.q]
        js.velocity = [float(v) for v in s.dq]
        self.pub_joints.publish(js)

        ps = PoseStamped()
        ps.header.stamp = stamp
        ps.header.frame_id = self.base_frame
        ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = (float(v) for v in s.ee_pos)
        w, x, y, z = (float(v) for v in s.ee_quat)
        ps.pose.orientation.w, ps.pose.orientation.x, ps.pose.orientation.y, ps.pose.orientation.z = w, x, y, z
        self.pub_pose.publish(ps)

        g = JointState()
        g.header.stamp = stamp
        g.name = [ri.GRIPPER_JOINT]
        g.position = [float(s.gripper_width)]
        self.pub_gripper.publish(g)

        if self.pub_tf is not None:
            self.pub_tf.publish(self._tf_msg(transforms=[self._transform_msg(tcp_transform(s.ee_pos, s.ee_quat),
                                                                             s.stamp)]))

    def _trigger(self, handler):
        def cb(request, response):
            try:
                response.success, response.message = handler()
            except Exception as e:  # noqa: BLE001
                self.callback_errors += 1
                response.success, response.message = False, f"{type(e).__name__}: {e}"
            return response
        return cb

    def _on_gripper(self, request, response):
        try:
            response.success, response.message = self.core.set_gripper(bool(request.data))
        except Exception as e:  # noqa: BLE001
            self.callback_errors += 1
            response.success, response.message = False, f"{type(e).__name__}: {e}"
        return response

    # ------------------------------------------------------------------ teardown
    def destroy_node(self) -> None:
        super().destroy_node()
        # getattr: the constructor may have failed before the backend existed (e.g. a bad parameter).
        if getattr(self, "owns_backend", False) and getattr(self, "backend", None) is not None:
            self.backend.close()


def main(args: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO)
    stop = init_with_stop_event(args)
    node = None
    try:
        node = RobotNode()
        executor = SteadyMultiThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
        executor.shutdown(timeout_sec=2.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
