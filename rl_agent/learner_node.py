"""The RL learner as a ROS 2 node (`rl_learner`): takes transition chunks from actors, trains the SACfD agent as fast
as it can on 50/50 demo/online batches, pushes the actor's parameters every `push_every` updates.

    rl_learner --ros-args -p checkpoint:=runs/stage0 -p out_dir:=runs/learner [-p push_every:=50 ...]

`LearnerCore` is the pure part (no ROS; tests drive it directly): ingest (dedup via transport.Inbox, validation,
NaN rejection with a clear log line), training step, parameter payloads, heartbeat content, checkpoints (agent,
buffers, inbox watermarks, counters; resumed on restart). The node: a subscription queues raw messages, one
training thread ingests and updates, a timer publishes the heartbeat (acks) and reports silent actors.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from rl_agent import transport as tp
# Shared with the actor node through the library (re-exported here for older callers).
from rl_agent.agent_setup import (actor_params_of, build_agent, load_head, load_sac_overrides,  # noqa: F401
                                  with_actor_params)
from rl_agent.checkpoints import CheckpointStore, atomic_write_text, read_learner_files, write_learner_files


@dataclass
class LearnerConfig:
    push_every: int = 50  # updates between parameter pushes (SERL: 30-50)
    learning_starts: int = 100  # online transitions before the first update
    max_updates_per_transition: float = 0.0  # 0 = as fast as possible (SERL); else cap the update-to-data ratio
    online_capacity: int = 200_000
    demo_capacity: int = 20_000
    checkpoint_every_updates: int = 2000
    checkpoint_every_minutes: float = 3.0
    seed: int = 0


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


class LearnerCore:
    def __init__(self, agent, make_buffer: Callable[[int], Any], cfg: LearnerConfig, out_dir: Optional[Path] = None,
                 log: Callable[[str], None] = print):
        self.agent, self.cfg, self.log = agent, cfg, log
        self.online, self.demo = make_buffer(cfg.online_capacity), make_buffer(cfg.demo_capacity)
        self.inbox = tp.Inbox()
        self.rng = np.random.default_rng(cfg.seed)
        self.lock = threading.Lock()  # buffers: ingest (ROS thread or trainer) vs sample
        self.updates = 0
        self.params_version = 0
        self.rejected = 0
        self.received = {"transitions": 0, "demos": 0}
        self.last_info: dict = {}
        self.store = CheckpointStore(Path(out_dir) / "checkpoints") if out_dir is not None else None
        self._ckpt_at = (time.monotonic(), 0)
        self.batch_size = agent.config.update_batch_size
        self.latent_shape = tuple(agent.stored_latent_shape)

    # ------------------------------------------------------------------ data in
    def ingest(self, sender: str, kind: str, seq: int, fmt: str, data) -> bool:
        """One Blob from an actor. Returns True if it was new and stored."""
        if kind not in (tp.KIND_TRANSITIONS, tp.KIND_DEMOS):
            self.log(f"learner: ignored a Blob of kind {kind!r} from {sender} (expected transitions or demos)")
            return False
        if not self.inbox.accept(sender, kind, seq):
            return False  # a resend of something already taken
        try:
            if fmt != tp.FORMAT_NPZ:
                raise tp.TransportError(f"format {fmt!r}, expected {tp.FORMAT_NPZ!r}")
            chunk, _ = tp.decode_chunk(data, self.latent_shape)
        except tp.TransportError as exc:
            # Taken (acknowledged) anyway: a bad chunk never becomes good by resending it.
            self.rejected += 1
            self.log(f"learner: REJECTED {kind} chunk seq {seq} from {sender}: {exc} (nothing stored; "
                     f"{self.rejected} rejected so far)")
            return False
        obs = tp.chunk_observations(chunk)
        with self.lock:
            target = self.demo if kind == tp.KIND_DEMOS else self.online
            target.insert_episode(obs, chunk["actions"], chunk["rewards"], chunk["dones"])
            if kind == tp.KIND_TRANSITIONS and chunk["intervened"].any():
                # HIL-SERL: human takeovers go into the demo buffer too (each run of intervened steps)
                flags = chunk["intervened"]
                i = 0
                while i < len(flags):
                    if not flags[i]:
                        i += 1
                        continue
                    j = i
                    while j < len(flags) and flags[j]:
                        j += 1
                    self.demo.insert_episode(obs[i:j + 1], chunk["actions"][i:j], chunk["rewards"][i:j],
                                             chunk["dones"][i:j])
                    i = j
        self.received[kind] += len(chunk["actions"])
        return True

    # ------------------------------------------------------------------ training
    def ready(self) -> bool:
        return len(self.demo) + len(self.online) > 0 and len(self.online) >= self.cfg.learning_starts

    def train_step(self) -> bool:
        """One update if there is data (and the UTD cap allows); True if it updated."""
        from rl_agent.buffers import sample_mixed
        if not self.ready():
            return False
        cap = self.cfg.max_updates_per_transition
        if cap > 0 and self.updates >= cap * max(self.received["transitions"], 1):
            return False
        with self.lock:
            batch = sample_mixed(self.demo, self.online, self.batch_size, self.rng)
        self.agent, self.last_info = self.agent.update(batch)
        self.updates += 1
        return True

    def due_push(self) -> bool:
        return self.updates > 0 and self.updates % self.cfg.push_every == 0

    def params_payload(self) -> tuple[int, bytes]:
        self.params_version += 1
        return self.params_version, tp.encode_params(actor_params_of(self.agent))

    def heartbeat(self, learner_id: str) -> dict:
        return {"role": "learner", "id": learner_id, "acks": self.inbox.watermarks(), "updates": self.updates,
                "latent_shape": list(self.latent_shape),
                "params_version": self.params_version, "online": len(self.online), "demo": len(self.demo),
                "rejected": self.rejected, "received": dict(self.received), "time": time.time()}

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_due(self) -> bool:
        t, u = self._ckpt_at
        return self.store is not None and (self.updates - u >= self.cfg.checkpoint_every_updates
                                           or time.monotonic() - t >= 60 * self.cfg.checkpoint_every_minutes)

    def save_checkpoint(self) -> Optional[Path]:
        if self.store is None:
            return None
        with self.lock:
            agent = self.agent

            state = {"updates": self.updates, "params_version": self.params_version, "inbox": self.inbox.state_dict(),
                     "received": self.received, "rejected": self.rejected}
            path = self.store.save(lambda d: write_learner_files(d, agent, self.online, self.demo), state)
        self._ckpt_at = (time.monotonic(), self.updates)
        return path

    def scalar_info(self) -> dict:
        """The last update's losses and the like, as plain floats (for TensorBoard)."""
        out = {}
        for k, v in (self.last_info or {}).items():
            try:
                out[k] = float(np.mean(np.asarray(v, dtype=float)))
            except (TypeError, ValueError):
                pass
        return out

    def write_summary(self, learner_id: str = "") -> dict:
        """out_dir/summary.json: what the learner did (a resumed run continues the counts from its checkpoint)."""
        doc = {"learner_id": learner_id, "updates": self.updates, "params_version": self.params_version,
               "online": len(self.online), "demo": len(self.demo), "received": dict(self.received),
               "rejected": self.rejected, "last_update": self.scalar_info(), "time": time.time()}
        if self.store is not None:
            atomic_write_text(self.store.root.parent / "summary.json", json.dumps(doc, indent=1))
        return doc

    def restore(self) -> bool:
        path = self.store.latest() if self.store is not None else None
        if path is None:
            return False
        state = json.loads((path / "state.json").read_text())
        self.agent, self.online, self.demo = read_learner_files(path, self.agent)
        self.inbox.load_state_dict(state["inbox"])
        self.updates, self.params_version = int(state["updates"]), int(state["params_version"])
        self.received, self.rejected = dict(state["received"]), int(state["rejected"])
        self._ckpt_at = (time.monotonic(), self.updates)
        self.log(f"learner: resumed from {path}: {self.updates} updates, params v{self.params_version}, "
                 f"online {len(self.online)}, demo {len(self.demo)}")
        return True


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

    def train_loop() -> None:
        last_report = last_tb = time.monotonic()
        u0 = tb_u0 = core.updates
        while not stop.is_set():
            while inbox_msgs:
                m = inbox_msgs.popleft()
                core.ingest(m.sender, m.kind, m.seq, m.format, m.data)
            if not core.train_step():
                wake.wait(0.05)
                wake.clear()
                continue
            if core.due_push():
                version, data = core.params_payload()
                pub_params.publish(blob(tp.KIND_PARAMS, version, tp.FORMAT_FLAX, data))
            if core.checkpoint_due():
                core.save_checkpoint()
                handback()
                core.write_summary(learner_id)  # as new as the checkpoint, should the node be killed
            now = time.monotonic()
            if now - last_tb >= 2.0:
                tb.scalars(core.updates, {**{f"learner/{k}": v for k, v in core.scalar_info().items()},
                                          "buffer/online": len(core.online), "buffer/demo": len(core.demo),
                                          "perf/updates_per_s": (core.updates - tb_u0) / (now - last_tb),
                                          "learner/params_version": core.params_version})
                last_tb, tb_u0 = now, core.updates
            if now - last_report >= 10.0:
                log(f"learner: {core.updates} updates ({(core.updates - u0) / (now - last_report):.1f}/s), params "
                    f"v{core.params_version}, online {len(core.online)}, demo {len(core.demo)}, "
                    f"received {core.received}, rejected {core.rejected}")
                last_report, u0 = now, core.updates

    vla_box: list = []

    def handback() -> None:
        """The RL head inside a whole VLA checkpoint (out_dir/rl_head_ckpt) with every learner checkpoint: the
        policy server can load it at any time, stage 2 starts from it."""
        try:
            from rl_agent.bridge import hand_back
            if not vla_box:
                from policy.model import load_vla
                vla_box.append(load_vla(p.checkpoint))
            path = hand_back(vla_box[0], core.agent, Path(p.out_dir) / "rl_head_ckpt",
                             {"rl_updates": core.updates, "params_version": core.params_version,
                              "stage0_checkpoint": str(p.checkpoint)})
            log(f"learner: RL head handed back into {path} ({core.updates} updates)")
        except Exception as exc:  # noqa: BLE001 - the session goes on; the next checkpoint tries again
            node.get_logger().error(f"learner: hand-back failed: {type(exc).__name__}: {exc}")

    trainer = threading.Thread(target=train_loop, name="rl_learner_train", daemon=True)
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
