"""FR3 through franka_ros2: robot state and gripper from its topics, poses to a Cartesian impedance controller.

franka_ros2 (humble v2.x / jazzy v3.x, libfranka >= 0.10: an FR3 or a robot on system >= 5) runs the robot's 1 kHz
loop in ros2_control. This backend lives in robot_server's process with its own rclpy context and executor thread:

    state    franka_msgs/FrankaRobotState on /franka_robot_state_broadcaster/robot_state (q, dq, O_T_EE, robot
             mode, error flags); the gripper width from /franka_gripper/joint_states (sum of the two fingers)
    command  geometry_msgs/PoseStamped on /cartesian_impedance_controller/target_pose, read by a Cartesian
             impedance controller at 1 kHz. No stock franka_ros2 controller takes a streamed Cartesian target, so
             irevla ships one (hardware/franka_cartesian_impedance_controller, parameters in
             config/franka_ros2_cartesian_impedance.yaml); any controller subscribing to a PoseStamped target works.
    gripper  franka_msgs/action/Grasp on /franka_gripper/grasp (close), .../Move on /franka_gripper/move (open)
    recover  franka_msgs/action/ErrorRecovery on /action_server/error_recovery
    settings franka_msgs/srv/SetFullCollisionBehavior on /service_server/set_full_collision_behavior (at start,
             when `collision` is configured)

Home is the Cartesian pose `home_pos` / `home_quat_wxyz`: robot_server checks it against the safety box when the
config loads, and the server streams the path there through the safety layer to the same controller, at
`home_speed_m_s` / `home_speed_rad_s` (switching controllers would need controller_manager's services; a gentle
Cartesian path needs nothing else). The backend itself never moves the arm.

Reflexes: robot mode REFLEX / USER_STOPPED latches a fault (named by the error flags). read_state reports ok=False
with the message, commands are refused, and the recover service runs the ErrorRecovery action; the server then
re-seats the controller's target on the measured pose through the safety layer. A robot state older than
`state_timeout_s`, or a controller that does not subscribe to the target topic, also make the state not ok, with the
reason.

franka_msgs is imported at construction only (importlib): without franka_ros2 the backend says what is missing.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from robot_server.backends import load_config
from robot_server.backends.base import RobotBackend, RobotState
from robot_server.backends.franka_libfranka import GRIPPER_DOWN_WXYZ, CollisionConfig
from robot_server.safety import HomeTarget

LOG = logging.getLogger("robot_server.backends.franka_ros2")

NEEDED = {"franka_msgs.msg": ("FrankaRobotState",), "franka_msgs.action": ("Grasp", "Move", "ErrorRecovery"),
          "franka_msgs.srv": ("SetFullCollisionBehavior",)}


@dataclass(frozen=True)
class Ros2GripperConfig:
    enabled: bool = True
    speed: float = 0.1
    force: float = 40.0
    open_width: float = 0.08
    grasp_width: float = 0.0
    epsilon_inner: float = 0.005
    epsilon_outer: float = 0.08


@dataclass(frozen=True)
class FrankaRos2Config:
    arm_id: str = "fr3"
    base_frame: str = "fr3_link0"  # frame_id of the targets; the controller rejects others
    robot_state_topic: str = "/franka_robot_state_broadcaster/robot_state"
    gripper_joint_states_topic: str = "/franka_gripper/joint_states"
    target_topic: str = "/cartesian_impedance_controller/target_pose"
    grasp_action: str = "/franka_gripper/grasp"
    move_action: str = "/franka_gripper/move"
    error_recovery_action: str = "/action_server/error_recovery"
    collision_service: str = "/service_server/set_full_collision_behavior"
    collision: Optional[CollisionConfig] = None  # None: keep what franka_ros2 was started with
    gripper: Ros2GripperConfig = field(default_factory=Ros2GripperConfig)
    home_pos: tuple[float, float, float] = (0.307, 0.0, 0.487)  # FR3 ready pose with the Franka Hand
    home_quat_wxyz: tuple[float, float, float, float] = GRIPPER_DOWN_WXYZ
    nominal_quat_wxyz: tuple[float, float, float, float] = GRIPPER_DOWN_WXYZ
    home_speed_m_s: float = 0.1
    home_speed_rad_s: float = 0.5
    home_tolerance_m: float = 0.005
    home_timeout_s: float = 30.0
    require_controller: bool = True  # no subscriber on target_topic -> state not ok (commands would go nowhere)
    state_timeout_s: float = 0.5
    connect_timeout_s: float = 15.0
    action_timeout_s: float = 10.0

    def __post_init__(self):
        for name in ("home_quat_wxyz", "nominal_quat_wxyz"):
            if abs(np.linalg.norm(getattr(self, name)) - 1.0) > 1e-3:
                raise ValueError(f"{name} must be a unit quaternion (wxyz)")

    def home_target(self, section: str = "franka_ros2") -> HomeTarget:
        return HomeTarget(pos=tuple(self.home_pos), quat=tuple(self.home_quat_wxyz),
                          source=f"{section}.home_pos / {section}.home_quat_wxyz", speed_m_s=self.home_speed_m_s,
                          speed_rad_s=self.home_speed_rad_s, tolerance_m=self.home_tolerance_m,
                          timeout_s=self.home_timeout_s)


def create(config=None, task: Optional[str] = None, seed: Optional[int] = None) -> "FrankaRos2Backend":
    return FrankaRos2Backend(load_config(FrankaRos2Config, config, section="franka_ros2"))


def import_franka_msgs() -> dict:
    """{name: type} for the franka_msgs interfaces this backend uses, or a RuntimeError naming what is missing."""
    found, missing = {}, []
    for module, names in NEEDED.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
            continue
        for n in names:
            if hasattr(mod, n):
                found[n] = getattr(mod, n)
            else:
                missing.append(f"{module}.{n}")
    if missing:
        raise RuntimeError(
            "the franka_ros2 backend needs franka_ros2's franka_msgs, which is not importable here: missing "
            + ", ".join(missing) + ". Source the franka_ros2 workspace before starting robot_node (e.g. `source "
            "~/franka_ros2_ws/install/setup.bash`), or use the franka_libfranka backend, which needs no ROS packages")
    return found


def error_names(errors) -> list[str]:
    """Names of the raised flags of a franka_msgs/Errors message."""
    return [n for n in errors.get_fields_and_field_types() if getattr(errors, n) is True]


class FrankaRos2Backend(RobotBackend):
    def __init__(self, config: Optional[FrankaRos2Config] = None):
        self.config = c = config or FrankaRos2Config()
        self.m = import_franka_msgs()
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.action import ActionClient
        from rclpy.context import Context
        from robot_server.ros_main import SteadyMultiThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import JointState

        self._PoseStamped = PoseStamped
        self.joint_names = tuple(f"{c.arm_id}_joint{i}" for i in range(1, 8))
        self._lock = threading.Lock()
        self._state = None  # (receive time, FrankaRobotState)
        self._width = None
        self.fault = ""
        self._warned_no_gripper = False
        # Own context: the backend works the same under robot_node, the gym env or a script.
        self._context = Context()
        rclpy.init(context=self._context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("irevla_franka_ros2_backend", context=self._context)
        latest = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                            durability=DurabilityPolicy.VOLATILE)
        command = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        self.node.create_subscription(self.m["FrankaRobotState"], c.robot_state_topic, self._on_state, latest)
        self.node.create_subscription(JointState, c.gripper_joint_states_topic, self._on_gripper, latest)
        self.pub_target = self.node.create_publisher(PoseStamped, c.target_topic, command)
        self.grasp = ActionClient(self.node, self.m["Grasp"], c.grasp_action)
        self.move = ActionClient(self.node, self.m["Move"], c.move_action)
        self.recovery = ActionClient(self.node, self.m["ErrorRecovery"], c.error_recovery_action)
        self._executor = SteadyMultiThreadedExecutor(num_threads=2, context=self._context)
        self._executor.add_node(self.node)
        self._spin_stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, name="franka-ros2-backend", daemon=True)
        self._spinner.start()
        try:
            self._wait(lambda: self._state is not None, c.connect_timeout_s,
                       f"no franka_msgs/FrankaRobotState on {c.robot_state_topic} within {c.connect_timeout_s:g} s: "
                       "is franka_ros2 running (franka_bringup), with the same ROS_DOMAIN_ID?")
            if c.collision is not None:
                self._set_collision_behavior(c.collision)
        except Exception:
            self.close()
            raise
        LOG.info("franka_ros2 backend up: state on %s, targets to %s", c.robot_state_topic, c.target_topic)

    # ------------------------------------------------------------------ plumbing
    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException
        try:
            while not self._spin_stop.is_set() and self._context.ok():
                self._executor.spin_once(timeout_sec=0.05)
        except ExternalShutdownException:
            pass

    @staticmethod
    def _wait(predicate, timeout: float, message: str):
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise RuntimeError(message)
            time.sleep(0.01)
        return value

    def _on_state(self, msg) -> None:
        with self._lock:
            self._state = (time.monotonic(), msg)
            mode = msg.robot_mode
            if not self.fault and mode in (msg.ROBOT_MODE_REFLEX, msg.ROBOT_MODE_USER_STOPPED):
                names = error_names(msg.current_errors) or error_names(msg.last_motion_errors)
                what = "user stop pressed" if mode == msg.ROBOT_MODE_USER_STOPPED else "reflex"
                hint = ("release the user stop, then call the recover service"
                        if mode == msg.ROBOT_MODE_USER_STOPPED else "call the recover service")
                self.fault = f"{what}: {names or 'no error flags set'}; {hint}"
                LOG.error(self.fault)

    def _on_gripper(self, msg) -> None:
        self._width = float(sum(msg.position)) if len(msg.position) else None

    def _set_collision_behavior(self, col: CollisionConfig) -> None:
        c = self.config
        client = self.node.create_client(self.m["SetFullCollisionBehavior"], c.collision_service)
        try:
            if not client.wait_for_service(timeout_sec=c.action_timeout_s):
                raise RuntimeError(f"collision behaviour requested, but {c.collision_service} is not offered "
                                   "(franka_ros2's service_server not running?)")
            req = self.m["SetFullCollisionBehavior"].Request()
            req.lower_torque_thresholds_acceleration = req.lower_torque_thresholds_nominal = \
                [float(v) for v in col.lower_torque_thresholds]
            req.upper_torque_thresholds_acceleration = req.upper_torque_thresholds_nominal = \
                [float(v) for v in col.upper_torque_thresholds]
            req.lower_force_thresholds_acceleration = req.lower_force_thresholds_nominal = \
                [float(v) for v in col.lower_force_thresholds]
            req.upper_force_thresholds_acceleration = req.upper_force_thresholds_nominal = \
                [float(v) for v in col.upper_force_thresholds]
            fut = client.call_async(req)
            res = self._wait(lambda: fut.done() and fut, c.action_timeout_s,
                             f"{c.collision_service} did not answer").result()
            if not res.success:
                raise RuntimeError(f"setting the collision behaviour failed: {res.error}")
        finally:
            self.node.destroy_client(client)

    def _measured(self):
        with self._lock:
            return self._state

    # ------------------------------------------------------------------ RobotBackend
    @property
    def home_quat(self) -> np.ndarray:
        return np.asarray(self.config.nominal_quat_wxyz, float)

    def _problem(self, received: float) -> str:
        c = self.config
        if self.fault:
            return self.fault
        age = time.monotonic() - received
        if age > c.state_timeout_s:
            return f"no robot state on {c.robot_state_topic} for {age:.1f} s (franka_ros2 stopped?)"
        if c.require_controller and self.pub_target.get_subscription_count() == 0:
            return (f"nothing subscribes to {c.target_topic}: load and activate the Cartesian impedance controller "
                    "(docs/lab_setup.md, franka_ros2)")
        return ""

    def read_state(self) -> RobotState:
        got = self._measured()
        if got is None:
            raise RuntimeError("no robot state received yet")
        received, s = got
        p, o = s.o_t_ee.pose.position, s.o_t_ee.pose.orientation
        problem = self._problem(received)
        width = self._width
        return RobotState(stamp=s.header.stamp.sec + s.header.stamp.nanosec * 1e-9 or time.time(),
                          joint_names=self.joint_names, q=np.asarray(s.measured_joint_state.position, float),
                          dq=np.asarray(s.measured_joint_state.velocity, float), ee_pos=np.array([p.x, p.y, p.z]),
                          ee_quat=np.array([o.w, o.x, o.y, o.z]), gripper_width=0.0 if width is None else width,
                          ok=not problem, error=problem)

    def _publish_target(self, pos, quat) -> None:
        msg = self._PoseStamped()
        msg.header.frame_id = self.config.base_frame
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in pos)
        w, x, y, z = (float(v) for v in quat)
        msg.pose.orientation.w, msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z = w, x, y, z
        self.pub_target.publish(msg)

    def command_pose(self, pos, quat) -> None:
        got = self._measured()
        problem = "no robot state received yet" if got is None else self._problem(got[0])
        if problem:
            raise RuntimeError(f"command_pose refused: {problem}")
        self._publish_target(pos, quat)

    def hold(self) -> None:
        got = self._measured()
        if got is not None and not self.fault:
            s = self.read_state()
            self._publish_target(s.ee_pos, s.ee_quat)

    def command_gripper(self, close: float) -> None:
        g = self.config.gripper
        if not g.enabled:
            if not self._warned_no_gripper:
                LOG.warning("gripper command ignored: no gripper configured (gripper.enabled: false)")
                self._warned_no_gripper = True
            return
        if close >= 0.5:
            goal = self.m["Grasp"].Goal()
            goal.width, goal.speed, goal.force = g.grasp_width, g.speed, g.force
            goal.epsilon.inner, goal.epsilon.outer = g.epsilon_inner, g.epsilon_outer
            client, name = self.grasp, self.config.grasp_action
        else:
            goal = self.m["Move"].Goal()
            goal.width, goal.speed = g.open_width, g.speed
            client, name = self.move, self.config.move_action
        if not client.server_is_ready():
            raise RuntimeError(f"gripper action server {name} not available (franka_gripper running?)")
        client.send_goal_async(goal)  # a grasp takes about a second; the result is not waited for

    @property
    def home_target(self) -> HomeTarget:
        return self.config.home_target()

    def recover(self) -> None:
        c = self.config
        if not self.recovery.wait_for_server(timeout_sec=min(2.0, c.action_timeout_s)):
            raise RuntimeError(f"error recovery action {c.error_recovery_action} not available")
        send = self.recovery.send_goal_async(self.m["ErrorRecovery"].Goal())
        handle = self._wait(lambda: send.done() and send, c.action_timeout_s, "error recovery goal not accepted"
                            ).result()
        if not handle.accepted:
            raise RuntimeError("error recovery goal rejected")
        result = handle.get_result_async()
        from action_msgs.msg import GoalStatus
        res = self._wait(lambda: result.done() and result, c.action_timeout_s, "error recovery did not finish"
                         ).result()
        if res.status != GoalStatus.STATUS_SUCCEEDED:
            raise RuntimeError(f"error recovery failed (goal status {res.status})")
        # The next state messages must show the robot out of reflex before the fault is cleared.
        got = self._measured()
        start = got[0] if got else 0.0
        self._wait(lambda: (s := self._measured()) is not None and s[0] > start
                   and s[1].robot_mode not in (s[1].ROBOT_MODE_REFLEX, s[1].ROBOT_MODE_USER_STOPPED),
                   c.action_timeout_s, "robot still in reflex after error recovery")
        with self._lock:
            self.fault = ""
        # The controller's target goes back on the measured pose with the server's next setpoint (through the
        # safety layer): nothing jumps to an old target.
        LOG.warning("recovered")

    def close(self) -> None:
        self._spin_stop.set()
        if self._spinner.is_alive():
            self._spinner.join(timeout=5.0)
        try:
            self._executor.shutdown(timeout_sec=2.0)
            self.node.destroy_node()
        finally:
            self._context.try_shutdown()
