"""The RL learner as a ROS 2 node (`rl_learner`): takes transition chunks from actors, trains the SACfD agent as fast
as it can on 50/50 demo/online batches, pushes the actor's parameters every `push_every` updates.

    rl_learner --ros-args -p checkpoint:=runs/stage0 -p out_dir:=runs/learner [-p push_every:=50 ...]

The learning itself is rl_agent/learner_core.py (`LearnerCore`, no ROS; the in-process session runs the same core):
ingest, updates, parameter payloads, heartbeat content, checkpoints and resume. This node only translates: a
subscription queues raw messages, one training thread ingests and updates, a timer publishes the heartbeat (acks)
and reports silent actors.
"""
from __future__ import annotations

import threading
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from rl_agent import transport as tp
from rl_agent.agent_setup import build_agent, load_sac_overrides
from rl_agent.learner_core import LearnerConfig, LearnerCore
from rl_agent.learner_loop import HandBack, train_forever


@dataclass
class LearnerParams(LearnerConfig):
    """rl_learner's ROS parameters: the learner core's config plus the node's own (one parameter per field,
    declared by robot_server.ros_main.declare_config)."""
    checkpoint: str = ""  # the stage-0 VLA checkpoint directory (required): the SAC agent's shapes and the hand-back
    out_dir: str = "runs/rl_learner"
    config: str = ""  # a session YAML whose `sac:` section overrides the agent's
    learner_id: str = ""  # default: learner-<random>
    heartbeat_period_s: float = 0.5
    actor_timeout_s: float = 3.0


# ---------------------------------------------------------------------------------------------- ROS node
def main(argv: Optional[list[str]] = None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.node import Node
    from rclpy.qos_event import SubscriptionEventCallbacks

    from robot_server.ros_main import SteadyMultiThreadedExecutor, declare_config, init_with_stop_event
    from robot_server.typed_config import ConfigError

    stop = init_with_stop_event(argv)
    from irevla_interfaces.msg import Blob

    node = Node("rl_learner", namespace="/irevla")
    try:
        p = declare_config(node, LearnerParams)
    except ConfigError as exc:
        node.get_logger().error(f"rl_learner: {exc}")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    log = node.get_logger().info
    if not p.checkpoint:
        node.get_logger().error("rl_learner: set the parameter checkpoint:=<stage-0 VLA checkpoint directory>")
        node.destroy_node()
        rclpy.try_shutdown()
        return 2
    learner_id = p.learner_id or f"learner-{uuid.uuid4().hex[:6]}"
    cfg = p  # LearnerParams is a LearnerConfig with the node's own fields
    agent, _ = build_agent(p.checkpoint, load_sac_overrides(p.config), cfg.seed, with_vla=False)
    from rl_agent.buffers import LatentReplayBuffer
    shape = tuple(agent.stored_latent_shape)
    core = LearnerCore(agent, lambda cap: LatentReplayBuffer(cap, shape), cfg, Path(p.out_dir), log=log)
    core.restore()

    data_qos, params_qos, hb_qos = tp.qos_profiles(float(p.heartbeat_period_s))
    inbox_msgs: deque = deque()
    wake = threading.Event()

    def on_blob(msg) -> None:
        inbox_msgs.append(msg)
        wake.set()

    actors: dict[str, tp.Liveness] = {}
    deadline_misses = [0]

    def on_actor_status(msg) -> None:
        try:
            hb = tp.decode_json(msg.data)
        except tp.TransportError as exc:
            node.get_logger().warning(f"bad actor heartbeat from {msg.sender}: {exc}")
            return
        live = actors.get(msg.sender)
        if live is None:
            live = actors[msg.sender] = tp.Liveness(float(p.actor_timeout_s))
            log(f"actor {msg.sender} connected (acting with params v{hb.get('params_version')})")
        ended = live.heard()
        if ended is not None:
            log(f"actor {msg.sender} is back after {ended:.1f} s of silence")
        for sender, kinds in (hb.get("floors") or {}).items():
            for kind, floor in kinds.items():
                if kind == tp.KIND_TRANSITIONS and isinstance(floor, int):
                    core.inbox.skip_to(sender, kind, floor)

    def on_deadline(_event) -> None:  # QoS deadline: no actor heartbeat within 4 periods (the timer reports it)
        deadline_misses[0] += 1

    node.create_subscription(Blob, tp.TOPIC_TRANSITIONS, on_blob, data_qos)
    node.create_subscription(Blob, tp.TOPIC_ACTOR_STATUS, on_actor_status, hb_qos,
                             event_callbacks=SubscriptionEventCallbacks(deadline=on_deadline))
    pub_params = node.create_publisher(Blob, tp.TOPIC_PARAMS, params_qos)
    pub_status = node.create_publisher(Blob, tp.TOPIC_LEARNER_STATUS, hb_qos)
    hb_seq = [0]

    def blob(kind: str, seq: int, fmt: str, data: bytes) -> Any:
        m = Blob()
        m.header.stamp = node.get_clock().now().to_msg()
        m.sender, m.kind, m.seq, m.format = learner_id, kind, int(seq), fmt
        m.data = data
        return m

    def heartbeat() -> None:
        hb_seq[0] += 1
        hb = core.heartbeat(learner_id)
        hb["deadline_misses"] = deadline_misses[0]
        pub_status.publish(blob(tp.KIND_HEARTBEAT, hb_seq[0], tp.FORMAT_JSON, tp.encode_json(hb)))
        for sender, live in actors.items():
            if live.newly_silent():
                node.get_logger().warning(f"actor {sender} silent for {live.silence():.1f} s; training on with "
                                          f"{len(core.online)} online / {len(core.demo)} demo transitions")

    node.create_timer(float(p.heartbeat_period_s), heartbeat)

    from rl_agent.session_log import TensorBoard
    tb = TensorBoard(Path(p.out_dir), purge_step=core.updates)  # steps: updates (a resumed run replays none)

    handback = HandBack(core, p.checkpoint, Path(p.out_dir), log=log, error=node.get_logger().error)

    def checkpoint() -> None:
        core.save_checkpoint()
        handback()
        core.write_summary(learner_id)  # as new as the checkpoint, should the node be killed

    def push(version: int, data: bytes) -> None:
        pub_params.publish(blob(tp.KIND_PARAMS, version, tp.FORMAT_FLAX, data))

    trainer = threading.Thread(target=train_forever, args=(core, inbox_msgs, wake, stop, push, checkpoint, tb, log),
                               name="rl_learner_train", daemon=True)
    executor = SteadyMultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    log(f"rl_learner {learner_id}: up; latents {core.latent_shape}, batch {core.batch_size}, push every "
        f"{cfg.push_every} updates")
    trainer.start()
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.set()
        trainer.join(timeout=30)
        try:
            core.save_checkpoint()
            if core.updates > 0:
                handback()
            core.write_summary(learner_id)
        except Exception as exc:  # a failed final checkpoint must not hide the shutdown
            print(f"rl_learner: final checkpoint failed: {exc}")
        tb.close()
        executor.shutdown(timeout_sec=2)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
