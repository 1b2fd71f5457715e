"""recorder_node: the ROS 2 shell over teleop.recorder.EpisodeRecorder (issue #3, teleop collection).

Subscribes to the camera topics, the robot state (ee_pose, joint_states, gripper) and the robot's action topic
(the command the robot executes) and, on a 10 Hz timer, records one step with the NEWEST sample of each while an
episode is in progress. A camera with no frame yet (topic missing) or no new frame for more than `stale_s`
(stalled), or missing/stalled state or action, skips that step: the reason is logged (throttled), counted and shown
in the progress message (`stalled`, `skipped_in_episode`); a step is never recorded with stale data and nothing
already recorded is touched. What happens to the episode is the `stall_policy` parameter:

* `keep` (default): recording goes on when the stream is back; the saved episode's metadata lists the gaps
  (`extra.gaps`: after which step, how many steps were skipped, the reasons) and `extra.skipped_steps` (reason ->
  count, including skips before the first step), so training code can split or drop it.
* `discard`: a stall after the first recorded step drops the episode in progress at once, with the reason in
  `last_error` (finished episodes are untouched); the operator records it again.

Services (std_srvs/Trigger, robot_server.ros_interface.SRV_RECORDER_*): start (task / instruction / category /
operator from this node's parameters: change them with `ros2 param set /irevla/recorder_node task ...`),
stop_success, stop_failure, discard, quit. The teleop node sets task and instruction through the same
parameters (its operator prompt calls this node's set_parameters service). Progress (std_msgs/String JSON) is
published latched on
/irevla/recorder/progress after every change and once a second, and logged after every episode.

    recorder_node --ros-args -p out_dir:=data/expert -p task:=pick_red_block -p instruction:="pick up the red block"
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from collections import Counter
from typing import Optional

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger

from robot_server import ros_interface as ri
from robot_server.client import image_to_array
from teleop.episode_format import CameraConfig
from teleop.recorder import EpisodeRecorder, RecorderConfig, RecorderError
from robot_server.ros_main import SteadyMultiThreadedExecutor, current_config, declare_config, init_with_stop_event

LOG_THROTTLE_S = 1.0
STALL_POLICIES = ("keep", "discard")


class _Latest:
    """Newest sample of one stream with its receive time (monotonic) and a count."""
    __slots__ = ("value", "t", "count")

    def __init__(self):
        self.value, self.t, self.count = None, None, 0

    def put(self, value) -> None:
        self.value, self.t, self.count = value, time.monotonic(), self.count + 1


@dataclasses.dataclass(frozen=True)
class RecorderParams:
    """recorder_node's ROS parameters (robot_server.ros_main.declare_config). task, instruction, category,
    task_category, operator and stall_policy are read again at each episode: `ros2 param set` works between them."""
    out_dir: str = "data/expert"
    config: str = ""  # optional YAML with a `recorder:` section (teleop/example_config.yaml)
    cameras: list[str] = dataclasses.field(default_factory=lambda: ["front", "wrist"])
    image_width: int = 224
    image_height: int = 224
    rate: float = 10.0
    stale_s: float = 0.5
    stall_policy: str = "keep"  # keep | discard: what a stall does to the episode
    task: str = ""
    instruction: str = ""
    category: str = "teleop"  # the data's source, as `irevla collect` writes "scripted"
    task_category: str = ""  # the task's registry category (expert / rl / unseen)
    operator: str = ""
    target_episodes: int = 0  # 0: the config's target

    def __post_init__(self):
        if self.stall_policy not in STALL_POLICIES:
            raise ValueError(f"stall_policy must be one of {STALL_POLICIES}, got {self.stall_policy!r}")


class RecorderNode(Node):
    def __init__(self, context: Optional[Context] = None, node_name: str = "recorder_node",
                 namespace: str = "/irevla", parameter_overrides: Optional[list[Parameter]] = None,
                 recorder: Optional[EpisodeRecorder] = None):
        super().__init__(node_name, context=context, namespace=namespace,
                         parameter_overrides=parameter_overrides)
        p = declare_config(self, RecorderParams)
        if recorder is None:
            cfg = RecorderConfig.from_yaml(p.config) if p.config else RecorderConfig()
            names = [n for n in p.cameras if n]
            # A config file's cameras keep their sizes; otherwise image_width / image_height decide (the built-in
            # defaults must not override what the graph asked for).
            known = {c.name: c for c in cfg.cameras} if p.config else {}
            cams = tuple(known.get(n) or CameraConfig(n, width=p.image_width, height=p.image_height) for n in names)
            over = {"root": p.out_dir, "cameras": cams, "control_hz": p.rate}
            if p.target_episodes > 0:
                over["target_episodes"] = p.target_episodes
            from dataclasses import replace
            recorder = EpisodeRecorder(replace(cfg, **over))
        self.recorder = recorder
        self.cameras = tuple(c.name for c in recorder.config.cameras)
        self.stale_s = p.stale_s
        self.skipped: Counter = Counter()  # reason -> steps skipped (all episodes of this session)
        self.skipped_in_episode = 0
        self._episode_skips: Counter = Counter()  # reason -> steps skipped in the episode in progress
        self._gaps: list[dict] = []  # runs of skipped steps in the episode in progress
        self._gap: Optional[dict] = None  # the run going on now
        self.stalled = ""  # the current stream problem ("" while steps are being recorded)
        self.node_error = ""  # last episode-level problem of this node (e.g. discarded by a stall)
        self.recorded_in_session = 0
        self._log_t: dict[str, float] = {}
        self._stamp_ns = 0
        self._lock = threading.Lock()
        self._quit = threading.Event()

        self._images = {c: _Latest() for c in self.cameras}
        self._pose, self._joints, self._gripper, self._action = _Latest(), _Latest(), _Latest(), _Latest()
        for cam in self.cameras:
            self.create_subscription(Image, ri.camera_topic(cam), lambda m, c=cam: self._images[c].put(m),
                                     ri.LATEST_QOS)
        self.create_subscription(PoseStamped, ri.TOPIC_EE_POSE, self._pose.put, ri.LATEST_QOS)
        self.create_subscription(JointState, ri.TOPIC_JOINT_STATES, self._joints.put, ri.LATEST_QOS)
        self.create_subscription(JointState, ri.TOPIC_GRIPPER, self._gripper.put, ri.LATEST_QOS)
        self.create_subscription(Float64MultiArray, ri.TOPIC_ACTION, self._action.put, ri.LATEST_QOS)
        self.pub_progress = self.create_publisher(String, ri.TOPIC_RECORDER_PROGRESS, ri.LATCHED_QOS)
        # Timer and services in one exclusive group: an episode never stops in the middle of a step.
        group = MutuallyExclusiveCallbackGroup()
        for srv, cb in ((ri.SRV_RECORDER_START, self._srv_start),
                        (ri.SRV_RECORDER_SUCCESS, lambda req, res: self._srv_stop(res, True)),
                        (ri.SRV_RECORDER_FAILURE, lambda req, res: self._srv_stop(res, False)),
                        (ri.SRV_RECORDER_DISCARD, self._srv_discard),
                        (ri.SRV_RECORDER_QUIT, self._srv_quit)):
            self.create_service(Trigger, srv, cb, callback_group=group)
        self.create_timer(1.0 / p.rate, self._tick, callback_group=group)
        self.create_timer(1.0, self.publish_progress, callback_group=group)
        self.publish_progress()
        self.get_logger().info(f"recording into {recorder.root} (cameras {list(self.cameras)}); "
                               f"{recorder.progress()}")

    # ------------------------------------------------------------------------------------ progress
    def progress_dict(self) -> dict:
        pr = self.recorder.progress()
        p = current_config(self, RecorderParams)
        return {"done": pr.done, "target": pr.target, "failed": pr.failed, "per_task": pr.per_task,
                "seconds_per_episode": pr.mean_episode_s, "seconds_per_cycle": pr.mean_cycle_s, "eta_s": pr.eta_s,
                "recording": pr.recording, "steps_in_progress": pr.steps_in_progress,
                "skipped_steps": dict(self.skipped), "skipped_in_episode": self.skipped_in_episode,
                "stalled": self.stalled if pr.recording else "",
                "task": p.task, "instruction": p.instruction, "category": p.category,
                "task_category": p.task_category,
                "operator": p.operator, "last_error": self.node_error or pr.last_error, "text": str(pr)}

    def publish_progress(self) -> None:
        if self.recorder.state == EpisodeRecorder.CLOSED:
            return
        self.pub_progress.publish(String(data=json.dumps(self.progress_dict())))

    # ------------------------------------------------------------------------------------ recording
    def _skip(self, reason: str, detail: str, stream: bool = True) -> None:
        """This tick records nothing. `stream`: because an input stream is missing or stalled."""
        self.skipped[reason] += 1
        self.skipped_in_episode += 1
        self._episode_skips[reason] += 1
        self.stalled = f"{reason} ({detail})"
        steps = self.recorder.progress().steps_in_progress
        if stream and steps > 0 and current_config(self, RecorderParams).stall_policy == "discard":
            name = self.recorder.progress().recording
            if self.recorder.discard():
                self.node_error = (f"episode {name} discarded after {steps} steps (stall_policy discard): "
                                   f"{reason}: {detail}. Finished episodes are intact; start it again.")
                self.get_logger().error(self.node_error)
                self.publish_progress()
            return
        if steps > 0:  # skips before the first step only delay the episode's start: not a gap in its data
            if self._gap is None:
                self._gap = {"after_step": steps, "skipped": 0, "reasons": []}
                self._gaps.append(self._gap)
            self._gap["skipped"] += 1
            if reason not in self._gap["reasons"]:
                self._gap["reasons"].append(reason)
        now = time.monotonic()
        if now - self._log_t.get(reason, -1e9) >= LOG_THROTTLE_S:
            self._log_t[reason] = now
            self.get_logger().error(f"step skipped ({self.skipped[reason]} so far: {reason}): {detail}")

    def _fresh(self, latest: _Latest, now: float) -> Optional[str]:
        if latest.value is None:
            return "never received"
        age = now - latest.t
        return f"no new message for {age:.2f} s (> {self.stale_s:g} s)" if age > self.stale_s else None

    def _tick(self) -> None:
        if not self.recorder.recording:
            return
        now = time.monotonic()
        images = {}
        for cam in self.cameras:
            lt = self._images[cam]
            problem = self._fresh(lt, now)
            if problem:
                topic = ri.camera_topic(cam)
                pubs = self.count_publishers(topic)
                why = ("camera topic missing" if lt.value is None else "camera stalled")
                return self._skip(f"{why}: {cam}", f"camera {cam!r} on {topic}: {problem} "
                                  f"({pubs} publisher(s) on that topic)")
            try:
                images[cam] = image_to_array(lt.value)
            except ValueError as e:
                return self._skip(f"bad image: {cam}", f"camera {cam!r}: {e}", stream=False)
        for name, lt, topic in (("ee_pose", self._pose, ri.TOPIC_EE_POSE),
                                ("joint_states", self._joints, ri.TOPIC_JOINT_STATES),
                                ("gripper", self._gripper, ri.TOPIC_GRIPPER),
                                ("action", self._action, ri.TOPIC_ACTION)):
            problem = self._fresh(lt, now)
            if problem:
                return self._skip(f"{name} missing or stalled", f"{topic}: {problem}")
        pose, js, g, act = self._pose.value, self._joints.value, self._gripper.value, self._action.value
        pp, o = pose.pose.position, pose.pose.orientation
        state = {"q": list(js.position), "dq": list(js.velocity) or None, "joint_names": list(js.name) or None,
                 "ee_pos": [pp.x, pp.y, pp.z], "ee_quat": [o.w, o.x, o.y, o.z],
                 "gripper_width": g.position[0] if len(g.position) else None}
        stamp_ns = max(time.time_ns(), self._stamp_ns + 1)
        try:
            self.recorder.add_step(images, state, np.asarray(act.data, float), stamp_ns)
        except RecorderError as e:  # bad input: this step only; disk errors already dropped the episode
            return self._skip(type(e).__name__, str(e), stream=False)
        self._stamp_ns = stamp_ns
        self._gap = None
        self.stalled = ""

    # ------------------------------------------------------------------------------------ services
    def _srv_start(self, req, res):
        try:
            p = current_config(self, RecorderParams)  # task, instruction, operator: set before each episode
            extra = {"task_category": p.task_category} if p.task_category else {}
            name = self.recorder.start(task=p.task, category=p.category, instruction=p.instruction,
                                       operator=p.operator, extra=extra)
        except RecorderError as e:
            res.success, res.message = False, str(e)
            self.get_logger().error(f"start refused: {e}")
        else:
            self.skipped_in_episode = 0
            self._episode_skips.clear()
            self._gaps, self._gap, self.stalled, self.node_error = [], None, "", ""
            res.success, res.message = True, f"recording {name}: {p.task} / {p.instruction!r}"
            self.get_logger().info(res.message)
        self.publish_progress()
        return res

    def _srv_stop(self, res, success: bool):
        try:  # answers once the episode is saved (stop() waits for the file to be complete and renamed)
            entry = self.recorder.stop(success=success, extra={"skipped_steps": dict(self._episode_skips),
                                                               "gaps": [dict(g) for g in self._gaps]})
        except RecorderError as e:
            res.success, res.message = False, str(e)
            self.get_logger().error(f"stop refused: {e}")
        else:
            self.recorded_in_session += 1
            res.success = True
            gaps = f" in {len(self._gaps)} gap(s): {dict(self._episode_skips)}" if self._gaps else ""
            res.message = (f"saved {entry['name']} ({'success' if success else 'failure'}, {entry.get('n_steps')} "
                           f"steps, {self.skipped_in_episode} skipped{gaps}); {self.recorder.progress()}")
            self.get_logger().info(res.message)
        self.publish_progress()
        return res

    def _srv_discard(self, req, res):
        res.success = self.recorder.discard()
        res.message = "episode discarded" if res.success else "no episode in progress"
        self.get_logger().info(f"{res.message}; {self.recorder.progress()}")
        self.publish_progress()
        return res

    def _srv_quit(self, req, res):
        self.publish_progress()
        prog = self.recorder.close()
        res.success, res.message = True, f"recorder closed: {prog}"
        self.get_logger().info(res.message)
        self._quit.set()
        return res

    @property
    def quit_requested(self) -> bool:
        return self._quit.is_set()

    def destroy_node(self):
        self.recorder.close()
        return super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO)
    stop = init_with_stop_event(args)
    node = None
    try:
        node = RecorderNode()
        executor = SteadyMultiThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and not node.quit_requested:
            executor.spin_once(timeout_sec=0.1)
        executor.shutdown(timeout_sec=2.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as e:  # configuration errors (bad YAML, locked directory...): one clear line
        print(f"recorder_node: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
