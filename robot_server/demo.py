"""`irevla scripted-demo`: the twin over ROS 2, a scripted task commanded through the robot server, and what happened.

Starts the simulated cell (robot node + camera node, `sim_bringup`) as a separate process, then drives the task
from this process through the ROS 2 interface only: state and object poses come in on topics (object poses from the
sim's ground-truth topic, as a mocap system would give them), contract actions go out on the action topic, the
robot node's safety layer applies them, and the twin's success predicate comes back on a topic.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="irevla scripted-demo", description=__doc__)
    ap.add_argument("--task", default="pick_red_block", help="an object-centric task (pick / place skill)")
    ap.add_argument("--episodes", type=int, default=2, help="episodes (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="scene seed (episode i uses seed + 1 + i)")
    ap.add_argument("--noise", type=float, default=0.0, help="expert action noise (default 0)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    check_task(args.task)  # before the re-exec into a network namespace

    from robot_server.isolation import ensure_local_ros
    ensure_local_ros()
    results = run_demo(args.task, args.episodes, args.seed, args.noise)
    ok = sum(r["success"] for r in results)
    print(f"\n{ok}/{len(results)} episodes succeeded over ROS 2 (task {args.task}).")
    return 0 if ok == len(results) else 1


def check_task(task: str, registry=None):
    """The registry's spec of `task`, if it is one this demo can drive over ROS (scene_expert.SKILLS_OVER_ROS);
    else UsageError."""
    from robot_server.usage import UsageError
    from sim_twin.tasks.registry import TaskRegistry
    from robot_server.scene_expert import SKILLS_OVER_ROS
    spec = (registry or TaskRegistry.load()).get(task)  # RegistryError (a user error) for an unknown task
    if spec.skill not in SKILLS_OVER_ROS:
        raise UsageError(f"scripted-demo drives {', '.join(SKILLS_OVER_ROS)} tasks over ROS; {task!r} is {spec.skill}")
    return spec


def run_demo(task: str, episodes: int, seed: int, noise: float, log=print) -> list[dict]:
    import rclpy
    from robot_server.ros_main import SteadyMultiThreadedExecutor

    from robot_server.client import RobotClient
    from robot_server.contract import DEFAULT_CONTRACT
    from robot_server.scene_expert import SceneExpert
    from sim_twin.tasks.registry import TaskRegistry

    registry = TaskRegistry.load()
    check_task(task, registry)
    log(f"[demo] ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')} discovery={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')}"
        f" netns={os.environ.get('IREVLA_NETNS', 'no')}")
    log(f"[demo] starting the simulated cell: robot node + camera node (task {task}, seed {seed})")
    sim = subprocess.Popen([sys.executable, "-m", "robot_server.sim_bringup", "--ros-args", "-p", f"task:={task}",
                            "-p", f"seed:={seed}", "-p", "camera_rate:=10.0", "--log-level", "warn"])
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("irevla_demo", context=ctx)
    client = RobotClient(node, cameras=("front", "wrist"))
    executor = SteadyMultiThreadedExecutor(context=ctx)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    results = []
    try:
        t0 = time.monotonic()
        if not client.wait_ready(timeout_s=60.0, need_scene=True):
            raise SystemExit("[demo] the simulated cell did not come up within 60 s (no state / images / scene)")
        log(f"[demo] cell is up after {time.monotonic() - t0:.1f} s: state, scene and both cameras streaming")
        expert = SceneExpert(client)
        for ep in range(episodes):
            expert.before_reset()
            ok, msg = client.call("reset", timeout_s=30.0)
            if not ok:
                raise SystemExit(f"[demo] reset failed: {msg}")
            results.append(_episode(client, expert, DEFAULT_CONTRACT, seed + 1 + ep, noise, log))
        counts = dict(client.image_counts)
        status = json.loads(client.status_json) if client.status_json else {}
        elapsed = time.monotonic() - t0
        log(f"[demo] images received: " + ", ".join(f"{c} {n} ({n / elapsed:.1f}/s)" for c, n in counts.items()))
        counters = status.get("counters", {})
        log(f"[demo] safety layer: accepted {counters.get('accepted', '?')}, rejected {counters.get('rejected', '?')}"
            f", clamped {counters.get('clamped', '?')}; e-stop {status.get('estop')}")
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(timeout=10)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
    return results


def _episode(client, expert, contract, seed, noise, log) -> dict:
    snap = expert.start(seed, noise)
    task = snap.task
    log(f"[demo] episode seed {seed}: task {task.name} ({task.category}), instruction: {snap.instruction!r}")
    period = contract.dt
    t_start = next_tick = time.monotonic()
    success, steps = False, 0
    for steps in range(1, task.max_steps + 1):
        snap = expert.snapshot()
        client.send_action(expert.action(snap))
        if steps % 10 == 0:
            p = snap.state().ee_pos
            log(f"[demo]   step {steps:3d}  tcp ({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f})  gripper "
                f"{snap.state().gripper_width * 100:.1f} cm  phase {getattr(expert.expert, 'phase', '-')}")
        next_tick += period
        time.sleep(max(0.0, next_tick - time.monotonic()))
        if client.success:
            success = True
            break
    dt = time.monotonic() - t_start
    log(f"[demo] episode seed {seed}: {'SUCCESS' if success else 'FAILURE'} after {steps} steps ({dt:.1f} s)")
    return {"seed": seed, "success": success, "steps": steps, "seconds": dt}


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("scripted-demo", main))  # user errors as one line, as under `irevla`
