"""The RL actor as a ROS 2 node (`rl_actor`): acts at 10 Hz from latents with its copy of the SAC actor, sends
transition chunks to the learner, takes new parameters whenever the learner pushes them, and keeps acting -- with
its last parameters -- when the learner dies.

    rl_actor --ros-args -p checkpoint:=runs/stage0 -p task:=pick_eggplant -p out_dir:=runs/actor [-p mode:=twin]

mode twin:  its own twin (rl_agent.env.LatentEnv: TwinEnv + the frozen VLA encoding each frame once), automatic
            resets with new seeds, the twin's success predicate (or reward:=classifier).
mode robot: latents from the policy server (irevla_interfaces/msg/Latent on /irevla/policy/latents), actions to the
            robot server (robot_server.client.RobotClient), an operator's reward (/irevla/rl/mark_success,
            /irevla/rl/mark_failure, std_srvs/Trigger) and reset prompt (/irevla/rl/start_episode), or the robot
            node's success topic in the twin (reward:=twin).
Both: first 20 zero-shot demos of the VLA (kept in out_dir/actor_demos, so a restarted actor sends the same ones,
which the learner deduplicates), then RL episodes. Delivery and reconnection: rl_agent/transport.py.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from rl_agent import transport as tp
from rl_agent.actor_core import ActorCore, send_demos
from sim_twin import seeds


class RosLatentEnv:
    """The real robot (or the twin behind the robot node) seen like rl_agent.env.LatentEnv: latents from the policy
    server's topic, actions through RobotClient, resets by the robot's reset service or the operator."""

    def __init__(self, node, latent_shape, max_episode_steps: int = 100, rate_hz: float = 10.0,
                 auto_reset: bool = True, stop: Optional[threading.Event] = None, log=print,
                 keep_images: bool = False, cameras: tuple = ("front", "wrist")):
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
        self.trace = None
        self.task, self.category = "", ""
        self._cv = threading.Condition()
        self._latest: Optional[tuple] = None  # (obs_id, obs, instruction, recv time, frames' stamp)
        self._start = threading.Event()
        node.create_subscription(Latent, ri.TOPIC_POLICY_LATENTS, self._on_latent, ri.LATENT_QOS)
        node.create_service(Trigger, f"{tp.NS}/start_episode", self._on_start)
        self._steps = 0
        self._last_id = -1
        self.console = None  # rl_agent.operator_console.OperatorConsole: prompts and pause
        self.waiting_for_reset = False

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
            self._latest = (int(msg.obs_id), obs, msg.instruction, time.monotonic(), stamp)
            self._cv.notify_all()

    def _on_start(self, request, response):
        self.start_episode()
        response.success, response.message = True, "episode starts"
        return response

    def _next_obs(self, after: float = 0.0, timeout: float = 5.0) -> tuple[dict, str]:
        """The first latent newer than the last one used and received after `after` (monotonic time)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not self.stop.is_set():
                if self._latest is not None and self._latest[0] > self._last_id and self._latest[3] >= after:
                    self._last_id = self._latest[0]
                    self._obs_stamp = self._latest[4]
                    return self._latest[1], self._latest[2]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no new latents on the policy server's topic for {timeout:.0f} s "
                                       "(is policy/server_node.py running with latents enabled?)")
                self._cv.wait(min(left, 0.2))
        raise InterruptedError("stopping")

    def reset(self, seed: int):
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
            while not self._start.wait(0.2):
                if self.stop.is_set():
                    raise InterruptedError("stopping")
            self.waiting_for_reset = False
        obs, instruction = self._next_obs(after=time.monotonic())  # a frame of the reset scene
        self._steps = 0
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
        images = {c: self.client.image_near(c, self._obs_stamp) for c in self.cameras}
        robot = self.client.record()
        if robot is None or any(v is None for v in images.values()):
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
        self._t_last = time.monotonic()
        # the next observation: a frame taken at least half a control period after the action went out
        obs, _ = self._next_obs(after=self._t_last + 0.5 * self.dt)
        self._steps += 1
        self._keep_frames()
        success = bool(self.client.success)
        self.trace.actions.append(a)
        self.trace.rewards.append(float(success))
        self.trace.intervened.append(bool(intervened))
        truncated = self._steps >= self.max_episode_steps and not success
        return obs, float(success), success, truncated, {"success": success}

    def close(self) -> None:
        pass


def _task_category(task: str, task_file: str) -> str:
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


# ---------------------------------------------------------------------------------------------- ROS node
def main(argv: Optional[list[str]] = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos_event import SubscriptionEventCallbacks
    from std_srvs.srv import Trigger

    from robot_server.ros_main import init_with_stop_event

    stop = init_with_stop_event(argv)
    from irevla_interfaces.msg import Blob

    node = Node("rl_actor", namespace="/irevla")
    # One literal declare_parameter per parameter (tests/test_launch_params.py checks graphs against them).
    p = {
        "checkpoint": node.declare_parameter("checkpoint", "").value,
        "task": node.declare_parameter("task", "pick_eggplant").value,
        "task_file": node.declare_parameter("task_file", "").value,
        "out_dir": node.declare_parameter("out_dir", "runs/rl_actor").value,
        "config": node.declare_parameter("config", "").value,
        "actor_id": node.declare_parameter("actor_id", "actor0").value,
        "mode": node.declare_parameter("mode", "twin").value,
        "seed": node.declare_parameter("seed", 0).value,
        "demos": node.declare_parameter("demos", 20).value,
        "demo_source": node.declare_parameter("demo_source", "vla").value,
        "reward": node.declare_parameter("reward", "twin").value,
        "classifier": node.declare_parameter("classifier", "").value,
        "rate_hz": node.declare_parameter("rate_hz", 10.0).value,
        "chunk_steps": node.declare_parameter("chunk_steps", 10).value,
        "heartbeat_period_s": node.declare_parameter("heartbeat_period_s", 0.5).value,
        "learner_timeout_s": node.declare_parameter("learner_timeout_s", 3.0).value,
        "silent_report_s": node.declare_parameter("silent_report_s", 5.0).value,
        "outbox_mb": node.declare_parameter("outbox_mb", 256).value,
        "resend_after_s": node.declare_parameter("resend_after_s", 3.0).value,
        "max_episodes": node.declare_parameter("max_episodes", 0).value,
        "max_episode_steps": node.declare_parameter("max_episode_steps", 0).value,
        "auto_reset": node.declare_parameter("auto_reset", True).value,
        "image_size": node.declare_parameter("image_size", 0).value,
        "intervention_device": node.declare_parameter("intervention_device", "").value,  # spacemouse | keyboard
        "console": node.declare_parameter("console", "auto").value,  # operator keys in this terminal (robot mode)
        "minutes": node.declare_parameter("minutes", 0.0).value,  # session budget (0: until stopped)
        "harvest": node.declare_parameter("harvest", True).value,  # successful episodes -> out_dir/harvest
        "demo_data": node.declare_parameter("demo_data", "").value,  # recorded episodes (expert-set format) as demos
        "demo_episodes": node.declare_parameter("demo_episodes", 20).value,
    }
    logger = node.get_logger()
    if not p["checkpoint"]:
        logger.error("rl_actor: set the parameter checkpoint:=<stage-0 VLA checkpoint directory>")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    if p["mode"] == "robot" and p["demo_source"] != "vla":
        logger.warning(f"rl_actor: demo_source {p['demo_source']!r} needs the twin's scripted expert; on the robot the "
                       "demos come from the VLA (demo_source vla)")
        p["demo_source"] = "vla"
    if p["mode"] not in ("twin", "robot"):
        logger.error(f"rl_actor: mode must be twin or robot, got {p['mode']!r}")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    if p["mode"] == "twin":  # renders its own twin: a working offscreen GL backend before mujoco loads
        from robot_server.mujoco_gl import ensure_mujoco_gl
        ensure_mujoco_gl()

    from rl_agent.env import LatentEncoder, LatentEnv
    from rl_agent.agent_setup import build_agent, load_sac_overrides
    from rl_agent.episodes import EpisodeRunner, agent_policy
    from rl_agent.rewards import AnyOfReward, OperatorReward, RewardConfig, make_reward_source

    agent, vla = build_agent(p["checkpoint"], load_sac_overrides(p["config"]), int(p["seed"]))
    encoder = LatentEncoder(vla, torch_threads=1)
    out = Path(p["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    core = ActorCore(agent, p["actor_id"], tp.Outbox(int(p["outbox_mb"]) << 20, float(p["resend_after_s"])),
                     float(p["learner_timeout_s"]), float(p["silent_report_s"]), log=logger.info, warn=logger.warning)
    data_qos, params_qos, hb_qos = tp.qos_profiles(float(p["heartbeat_period_s"]))
    pub_data = node.create_publisher(Blob, tp.TOPIC_TRANSITIONS, data_qos)
    pub_status = node.create_publisher(Blob, tp.TOPIC_ACTOR_STATUS, hb_qos)
    hb_seq = [0]
    send_lock = threading.Lock()

    def blob(sender: str, kind: str, seq: int, fmt: str, data: bytes) -> Any:
        m = Blob()
        m.header.stamp = node.get_clock().now().to_msg()
        m.sender, m.kind, m.seq, m.format = sender, kind, int(seq), fmt
        m.data = data
        return m

    def send(kind: str, chunk: dict) -> None:
        payload = tp.encode_chunk(chunk, {"params_version": core.params_version})
        with send_lock:
            seq = core.outbox.add(kind, payload)
            pub_data.publish(blob(core.sender_for(kind), kind, seq, tp.FORMAT_NPZ, payload))

    def on_params(msg) -> None:
        core.on_params(msg.sender, msg.seq, msg.format, msg.data)

    def on_learner_status(msg) -> None:
        try:
            hb = tp.decode_json(msg.data)
        except tp.TransportError as exc:
            logger.warning(f"bad learner heartbeat from {msg.sender}: {exc}")
            return
        with send_lock:
            ended = core.on_learner_heartbeat(hb)
        if ended is not None:
            logger.info(f"learner {msg.sender} is back after {ended:.1f} s; resending {core.outbox.pending()} "
                        "unacknowledged chunk(s)")

    deadline_misses = [0]

    def on_deadline(_event) -> None:
        deadline_misses[0] += 1

    node.create_subscription(Blob, tp.TOPIC_PARAMS, on_params, params_qos)
    node.create_subscription(Blob, tp.TOPIC_LEARNER_STATUS, on_learner_status, hb_qos,
                             event_callbacks=SubscriptionEventCallbacks(deadline=on_deadline))

    def tick() -> None:
        hb_seq[0] += 1
        with send_lock:  # the outbox is shared with the acting loop and the heartbeat callback
            hb = core.heartbeat()
            hb["deadline_misses"] = deadline_misses[0]
            msg = core.silence_message()
            due = core.outbox.due(core.watermarks()) if core.live.alive else []
            for item in due:
                pub_data.publish(blob(core.sender_for(item.kind), item.kind, item.seq, tp.FORMAT_NPZ, item.payload))
        pub_status.publish(blob(core.actor_id, tp.KIND_HEARTBEAT, hb_seq[0], tp.FORMAT_JSON, tp.encode_json(hb)))
        if msg:
            logger.warning(msg)

    node.create_timer(float(p["heartbeat_period_s"]), tick)

    # The configured success source, plus the operator's marks through the services (always available: on the
    # real robot they are the reward; in the twin they let a person or a test end an episode).
    operator = OperatorReward()
    if p["reward"] == "operator":
        reward = operator
    else:
        base = make_reward_source(RewardConfig(source=p["reward"], classifier_path=p["classifier"] or None))
        reward = AnyOfReward([base, operator])

    def marker(success: bool):
        def handle(request, response):
            operator.mark(success)
            response.success, response.message = True, "marked " + ("success" if success else "failure")
            logger.info(f"actor: operator marked {'success' if success else 'failure'}")
            return response
        return handle
    node.create_service(Trigger, tp.SRV_MARK_SUCCESS, marker(True))
    node.create_service(Trigger, tp.SRV_MARK_FAILURE, marker(False))

    if p["mode"] == "twin":
        env = LatentEnv(encoder, p["task"], task_files=[f for f in p["task_file"].split(",") if f],
                        image_size=int(p["image_size"]) or None, keep_images=bool(p["harvest"]),
                        max_episode_steps=int(p["max_episode_steps"]) or None)
    else:
        env = RosLatentEnv(node, encoder.latent_shape, int(p["max_episode_steps"]) or 100, float(p["rate_hz"]),
                           bool(p["auto_reset"]), stop, log=logger.info, keep_images=bool(p["harvest"]),
                           cameras=tuple(encoder.cameras))
        env.task, env.category = p["task"], _task_category(p["task"], p["task_file"])
    harvest = ActorHarvest(out / "harvest", tuple(encoder.cameras), p["actor_id"], logger) if p["harvest"] else None
    interventions = None
    if p["intervention_device"]:
        from rl_agent.interventions import InterventionConfig, make_interventions
        from teleop.controller import TeleopConfig
        interventions = make_interventions(InterventionConfig(enabled=True,
                                                              teleop=TeleopConfig(device=p["intervention_device"])))
        try:
            interventions.open()
        except Exception as exc:  # teleop.devices.DeviceError: no SpaceMouse, no terminal
            logger.error(f"rl_actor: intervention device {p['intervention_device']!r}: {exc}")
            env.close()
            node.destroy_node()
            rclpy.try_shutdown()
            return 2
    runner = EpisodeRunner(env, reward, interventions, agent.prepare_observations)
    from rl_agent.operator_console import SessionStatus, open_console
    session = SessionStatus()
    t_end = time.monotonic() + 60.0 * float(p["minutes"]) if float(p["minutes"]) > 0 else None

    def status() -> SessionStatus:
        session.transitions, session.params_version = core.env_steps, core.params_version
        session.learner_alive = core.live.alive
        session.waiting_for_reset = bool(getattr(env, "waiting_for_reset", False))
        session.time_left_s = None if t_end is None else t_end - time.monotonic()
        return session

    try:
        console = open_console(p["console"], p["mode"], p["intervention_device"], operator.mark,
                               getattr(env, "start_episode", lambda: None), status, logger.info)
    except Exception as exc:  # console:=on without a terminal, a bad setting
        logger.error(f"rl_actor: operator console: {exc}")
        env.close()
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    if console is not None and isinstance(env, RosLatentEnv):
        env.console = console

    executor = MultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    spinner = threading.Thread(target=lambda: _spin(executor, stop), name="rl_actor_spin", daemon=True)
    spinner.start()
    rng = np.random.default_rng(int(p["seed"]) + 1)
    rate_hz = float(p["rate_hz"]) if p["mode"] == "twin" else 0.0  # robot mode paces itself in RosLatentEnv
    code = 0
    try:
        if p["demo_data"]:  # the operator's recorded episodes first: no scene resets needed for them
            from rl_agent.recorded_demos import send_recorded_demos
            session.demos = send_recorded_demos(p["demo_data"], encoder, out, p["task"], int(p["demo_episodes"]),
                                                agent.prepare_observations, send, logger.info)
        session.demos += send_demos(core, runner, encoder, out, int(p["demos"]), p["demo_source"], int(p["seed"]),
                                    send, stop, logger.info, harvest=harvest)
        builder = tp.ChunkBuilder(int(p["chunk_steps"]))
        ep = 0
        while not stop.is_set() and (int(p["max_episodes"]) <= 0 or ep < int(p["max_episodes"])) \
                and (t_end is None or time.monotonic() < t_end):
            t_next = [time.monotonic()]

            def on_step(obs, a, verdict, next_obs, took):
                core.env_steps += 1
                chunk = builder.add(a, verdict.reward, next_obs, verdict.success, took)
                if chunk is not None:
                    send(tp.KIND_TRANSITIONS, chunk)
                if rate_hz > 0:  # the contract's 10 Hz in wall-clock time
                    t_next[0] += 1.0 / rate_hz
                    delay = t_next[0] - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        t_next[0] = time.monotonic()

            res = runner.run(seeds.seed("online_rl", int(p["seed"]) * 1_000_000 + ep),
                             agent_policy(core.current_agent, False, rng),
                             keep_images=bool(p["harvest"]), on_reset=builder.start, on_step=on_step,
                             should_stop=stop.is_set,
                             allow_interventions=interventions is not None)
            last = builder.flush()
            if last is not None:
                send(tp.KIND_TRANSITIONS, last)
            if harvest is not None:
                harvest(res.trace, "rl", f"rl:{ep}")
            ep += 1
            core.episodes = ep
            session.episode, session.finished = ep + 1, ep
            session.successes += int(res.trace.success)
            how = f"success ({res.trace.ended_by})" if res.trace.success else "failure"
            took = f", {res.trace.interventions} intervention(s)" if interventions is not None else ""
            logger.info(f"actor: episode {ep}: {how} in {len(res.actions)} steps (params v{core.params_version}, "
                        f"pending {core.outbox.pending()}{took})")
    except (KeyboardInterrupt, InterruptedError, ExternalShutdownException):
        pass
    except TimeoutError as exc:
        logger.error(f"actor: {exc}")
        code = 1
    except ValueError as exc:  # e.g. demo_data without episodes of the task
        logger.error(f"actor: {exc}")
        code = 2
    finally:
        stop.set()
        spinner.join(timeout=5)
        env.close()
        if console is not None:
            console.close()
        if harvest is not None:
            harvest.close()
        if interventions is not None:
            interventions.close()
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        rclpy.try_shutdown()
    return code


def _spin(executor, stop: threading.Event) -> None:
    from rclpy.executors import ExternalShutdownException
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
