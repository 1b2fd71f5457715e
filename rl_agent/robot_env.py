"""The robot (or the twin behind the robot node) seen by the RL actor over ROS 2: latents from the policy server,
actions through the robot server, resets by the robot's reset service or the operator; plus the actor's harvest of
successful episodes for stage 2. Used by rl_agent/actor_node.py (the node shell); no node imports this one's node."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from rl_agent import transport as tp


class RosLatentEnv:
    """The real robot (or the twin behind the robot node) seen like rl_agent.env.LatentEnv: latents from the policy
    server's topic, actions through RobotClient, resets by the robot's reset service or the operator."""

    def __init__(self, node, latent_shape, max_episode_steps: int = 100, rate_hz: float = 10.0,
                 auto_reset: bool = True, stop: Optional[threading.Event] = None, log=print,
                 keep_images: bool = False, cameras: tuple = ("front", "wrist"), observe_after: float = 1.0):
        from irevla_interfaces.msg import Latent
        from std_srvs.srv import Trigger

        from robot_server import ros_interface as ri
        from robot_server.client import RobotClient
        from rl_agent.env import EpisodeTrace
        self._trace_cls = EpisodeTrace
        self.node, self.latent_shape = node, tuple(latent_shape)
        self.max_episode_steps, self.dt = int(max_episode_steps), 1.0 / rate_hz if rate_hz > 0 else 0.1
        self.auto_reset, self.stop, self.log = auto_reset, stop or threading.Event(), log
        # For the harvest (stage 2 trains on it) every step keeps the frames the latents were computed from (matched
        # by the latent's stamp) and the robot state, as the recorder stores them.
        self.keep_images, self.cameras = bool(keep_images), tuple(cameras)
        self.client = RobotClient(node, self.cameras if self.keep_images else (), history=10, joints=self.keep_images)
        self.frame_wait_s = 1.0
        self.act_margin_s = 0.01  # the actor's compute between an observation and its action
        # The observation after an action shows the arm this fraction of a control period after the action went out.
        # 1.0 (default): the arm at the end of the action's period, as the in-process env and the expert set see it;
        # the loop then runs slower than control_hz by the encode latency (meanwhile the arm runs on to the action's
        # goal until the robot's watchdog freezes it).
        # Lower values observe the arm while the action still runs: a faster loop that acts on a moving arm.
        if not 0.0 <= float(observe_after) <= 2.0:
            raise ValueError(f"observe_after must be in [0, 2] control periods, got {observe_after}")
        self.observe_after = float(observe_after)
        self._timing: dict = {}
        self.trace = None
        self.task, self.category = "", ""
        self._cv = threading.Condition()
        self._latest: Optional[tuple] = None  # (obs_id, obs, instruction, frames' stamp)
        self._start = threading.Event()
        node.create_subscription(Latent, ri.TOPIC_POLICY_LATENTS, self._on_latent, ri.LATENT_QOS)
        node.create_service(Trigger, f"{tp.NS}/start_episode", self._on_start)
        self._steps = 0
        self._last_id = -1
        self.console = None  # rl_agent.operator_console.OperatorConsole: prompts and pause
        self.poll_while_waiting = None  # called while the operator resets the scene (reads the device's buttons)
        self.waiting_for_reset = False
        self.task_files: tuple = ()  # for the scripted expert's task registry
        self._expert = None
        self._seed = 0

    def start_episode(self) -> None:
        """The scene is reset (operator's key or the start_episode service)."""
        self._start.set()

    def _on_latent(self, msg) -> None:
        shape = tuple(int(x) for x in msg.shape)
        if shape != self.latent_shape:
            self.node.get_logger().warning(f"latents of shape {shape}, this actor expects {self.latent_shape}: "
                                           "is the policy server running the same VLA?", throttle_duration_sec=10.0)
            return
        lat = np.frombuffer(bytes(msg.data), "<f2").reshape(shape).astype(np.float32)
        obs = {"latents": lat, "state": np.asarray(msg.state, np.float32)}
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self._cv:
            self._latest = (int(msg.obs_id), obs, msg.instruction, stamp)
            self._cv.notify_all()

    def _on_start(self, request, response):
        self.start_episode()
        response.success, response.message = True, "episode starts"
        return response

    def _next_obs(self, taken_after: float, not_before: float = 0.0, timeout: float = 5.0) -> tuple[dict, str]:
        """The newest latent at `not_before` (monotonic: the next control tick), of camera frames taken at or after
        `taken_after` (wall clock, the frames' stamps); waits past the tick for one if there is none yet. The
        frames' stamp, not the latent's arrival, decides: a latent that arrives after the action can still encode
        frames from before it (the policy server's encode takes tens of ms), and the agent would act on a world
        one step old."""
        deadline = max(time.monotonic(), not_before) + timeout
        with self._cv:
            while not self.stop.is_set():
                early = not_before - time.monotonic()
                if early > 0:
                    self._cv.wait(early)
                    continue
                if self._latest is not None and self._latest[0] > self._last_id and self._latest[3] >= taken_after:
                    self._last_id = self._latest[0]
                    self._obs_stamp = self._latest[3]
                    return self._latest[1], self._latest[2]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no latents of frames newer than the last action on the policy server's "
                                       f"topic for {timeout:.0f} s (is policy/server_node.py running with latents "
                                       "enabled, and are the cameras' stamps on this host's clock?)")
                self._cv.wait(min(left, 0.2))
        raise InterruptedError("stopping")

    def scene_expert(self):
        if self._expert is None:
            from robot_server.scene_expert import SceneExpert
            self._expert = SceneExpert(self.client, self.task_files)
        return self._expert

    def scripted_demos_unavailable(self) -> str:
        """Why this cell has no scripted expert ("" when it has: the twin behind robot_node, a task of
        robot_server.scene_expert.SKILLS_OVER_ROS)."""
        return self.scene_expert().unavailable()

    def expert_action(self, noise: float = 0.0) -> np.ndarray:
        """The twin's scripted expert over ROS (robot_server.scene_expert): the robot node's scene ground truth,
        published for the sim backend only. NoSceneError on a real cell."""
        expert = self.scene_expert()
        if expert.expert is None:  # the first step after a reset
            expert.start(self._seed, noise)
        return expert.action()

    def reset(self, seed: int):
        self._seed = int(seed)
        if self._expert is not None:
            self._expert.before_reset()
        ok, msg = self.client.call("reset")  # homes the arm (in the twin: also a new scene)
        if not ok:
            self.log(f"actor: robot reset failed ({msg}); continuing from where the robot is")
        if not self.auto_reset:  # the real robot: a person puts the scene back
            self._start.clear()
            self.waiting_for_reset = True
            if self.console is not None:
                self.console.prompt("reset the scene, then press [r] (or call /irevla/rl/start_episode)")
            else:
                self.log(f"actor: reset the scene, then call {tp.NS}/start_episode (std_srvs/Trigger)")
            while not self._start.wait(0.05 if self.poll_while_waiting else 0.2):
                if self.stop.is_set():
                    raise InterruptedError("stopping")
                if self.poll_while_waiting is not None:  # the SpaceMouse's start / pause buttons
                    self.poll_while_waiting()
            self.waiting_for_reset = False
        if self.keep_images and not self.client.wait_ready(timeout_s=10.0):
            self.log("actor: no camera frames or robot state on the actor's own subscriptions yet (harvest)")
        # A frame of the reset scene, taken after this node receives the cameras: its frames reach the harvest too.
        obs, instruction = self._next_obs(taken_after=time.time())
        self._steps = 0
        self._timing = {"obs_age": [], "period": [], "shown_after": [], "slips0": self._sim_slips(), "t_send": None}
        self.trace = self._trace_cls(self.task, instruction, int(seed), self.category)
        self._keep_frames()
        self._t_last = time.monotonic()
        return obs, {"instruction": instruction, "success": bool(self.client.success)}

    def _keep_frames(self) -> None:
        """The observation's frames and robot state into the trace (harvest). A step without them drops the
        episode's frames (it is not harvested) rather than mixing in frames of other moments."""
        if not self.keep_images or self.trace is None:
            return
        if self._steps == 0:
            self._frames_ok = True
        if not self._frames_ok:
            return
        # The latents can arrive before this node's own copy of their frames (separate DDS streams; the first
        # frames of a fresh subscription): wait up to a few camera periods for them.
        deadline = time.monotonic() + self.frame_wait_s
        while True:
            images = {c: self.client.image_near(c, self._obs_stamp) for c in self.cameras}
            robot = self.client.record()
            complete = robot is not None and all(v is not None for v in images.values())
            if complete or time.monotonic() >= deadline or self.stop.is_set():
                break
            time.sleep(0.02)
        if not complete:
            self.trace.images, self.trace.robot, self._frames_ok = [], [], False
            self.log(f"actor: no frames for the latents of step {self._steps}: this episode is not harvested")
            return
        self.trace.images.append(images)
        self.trace.robot.append(robot)

    def step(self, action, intervened: bool = False):
        a = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        if self.console is not None and self.console.paused:  # the arm holds (no action: the watchdog)
            self.console.wait_if_paused(self.stop)
            self._t_last = time.monotonic() - self.dt
        wait = self._t_last + self.dt - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.client.send_action(a)
        sent = time.time()
        self._t_last = time.monotonic()
        self._note_timing(sent)
        # The next observation, as on a real arm: the action holds one control period, then the newest latents of
        # frames taken `observe_after` of a period after it went out (a few ms early, for the actor's own compute).
        obs, _ = self._next_obs(taken_after=sent + self.observe_after * self.dt - self.act_margin_s,
                                not_before=self._t_last + self.dt - self.act_margin_s)
        if self._timing:
            self._timing["shown_after"].append(self._obs_stamp - sent)
        self._steps += 1
        self._keep_frames()
        success = bool(self.client.success)
        self.trace.actions.append(a)
        self.trace.rewards.append(float(success))
        self.trace.intervened.append(bool(intervened))
        truncated = self._steps >= self.max_episode_steps and not success
        return obs, float(success), success, truncated, {"success": success}

    def _note_timing(self, sent: float) -> None:
        t = self._timing
        if not t:
            return
        t["obs_age"].append(sent - self._obs_stamp)  # how old the world the action was chosen on is
        if t["t_send"] is not None:
            t["period"].append(sent - t["t_send"])
        t["t_send"] = sent

    def _sim_slips(self) -> Optional[int]:
        """The twin's count of real-time slips (robot status `sim_slips`; None on a real robot)."""
        import json
        try:
            return json.loads(self.client.status_json or "{}").get("sim_slips")
        except ValueError:
            return None

    def episode_timing(self) -> dict:
        """This episode's control timing, for the episode log: the mean age of the observation each action was
        chosen on (frames' stamp to the action going out), the mean step period, how soon after its action an
        observation's frames were taken at the earliest, and the twin's real-time slips (each skips >= 0.1 s of
        simulated time; 0 on a machine that keeps up)."""
        t = self._timing
        if not t:
            return {}
        def ms(values, f=np.mean):
            return round(1e3 * float(f(values)), 1) if values else None
        # shown_after_min_ms: the earliest moment after an action that an observation showed (>= observe_after).
        out = {"obs_age_ms": ms(t["obs_age"]), "step_ms": ms(t["period"]),
               "shown_after_min_ms": ms(t["shown_after"], np.min)}
        now = self._sim_slips()
        if now is not None and t["slips0"] is not None:
            out["sim_slips"] = int(now) - int(t["slips0"])
        return out

    def close(self) -> None:
        pass


def task_category(task: str, task_file: str) -> str:
    """The registry's category of `task` (expert / rl / unseen), "" for a task the registry does not know."""
    try:
        from sim_twin.tasks.registry import TaskRegistry
        spec = TaskRegistry.load([f for f in task_file.split(",") if f]).tasks.get(task)
    except Exception:  # noqa: BLE001 - a real cell's task need not be in the twin's registry
        return ""
    return spec.category if spec is not None else ""


class ActorHarvest:
    """Successful episodes (demos and RL) in the expert-set format (rl_agent.harvest.Harvester), for stage 2:
    `irevla train --checkpoint VLA --data EXPERT --data-rl OUT/harvest`. Keys carry the run's start time, so a
    restarted actor (whose episode numbers start again) adds its episodes instead of skipping them."""

    def __init__(self, root: Path, cameras: tuple, actor_id: str, logger):
        self.root, self.cameras, self.logger = root, cameras, logger
        self.run = f"{actor_id}:{int(time.time())}"
        self.harvester = None

    def __call__(self, trace, source: str, key: str) -> None:
        if not trace.success or not trace.images:
            return
        try:
            if self.harvester is None:  # the image size is what the cameras deliver
                from rl_agent.harvest import Harvester
                size = int(next(iter(trace.images[0].values())).shape[0])
                self.harvester = Harvester(self.root, self.cameras, size, sources=("rl", "vla_demo", "expert_demo"),
                                           operator="irevla rl_actor",
                                           robot={"backend": "ros2", "collector": "rl_actor"})
            entry = self.harvester.write(trace, source, f"{self.run}:{key}")
            if entry is not None:
                self.logger.info(f"actor: harvested {source} episode {entry.get('name')} ({len(trace)} steps)")
        except Exception as exc:  # noqa: BLE001 - a failed write must not end the session
            self.logger.error(f"actor: harvest of {key} failed: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self.harvester is not None:
            self.harvester.close()
