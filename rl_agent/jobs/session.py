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

Modules: rl_agent/session_config.py (SessionConfig and its sections), rl_agent/episodes.py (EpisodeRunner, policies,
demo collection), rl_agent/checkpoints.py (CheckpointStore, learner files), rl_agent/agent_setup.py (SAC config and
compilation cache), rl_agent/jobs/session_outputs.py (progress, TensorBoard, plot, summary). This module is the job.
"""
from __future__ import annotations

import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Optional

import numpy as np

# The library parts, re-exported: callers of rl_agent.jobs.session (iterate, main_job, session_cli, tests, benchmarks).
from rl_agent.agent_setup import enable_compilation_cache, sac_config_for  # noqa: F401
from rl_agent.checkpoints import CheckpointStore, atomic_write_text as _atomic_write_text  # noqa: F401
from rl_agent.episodes import (DEMO_SEED_BASE, EVAL_SEED_BASE, EXPERT_SEED_BASE, EpisodeResult,  # noqa: F401
                               EpisodeRunner, agent_policy, collect_demos, session_seed, vla_policy)
from rl_agent.harvest import Harvester
from rl_agent.interventions import make_interventions
from rl_agent.learner_core import LearnerConfig, LearnerCore
from rl_agent.transport import KIND_DEMOS, KIND_TRANSITIONS
from rl_agent.rewards import make_reward_source
from rl_agent.session_config import (DEMO_SOURCES, CheckpointConfig, DemoConfig, EnvConfig, EvalConfig,  # noqa: F401
                                     HarvestConfig, LogConfig, PathLike, SessionConfig, TrainConfig)
from rl_agent.jobs.session_outputs import SessionOutputs, _fmt_s  # noqa: F401
from sim_twin import seeds


# ---------------------------------------------------------------------------------------------- session
class Session(SessionOutputs):
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
        self.learner: Optional[LearnerCore] = None

    # The learning state lives in the learner core (the same one the ROS learner node runs).
    @property
    def agent(self):
        return self.learner.agent if self.learner is not None else None

    @property
    def online(self):
        return self.learner.online

    @property
    def demo(self):
        return self.learner.demo

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
            from policy.config import checkpoint_device
            self._vla = load_vla(self.checkpoint, device=checkpoint_device(self.checkpoint))
        vla = self.vla = self._vla
        torch.manual_seed(cfg.seed)
        self.encoder = LatentEncoder(vla, torch_threads=cfg.env.torch_threads)
        self.env = LatentEnv(self.encoder, cfg.task, task_files=cfg.env.task_files, image_size=cfg.env.image_size,
                             render_detail=cfg.env.render_detail, max_episode_steps=cfg.env.max_episode_steps)
        self.sac_config = sac_config_for(vla, cfg.sac)
        self.initial_head = head_to_flax(vla.head)
        agent = SACAgent.create(cfg.seed, self.encoder.latent_shape, config=self.sac_config,
                                actor_head=self.initial_head)
        shape = agent.stored_latent_shape
        budget = None if cfg.train.memory_budget_gb is None else int(cfg.train.memory_budget_gb * 2**30)
        t = cfg.train
        self.learner = LearnerCore(
            agent, lambda cap: LatentReplayBuffer(cap, shape, memory_budget_bytes=budget),
            LearnerConfig(learning_starts=t.learning_starts, max_updates_per_transition=t.updates_per_step,
                          online_capacity=t.online_capacity, demo_capacity=t.demo_capacity,
                          checkpoint_keep=cfg.checkpoint.keep, seed=cfg.seed),
            out_dir=self.out, log=self.log)
        self.reward = make_reward_source(cfg.reward, classifier=self._classifier)
        self.iv = make_interventions(cfg.interventions, device=self._iv_device)
        if self.iv is not None:
            self.iv.open()
        self.runner = EpisodeRunner(self.env, self.reward, self.iv, self._prepare)
        self.harvester = None
        if cfg.harvest.enabled:
            self.harvester = Harvester(self.out / "harvest", self.encoder.cameras, self.env.image_size,
                                       cfg.harvest.sources)
        self.rng = np.random.default_rng(cfg.seed)  # exploration; the learner core samples batches with its own
        self.state = {"phase": "demos", "episodes": 0, "env_steps": 0, "updates": 0, "train_s": 0.0,
                      "demo_s": 0.0, "eval_s": 0.0, "successes": [], "returns": [], "lengths": [],
                      "interventions": [], "intervened_steps": [], "demo_stats": {}, "eval": {}, "resumes": 0,
                      "lost_transitions": [],
                      "update_s": 0.0, "env_s": 0.0, "encode_s": 0.0,
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
        self.state["updates"] = self.learner.updates
        path = self.learner.save_checkpoint(self.state)
        self._last_ckpt = (time.monotonic(), self.state["env_steps"])
        return path

    def _restore(self) -> bool:
        state = self.learner.restore()
        if state is None:
            return False
        path = Path(state.pop("path"))
        for key in ("inbox", "received", "rejected", "params_version", "update_credit", "sample_rng"):
            state.pop(key, None)  # the learner core's own (restored above)
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
            self.learner.add_episode(KIND_DEMOS, res.observations, res.actions, res.rewards, res.dones)
            self._harvest(res.trace, source, key)

        def on_failed(res):
            self.learner.add_episode(KIND_TRANSITIONS, res.observations, res.actions, res.rewards, res.dones)

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
        c, st = self.cfg, self.state
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
            self.learner.add_step(obs, a, verdict.reward, next_obs, verdict.success, intervened=took)
            t_u = time.perf_counter()
            owed = self.learner.train_owed() if c.train.updates_per_step > 0 else ()  # 0: acting only
            for info in owed:  # act, store, update: SERL's update-to-data ratio
                for k, v in info.items():
                    ep_info.setdefault(k, []).append(v)
            st["updates"] = self.learner.updates
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
                                      agent_policy(lambda: self.agent, False, self.rng, c.train.exploration_beta,
                                                   self.env.max_episode_steps),
                                      on_reset=self.learner.start_episode, on_step=on_step, allow_interventions=True)
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
        from rl_agent.bridge import hand_back
        st = self.state
        st["eval"]["after"] = self._evaluate("after (RL agent, deterministic)",
                                             agent_policy(lambda: self.agent, True, self.rng))
        head_dir = self.out / "rl_head_ckpt"
        hand_back(self.vla, self.agent, head_dir, {"rl_task": self.cfg.task, "rl_episodes": st["episodes"],
                                                   "rl_updates": st["updates"],
                                                   "stage0_checkpoint": str(self.checkpoint)})
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


def run_session(cfg: SessionConfig, checkpoint: PathLike, out: PathLike, **kwargs) -> dict:
    """Run (or resume) one session; returns summary.json's content (harvest_dir, rl_head_ckpt, eval, ...)."""
    return Session(cfg, checkpoint, out, **kwargs).run()
