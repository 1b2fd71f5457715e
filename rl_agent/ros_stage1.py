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


def graph_command(ckpt: str, task: str, instruction: str, out: Path, minutes: float, demos: int,
                  learning_starts: int, max_episode_steps: int, rl_config: str = "",
                  demo_source: str = "vla", demo_attempts: int = 0, seed: int = 0, utd: float = 0.0,
                  max_episodes: int = 0) -> list[str]:
    return [sys.executable, "-m", "robot_server.launch_graph", "rl_session", f"checkpoint:={ckpt}", f"task:={task}",
            f"instruction:={instruction}", "reward:=twin", "auto_reset:=true", "console:=off", f"demos:={demos}",
            f"demo_source:={demo_source}", f"demo_attempts:={demo_attempts}", f"seed:={seed}", f"utd:={float(utd)}",
            f"max_episodes:={max_episodes}",
            f"minutes:={minutes}", f"learning_starts:={learning_starts}", f"max_episode_steps:={max_episode_steps}",
            f"rl_config:={rl_config}", f"learner_out:={out / 'learner'}", f"actor_out:={out / 'actor'}"]


def run_ros_session(ckpt: str, task: str, out: Path, minutes: float, demos: int = 0, learning_starts: int = 100,
                    max_episode_steps: int = 100, sac: dict | None = None, log: Callable[[str], None] = print,
                    timeout_s: float | None = None, demo_source: str = "vla", demo_attempts: int = 0,
                    seed: int = 0, utd: float = 0.0, max_episodes: int = 0) -> dict:
    """Run (or resume) one stage-1 session over ROS 2 on the twin; returns summary.json's content. `sac`: the
    SAC settings of the in-process session (its `sac:` section), handed to both nodes so that the two paths learn
    with the same agent; `demo_source` as the in-process session's (the scripted expert runs from the scene topic);
    `utd` caps the learner's updates per transition (the in-process session's train.updates_per_step)."""
    from sim_twin.tasks.registry import TaskRegistry
    out = Path(out)
    done = out / "summary.json"
    if done.is_file():
        log(f"{out}: this ROS session is complete (summary.json); nothing to do")
        return json.loads(done.read_text())
    spec = TaskRegistry.load().get(task)  # the twin's own tasks: the graph's cell is sim_bringup
    instruction = spec.phrasings(TaskRegistry.load())[0]
    out.mkdir(parents=True, exist_ok=True)
    rl_config = ""
    if sac:
        import yaml
        rl_config = str(out / "rl_config.yaml")
        atomic_write_text(Path(rl_config), yaml.safe_dump({"session": {"sac": dict(sac)}}))
    cmd = graph_command(ckpt, task, instruction, out, minutes, demos, learning_starts, max_episode_steps, rl_config,
                        demo_source, demo_attempts, seed, utd, max_episodes)
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
