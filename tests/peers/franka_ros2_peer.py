"""A stand-in for franka_ros2 + the Cartesian impedance controller, speaking franka_ros2's real interfaces.

Run as its own process (needs the franka_msgs fixture build on PYTHONPATH / LD_LIBRARY_PATH, see provision.ros_env):

    python tests/peers/franka_ros2_peer.py

Publishes franka_msgs/FrankaRobotState on /franka_robot_state_broadcaster/robot_state (100 Hz; franka_ros2 uses
the controller rate) and sensor_msgs/JointState on /franka_gripper/joint_states; serves the gripper's Grasp / Move /
Homing actions, /action_server/error_recovery and /service_server/set_full_collision_behavior; follows the
PoseStamped targets on /cartesian_impedance_controller/target_pose like the controller does (error clipped to
1 cm / 0.05 rad per axis, first order). Kinematic only: the point is the interfaces, not the physics.

Test hooks: /peer/inject_reflex (std_srvs/Trigger: robot mode REFLEX with cartesian_reflex raised; targets are then
ignored, as the real hardware interface does), /peer/stop_state (std_srvs/SetBool: pause the state stream), and a
latched JSON status on /peer/status (collision thresholds received, targets received and the per-axis bounds of
their positions, recoveries, grasps).
"""
from __future__ import annotations

import importlib
import json
import signal
import sys
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.action import ActionServer
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from robot_server.ros_main import SteadyMultiThreadedExecutor

msg_mod = importlib.import_module("franka_msgs.msg")
act_mod = importlib.import_module("franka_msgs.action")
srv_mod = importlib.import_module("franka_msgs.srv")

ARM = "fr3"
START_Q = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
START_POS = np.array([0.45, 0.05, 0.35])  # somewhere inside the test's box, away from home
DOWN_XYZW = np.array([1.0, 0.0, 0.0, 0.0])


def quat_xyzw_to_rotvec_error(q_target, q):
    """Small-angle orientation error (target relative to current) as a base-frame rotation vector."""
    x1, y1, z1, w1 = q
    x2, y2, z2, w2 = q_target
    # q_err = q_target * conj(q)
    w = w2 * w1 + x2 * x1 + y2 * y1 + z2 * z1
    x = -w2 * x1 + x2 * w1 - y2 * z1 + z2 * y1
    y = -w2 * y1 + x2 * z1 + y2 * w1 - z2 * x1
    z = -w2 * z1 - x2 * y1 + y2 * x1 + z2 * w1
    v = np.array([x, y, z]) * (1.0 if w >= 0 else -1.0)
    return 2.0 * v


def rotvec_apply(q, rv):
    angle = float(np.linalg.norm(rv))
    if angle < 1e-12:
        return q
    ax = rv / angle
    s = np.sin(angle / 2)
    dx, dy, dz, dw = ax[0] * s, ax[1] * s, ax[2] * s, np.cos(angle / 2)
    x, y, z, w = q
    out = np.array([dw * x + dx * w + dy * z - dz * y, dw * y - dx * z + dy * w + dz * x,
                    dw * z + dx * y - dy * x + dz * w, dw * w - dx * x - dy * y - dz * z])
    return out / np.linalg.norm(out)


class FrankaRos2Peer:
    def __init__(self):
        self.node = rclpy.create_node("franka_ros2_peer")
        n = self.node
        self.lock = threading.Lock()
        self.pos, self.quat = START_POS.copy(), DOWN_XYZW.copy()
        self.target = None
        self.reflex = False
        self.streaming = True
        self.width, self.width_goal = 0.08, 0.08
        self.stats = {"targets": 0, "targets_ignored": 0, "recoveries": 0, "grasps": 0, "moves": 0,
                      "collision": None, "bad_frames": 0,
                      "target_lo": None, "target_hi": None}  # per-axis bounds of every target position received
        group = ReentrantCallbackGroup()
        state_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                               durability=DurabilityPolicy.VOLATILE)
        self.pub_state = n.create_publisher(msg_mod.FrankaRobotState, "/franka_robot_state_broadcaster/robot_state",
                                            state_qos)
        self.pub_gripper = n.create_publisher(JointState, "/franka_gripper/joint_states", state_qos)
        self.pub_status = n.create_publisher(String, "/peer/status", QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        n.create_subscription(PoseStamped, "/cartesian_impedance_controller/target_pose", self.on_target, 1,
                              callback_group=group)
        ActionServer(n, act_mod.Grasp, "/franka_gripper/grasp", self.on_grasp, callback_group=group)
        ActionServer(n, act_mod.Move, "/franka_gripper/move", self.on_move, callback_group=group)
        ActionServer(n, act_mod.Homing, "/franka_gripper/homing", self.on_homing, callback_group=group)
        ActionServer(n, act_mod.ErrorRecovery, "/action_server/error_recovery", self.on_recovery, callback_group=group)
        n.create_service(srv_mod.SetFullCollisionBehavior, "/service_server/set_full_collision_behavior",
                         self.on_collision, callback_group=group)
        n.create_service(Trigger, "/peer/inject_reflex", self.on_inject, callback_group=group)
        n.create_service(SetBool, "/peer/stop_state", self.on_stop_state, callback_group=group)
        self.dt = 0.01  # 100 Hz keeps a Python peer light on a 2-core CI machine
        # The timers never overlap themselves: a late 100 Hz step must not pile up beside the next one.
        clock = MutuallyExclusiveCallbackGroup()
        n.create_timer(self.dt, self.step, callback_group=clock)
        n.create_timer(0.1, self.publish_status, callback_group=clock)

    # ------------------------------------------------------------------ robot side
    def on_target(self, msg: PoseStamped) -> None:
        with self.lock:
            if msg.header.frame_id != f"{ARM}_link0":
                self.stats["bad_frames"] += 1
                return
            if self.reflex:
                self.stats["targets_ignored"] += 1
                return
            p, o = msg.pose.position, msg.pose.orientation
            self.target = (np.array([p.x, p.y, p.z]), np.array([o.x, o.y, o.z, o.w]))
            self.stats["targets"] += 1
            lo, hi = self.stats["target_lo"], self.stats["target_hi"]
            self.stats["target_lo"] = np.minimum(self.target[0], self.target[0] if lo is None else lo).tolist()
            self.stats["target_hi"] = np.maximum(self.target[0], self.target[0] if hi is None else hi).tolist()

    def step(self) -> None:
        with self.lock:
            if self.target is not None and not self.reflex:
                tp, tq = self.target
                # The controller's law, kinematically: the clipped error relaxes with a 50 ms time constant.
                self.pos = self.pos + np.clip(tp - self.pos, -0.01, 0.01) * (self.dt / 0.05)
                rv = np.clip(quat_xyzw_to_rotvec_error(tq, self.quat), -0.05, 0.05)
                self.quat = rotvec_apply(self.quat, rv * (self.dt / 0.05))
            self.width += np.clip(self.width_goal - self.width, -0.1 * self.dt, 0.1 * self.dt)
            if not self.streaming:
                return
            msg = self.state_msg()
            g = JointState()
            g.header.stamp = msg.header.stamp
            g.name = [f"{ARM}_finger_joint1", f"{ARM}_finger_joint2"]
            g.position = [self.width / 2, self.width / 2]
        self.pub_state.publish(msg)
        self.pub_gripper.publish(g)

    def state_msg(self):
        m = msg_mod.FrankaRobotState()
        m.header.stamp = self.node.get_clock().now().to_msg()
        m.header.frame_id = f"{ARM}_link0"
        js = m.measured_joint_state
        js.header.stamp = m.header.stamp
        js.name = [f"{ARM}_joint{i}" for i in range(1, 8)]
        js.position, js.velocity, js.effort = list(START_Q), [0.0] * 7, [0.0] * 7
        m.o_t_ee.header = m.header
        m.o_t_ee.pose.position.x, m.o_t_ee.pose.position.y, m.o_t_ee.pose.position.z = (float(v) for v in self.pos)
        o = m.o_t_ee.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in self.quat)
        m.time = time.monotonic()
        m.control_command_success_rate = 1.0
        m.robot_mode = m.ROBOT_MODE_REFLEX if self.reflex else m.ROBOT_MODE_MOVE
        m.current_errors.cartesian_reflex = self.reflex
        m.last_motion_errors.cartesian_reflex = self.reflex
        return m

    # ------------------------------------------------------------------ gripper, recovery, settings
    def _gripper_goal(self, handle, width, key, result_type):
        with self.lock:
            self.width_goal = float(np.clip(width, 0.0, 0.08))
            self.stats[key] += 1
        deadline = time.monotonic() + 3.0
        while abs(self.width - self.width_goal) > 1e-4 and time.monotonic() < deadline:
            time.sleep(0.01)
        handle.succeed()
        res = result_type.Result()
        res.success = True
        return res

    def on_grasp(self, handle):
        return self._gripper_goal(handle, handle.request.width, "grasps", act_mod.Grasp)

    def on_move(self, handle):
        return self._gripper_goal(handle, handle.request.width, "moves", act_mod.Move)

    def on_homing(self, handle):
        return self._gripper_goal(handle, 0.08, "moves", act_mod.Homing)

    def on_recovery(self, handle):
        with self.lock:
            self.reflex = False
            self.target = None  # the controller restarts on the measured pose
            self.stats["recoveries"] += 1
        handle.succeed()
        return act_mod.ErrorRecovery.Result()

    def on_collision(self, req, res):
        with self.lock:
            self.stats["collision"] = {"lower_torque": list(req.lower_torque_thresholds_nominal),
                                       "upper_force": list(req.upper_force_thresholds_acceleration)}
        res.success = True
        return res

    def on_inject(self, req, res):
        with self.lock:
            self.reflex = True
        res.success, res.message = True, "reflex injected"
        return res

    def on_stop_state(self, req, res):
        self.streaming = not req.data
        res.success = True
        return res

    def publish_status(self) -> None:
        with self.lock:
            doc = dict(self.stats, reflex=self.reflex, pos=self.pos.tolist(), width=self.width)
        self.pub_status.publish(String(data=json.dumps(doc)))


def main() -> int:
    rclpy.init()
    peer = FrankaRos2Peer()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # rclpy's own MultiThreadedExecutor re-submits a callback until a worker starts it (ros2/rclpy#1452): with a
    # worker held by a grasp on a loaded machine, that flood starved the state stream for seconds (CI, stop 20).
    ex = SteadyMultiThreadedExecutor(num_threads=4)
    ex.add_node(peer.node)
    print("READY", flush=True)
    while not stop.is_set():
        ex.spin_once(timeout_sec=0.05)
    ex.shutdown(timeout_sec=2.0)
    peer.node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
