"""Episodes in a LatentEnv (the twin) or the ROS actor's robot env: EpisodeRunner (one episode with a reward source
and optional human interventions), the policies it runs (the VLA head with exploration noise, the SAC agent) and the
zero-shot demo collection. Used by the in-process session, its evaluation and the ROS actor node alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from robot_server.rollout import run_steps
from sim_twin import seeds

if TYPE_CHECKING:
    from rl_agent.session_config import DemoConfig

# Seeds of the kinds of episodes never overlap (sim_twin/seeds.py): within the session-demo block, per session seed,
# VLA demos, scripted demos and the held-out evaluation take their own 3,000-seed slices.
DEMO_SEED_BASE, EXPERT_SEED_BASE, EVAL_SEED_BASE = 0, 3000, 6000


def session_seed(session_seed_: int, base: int, k: int) -> int:
    if not 0 <= k < 3000:
        raise ValueError(f"episode index {k} of a session's demo/eval slice must be < 3000")
    return seeds.seed("session_demos", session_seed_ * 10_000 + base + k)


@dataclass
class EpisodeResult:
    observations: list  # T+1 observations as the buffers take them (prepared)
    actions: np.ndarray  # [T, 7] executed
    rewards: np.ndarray  # [T]
    dones: np.ndarray  # [T] terminal (success)
    intervened: list  # [T]
    trace: Any  # rl_agent.env.EpisodeTrace (raw images etc.)


class EpisodeRunner:
    """One episode in a LatentEnv with a reward source and (optionally) human interventions, through the one
    rollout loop (robot_server.rollout.run_steps). Used by the session, the evaluation and the ROS actor node alike."""

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

        def act(raw_obs):
            return np.asarray(policy(prepared[-1], raw_obs), np.float32)

        def step(a):
            nonlocal success
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
            success = success or verdict.success
            if verdict.end:
                env.trace.ended_by = verdict.source
            return next_obs, verdict.end or truncated

        run_steps(obs, act, step, should_stop=should_stop)
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


def agent_policy(get_agent: Callable[[], Any], deterministic: bool, rng: np.random.Generator,
                 noise_beta: float = 0.0, horizon: int = 100):
    """The SAC agent's action for one episode; `get_agent()` is read at every step (the ROS actor swaps in new
    parameters). Exploration draws white noise per step (SERL's) or, with `noise_beta` > 0, one (1/f)^beta Gaussian
    sequence per episode (beta 1: pink noise, Eberhard et al., ICLR 2023), still N(0, 1) at each step but correlated
    in time, so an episode's exploration can shift where the arm goes rather than only jitter it."""
    seq, t = None, 0

    def act(prepared, _raw):
        nonlocal seq, t
        agent = get_agent()
        if deterministic:
            return agent.eval_actions(prepared)
        if noise_beta <= 0:
            return agent.sample_actions(prepared, int(rng.integers(2**31 - 1)))
        if seq is None or t >= seq.shape[1]:
            import colorednoise
            seq, t = colorednoise.powerlaw_psd_gaussian(noise_beta, (agent.action_dim, max(int(horizon), 2)),
                                                        random_state=rng), 0
        t += 1
        return agent.actions_with_noise(prepared, seq[:, t - 1])
    return act


def demo_attempts(cfg: DemoConfig, seed: int, try_vla: Callable[[int, int], bool],
                  try_expert: Callable[[int, int], bool], should_stop: Optional[Callable[[], bool]] = None,
                  progress: Optional[Callable[[dict], None]] = None) -> dict:
    """The demo schedule every stage-1 path shares (the session, the ROS actor, PPO-Replay's warm start): VLA
    attempts on the session's demo seeds until `cfg.count` succeed or `cfg.max_attempts` are spent, then the scripted
    expert on its own seeds for the rest (per cfg.source). `try_vla(episode_seed, k)` / `try_expert(...)` run one
    attempt and say whether it succeeded; `progress(stats)` after each."""
    stats = {"vla": 0, "expert": 0, "vla_attempts": 0, "expert_attempts": 0}
    stop = should_stop or (lambda: False)
    if cfg.source in ("vla", "mixed"):
        while stats["vla"] < cfg.count and stats["vla_attempts"] < cfg.max_attempts and not stop():
            k = stats["vla_attempts"]
            stats["vla_attempts"] += 1
            stats["vla"] += bool(try_vla(session_seed(seed, DEMO_SEED_BASE, k), k))
            if progress is not None:
                progress(stats)
    if cfg.source in ("expert", "mixed"):
        while (stats["vla"] + stats["expert"] < cfg.count and stats["expert_attempts"] < cfg.expert_max_attempts
               and not stop()):
            k = stats["expert_attempts"]
            stats["expert_attempts"] += 1
            stats["expert"] += bool(try_expert(session_seed(seed, EXPERT_SEED_BASE, k), k))
            if progress is not None:
                progress(stats)
    stats["total"] = stats["vla"] + stats["expert"]
    stats["vla_success_rate"] = stats["vla"] / stats["vla_attempts"] if stats["vla_attempts"] else None
    return stats


def collect_demos(runner: EpisodeRunner, encoder, cfg: DemoConfig, seed: int,
                  on_demo: Callable[[EpisodeResult, str, str], None],
                  on_failed: Optional[Callable[[EpisodeResult], None]] = None, bar=None,
                  should_stop: Optional[Callable[[], bool]] = None) -> dict:
    """Successful episodes of the zero-shot VLA (its head + noise), topped up by the scripted expert (twin only)
    per cfg.source; `on_demo(result, source, key)` takes each success, `on_failed` each failed VLA attempt."""
    rng = np.random.default_rng(seed + 17)
    failed = [0]

    def try_vla(episode_seed: int, k: int) -> bool:
        res = runner.run(episode_seed, vla_policy(encoder, cfg.action_noise, rng), should_stop=should_stop)
        if res.trace.success:
            on_demo(res, "vla_demo", f"vla_demo:{k}")
            if bar is not None:
                bar.update(1)
        elif cfg.failed_to_online and on_failed is not None:
            on_failed(res)
            failed[0] += len(res.actions)
        return res.trace.success

    def try_expert(episode_seed: int, k: int) -> bool:
        res = runner.run(episode_seed, lambda *_: runner.env.expert_action(cfg.expert_noise), should_stop=should_stop)
        if res.trace.success:
            on_demo(res, "expert_demo", f"expert_demo:{k}")
            if bar is not None:
                bar.update(1)
        return res.trace.success

    def progress(st: dict) -> None:
        if bar is not None:
            bar.set_postfix_str(f"VLA {st['vla']} in {st['vla_attempts']}, expert {st['expert']} in "
                                f"{st['expert_attempts']}")

    stats = demo_attempts(cfg, seed, try_vla, try_expert, should_stop, progress)
    stats["failed_to_online"] = failed[0]
    return stats

