"""The ROS actor's parts that need no ROS (rl_agent/actor_node.py is the thin rclpy shell; tests drive these
directly): ActorParams (its settings), ActorCore (its agent with parameters swapped in atomically, the outbox, learner
liveness and the messages about it) and the zero-shot demos it collects once and sends. The acting loop itself is
rl_agent/actor_loop.py.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from rl_agent import transport as tp
from rl_agent.agent_setup import with_actor_params


# ---------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class ActorParams:
    """The actor's settings: rl_actor's ROS parameters (robot_server.ros_main.declare_config declares one per
    field) and what rl_agent.actor_loop.run_actor reads."""
    checkpoint: str = ""  # the stage-0 VLA checkpoint directory (required)
    task: str = "pick_eggplant"
    task_file: str = ""  # comma-separated task files (e.g. MetaWorld's) beside the built-in registry
    out_dir: str = "runs/rl_actor"
    config: str = ""  # a session YAML whose `sac:` section overrides the agent's
    actor_id: str = "actor0"
    mode: str = "twin"  # twin: its own twin; robot: latents from the policy server, actions to the robot server
    seed: int = 0
    demos: int = 20
    demo_source: str = "vla"
    demo_attempts: int = 0  # VLA attempts at most for the demos (0: 3 x demos)
    reward: str = "twin"
    classifier: str = ""
    rate_hz: float = 10.0
    observe_after: float = 1.0  # robot mode: observe the arm this many control periods after each action
    exploration_beta: float = 0.0  # RL episodes' exploration noise: 0 white per step, 1 pink per episode
    chunk_steps: int = 10
    heartbeat_period_s: float = 0.5
    learner_timeout_s: float = 3.0
    silent_report_s: float = 5.0
    outbox_mb: int = 256
    resend_after_s: float = 3.0
    max_episodes: int = 0
    max_episode_steps: int = 0
    auto_reset: bool = True
    image_size: int = 0
    intervention_device: str = ""  # spacemouse | keyboard
    teleop_config: str = ""
    console: Union[bool, str] = "auto"  # auto | on | off (ROS reads on/off as booleans)
    minutes: float = 0.0  # RL budget after the demos (0: until stopped)
    harvest: bool = True  # successful episodes -> out_dir/harvest
    demo_data: str = ""  # recorded episodes (expert-set format) as demos
    demo_episodes: int = 20

    def __post_init__(self):
        if self.mode not in ("twin", "robot"):
            raise ValueError(f"mode must be twin or robot, got {self.mode!r}")
        if not 0.0 <= float(self.exploration_beta) <= 2.0:
            raise ValueError(f"exploration_beta must be in [0, 2] (0 white, 1 pink), got {self.exploration_beta}")


def actor_reward(p: ActorParams):
    """-> (reward source, the operator's marks). The configured success source, plus the operator's marks through
    the services (always there: on the real robot they are the reward; in the twin they let a person or a test end
    an episode)."""
    from rl_agent.rewards import AnyOfReward, OperatorReward, RewardConfig, make_reward_source
    operator = OperatorReward()
    if p.reward == "operator":
        return operator, operator
    base = make_reward_source(RewardConfig(source=p.reward, classifier_path=p.classifier or None))
    return AnyOfReward([base, operator]), operator


def open_interventions(p: ActorParams):
    """The operator's intervention device, opened (None without one); raises teleop.devices.DeviceError and the
    like when it is not there (no SpaceMouse, no terminal)."""
    if not p.intervention_device:
        return None
    import dataclasses

    from rl_agent.interventions import InterventionConfig, make_interventions
    from teleop.controller import TeleopConfig
    teleop = TeleopConfig.from_yaml(p.teleop_config) if p.teleop_config else TeleopConfig()
    teleop = dataclasses.replace(teleop, device=p.intervention_device)
    interventions = make_interventions(InterventionConfig(enabled=True, teleop=teleop))
    interventions.open()
    return interventions


class ActorCore:
    """The actor's state between ROS and the acting loop (no ROS): its agent (params swapped in atomically), the
    outbox, learner liveness and the messages about it."""

    def __init__(self, agent, actor_id: str, outbox: tp.Outbox, learner_timeout_s: float = 3.0,
                 silent_report_s: float = 5.0, log=print, warn=print):
        self.agent = agent
        self.actor_id = actor_id
        self.incarnation = f"{actor_id}@{uuid.uuid4().hex[:6]}"  # transitions of this run; demos use actor_id
        self.outbox = outbox
        self.live = tp.Liveness(learner_timeout_s)
        self.silent_report_s = silent_report_s
        self.params_version = 0
        self.params_from = ""
        self.params_received = 0
        self.log, self.warn = log, warn
        self._lock = threading.Lock()
        self._last_silent_report = 0.0
        self.learner: dict = {}
        self.episodes = 0
        self.env_steps = 0
        self.rl_deadline: Optional[float] = None  # time.monotonic() at which the RL budget ends (None: no end)

    def sender_for(self, kind: str) -> str:
        return self.actor_id if kind == tp.KIND_DEMOS else self.incarnation

    def on_params(self, sender: str, version: int, fmt: str, data) -> bool:
        if fmt != tp.FORMAT_FLAX:
            self.warn(f"actor: ignored params v{version} from {sender}: format {fmt!r}, expected {tp.FORMAT_FLAX!r}")
            return False
        if sender == self.params_from and version <= self.params_version:
            return False
        try:
            agent = with_actor_params(self.agent, tp.decode_params(data))
        except tp.TransportError as exc:
            self.warn(f"actor: REJECTED params v{version} from {sender}: {exc}; acting on with v{self.params_version}")
            return False
        with self._lock:
            self.agent = agent
            first = self.params_received == 0 or sender != self.params_from
            self.params_version, self.params_from = int(version), sender
            self.params_received += 1
        if first:
            self.log(f"actor: acting with params v{version} from {sender}")
        return True

    def current_agent(self):
        with self._lock:
            return self.agent

    def on_learner_heartbeat(self, hb: dict) -> Optional[float]:
        """Acks from the learner's heartbeat; returns the silence it ended (s), if it had been reported."""
        self.learner = hb
        acks = hb.get("acks", {})
        for kind in (tp.KIND_TRANSITIONS, tp.KIND_DEMOS):
            self.outbox.ack(kind, acks.get(self.sender_for(kind), {}).get(kind))
        return self.live.heard()

    def watermarks(self) -> dict:
        acks = self.learner.get("acks", {}) if self.live.alive else {}
        return {k: acks.get(self.sender_for(k), {}).get(k) for k in (tp.KIND_TRANSITIONS, tp.KIND_DEMOS)}

    def silence_message(self, now: Optional[float] = None) -> Optional[str]:
        """The clear message while the learner is silent (first when it goes silent, then every silent_report_s)."""
        now = time.monotonic() if now is None else now
        s = self.live.silence()
        if self.live.newly_silent() or (self.live.silent_reported and now - self._last_silent_report
                                         >= self.silent_report_s):
            self._last_silent_report = now
            what = f"learner silent for {s:.1f} s" if s is not None else "no learner heard from yet"
            return (f"{what}; acting with params v{self.params_version}; {self.outbox.pending()} chunk(s) kept for "
                    f"resending ({self.outbox.bytes / 1e6:.1f} MB, {self.outbox.dropped} dropped)")
        return None

    def heartbeat(self) -> dict:
        sender = self.sender_for(tp.KIND_TRANSITIONS)
        return {"role": "actor", "id": self.actor_id, "incarnation": self.incarnation,
                "floors": {sender: {tp.KIND_TRANSITIONS: self.outbox.floor(tp.KIND_TRANSITIONS)}},
                "params_version": self.params_version, "params_from": self.params_from, "episodes": self.episodes,
                "env_steps": self.env_steps,
                "pending": self.outbox.pending(), "dropped": self.outbox.dropped, "resent": self.outbox.resent,
                "learner_silent_s": self.live.silence(), "time": time.time()}


def send_demos(core: ActorCore, runner, encoder, out: Path, count: int, source: str, seed: int, send, stop,
               log, harvest=None, max_attempts: Optional[int] = None) -> int:
    """Collect the zero-shot demos once (kept in out/actor_demos as the exact chunks sent) and send them. Returns
    how many were sent."""
    from rl_agent.episodes import collect_demos
    from rl_agent.session_config import DemoConfig
    store = out / "actor_demos"
    files = sorted(store.glob("chunk_*.npz"))
    failed: list[dict] = []  # the failed attempts' episodes, sent after the demos (below)
    if not files and count > 0:
        store.mkdir(parents=True, exist_ok=True)
        chunks: list[dict] = []

        def episode_chunk(res) -> dict:
            builder = tp.ChunkBuilder(10_000)
            builder.start(res.observations[0])
            for i, a in enumerate(res.actions):
                builder.add(a, float(res.rewards[i]), res.observations[i + 1], bool(res.dones[i]))
            return builder.flush()

        def on_demo(res, src, key):
            if harvest is not None:
                harvest(res.trace, src, key)
            chunks.append(episode_chunk(res))

        def on_failed(res):  # a failed VLA attempt is real off-policy data: the online buffer, as in-process
            failed.append(episode_chunk(res))

        stats = collect_demos(runner, encoder, DemoConfig(count=count, source=source, max_attempts=max_attempts),
                              seed, on_demo, on_failed,
                              should_stop=stop.is_set)
        for i, chunk in enumerate(chunks):
            tmp = store / f".chunk_{i + 1:06d}.npz.tmp"
            tmp.write_bytes(tp.encode_chunk(chunk))
            tmp.rename(store / f"chunk_{i + 1:06d}.npz")
        log(f"actor: {stats['total']} demos ({stats['vla']} VLA in {stats['vla_attempts']} attempts, "
            f"{stats['expert']} expert)")
        files = sorted(store.glob("chunk_*.npz"))
    for f in files:
        chunk, _ = tp.decode_chunk(f.read_bytes())
        send(tp.KIND_DEMOS, chunk)
    if files:
        log(f"actor: sent {len(files)} demo episode(s)")
    # The failed attempts' transitions go online only now, after the demos: the learner's first updates (at
    # learning_starts online transitions) then see the demos, as the in-process session's do (it trains from the
    # first RL step on). Sent as they came, the learner spent ~1,000 updates on failures alone before any demo.
    for chunk in failed:
        send(tp.KIND_TRANSITIONS, chunk)
    return len(files)

