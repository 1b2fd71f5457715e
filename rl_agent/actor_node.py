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

from rl_agent import transport as tp
from rl_agent.actor_core import ActorCore, ActorParams, actor_reward, open_interventions
from rl_agent.actor_loop import run_actor
from rl_agent.robot_env import ActorHarvest, RosLatentEnv, task_category


# ---------------------------------------------------------------------------------------------- ROS node
def main(argv: Optional[list[str]] = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos_event import SubscriptionEventCallbacks
    from std_srvs.srv import Trigger

    from robot_server.ros_main import SteadyMultiThreadedExecutor, declare_config, init_with_stop_event
    from robot_server.typed_config import ConfigError

    stop = init_with_stop_event(argv)
    from irevla_interfaces.msg import Blob

    node = Node("rl_actor", namespace="/irevla")
    logger = node.get_logger()
    try:
        p = declare_config(node, ActorParams)
    except ConfigError as exc:
        logger.error(f"rl_actor: {exc}")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    if not p.checkpoint:
        logger.error("rl_actor: set the parameter checkpoint:=<stage-0 VLA checkpoint directory>")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    if p.mode == "twin":  # renders its own twin: a working offscreen GL backend before mujoco loads
        from robot_server.mujoco_gl import ensure_mujoco_gl
        ensure_mujoco_gl()

    from rl_agent.env import LatentEncoder, LatentEnv
    from rl_agent.agent_setup import build_agent, load_sac_overrides
    from rl_agent.episodes import EpisodeRunner

    agent, vla = build_agent(p.checkpoint, load_sac_overrides(p.config), int(p.seed))
    encoder = LatentEncoder(vla, torch_threads=1)
    out = Path(p.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    core = ActorCore(agent, p.actor_id, tp.Outbox(int(p.outbox_mb) << 20, float(p.resend_after_s)),
                     float(p.learner_timeout_s), float(p.silent_report_s), log=logger.info, warn=logger.warning)
    data_qos, params_qos, hb_qos = tp.qos_profiles(float(p.heartbeat_period_s))
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

    node.create_timer(float(p.heartbeat_period_s), tick)

    reward, operator = actor_reward(p)  # the operator's marks come through these two services

    def marker(success: bool):
        def handle(request, response):
            operator.mark(success)
            response.success, response.message = True, "marked " + ("success" if success else "failure")
            logger.info(f"actor: operator marked {'success' if success else 'failure'}")
            return response
        return handle
    node.create_service(Trigger, tp.SRV_MARK_SUCCESS, marker(True))
    node.create_service(Trigger, tp.SRV_MARK_FAILURE, marker(False))

    if p.mode == "twin":
        env = LatentEnv(encoder, p.task, task_files=[f for f in p.task_file.split(",") if f],
                        image_size=int(p.image_size) or None, keep_images=bool(p.harvest),
                        max_episode_steps=int(p.max_episode_steps) or None)
    else:
        env = RosLatentEnv(node, encoder.latent_shape, int(p.max_episode_steps) or 100, float(p.rate_hz),
                           bool(p.auto_reset), stop, log=logger.info, keep_images=bool(p.harvest),
                           cameras=tuple(encoder.cameras), observe_after=float(p.observe_after))
        env.task, env.category = p.task, task_category(p.task, p.task_file)
        env.task_files = tuple(f for f in p.task_file.split(",") if f)
    harvest = ActorHarvest(out / "harvest", tuple(encoder.cameras), p.actor_id, logger) if p.harvest else None
    try:
        interventions = open_interventions(p)
    except Exception as exc:  # teleop.devices.DeviceError: no SpaceMouse, no terminal
        logger.error(f"rl_actor: intervention device {p.intervention_device!r}: {exc}")
        env.close()
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    runner = EpisodeRunner(env, reward, interventions, agent.prepare_observations)
    from rl_agent.operator_console import SessionStatus, open_console
    from rl_agent.session_log import EpisodeLog
    session = SessionStatus()
    elog = EpisodeLog(out, p.task)  # episodes.jsonl, tb/, success_rate.png, summary.json
    elog.extra["harvest_dir"] = str(out / "harvest") if p.harvest else None

    def status() -> SessionStatus:
        session.transitions, session.params_version = core.env_steps, core.params_version
        session.learner_alive = core.live.alive
        session.waiting_for_reset = bool(getattr(env, "waiting_for_reset", False))
        session.time_left_s = None if core.rl_deadline is None else core.rl_deadline - time.monotonic()
        return session

    try:
        setting = ("on" if p.console else "off") if isinstance(p.console, bool) else str(p.console)
        console = open_console(setting, p.mode, p.intervention_device, operator.mark,
                               getattr(env, "start_episode", lambda: None), status, logger.info)
    except Exception as exc:  # console:=on without a terminal, a bad setting
        logger.error(f"rl_actor: operator console: {exc}")
        env.close()
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    if console is not None and isinstance(env, RosLatentEnv):
        env.console = console
    if console is not None and interventions is not None:  # the device's start / pause buttons
        interventions.on_events = console.handle_events
        if isinstance(env, RosLatentEnv):
            env.poll_while_waiting = lambda: console.handle_events(interventions.poll_events())

    executor = SteadyMultiThreadedExecutor(num_threads=3)
    executor.add_node(node)
    spinner = threading.Thread(target=lambda: _spin(executor, stop), name="rl_actor_spin", daemon=True)
    spinner.start()
    code = 0
    try:
        why = env.scripted_demos_unavailable() if isinstance(env, RosLatentEnv) else None
        run_actor(p, core, runner, env, encoder, send, stop, session, elog, harvest, interventions is not None,
                  why, log=logger.info, warn=logger.warning)
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
        elog.close(demos=session.demos, transitions_sent=core.env_steps, params_version=core.params_version)
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
