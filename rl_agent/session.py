"""The one-hour per-task online RL session (stage 1 of iRe-VLA), in-process on the twin.

    summary = Session(SessionConfig(task="pick_eggplant", minutes=60), checkpoint="runs/stage0", out="runs/rl").run()

Phases (each resumable; `out` holds everything):
  1. demos    deterministic success of the stage-0 VLA on `eval.episodes` held-out seeds ("before"); then 20
              successful zero-shot episodes of the VLA (its head's action + small Gaussian noise; attempts capped)
              into the demo buffer, optionally topped up by the twin's scripted expert (demos.source vla|expert|mixed).
  2. train    SACfD (rl_agent.agent.SACAgent) from the VLM latents: every env step is encoded once by the frozen
              VLA (rl_agent.env.LatentEnv), the agent acts (stochastic), the transition goes into the online buffer
              (human interventions into both), and `train.updates_per_step` updates on 50/50 demo/online batches
              (rl_agent.buffers.sample_mixed) follow. Episodes reset automatically with new seeds. Budget: wall-clock
              minutes of this phase, or episodes / env steps.
  3. final    deterministic success of the RL agent on the same seeds ("after"), the RL head written back into a
              VLA checkpoint (out/rl_head_ckpt via bridge.flax_to_head + VLA.save) and evaluated through the VLA
              ("after_handback"), the success-rate plot, summary.json.
Successful episodes are written to out/harvest (expert-set format, rl_agent.harvest) as they happen.

Checkpoints: out/checkpoints/ckpt_NNNNNN/{agent.msgpack, online.npz, demo.npz, state.json}, each written into a
temporary directory and renamed (atomic), at episode ends once `checkpoint.every_transitions` new transitions or
`checkpoint.every_minutes` have passed; LATEST names the newest. A SIGKILL loses at most every_transitions +
one episode of transitions (<= 1,000 with the defaults); rerunning the same command resumes from the counters and
buffers. Progress: a tqdm line, out/progress.json, TensorBoard scalars in out/tb, out/success_rate.png.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from rl_agent.harvest import Harvester, relabel_with_policy_mean
from rl_agent.interventions import InterventionConfig, make_interventions
from rl_agent.rewards import RewardConfig, make_reward_source
from teleop.config import from_dict, load_yaml, to_dict
from rl_agent.files import atomic_open
from sim_twin import seeds

PathLike = Union[str, Path]
DEMO_SOURCES = ("vla", "expert", "mixed")
# Seeds of the kinds of episodes never overlap (sim_twin/seeds.py): within the session-demo block, per session seed,
# VLA demos, scripted demos and the held-out evaluation take their own 3,000-seed slices.
DEMO_SEED_BASE, EXPERT_SEED_BASE, EVAL_SEED_BASE = 0, 3000, 6000


def session_seed(session_seed_: int, base: int, k: int) -> int:
    if not 0 <= k < 3000:
        raise ValueError(f"episode index {k} of a session's demo/eval slice must be < 3000")
    return seeds.seed("session_demos", session_seed_ * 10_000 + base + k)


# ---------------------------------------------------------------------------------------------- config
@dataclass
class EnvConfig:
    task_files: list[str] = field(default_factory=list)  # extra task registries (YAML)
    image_size: Optional[int] = None  # render size; None = the VLA's input size (no resize in encode)
    render_detail: str = "fast"
    max_episode_steps: Optional[int] = None  # None = the task's max_steps
    torch_threads: int = 1  # the VLA encode at batch 1 gains nothing from more; JAX keeps the other core busy


@dataclass
class DemoConfig:
    count: int = 20  # successful demos wanted (the paper: 20 from the zero-shot VLA)
    source: str = "vla"  # vla | expert | mixed (VLA first, scripted expert tops up)
    max_attempts: Optional[int] = None  # VLA attempts at most (None: 3 x count)
    expert_max_attempts: Optional[int] = None  # scripted expert attempts at most (None: 2 x count)
    action_noise: float = 0.05  # std of Gaussian noise on the VLA head's action (contract units)
    expert_noise: float = 0.0
    failed_to_online: bool = True  # failed VLA attempts are real off-policy data: into the online buffer

    def __post_init__(self):
        if self.source not in DEMO_SOURCES:
            raise ValueError(f"demos.source must be one of {DEMO_SOURCES}, got {self.source!r}")
        if self.max_attempts is None:
            self.max_attempts = 3 * self.count
        if self.expert_max_attempts is None:
            self.expert_max_attempts = 2 * self.count
        if self.count < 0 or self.max_attempts < 0 or self.expert_max_attempts < 0 or self.action_noise < 0:
            raise ValueError("demos: count, max_attempts, expert_max_attempts and action_noise must be >= 0")


@dataclass
class TrainConfig:
    updates_per_step: float = 1.0  # update-to-data ratio in-process (fractions accumulate)
    learning_starts: int = 100  # online transitions before the first update
    online_capacity: int = 200_000
    demo_capacity: int = 20_000
    memory_budget_gb: Optional[float] = None  # per buffer (rl_agent.buffers caps its capacity to fit)

    def __post_init__(self):
        if self.updates_per_step < 0 or self.learning_starts < 0:
            raise ValueError("train.updates_per_step and train.learning_starts must be >= 0")


@dataclass
class CheckpointConfig:
    every_transitions: int = 500  # plus at most one episode: <= 1,000 transitions lost on a SIGKILL
    every_minutes: float = 3.0
    keep: int = 2


@dataclass
class EvalConfig:
    episodes: int = 10  # deterministic episodes before and after (0: skip)
    handback: bool = True  # also evaluate the RL head through the VLA after the hand-back


@dataclass
class HarvestConfig:
    enabled: bool = True
    # rl: successful RL episodes; vla_demo: the zero-shot VLA's successful demos; expert_demo: scripted top-ups
    # (off by default: the RL task has no expert data in iRe-VLA).
    sources: list[str] = field(default_factory=lambda: ["rl", "vla_demo"])
    # Labels of RL episodes for stage 2: the executed, exploration-noised action (executed, what the paper
    # replays) or the actor's deterministic action at each visited state (policy_mean). rl_agent/harvest.py and the
    # README give the measured trade-off.
    action_label: str = "executed"

    def __post_init__(self):
        from rl_agent.harvest import ACTION_LABELS
        if self.action_label not in ACTION_LABELS:
            raise ValueError(f"harvest.action_label must be one of {ACTION_LABELS}, got {self.action_label!r}")


@dataclass
class LogConfig:
    progress: bool = True  # tqdm line
    tensorboard: bool = True
    plot: bool = True


@dataclass
class SessionConfig:
    task: str = "pick_eggplant"
    seed: int = 0
    minutes: Optional[float] = 60.0  # wall-clock budget of the training phase
    max_episodes: Optional[int] = None  # training episodes (whichever budget ends first)
    max_env_steps: Optional[int] = None  # online env steps
    sac: dict[str, Any] = field(default_factory=dict)  # SACConfig overrides (architecture comes from the VLA head)
    env: EnvConfig = field(default_factory=EnvConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    interventions: InterventionConfig = field(default_factory=InterventionConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    harvest: HarvestConfig = field(default_factory=HarvestConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Persistent XLA compilation cache ($IREVLA_CACHE/jax): the SAC update's compilation (tens of seconds on a
    # small CPU) is paid once per configuration, not in every session, resume and actor/learner start.
    compilation_cache: bool = True

    def __post_init__(self):
        if self.minutes is None and self.max_episodes is None and self.max_env_steps is None:
            raise ValueError("give a budget: minutes, max_episodes or max_env_steps")
        if self.reward.source == "operator" and not self.interventions.enabled:
            raise ValueError("reward.source 'operator' in-process reads the operator's success/failure keys from the "
                             "teleop device: enable interventions (on the robot, rl_actor's mark_success service)")

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "SessionConfig":
        return from_dict(cls, data)

    @classmethod
    def from_yaml(cls, path: PathLike, section: Optional[str] = None) -> "SessionConfig":
        return load_yaml(cls, path, section)

    def to_dict(self) -> dict:
        return to_dict(self)


def sac_config_for(vla, overrides: dict):
    """SACConfig whose actor matches the VLA's head, with the session's overrides."""
    from rl_agent.config import SACConfig
    base = SACConfig.from_head_config(vla.cfg.head).to_dict()
    base.update(overrides or {})
    return SACConfig.from_dict(base)


# ---------------------------------------------------------------------------------------------- helpers
def enable_compilation_cache(directory: Optional[PathLike] = None) -> Optional[Path]:
    """Turn on JAX's persistent compilation cache (unless JAX_COMPILATION_CACHE_DIR already chose one)."""
    import jax
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    d = Path(directory or Path(os.environ.get("IREVLA_CACHE", Path.home() / ".cache" / "irevla")) / "jax")
    try:
        d.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(d))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    except (OSError, AttributeError):  # read-only home, or a JAX without the option: compile every time
        return None
    return d


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", fsync=False) as f:
        f.write(text)


def _fmt_s(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class CheckpointStore:
    """out/checkpoints/ckpt_NNNNNN directories, each complete or absent (written to a temp dir, then renamed)."""

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = max(1, int(keep))

    def _complete(self) -> list[Path]:
        return sorted(p for p in self.root.glob("ckpt_*") if p.is_dir() and (p / "state.json").is_file()
                      and not p.name.endswith(".tmp"))

    def latest(self) -> Optional[Path]:
        done = self._complete()
        return done[-1] if done else None

    def save(self, write: Callable[[Path], None], state: dict) -> Path:
        n = int(self.latest().name.split("_")[1]) + 1 if self.latest() else 0
        final = self.root / f"ckpt_{n:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", suffix=".tmp", dir=self.root))
        try:
            write(tmp)
            (tmp / "state.json").write_text(json.dumps(state))  # last: its presence marks a complete checkpoint
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _atomic_write_text(self.root / "LATEST", final.name + "\n")
        for old in self._complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob("*.tmp"):  # leftovers of a checkpoint interrupted by a kill
            shutil.rmtree(stale, ignore_errors=True)
        return final


def write_learner_files(directory: Path, agent, online, demo) -> None:
    """The learning state a checkpoint holds beside its state.json (the session and the ROS learner share it)."""
    agent.save(directory / "agent.msgpack")
    online.save(directory / "online.npz")
    demo.save(directory / "demo.npz")


def read_learner_files(directory: Path, template):
    """-> (agent, online buffer, demo buffer) written by write_learner_files; `template` gives the agent's shapes."""
    from rl_agent.agent import SACAgent
    from rl_agent.buffers import LatentReplayBuffer
    return (SACAgent.load(directory / "agent.msgpack", template=template),
            LatentReplayBuffer.load(directory / "online.npz"), LatentReplayBuffer.load(directory / "demo.npz"))


# ---------------------------------------------------------------------------------------------- episodes
@dataclass
class EpisodeResult:
    observations: list  # T+1 observations as the buffers take them (prepared)
    actions: np.ndarray  # [T, 7] executed
    rewards: np.ndarray  # [T]
    dones: np.ndarray  # [T] terminal (success)
    intervened: list  # [T]
    trace: Any  # rl_agent.env.EpisodeTrace (raw images etc.)


class EpisodeRunner:
    """One episode in a LatentEnv with a reward source and (optionally) human interventions. Used by the session,
    the evaluation and the ROS actor node alike."""

    def __init__(self, env, reward, interventions=None, prepare: Callable[[dict], dict] = lambda o: o):
        self.env, self.reward, self.iv, self.prepare = env, reward, interventions, prepare

    def run(self, seed: int, policy: Callable[[dict, dict], np.ndarray], keep_images: bool = True,
            on_reset: Optional[Callable] = None, on_step: Optional[Callable] = None,
            allow_interventions: bool = False, should_stop: Optional[Callable[[], bool]] = None) -> EpisodeResult:
        """`policy(prepared_obs, raw_obs) -> action`; `on_step(obs, action, verdict, next_obs, intervened)` after
        every step (prepared observations); `should_stop()` cuts the episode short (node shutdown)."""
        env = self.env
        env.keep_images = keep_images
        obs, info = env.reset(seed)
        self.reward.reset()
        use_iv = self.iv is not None and allow_interventions
        if use_iv:
            self.iv.reset()
        prepared = [self.prepare(obs)]
        if on_reset is not None:
            on_reset(prepared[0])
        actions, rewards, dones, intervened = [], [], [], []
        success = False
        while True:
            a = np.asarray(policy(prepared[-1], obs), np.float32)
            events: tuple = ()
            took = False
            if use_iv:
                a, took, events = self.iv.filter(a)
            next_obs, _, _, truncated, info = env.step(a, intervened=took)
            verdict = self.reward(next_obs, info, events)
            next_prepared = self.prepare(next_obs)
            actions.append(a)
            rewards.append(verdict.reward)
            dones.append(verdict.success)  # terminal only on success; a failure mark / step limit is a cut-off
            intervened.append(took)
            if on_step is not None:
                on_step(prepared[-1], a, verdict, next_prepared, took)
            prepared.append(next_prepared)
            obs = next_obs
            success = success or verdict.success
            if verdict.end:
                env.trace.ended_by = verdict.source
            if verdict.end or truncated or (should_stop is not None and should_stop()):
                break
        env.trace.success = success
        return EpisodeResult(prepared, np.asarray(actions, np.float32), np.asarray(rewards, np.float32),
                             np.asarray(dones, bool), intervened, env.trace)


def vla_policy(encoder, noise: float = 0.0, rng: Optional[np.random.Generator] = None):
    """The VLA head's action (stage-0 policy), plus Gaussian exploration noise for the zero-shot demos."""
    def act(_prepared, raw_obs):
        a = encoder.head_action(raw_obs)
        if noise > 0:
            a = a + rng.normal(0.0, noise, a.shape)
        return np.clip(a, -1.0, 1.0)
    return act


def agent_policy(get_agent: Callable[[], Any], deterministic: bool, rng: np.random.Generator):
    """The SAC agent's action; `get_agent()` is read at every step (the ROS actor swaps in new parameters)."""
    def act(prepared, _raw):
        agent = get_agent()
        if deterministic:
            return agent.eval_actions(prepared)
        return agent.sample_actions(prepared, int(rng.integers(2**31 - 1)))
    return act


def collect_demos(runner: EpisodeRunner, encoder, cfg: DemoConfig, seed: int,
                  on_demo: Callable[[EpisodeResult, str, str], None],
                  on_failed: Optional[Callable[[EpisodeResult], None]] = None, bar=None,
                  should_stop: Optional[Callable[[], bool]] = None) -> dict:
    """Successful episodes of the zero-shot VLA (its head + noise), topped up by the scripted expert (twin only)
    per cfg.source; `on_demo(result, source, key)` takes each success, `on_failed` each failed VLA attempt."""
    stats = {"vla": 0, "expert": 0, "vla_attempts": 0, "expert_attempts": 0, "failed_to_online": 0}
    rng = np.random.default_rng(seed + 17)
    stop = should_stop or (lambda: False)
    if cfg.source in ("vla", "mixed"):
        while stats["vla"] < cfg.count and stats["vla_attempts"] < cfg.max_attempts and not stop():
            k = stats["vla_attempts"]
            stats["vla_attempts"] += 1
            res = runner.run(session_seed(seed, DEMO_SEED_BASE, k), vla_policy(encoder, cfg.action_noise, rng),
                             should_stop=should_stop)
            if res.trace.success:
                stats["vla"] += 1
                on_demo(res, "vla_demo", f"vla_demo:{k}")
                if bar is not None:
                    bar.update(1)
            elif cfg.failed_to_online and on_failed is not None:
                on_failed(res)
                stats["failed_to_online"] += len(res.actions)
            if bar is not None:
                bar.set_postfix_str(f"VLA {stats['vla']} successful in {stats['vla_attempts']} attempts")
    if cfg.source in ("expert", "mixed"):
        env = runner.env
        while (stats["vla"] + stats["expert"] < cfg.count and stats["expert_attempts"] < cfg.expert_max_attempts
               and not stop()):
            k = stats["expert_attempts"]
            stats["expert_attempts"] += 1
            res = runner.run(session_seed(seed, EXPERT_SEED_BASE, k), lambda *_: env.expert_action(cfg.expert_noise),
                             should_stop=should_stop)
            if res.trace.success:
                stats["expert"] += 1
                on_demo(res, "expert_demo", f"expert_demo:{k}")
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.set_postfix_str(f"VLA {stats['vla']}, expert {stats['expert']} in {stats['expert_attempts']}")
    stats["total"] = stats["vla"] + stats["expert"]
    stats["vla_success_rate"] = stats["vla"] / stats["vla_attempts"] if stats["vla_attempts"] else None
    return stats


# ---------------------------------------------------------------------------------------------- session
class Session:
    def __init__(self, cfg: SessionConfig, checkpoint: PathLike, out: PathLike, vla=None,
                 intervention_device=None, classifier=None, log: Callable[[str], None] = None):
        self.cfg = cfg
        self.checkpoint = Path(checkpoint)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._vla = vla
        self._iv_device = intervention_device
        self._classifier = classifier
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.agent = None

    def log(self, msg: str) -> None:
        if getattr(self, "_bar", None) is not None:
            self._bar.write(msg, file=sys.stderr)
        else:
            self._log(msg)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        import torch

        from rl_agent.agent import SACAgent
        from rl_agent.bridge import head_to_flax
        from rl_agent.buffers import LatentReplayBuffer
        from rl_agent.env import LatentEncoder, LatentEnv

        cfg = self.cfg
        t0 = time.perf_counter()
        if cfg.compilation_cache:
            enable_compilation_cache()
        if self._vla is None:
            from policy.model import load_vla
            self._vla = load_vla(self.checkpoint)
        vla = self.vla = self._vla
        torch.manual_seed(cfg.seed)
        self.encoder = LatentEncoder(vla, torch_threads=cfg.env.torch_threads)
        self.env = LatentEnv(self.encoder, cfg.task, task_files=cfg.env.task_files, image_size=cfg.env.image_size,
                             render_detail=cfg.env.render_detail, max_episode_steps=cfg.env.max_episode_steps)
        self.sac_config = sac_config_for(vla, cfg.sac)
        self.initial_head = head_to_flax(vla.head)
        self.agent = SACAgent.create(cfg.seed, self.encoder.latent_shape, config=self.sac_config,
                                     actor_head=self.initial_head)
        shape = self.agent.stored_latent_shape
        budget = None if cfg.train.memory_budget_gb is None else int(cfg.train.memory_budget_gb * 2**30)
        self.online = LatentReplayBuffer(cfg.train.online_capacity, shape, memory_budget_bytes=budget)
        self.demo = LatentReplayBuffer(cfg.train.demo_capacity, shape, memory_budget_bytes=budget)
        self.reward = make_reward_source(cfg.reward, classifier=self._classifier)
        self.iv = make_interventions(cfg.interventions, device=self._iv_device)
        if self.iv is not None:
            self.iv.open()
        self.runner = EpisodeRunner(self.env, self.reward, self.iv, self._prepare)
        self.harvester = None
        if cfg.harvest.enabled:
            self.harvester = Harvester(self.out / "harvest", self.encoder.cameras, self.env.image_size,
                                       cfg.harvest.sources)
        self.store = CheckpointStore(self.out / "checkpoints", cfg.checkpoint.keep)
        self.rng = np.random.default_rng(cfg.seed)
        self.state = {"phase": "demos", "episodes": 0, "env_steps": 0, "updates": 0, "train_s": 0.0,
                      "demo_s": 0.0, "eval_s": 0.0, "successes": [], "returns": [], "lengths": [],
                      "interventions": [], "intervened_steps": [], "demo_stats": {}, "eval": {}, "resumes": 0,
                      "lost_transitions": [],
                      "update_s": 0.0, "env_s": 0.0, "encode_s": 0.0, "update_credit": 0.0,
                      "config": self.cfg.to_dict(), "checkpoint": str(self.checkpoint)}
        self.setup_s = time.perf_counter() - t0
        self._bar = None
        self._tb = None

    def _prepare(self, obs: dict) -> dict:
        """What the buffers and the networks take (identity unless sac.latent_input == 'pooled')."""
        return self.agent.prepare_observations(obs)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self) -> Path:
        self.state["rng"] = self.rng.bit_generator.state
        path = self.store.save(lambda d: write_learner_files(d, self.agent, self.online, self.demo), self.state)
        self._last_ckpt = (time.monotonic(), self.state["env_steps"])
        return path

    def _restore(self) -> bool:
        path = self.store.latest()
        if path is None:
            return False
        state = json.loads((path / "state.json").read_text())
        self.agent, self.online, self.demo = read_learner_files(path, self.agent)
        prev = self._read_progress()
        reached = int(prev.get("env_steps", state["env_steps"])) if prev else state["env_steps"]
        lost = max(0, reached - int(state["env_steps"]))
        state["resumes"] = int(state.get("resumes", 0)) + 1
        state.setdefault("lost_transitions", []).append(lost)
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
        self.state = state
        self.log(f"resumed from {path.name}: phase {state['phase']}, {state['episodes']} episodes, "
                 f"{state['env_steps']} transitions, {state['updates']} updates (the killed run had reached "
                 f"{reached} transitions: {lost} lost)")
        return True

    def _finished_summary(self) -> Optional[dict]:
        latest = CheckpointStore(self.out / "checkpoints").latest() if (self.out / "checkpoints").is_dir() else None
        summary = self.out / "summary.json"
        if latest is None or not summary.is_file():
            return None
        try:
            if json.loads((latest / "state.json").read_text()).get("phase") != "done":
                return None
            return json.loads(summary.read_text())
        except (OSError, ValueError):
            return None

    def _read_progress(self) -> dict:
        try:
            return json.loads((self.out / "progress.json").read_text())
        except (OSError, ValueError):
            return {}

    def _write_progress(self, **extra) -> None:
        s = self.state
        succ = s["successes"][-20:]
        doc = {"phase": s["phase"], "episodes": s["episodes"], "env_steps": s["env_steps"], "updates": s["updates"],
               "success_last20": (sum(succ) / len(succ)) if succ else None, "train_s": round(s["train_s"], 2),
               "online": len(self.online), "demo": len(self.demo), "time": time.time(), **extra}
        _atomic_write_text(self.out / "progress.json", json.dumps(doc))

    # ------------------------------------------------------------------ acting
    def _evaluate(self, policy_name: str, policy: Callable[[dict, dict], np.ndarray]) -> dict:
        n = self.cfg.eval.episodes
        if n <= 0:
            return {"success_rate": None, "episodes": 0}
        t0 = time.perf_counter()
        results = [bool(self.runner.run(session_seed(self.cfg.seed, EVAL_SEED_BASE, i), policy, keep_images=False)
                        .trace.success) for i in range(n)]
        dt = time.perf_counter() - t0
        self.state["eval_s"] += dt
        out = {"success_rate": float(np.mean(results)), "successes": int(sum(results)), "episodes": n,
               "seconds": round(dt, 2)}
        self.log(f"eval {policy_name}: {out['successes']}/{n} successful (deterministic, held-out seeds)")
        return out

    # ------------------------------------------------------------------ phases
    def _phase_demos(self) -> None:
        cfg, st = self.cfg.demos, self.state
        t0 = time.perf_counter()
        st["eval"]["before"] = self._evaluate("before (stage-0 VLA head)", vla_policy(self.encoder))
        bar = self._make_bar(cfg.count, "demos", "ep")

        def on_demo(res, source, key):
            self.demo.insert_episode(res.observations, res.actions, res.rewards, res.dones)
            self._harvest(res.trace, source, key)

        def on_failed(res):
            self.online.insert_episode(res.observations, res.actions, res.rewards, res.dones)

        try:
            stats = collect_demos(self.runner, self.encoder, cfg, self.cfg.seed, on_demo, on_failed, bar)
        finally:
            if bar is not None:
                bar.close()
        stats["demo_transitions"] = len(self.demo)
        st["demo_stats"] = stats
        st["demo_s"] = time.perf_counter() - t0
        self.log(f"demos: {stats['total']}/{cfg.count} successful ({stats['vla']} from the VLA in "
                 f"{stats['vla_attempts']} attempts, {stats['expert']} from the scripted expert in "
                 f"{stats['expert_attempts']}); demo buffer {len(self.demo)} transitions, "
                 f"{stats['failed_to_online']} transitions of failed attempts in the online buffer")
        if stats["total"] < cfg.count:
            self.log(f"WARNING: only {stats['total']} of {cfg.count} demos"
                     + ("; --demo-source mixed tops up with the scripted expert" if cfg.source == "vla" else ""))
        st["phase"] = "train"
        self._save_checkpoint()

    def _budget(self) -> tuple[float, float, str]:
        """(done, total, unit) of the tightest training budget."""
        c, s = self.cfg, self.state
        options = []
        if c.minutes is not None:
            options.append((s["train_s"], c.minutes * 60.0, "s"))
        if c.max_episodes is not None:
            options.append((s["episodes"], float(c.max_episodes), "ep"))
        if c.max_env_steps is not None:
            options.append((s["env_steps"], float(c.max_env_steps), "steps"))
        return max(options, key=lambda o: o[0] / max(o[1], 1e-9))

    def _phase_train(self) -> None:
        from rl_agent.buffers import sample_mixed
        c, st = self.cfg, self.state
        batch_size = self.sac_config.update_batch_size
        done, total, unit = self._budget()
        bar = self._make_bar(total, "RL", unit, initial=done)
        last20 = deque(st["successes"][-20:], maxlen=20)
        self._last_ckpt = (time.monotonic(), st["env_steps"])
        window = deque(maxlen=200)  # (wall time, updates, env steps) for the live rates
        last_line = time.monotonic()
        ep_info: dict = {}

        def on_step(obs, a, verdict, next_obs, took):
            st["env_steps"] += 1
            if st["env_steps"] % 25 == 0:  # what a resumed run compares its checkpoint with (lost transitions)
                self._write_progress()
            if took:  # HIL-SERL: the human's transitions also go into the demo buffer
                self.demo.insert_episode([obs, next_obs], np.asarray(a)[None], np.array([verdict.reward], np.float32),
                                         np.array([verdict.success]))
            self.online.add(a, verdict.reward, next_obs, verdict.success)
            if len(self.online) < c.train.learning_starts:
                return
            st["update_credit"] += c.train.updates_per_step
            t_u = time.perf_counter()
            while st["update_credit"] >= 1.0:
                batch = sample_mixed(self.demo, self.online, batch_size, self.rng)
                self.agent, info = self.agent.update(batch)
                st["updates"] += 1
                st["update_credit"] -= 1.0
                for k, v in info.items():
                    ep_info.setdefault(k, []).append(v)
            st["update_s"] += time.perf_counter() - t_u

        try:
            while True:
                done, total, unit = self._budget()
                if done >= total:
                    break
                ep = st["episodes"]
                t_ep = time.perf_counter()
                env_s0, enc_s0 = self.env.env_seconds, self.encoder.seconds
                ep_info.clear()
                res = self.runner.run(seeds.seed("online_rl", c.seed * 1_000_000 + ep),
                                      agent_policy(lambda: self.agent, False, self.rng),
                                      on_reset=self.online.start_episode, on_step=on_step, allow_interventions=True)
                acts, rews, trace = res.actions, res.rewards, res.trace
                st["env_s"] += self.env.env_seconds - env_s0
                st["encode_s"] += self.encoder.seconds - enc_s0
                st["episodes"] += 1
                st["successes"].append(int(trace.success))
                st["returns"].append(float(np.sum(rews)))
                st["lengths"].append(int(len(acts)))
                st["interventions"].append(int(trace.interventions))
                st["intervened_steps"].append(int(np.sum(res.intervened)))
                st["safety_stops"] = st.get("safety_stops", 0) + int(trace.ended_by == "safety")
                last20.append(int(trace.success))
                if trace.success:
                    self._harvest(trace, "rl", f"rl:{ep}", observations=res.observations)
                st["train_s"] += time.perf_counter() - t_ep  # wall clock: acting, learning, harvesting
                window.append((time.perf_counter(), st["updates"], st["env_steps"]))
                self._log_episode(trace, len(acts), float(np.sum(rews)), ep_info, last20)
                done, total, unit = self._budget()
                if bar is not None:
                    bar.set_postfix_str(self._postfix(last20, window, done, total, unit), refresh=False)
                    bar.update(round(min(done, total) - bar.n, 2))
                elif time.monotonic() - last_line >= 30.0:  # no bar: a plain progress line now and then
                    last_line = time.monotonic()
                    self.log(f"RL {min(done, total):.0f}/{total:.0f} {unit}: "
                             + self._postfix(last20, window, done, total, unit))
                self._write_progress()
                since_t, since_n = self._last_ckpt
                if (st["env_steps"] - since_n >= c.checkpoint.every_transitions
                        or time.monotonic() - since_t >= 60.0 * c.checkpoint.every_minutes):
                    self._save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        st["phase"] = "final"
        self._save_checkpoint()

    def _phase_final(self) -> dict:
        from rl_agent.bridge import flax_to_head
        st = self.state
        st["eval"]["after"] = self._evaluate("after (RL agent, deterministic)",
                                             agent_policy(lambda: self.agent, True, self.rng))
        flax_to_head(self.agent.actor_head_params(), self.vla.head)
        head_dir = self.out / "rl_head_ckpt"
        self.vla.save(head_dir, extra_meta={"stage": 1, "rl_task": self.cfg.task, "rl_episodes": st["episodes"],
                                            "rl_updates": st["updates"], "stage0_checkpoint": str(self.checkpoint)})
        if self.cfg.eval.handback:
            st["eval"]["after_handback"] = self._evaluate("after (RL head inside the VLA)", vla_policy(self.encoder))
        summary = self._summary(head_dir)
        if self.cfg.log.plot:
            self._plot()
        _atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=1))
        st["phase"] = "done"
        self._save_checkpoint()
        self._write_progress()
        return summary

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        done = self._finished_summary()
        if done is not None:  # checked before loading anything: rerunning a finished session is instant
            self.log(f"{self.out}: this session is complete (summary.json); nothing to do")
            return done
        self._setup()
        try:
            self._restore()
            self._open_tensorboard()
            if self.state["phase"] == "demos":
                self._phase_demos()
            if self.state["phase"] == "train":
                self._phase_train()
            return self._phase_final()
        finally:
            self.close()

    def close(self) -> None:
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None
        if getattr(self, "harvester", None) is not None:
            self.harvester.close()
            self.harvester = None
        if getattr(self, "iv", None) is not None:
            self.iv.close()
            self.iv = None
        if getattr(self, "env", None) is not None:
            self.env.close()
            self.env = None

    # ------------------------------------------------------------------ outputs
    def _harvest(self, trace, source: str, key: str, observations=None) -> None:
        if self.harvester is None or not self.harvester.wants(source, key):
            return
        label = "executed"
        if observations is not None and self.cfg.harvest.action_label == "policy_mean":
            trace = relabel_with_policy_mean(trace, observations, self.agent.eval_actions)
            label = "policy_mean"
        self.harvester.write(trace, source, key, action_label=label)

    def _make_bar(self, total, desc: str, unit: str, initial=0):
        if not self.cfg.log.progress:
            return None
        from tqdm import tqdm
        tty = sys.stderr.isatty()
        bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
                   mininterval=0.5 if tty else 10.0,
                   bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n:.0f}/{total:.0f} {unit}{postfix}")
        self._bar = bar
        return bar

    def _postfix(self, last20, window, done, total, unit) -> str:
        st = self.state
        succ = f"{sum(last20) / len(last20):.2f}" if last20 else "-"
        if len(window) >= 2:
            (t0, u0, e0), (t1, u1, e1) = window[0], window[-1]
            ups = (u1 - u0) / max(t1 - t0, 1e-9)
            utd = (u1 - u0) / max(e1 - e0, 1)
        else:
            ups, utd = 0.0, self.cfg.train.updates_per_step
        if unit == "s":
            elapsed, eta = done, max(0.0, total - done)
        else:
            elapsed = st["train_s"]
            eta = elapsed / max(done, 1e-9) * max(0.0, total - done)
        return (f"ep {st['episodes']} | succ@20 {succ} | upd/s {ups:.1f} | UTD {utd:.2f} | "
                f"buf demo {len(self.demo)} online {len(self.online)} | {_fmt_s(elapsed)} ETA {_fmt_s(eta)}")

    def _open_tensorboard(self) -> None:
        if not self.cfg.log.tensorboard:
            return
        from torch.utils.tensorboard import SummaryWriter
        # purge_step drops events a killed run logged after its last checkpoint (their steps are replayed).
        self._tb = SummaryWriter(str(self.out / "tb"), purge_step=self.state["env_steps"] or None)

    def _log_episode(self, trace, length: int, ret: float, ep_info: dict, last20) -> None:
        st = self.state
        if self._tb is None:
            return
        step = st["env_steps"]
        tb = self._tb
        tb.add_scalar("train/episode_success", float(trace.success), step)
        tb.add_scalar("train/success_last20", sum(last20) / max(len(last20), 1), step)
        tb.add_scalar("train/episode_return", ret, step)
        tb.add_scalar("train/episode_length", length, step)
        tb.add_scalar("train/interventions", trace.interventions, step)
        tb.add_scalar("train/intervened_steps", st["intervened_steps"][-1], step)
        tb.add_scalar("train/episodes", st["episodes"], step)
        tb.add_scalar("perf/updates", st["updates"], step)
        tb.add_scalar("perf/utd", st["updates"] / max(st["env_steps"], 1), step)
        tb.add_scalar("perf/env_steps_per_s", st["env_steps"] / max(st["train_s"], 1e-9), step)
        tb.add_scalar("perf/updates_per_s", st["updates"] / max(st["train_s"], 1e-9), step)
        tb.add_scalar("buffer/online", len(self.online), step)
        tb.add_scalar("buffer/demo", len(self.demo), step)
        for k, v in ep_info.items():
            tb.add_scalar(f"learner/{k}", float(np.mean(v)), step)

    def _plot(self) -> Optional[Path]:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        st = self.state
        succ = np.asarray(st["successes"], float)
        fig, ax = plt.subplots(figsize=(7, 4))
        if succ.size:
            ep = np.arange(1, succ.size + 1)
            roll = np.array([succ[max(0, i - 19):i + 1].mean() for i in range(succ.size)])
            ax.plot(ep, succ, ".", color="0.7", label="episode success")
            ax.plot(ep, roll, "-", color="C0", lw=2, label="success over the last 20 episodes")
        for key, color in (("before", "C3"), ("after", "C2")):
            r = st["eval"].get(key, {}).get("success_rate")
            if r is not None:
                ax.axhline(r, color=color, ls="--", label=f"deterministic eval {key}: {r:.2f}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("training episode")
        ax.set_ylabel("success")
        ax.set_title(f"stage 1 RL on {self.cfg.task}")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        path = self.out / "success_rate.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def _summary(self, head_dir: Path) -> dict:
        st = self.state
        succ = st["successes"]
        train_s = max(st["train_s"], 1e-9)
        steps = max(st["env_steps"], 1)
        return {
            "task": self.cfg.task, "stage0_checkpoint": str(self.checkpoint), "out": str(self.out),
            "episodes": st["episodes"], "env_steps": st["env_steps"], "updates": st["updates"],
            "utd": st["updates"] / steps,
            "success_last20": float(np.mean(succ[-20:])) if succ else None,
            "train_success_rate": float(np.mean(succ)) if succ else None,
            "eval": st["eval"], "demos": st["demo_stats"],
            "harvested": dict(self.harvester.written) if self.harvester is not None else {},
            "harvest_dir": str(self.out / "harvest") if self.harvester is not None else None,
            "harvest_episodes": len(self.harvester) if self.harvester is not None else 0,
            "rl_head_ckpt": str(head_dir),
            "interventions": int(sum(st["interventions"])),
            "safety_stops": int(st.get("safety_stops", 0)),
            "buffers": {"online": len(self.online), "demo": len(self.demo),
                        "bytes_per_transition": round(float(self.online.bytes_per_transition), 1),
                        "online_bytes_used": int(self.online.num_observations * self.online.bytes_per_observation),
                        "online_bytes_allocated": int(self.online.nbytes)},
            "timing": {"setup_s": round(self.setup_s, 2), "demo_s": round(st["demo_s"], 2),
                       "train_s": round(st["train_s"], 2), "eval_s": round(st["eval_s"], 2),
                       "env_steps_per_s": st["env_steps"] / train_s, "updates_per_s": st["updates"] / train_s,
                       "learner_updates_per_s": st["updates"] / max(st["update_s"], 1e-9),
                       "env_step_ms": 1e3 * st["env_s"] / steps, "encode_ms": 1e3 * st["encode_s"] / steps,
                       "update_ms": 1e3 * st["update_s"] / max(st["updates"], 1)},
            "resumes": st["resumes"], "lost_transitions_on_resume": st["lost_transitions"],
        }


def run_session(cfg: SessionConfig, checkpoint: PathLike, out: PathLike, **kwargs) -> dict:
    """Run (or resume) one session; returns summary.json's content (harvest_dir, rl_head_ckpt, eval, ...)."""
    return Session(cfg, checkpoint, out, **kwargs).run()
