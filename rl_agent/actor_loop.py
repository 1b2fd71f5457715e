"""The actor's acting loop (no ROS): demos first, then RL episodes with the actor's current parameters, each step
chunked and handed to `send` (the node publishes; a test can collect), the episode log kept, successes harvested.
rl_agent/actor_node.py only builds the parts from its ROS parameters and runs this.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Optional

import numpy as np

from rl_agent import transport as tp
from rl_agent.actor_core import ActorCore, ActorParams, send_demos
from sim_twin import seeds


class Pacer:
    """Wall-clock pacing of the contract's steps (10 Hz): sleeps to the next tick; a late step starts a new grid."""

    def __init__(self, rate_hz: float):
        self.period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        self.t_next = time.monotonic()

    def restart(self) -> None:
        self.t_next = time.monotonic()

    def wait(self) -> None:
        if self.period <= 0:
            return
        self.t_next += self.period
        delay = self.t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self.t_next = time.monotonic()


def run_actor(p: ActorParams, core: ActorCore, runner, env, encoder, send: Callable[[str, dict], None],
              stop: threading.Event, status, elog, harvest=None, interventions: bool = False,
              scripted_demos_unavailable: Optional[str] = None, log=print, warn=print) -> None:
    """Demos, then RL episodes until `p.minutes` (counted from the first RL episode), `p.max_episodes` or `stop`.

    status: rl_agent.operator_console.SessionStatus (updated for the console); elog: session_log.EpisodeLog (a
    restarted actor goes on from its episode count); scripted_demos_unavailable: why the scripted expert cannot run
    here (a real cell), or None."""
    if p.demo_data:  # the operator's recorded episodes first: no scene resets needed for them
        from rl_agent.recorded_demos import send_recorded_demos
        status.demos = send_recorded_demos(p.demo_data, encoder, elog.out, p.task,
                                           int(p.demo_episodes), runner.prepare, send, log)
    demo_source = p.demo_source
    if demo_source != "vla" and p.demos > 0 and scripted_demos_unavailable:
        # a real cell: the VLA's own successes are the demos (the paper's way)
        warn(f"actor: demo_source {demo_source!r} needs the twin's scripted expert: {scripted_demos_unavailable}; "
             "the demos come from the VLA (demo_source vla)")
        demo_source = "vla"
    status.demos += send_demos(core, runner, encoder, elog.out, int(p.demos), demo_source, int(p.seed), send, stop,
                               log, harvest=harvest, max_attempts=p.demo_attempts or None)

    from rl_agent.episodes import agent_policy
    builder = tp.ChunkBuilder(int(p.chunk_steps))
    core.rl_deadline = time.monotonic() + 60.0 * p.minutes if p.minutes > 0 else None
    pacer = Pacer(float(p.rate_hz) if p.mode == "twin" else 0.0)  # robot mode paces itself in RosLatentEnv
    rng = np.random.default_rng(int(p.seed) + 1)
    ep = len(elog.episodes)
    status.episode, status.finished, status.successes = ep, ep, sum(elog.successes)

    def on_step(obs, a, verdict, next_obs, took):
        core.env_steps += 1
        chunk = builder.add(a, verdict.reward, next_obs, verdict.success, took)
        if chunk is not None:
            send(tp.KIND_TRANSITIONS, chunk)
        pacer.wait()

    while not stop.is_set() and (int(p.max_episodes) <= 0 or ep < int(p.max_episodes)) \
            and (core.rl_deadline is None or time.monotonic() < core.rl_deadline):
        pacer.restart()
        res = runner.run(seeds.seed("online_rl", int(p.seed) * 1_000_000 + ep),
                         agent_policy(core.current_agent, False, rng, float(p.exploration_beta),
                                      env.max_episode_steps),
                         keep_images=bool(p.harvest), on_reset=builder.start, on_step=on_step,
                         should_stop=stop.is_set, allow_interventions=interventions)
        last = builder.flush()
        if last is not None:
            send(tp.KIND_TRANSITIONS, last)
        if harvest is not None:
            harvest(res.trace, "rl", f"rl:{ep}")
        ep += 1
        core.episodes = ep
        status.episode, status.finished = ep + 1, ep
        status.successes += int(res.trace.success)
        elog.extra.update(demos=status.demos, transitions_sent=core.env_steps, params_version=core.params_version)
        elog.add(res.trace.success, len(res.actions), res.trace.interventions, core.params_version,
                 res.trace.ended_by or "", **env.episode_timing())
        how = f"success ({res.trace.ended_by})" if res.trace.success else "failure"
        took = f", {res.trace.interventions} intervention(s)" if interventions else ""
        log(f"actor: episode {ep}: {how} in {len(res.actions)} steps (params v{core.params_version}, "
            f"pending {core.outbox.pending()}{took})")
