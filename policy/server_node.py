"""policy_server: the VLA policy as a ROS 2 node - a thin rclpy shell over policy/server_core.py.

    policy_server --ros-args -p checkpoint:=runs/stage0/checkpoint [-p cameras:="[front]"] [-p control_rate:=10.0]
                  [-p deadline_budget_s:=0.1] [-p default_timeout_s:=30.0] [-p publish_latents:=true]

Interface (names in robot_server/ros_interface.py, table in docs/ros_interface.md):
- in: `/irevla/camera/<name>/image_raw` (one per camera the policy reads), the robot state (`ee_pose`, `gripper`,
  `status`) and the success topic (`/irevla/robot/success`: the twin's task predicate, or any success detector);
- out: actions on `/irevla/robot/action` at the control rate, ONLY while a command is active; latents
  (irevla_interfaces/Latent) on `/irevla/policy/latents`; a JSON status on `/irevla/policy/status`;
- action `/irevla/policy/execute_instruction` (irevla_interfaces/ExecuteInstruction): one command at a time. A goal
  that cannot run (empty/overlong instruction, bad timeout, wrong task, or another command is active) is accepted
  and aborted at once with outcome "error" and a message saying why - the action protocol's plain rejection
  carries no text. Outcomes: success (success topic true after the start), failure (robot e-stopped), timeout,
  canceled, error (no usable observation for `max_invalid_s`: the message names the camera/state problem);
- service `/irevla/policy/load_weights` (irevla_interfaces/LoadWeights): kind "checkpoint" (stage 2: new VLM,
  new vlm_id) or "head" (stage 1: head.safetensors, same vlm_id), swapped between two ticks without a restart.

Stopping safely: when a command ends (cancel, timeout, error, success) the server sends ONE zero-motion action that
keeps the last gripper command (so a grasped object is not dropped) and then publishes nothing more; the robot
applies it (hold the measured pose) and its command watchdog keeps holding after 150 ms without commands.

The control loop runs in its own thread on a fixed wall-clock schedule, so each tick knows its scheduled time:
an action ready later than that time + `deadline_budget_s` is not published (counted as late).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from typing import Optional

import numpy as np
import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rcl_interfaces.msg import SetParametersResult
from sensor_msgs.msg import Image
from std_msgs.msg import Bool, String

from irevla_interfaces.action import ExecuteInstruction
from irevla_interfaces.msg import Latent
from irevla_interfaces.srv import LoadWeights
from policy.model import InputError
from policy.server_core import LatentRecord, Outcome, PolicyServerConfig, PolicyServerCore, TickResult
from robot_server import ros_interface as ri
from robot_server.client import RobotClient, image_to_array
from robot_server.ros_main import SteadyMultiThreadedExecutor, declare_config, init_with_stop_event, stamp_msg

LOG = logging.getLogger("policy.server_node")
FEEDBACK_PERIOD_S = 0.2


def _stamp_s(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def latent_to_msg(rec: LatentRecord) -> Latent:
    msg = Latent()
    msg.header.stamp = stamp_msg(rec.stamp)
    msg.obs_id = int(rec.obs_id)
    msg.vlm_id = rec.vlm_id
    msg.instruction = rec.instruction
    msg.shape = [int(v) for v in rec.latents.shape]
    msg.data = np.ascontiguousarray(rec.latents, dtype="<f2").tobytes()
    msg.state = [float(v) for v in rec.state]
    return msg


def latents_from_msg(msg: Latent) -> np.ndarray:
    """The float16 [N, d] latents of a Latent message (for the RL actor and tests)."""
    return np.frombuffer(bytes(msg.data), dtype="<f2").reshape(tuple(msg.shape))


_D = PolicyServerConfig()


@dataclasses.dataclass(frozen=True)
class PolicyServerParams:
    """policy_server's ROS parameters (robot_server.ros_main.declare_config declares one per field)."""
    checkpoint: str = ""  # a VLA checkpoint directory (required)
    # Camera topic names, one per camera of the policy, in its order ([]: the policy's own camera names).
    cameras: list[str] = dataclasses.field(default_factory=list)
    control_rate: float = _D.control_hz
    deadline_budget_s: float = _D.deadline_budget_s
    default_timeout_s: float = _D.default_timeout_s
    publish_latents: bool = True
    latent_instruction: str = ""  # encode-only mode for the RL actor (settable at runtime)
    max_frame_age_s: float = _D.max_frame_age_s
    max_frame_skew_s: float = _D.max_frame_skew_s
    max_state_age_s: float = _D.max_state_age_s
    max_invalid_s: float = _D.max_invalid_s
    image_size: list[int] = dataclasses.field(default_factory=lambda: list(_D.image_size))  # [h, w]; [0, 0]: any
    success_topic: str = ri.TOPIC_SUCCESS
    # "" (default): the checkpoint's vla_config `device` (cpu for checkpoints without one); or auto | cpu | cuda[:N]
    device: str = ""
    dtype: str = ""  # "" the checkpoint's backbone dtype; float32 | float16 | bfloat16
    torch_threads: int = 1  # intra-op threads on CPU (the tiny model is fastest on one)

    def server_config(self) -> PolicyServerConfig:
        size = [int(v) for v in self.image_size]
        return PolicyServerConfig(
            control_hz=self.control_rate, deadline_budget_s=self.deadline_budget_s,
            default_timeout_s=self.default_timeout_s, max_frame_age_s=self.max_frame_age_s,
            max_frame_skew_s=self.max_frame_skew_s, max_state_age_s=self.max_state_age_s,
            max_invalid_s=self.max_invalid_s, image_size=size if any(size) else [])


class PolicyServerNode(Node):
    def __init__(self, *, context: Optional[Context] = None, node_name: str = "policy_server",
                 namespace: str = "/irevla", parameter_overrides: Optional[list[Parameter]] = None):
        super().__init__(node_name, context=context, namespace=namespace,
                         parameter_overrides=parameter_overrides or [])
        p = declare_config(self, PolicyServerParams)
        if not p.checkpoint.strip():
            raise ValueError("parameter 'checkpoint' is required: a VLA checkpoint directory "
                             "(policy_server --ros-args -p checkpoint:=PATH)")
        config = p.server_config()
        if p.torch_threads > 0:
            import torch
            torch.set_num_threads(p.torch_threads)
        t0 = time.monotonic()
        self.core = PolicyServerCore.from_checkpoint(p.checkpoint.strip(), config, device=p.device.strip(),
                                                 dtype=p.dtype.strip())
        load_s = time.monotonic() - t0
        self.publish_latents = p.publish_latents
        topics = list(p.cameras) or list(self.core.cameras)
        if len(topics) != len(self.core.cameras):
            raise ValueError(f"parameter 'cameras' names {len(topics)} topic(s) {topics}, but the policy reads "
                             f"{len(self.core.cameras)} camera(s) {list(self.core.cameras)}")
        self.camera_topics = dict(zip(self.core.cameras, topics))
        for cam, topic in self.camera_topics.items():
            self.core.camera_labels[cam] = f"{cam} ({ri.camera_topic(topic)})"
        self.set_latent_instruction(p.latent_instruction)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.callback_errors = 0
        self.actions_published = 0
        self.ticks_behind = 0  # control ticks skipped because the loop fell more than a period behind
        self._pub_lock = threading.Lock()  # publishing an action vs ending its command
        self._ended: dict[int, Outcome] = {}  # command id -> outcome decided by the core (timeout / error)
        self._success_at = float("nan")  # receive time of the last success=true (nan: none / false)
        group = ReentrantCallbackGroup()
        self.robot = RobotClient(self)  # state and status subscriptions, the (reliable) action publisher
        for cam, topic in self.camera_topics.items():
            self.create_subscription(Image, ri.camera_topic(topic), lambda m, c=cam: self._on_image(c, m),
                                     ri.LATEST_QOS, callback_group=group)
        self.create_subscription(Bool, p.success_topic, self._on_success, ri.LATCHED_QOS,
                                 callback_group=group)
        self.pub_latents = self.create_publisher(Latent, ri.TOPIC_POLICY_LATENTS, ri.LATENT_QOS)
        self.pub_status = self.create_publisher(String, ri.TOPIC_POLICY_STATUS, ri.LATCHED_QOS)
        self.create_service(LoadWeights, ri.SRV_POLICY_LOAD_WEIGHTS, self._on_load_weights, callback_group=group)
        self.action_server = ActionServer(
            self, ExecuteInstruction, ri.ACTION_EXECUTE_INSTRUCTION, execute_callback=self._execute,
            goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=lambda handle: CancelResponse.ACCEPT,
            callback_group=group)
        self.create_timer(1.0, self._publish_status, callback_group=group)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._control_loop, name="policy-control", daemon=True)
        self._thread.start()
        self.get_logger().info(
            f"policy_server up: checkpoint={p.checkpoint} (loaded in {load_s:.1f} s on {self.core.device}) "
            f"vlm_id={self.core.vlm_id} "
            f"cameras={self.camera_topics} rate={config.control_hz} Hz budget={config.deadline_budget_s * 1e3:.0f} ms")
        self._publish_status()

    # ------------------------------------------------------------------ inputs
    def _on_image(self, cam: str, msg: Image) -> None:
        stamp = _stamp_s(msg.header)
        try:
            arr = image_to_array(msg)
        except ValueError as e:
            self.core.on_frame_error(cam, str(e), stamp)
            return
        except Exception as e:  # noqa: BLE001 - no message may raise out of a callback
            self.callback_errors += 1
            self.core.on_frame_error(cam, f"{type(e).__name__}: {e}", stamp)
            return
        self.core.on_frame(cam, arr, stamp)

    def _on_success(self, msg: Bool) -> None:
        self._success_at = time.time() if msg.data else float("nan")

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name == "latent_instruction":
                try:
                    self.set_latent_instruction(str(p.value))
                except InputError as e:
                    return SetParametersResult(successful=False, reason=str(e))
            elif p.name == "publish_latents":
                self.publish_latents = bool(p.value)
        return SetParametersResult(successful=True)

    def set_latent_instruction(self, text: str) -> None:
        self.core.set_latent_instruction(text or None)

    # ------------------------------------------------------------------ the control loop
    def _control_loop(self) -> None:
        period = self.core.config.period_s
        next_t = time.time()
        while not self._stop.is_set() and self.context.ok():
            try:
                st = self.robot.state()
                if st is not None:
                    self.core.on_state(st.ee_pos, st.ee_quat, st.gripper_width, st.stamp)
                self._handle(self.core.tick(next_t))
            except Exception as e:  # noqa: BLE001 - the loop must survive anything (tick itself never raises)
                self.callback_errors += 1
                self.get_logger().error(f"control tick failed: {type(e).__name__}: {e}", throttle_duration_sec=1.0)
            next_t += period
            delay = next_t - time.time()
            if delay < -period:  # fell behind (busy machine): skip ahead, never burst stale ticks
                self.ticks_behind += int(-delay / period)
                next_t = time.time()
            elif delay > 0:
                self._stop.wait(delay)

    def _handle(self, res: TickResult) -> None:
        if res.status == "action":
            with self._pub_lock:
                cmd = self.core.command
                if cmd is not None and cmd.command_id == res.command_id:  # not ended meanwhile
                    self.robot.send_action(res.action)
                    self.actions_published += 1
        elif res.status == "ended" and res.ended is not None:
            self._ended[res.command_id] = res.ended
        elif res.status in ("invalid", "late") and res.reason:
            self.get_logger().warning(res.reason, throttle_duration_sec=2.0)
        if res.latent is not None and self.publish_latents:
            self.pub_latents.publish(latent_to_msg(res.latent))

    def _end_command(self, command_id: int, outcome: str, message: str) -> Optional[Outcome]:
        """End the command and stop the arm: one zero-motion action keeping the gripper, then silence."""
        with self._pub_lock:
            cmd = self.core.command
            steps_before = cmd.steps if cmd is not None and cmd.command_id == command_id else 0
            gripper = cmd.last_gripper if cmd is not None else -1.0
            out = self.core.finish(outcome, message, command_id=command_id)
            if steps_before > 0:
                self.robot.send_action([0.0] * 6 + [gripper])
        return out

    # ------------------------------------------------------------------ the ExecuteInstruction action
    def _execute(self, goal_handle):
        req = goal_handle.request
        try:
            cmd = self._start(req)
        except (InputError, ValueError, RuntimeError) as e:
            self.get_logger().warning(f"goal refused: {e}")
            goal_handle.abort()
            return ExecuteInstruction.Result(outcome="error", message=f"rejected: {e}")
        cid = cmd.command_id
        self.get_logger().info(f"command {cid}: {cmd.instruction!r} (timeout {cmd.timeout_s:g} s"
                               f"{', task ' + cmd.task if cmd.task else ''})")
        self._publish_status()
        last_feedback = 0.0
        outcome: Optional[Outcome] = None
        try:
            while outcome is None:
                if not self.context.ok() or self._stop.is_set():
                    outcome = self._end_command(cid, "error", "policy server shutting down")
                    break
                if goal_handle.is_cancel_requested:
                    outcome = self._end_command(cid, "canceled", "canceled by the client")
                    break
                if cid in self._ended:
                    outcome = self._ended.pop(cid)  # the core ended it (timeout / no usable observation)
                    self._hold_after(cmd)
                    break
                if self._success_at >= cmd.started:
                    outcome = self._end_command(cid, "success", "success reported on the success topic")
                    break
                estop = self._robot_estop()
                if estop:
                    outcome = self._end_command(cid, "failure", f"robot e-stopped: {estop}")
                    break
                now = time.time()
                if now - last_feedback >= FEEDBACK_PERIOD_S:
                    last_feedback = now
                    goal_handle.publish_feedback(ExecuteInstruction.Feedback(
                        step=cmd.steps, elapsed_s=cmd.elapsed(now), progress=cmd.progress(now),
                        late_actions=cmd.late_actions))
                time.sleep(0.02)
        except Exception as e:  # noqa: BLE001
            self.callback_errors += 1
            outcome = self._end_command(cid, "error", f"{type(e).__name__}: {e}") or \
                Outcome("error", f"{type(e).__name__}: {e}", cmd.steps, cmd.elapsed(time.time()))
        if outcome is None:  # finished elsewhere meanwhile
            outcome = Outcome("error", "command ended unexpectedly", cmd.steps, cmd.elapsed(time.time()))
        result = ExecuteInstruction.Result(outcome=outcome.outcome, message=outcome.message,
                                           steps=int(outcome.steps), elapsed_s=float(outcome.elapsed_s))
        self.get_logger().info(f"command {cid}: {outcome.outcome} after {outcome.steps} actions, "
                               f"{outcome.elapsed_s:.1f} s, {cmd.late_actions} late: {outcome.message}")
        if outcome.outcome == "success":
            goal_handle.succeed()
        elif outcome.outcome == "canceled":
            goal_handle.canceled()
        else:
            goal_handle.abort()
        self._publish_status()
        return result

    def _hold_after(self, cmd) -> None:
        """A command the core ended itself (timeout / invalid input): stop the arm like any other ending."""
        if cmd.steps > 0:
            with self._pub_lock:
                if self.core.command is None:
                    self.robot.send_action([0.0] * 6 + [cmd.last_gripper])

    def _start(self, req):
        task = req.task.strip()
        if task:
            status = self._robot_status(wait_s=2.0)
            if status is None:
                raise ValueError(f"goal names task {task!r}, but no robot status arrived on {ri.TOPIC_STATUS} to "
                                 "check which task the cell runs")
            if status.get("task") != task:
                raise ValueError(f"the cell runs task {status.get('task')!r}, not {task!r}: reset the cell to that "
                                 "task first (robot_node parameter 'task')")
        return self.core.start(req.instruction, float(req.timeout_s), task)

    def _robot_status(self, wait_s: float = 0.0) -> Optional[dict]:
        deadline = time.monotonic() + wait_s
        while self.robot.status_json is None and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            return json.loads(self.robot.status_json) if self.robot.status_json else None
        except ValueError:
            return None

    def _robot_estop(self) -> str:
        s = self._robot_status()
        return (s.get("estop_reason") or "e-stop latched") if s and s.get("estop") else ""

    # ------------------------------------------------------------------ weights and status
    def _on_load_weights(self, request, response):
        kind, path = request.kind.strip(), request.path.strip()
        try:
            if kind == "checkpoint":
                vlm_id = self.core.load_checkpoint(path)
            elif kind == "head":
                vlm_id = self.core.load_head(path)
            else:
                raise ValueError(f"kind must be 'checkpoint' or 'head', got {kind!r}")
            response.success, response.vlm_id = True, vlm_id
            response.message = f"loaded {kind} from {path}"
            self.get_logger().info(f"{response.message}: vlm_id={vlm_id}")
        except Exception as e:  # noqa: BLE001 - a bad path or file must not take the server down
            response.success, response.vlm_id = False, self.core.vlm_id
            response.message = f"{kind} not loaded (still serving vlm_id {self.core.vlm_id}): {type(e).__name__}: {e}"
            self.get_logger().error(response.message)
        self._publish_status()
        return response

    def _publish_status(self) -> None:
        try:
            s = self.core.status()
            s.update(actions_published=self.actions_published, ticks_behind=self.ticks_behind,
                     camera_topics={c: ri.camera_topic(t) for c, t in self.camera_topics.items()})
            self.pub_status.publish(String(data=json.dumps(s)))
        except Exception as e:  # noqa: BLE001
            self.callback_errors += 1
            self.get_logger().error(f"status failed: {e}", throttle_duration_sec=5.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def destroy_node(self) -> None:
        if hasattr(self, "_stop"):
            self.stop()
        if getattr(self, "action_server", None) is not None:
            self.action_server.destroy()  # Node.destroy_node does not destroy action servers (waitables)
            self.action_server = None
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO)
    stop = init_with_stop_event(args)
    node = None
    try:
        try:
            node = PolicyServerNode()
        except (ValueError, FileNotFoundError) as e:
            print(f"policy_server: {e}", file=sys.stderr)
            return 2
        executor = SteadyMultiThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
        node.stop()  # control thread first, so nothing publishes while the executor shuts down
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
