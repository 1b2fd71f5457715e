"""Stage 1 of `irevla iterate` through the ROS 2 rl_session graph instead of in-process (`stage1: ros`): the twin
cell, the policy server publishing latents, the actor (robot mode, the twin's success predicate, automatic resets)
and the learner run as processes over DDS for the session's minutes; then the same result as the in-process
session: <out>/summary.json with the harvest and the RL head handed back into a VLA checkpoint.

Resumable: a finished session (summary.json) is not run again; an interrupted one reruns the same graph, whose
learner resumes from its checkpoint and whose actor goes on from its episode log.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from rl_agent.checkpoints import atomic_write_text
from rl_agent.session_config import SessionConfig


def graph_command(ckpt: str, cfg: SessionConfig, instruction: str, out: Path, rl_config: str = "") -> list[str]:
    """The rl_session graph's command line for a session config (the settings both paths share)."""
    settings = {"checkpoint": ckpt, "task": cfg.task, "instruction": instruction, "reward": "twin",
                "auto_reset": "true", "console": "off", "seed": cfg.seed,
                "minutes": cfg.minutes if cfg.minutes is not None else 5.0, "max_episodes": cfg.max_episodes or 0,
                "demos": cfg.demos.count, "demo_source": cfg.demos.source,
                "demo_attempts": cfg.demos.max_attempts or 0,
                "learning_starts": cfg.train.learning_starts, "utd": float(cfg.train.updates_per_step),
                "exploration_beta": float(cfg.train.exploration_beta),
                "max_episode_steps": cfg.env.max_episode_steps or 100, "rl_config": rl_config,
                "learner_out": out / "learner", "actor_out": out / "actor"}
    return [sys.executable, "-m", "robot_server.launch_graph", "rl_session",
            *(f"{k}:={v}" for k, v in settings.items())]


def run_ros_session(ckpt: str, cfg: SessionConfig, out: Path, log: Callable[[str], None] = print,
                    timeout_s: float | None = None) -> dict:
    """Run (or resume) one stage-1 session over ROS 2 on the twin with the in-process session's config; returns
    summary.json's content. Its `sac:` section goes to both nodes (the two paths learn with the same agent),
    `demos` as in-process (the scripted expert runs from the scene topic), `train.updates_per_step` caps the
    learner's updates per transition, `minutes` / `max_episodes` bound the RL episodes."""
    from sim_twin.tasks.registry import TaskRegistry
    out = Path(out)
    done = out / "summary.json"
    if done.is_file():
        log(f"{out}: this ROS session is complete (summary.json); nothing to do")
        return json.loads(done.read_text())
    task, minutes = cfg.task, cfg.minutes if cfg.minutes is not None else 5.0
    spec = TaskRegistry.load().get(task)  # the twin's own tasks: the graph's cell is sim_bringup
    instruction = spec.phrasings(TaskRegistry.load())[0]
    out.mkdir(parents=True, exist_ok=True)
    rl_config = ""
    if cfg.sac:
        import yaml
        rl_config = str(out / "rl_config.yaml")
        atomic_write_text(Path(rl_config), yaml.safe_dump({"session": {"sac": dict(cfg.sac)}}))
    cmd = graph_command(ckpt, cfg, instruction, out, rl_config)
    log(f"stage 1 over ROS 2: {' '.join(cmd[2:4])} ... ({minutes:g} min; log {out / 'graph.log'})")
    env = {k: v for k, v in os.environ.items() if k != "IREVLA_JOINED"}
    with open(out / "graph.log", "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        limit = timeout_s if timeout_s is not None else 60.0 * minutes + 600.0  # start-up, demos, checkpoints
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=60)
        except BaseException:  # Ctrl-C of iterate: stop the graph cleanly (the learner checkpoints)
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
            raise
    actor = _read(out / "actor" / "summary.json")
    learner = _read(out / "learner" / "summary.json")
    head = out / "learner" / "rl_head_ckpt"
    if rc != 0 or actor is None or learner is None:
        tail = (out / "graph.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the rl_session graph ended with exit code {rc} without its summaries:\n{tail}")
    summary = {"task": task, "via": "ros2 rl_session graph", "episodes": actor["episodes"],
               "successes": actor["successes"], "success_last20": actor["success_last20"],
               "env_steps": actor["env_steps"], "updates": learner["updates"],
               "harvest_dir": actor.get("harvest_dir"), "rl_head_ckpt": str(head) if head.is_dir() else None,
               "actor": str(out / "actor"), "learner": str(out / "learner"), "time": time.time()}
    atomic_write_text(done, json.dumps(summary, indent=1))
    return summary


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
