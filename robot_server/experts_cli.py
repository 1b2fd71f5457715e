"""`irevla experts`: success rate of every task's scripted expert over seeded episodes, through the same
safety-layer path as the robot node (the Gymnasium env), in parallel processes."""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor


def run_task(task: str, seeds: list[int], noise: float, task_files: tuple[str, ...] = ()) -> dict:
    from robot_server.gym_env import make_env
    from robot_server.rollout import rollout
    env = make_env(task, render_images=False, task_files=task_files)
    ok, steps, t0 = 0, 0, time.perf_counter()
    lengths = []
    for seed in seeds:
        r = rollout(env, lambda obs, instruction: env.expert_action(noise), seed)
        ok += int(r.success)
        steps += r.steps
        lengths.append(r.steps)
    env.close()
    return {"task": task, "category": env.twin.task.category, "success": ok, "episodes": len(seeds),
            "mean_len": sum(lengths) / len(lengths), "steps_per_s": steps / (time.perf_counter() - t0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="irevla experts", description=__doc__)
    ap.add_argument("--episodes", type=int, default=100, help="episodes per task")
    ap.add_argument("--seed", type=int, default=0, help="first scene seed (episode i: seed + i)")
    ap.add_argument("--noise", type=float, default=0.1, help="expert noise, as a fraction of the step limit")
    ap.add_argument("--tasks", nargs="*", help="task names (default: all)")
    ap.add_argument("--task-file", action="append", default=[], help="extra task YAML")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--min-success", type=float, default=0.9, help="exit 1 if any task is below this")
    from robot_server.usage import UsageError, add_hidden_alias
    add_hidden_alias(ap, "--seed0", "--seed", dest="seed", type=int)  # the spelling before all commands shared --seed
    args = ap.parse_args(argv)
    if args.episodes < 1 or args.workers < 1:
        ap.error("--episodes and --workers must be >= 1")
    from sim_twin.tasks.registry import TaskRegistry
    registry = TaskRegistry.load(args.task_file)
    shipped_only = TaskRegistry.load(args.task_file, include_default=False) if args.task_file else registry
    tasks = args.tasks or list(shipped_only.tasks)  # with --task-file: that file's tasks
    unknown = [t for t in tasks if t not in registry.tasks]
    if unknown:  # here, not as a traceback from a worker process
        raise UsageError(f"unknown task(s) {unknown}; known: {sorted(registry.tasks)}")
    seeds = list(range(args.seed, args.seed + args.episodes))
    print(f"scripted experts: {len(tasks)} tasks x {args.episodes} episodes, noise {args.noise}, "
          f"{args.workers} workers", flush=True)
    results = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_task, t, seeds, args.noise, tuple(args.task_file)) for t in tasks]
        for f in futures:
            r = f.result()
            results.append(r)
            print(f"  {r['task']:<28} {r['category']:<7} {r['success']:>4}/{r['episodes']:<4} "
                  f"mean length {r['mean_len']:5.1f} steps  {r['steps_per_s']:6.1f} steps/s", flush=True)
    worst = min(r["success"] / r["episodes"] for r in results)
    total = sum(r["success"] for r in results) / sum(r["episodes"] for r in results)
    print(f"overall {total:.3f}, worst task {worst:.3f} (required {args.min_success})")
    return 0 if worst >= args.min_success else 1


if __name__ == "__main__":
    from robot_server.cli import run_command
    sys.exit(run_command("experts", main))  # user errors as one line, as under `irevla`
