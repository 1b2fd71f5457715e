"""`irevla collect`: headless scripted collection with the twin's experts, in parallel processes.

    irevla collect --out data/scripted --episodes-per-task 50 [--tasks pick_red_block press_button] [--workers 2]

Each worker process runs robot_server.gym_env.TwinEnv (the robot server's safety layer, stepped in simulated
time) and its privileged scripted expert (`expert_action`) for one episode at a time and returns the steps:
the observation's images, the twin's state, the executed action. The parent process alone writes them with
EpisodeRecorder (one recorder per directory), in the same format as teleop episodes; success is the twin's
predicate. Only successful episodes are recorded unless --keep-failures; failed seeds are retried (up to
--max-attempts per wanted episode). Step stamps are synthetic: the episode's wall start + step / 10 Hz.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from typing import Optional

import numpy as np

from robot_server.rollout import rollout

CATEGORY = "scripted"
_ENVS: dict = {}  # per worker process: (task, cameras, size) -> TwinEnv


def _state(twin) -> dict:
    s = twin.state()
    return {"q": np.array(s.q), "dq": np.array(s.dq), "ee_pos": np.array(s.ee_pos), "ee_quat": np.array(s.ee_quat),
            "gripper_width": float(s.gripper_width)}


def run_episode(task: str, seed: int, cameras: tuple[str, ...], size: int, noise: float, keep_failures: bool,
                clutter: int = 0, task_files: tuple[str, ...] = ()):
    """One expert episode in this (worker) process. Steps are returned only if they will be recorded."""
    from robot_server.gym_env import make_env
    key = (task, cameras, size, clutter, task_files)
    env = _ENVS.get(key)
    if env is None:
        env = _ENVS[key] = make_env(task, cameras, size, task_files=task_files, clutter=clutter)
    steps = []
    r = rollout(env, lambda obs, instruction: env.expert_action(noise), seed,
                on_step=lambda obs, action: steps.append((obs["images"], _state(env.twin), action)))
    return {"task": task, "seed": seed, "instruction": r.instruction, "task_category": r.category,
            "clutter": list(env.twin.clutter_objects),
            "success": r.success, "n_steps": len(steps), "sim_s": r.seconds,
            "steps": steps if (r.success or keep_failures) else None}


def settings_mismatch(entries: list[dict], cameras, image_size: int, noise: float, clutter: int,
                      task_definitions: dict[str, str]) -> list[str]:
    """How the scripted episodes in `entries` were recorded differently from these settings (cameras and their
    size, expert noise, clutter, each task's definition): one line per difference, [] when they agree. A scripted
    set holds one setting; what records no field (older sets) is not compared on it."""
    out = set()
    for e in entries:
        if e.get("category") != CATEGORY:
            continue
        x = e.get("extra") or {}
        cams = [(c.get("name"), c.get("width"), c.get("height")) for c in e.get("cameras") or []]
        if cams and cams != [(c, image_size, image_size) for c in cameras]:
            out.add(f"cameras {cams} (wanted {list(cameras)} at {image_size} px)")
        if "expert_noise" in x and float(x["expert_noise"]) != float(noise):
            out.add(f"expert noise {x['expert_noise']} (wanted {noise})")
        if int(x.get("clutter") or 0) != int(clutter):
            out.add(f"clutter {x.get('clutter') or 0} (wanted {clutter})")
        fp = x.get("task_definition")
        if fp is not None and e.get("task") in task_definitions and fp != task_definitions[e["task"]]:
            out.add(f"task {e['task']} as defined then (its definition has changed since)")
    return sorted(out)


def task_definitions(tasks, task_files=()) -> dict[str, str]:
    """Each task's fingerprint (sim_twin.tasks.registry.TaskRegistry.fingerprint): its whole definition now."""
    from sim_twin.tasks.registry import TaskRegistry
    reg = TaskRegistry.load(extra_files=task_files)
    return {t: reg.fingerprint([t]) for t in tasks}


def resume_counts(entries: list[dict], tasks: list[str], first_seed: int) -> tuple[dict, dict]:
    """(successes, attempts) per task from a dataset's index: a rerun after a kill continues where it stopped,
    with the next unused seed of each task (seed = first_seed + 100000 k + attempt), never repeating a scene."""
    got = {t: 0 for t in tasks}
    attempts = {t: 0 for t in tasks}
    for e in entries:
        t = e.get("task")
        if t not in got or e.get("category") != CATEGORY:
            continue
        got[t] += bool(e.get("success"))
        seed = (e.get("extra") or {}).get("seed")
        if isinstance(seed, int):
            k = tasks.index(t)
            attempts[t] = max(attempts[t], seed - (first_seed + 100000 * k) + 1)
    return got, attempts


def all_tasks(task_files: tuple[str, ...] = ()) -> list[str]:
    """Every task of the registry; with task files, the expert tasks those files define (e.g. metaworld)."""
    from sim_twin.tasks.registry import TaskRegistry
    if not task_files:
        return list(TaskRegistry.load().tasks)
    reg = TaskRegistry.load(extra_files=task_files, include_default=False)
    return [t.name for t in reg.tasks.values() if t.category == "expert"]


def _cell_of(task: str, task_files: tuple[str, ...]) -> str:
    from sim_twin.tasks.registry import TaskRegistry
    return "metaworld" if TaskRegistry.load(extra_files=task_files).get(task).skill == "metaworld" else "sim_twin"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="irevla collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="dataset directory (created; appended to if it exists)")
    ap.add_argument("--episodes-per-task", type=int, required=True, help="episodes wanted per task")
    ap.add_argument("--tasks", nargs="+", default=None, help="task names (default: every task in the registry)")
    ap.add_argument("--workers", type=int, default=2, help="simulation processes (default 2)")
    ap.add_argument("--keep-failures", action="store_true", help="also record failed episodes (as failures)")
    ap.add_argument("--max-attempts", type=float, default=3.0,
                    help="give up on a task after this many attempts per wanted episode (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="first scene seed (task k, attempt i: seed + 100000 k + i)")
    ap.add_argument("--cameras", nargs="+", default=["front", "wrist"])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--noise", type=float, default=0.0, help="expert action noise (default 0)")
    ap.add_argument("--clutter", type=int, default=0,
                    help="training-only clutter objects drawn into each scene (the registry's clutter pool; default 0)")
    ap.add_argument("--task-file", action="append", default=[],
                    help="extra task file (a path, or a shipped name: metaworld); without --tasks: its expert tasks")
    ap.add_argument("--operator", default="scripted_expert")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    args = ap.parse_args(argv)
    if args.episodes_per_task < 1 or args.workers < 1:
        ap.error("--episodes-per-task and --workers must be >= 1")
    if args.clutter < 0:
        ap.error("--clutter must be >= 0")
    from sim_twin import seeds
    task_files = tuple(args.task_file)
    try:
        n_tasks = len(args.tasks or all_tasks(task_files))
    except Exception as e:  # noqa: BLE001 - a task file that does not load
        ap.error(f"--task-file: {e}")
    try:  # every seed this run may use must lie in the collection block (sim_twin/seeds.py)
        seeds.seed("collection", args.seed)
        seeds.seed("collection", args.seed + 100000 * (n_tasks - 1) + 99999)
    except seeds.SeedRangeError as e:
        ap.error(f"--seed {args.seed} with {n_tasks} task(s): {e}")
    if args.max_attempts * args.episodes_per_task > 100000:
        ap.error("--max-attempts x --episodes-per-task must stay <= 100000 (the seeds of one task)")

    from teleop.episode_format import CameraConfig
    from teleop.recorder import EpisodeRecorder, RecorderConfig, RecorderError

    tasks = args.tasks or all_tasks(task_files)
    from sim_twin.tasks.registry import TaskRegistry
    known = set(TaskRegistry.load(extra_files=task_files).tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        print(f"irevla collect: unknown task(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    cameras = tuple(args.cameras)
    cfg = RecorderConfig(root=args.out, cameras=tuple(CameraConfig(c, width=args.image_size,
                                                                   height=args.image_size) for c in cameras),
                         target_episodes=args.episodes_per_task * len(tasks),
                         task_targets={t: args.episodes_per_task for t in tasks},
                         robot={"backend": _cell_of(tasks[0], task_files), "collector": "irevla collect"})
    try:
        rec = EpisodeRecorder(cfg)
    except (RecorderError, OSError, ValueError) as e:
        print(f"irevla collect: cannot open {args.out}: {e}", file=sys.stderr)
        return 2

    definitions = task_definitions(tasks, task_files)
    differ = settings_mismatch(rec.episodes, cameras, args.image_size, args.noise, args.clutter, definitions)
    if differ:
        print(f"irevla collect: {args.out} holds scripted episodes recorded with other settings: {'; '.join(differ)}."
              " A set has one setting: use another --out", file=sys.stderr)
        rec.close()
        return 2
    wanted = {t: args.episodes_per_task for t in tasks}
    got, attempts = resume_counts(rec.episodes, tasks, args.seed)
    if any(got.values()):
        print(f"irevla collect: resuming {args.out}: {sum(got.values())} successful episode(s) already recorded "
              f"for these tasks", file=sys.stderr)
    in_flight = {t: 0 for t in tasks}
    max_attempts = {t: int(np.ceil(args.max_attempts * wanted[t])) for t in tasks}
    failures: dict[str, int] = {t: 0 for t in tasks}
    total = sum(wanted.values())
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="ep", desc="collect", dynamic_ncols=True)
    t_start = time.perf_counter()
    bytes_written = 0
    recorded = 0

    def next_job():
        for k, t in enumerate(tasks):
            if got[t] + in_flight[t] < wanted[t] and attempts[t] < max_attempts[t]:
                seed = seeds.seed("collection", args.seed + 100000 * k + attempts[t])
                attempts[t] += 1
                in_flight[t] += 1
                return t, seed
        return None

    ctx = get_context("spawn")  # MuJoCo/EGL contexts do not survive fork
    try:
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=ctx) as pool:
            pending = set()

            def fill():
                while len(pending) < args.workers:
                    job = next_job()
                    if job is None:
                        return
                    pending.add(pool.submit(run_episode, job[0], job[1], cameras, args.image_size, args.noise,
                                            args.keep_failures, args.clutter, task_files))

            fill()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    pending.discard(fut)
                    r = fut.result()
                    t = r["task"]
                    in_flight[t] -= 1
                    if r["success"]:
                        got[t] += 1
                    else:
                        failures[t] += 1
                    if r["steps"] is not None:
                        rec.start(task=t, category=CATEGORY, instruction=r["instruction"], operator=args.operator,
                                  extra={"seed": r["seed"], "task_category": r["task_category"],
                                         "expert_noise": args.noise, "clutter": args.clutter,
                                         "clutter_objects": r["clutter"], "task_definition": definitions[t]})
                        t0_ns = time.time_ns()
                        for i, (images, state, action) in enumerate(r["steps"]):
                            rec.add_step(images, state, action, t0_ns + i * 100_000_000)
                        entry = rec.stop(success=r["success"])
                        recorded += 1
                        bytes_written += int(entry.get("bytes", 0))
                    if bar is not None:
                        if r["success"]:
                            bar.update(1)
                        bar.set_postfix_str(", ".join(f"{x} {got[x]}/{wanted[x]}" for x in tasks)[-80:])
                fill()
    except KeyboardInterrupt:
        print("irevla collect: interrupted; the episode in progress is discarded, finished ones are kept",
              file=sys.stderr)
        rec.close()
        return 130
    finally:
        if bar is not None:
            bar.close()
    prog = rec.close()
    wall = time.perf_counter() - t_start
    n_ok = sum(got.values())
    print(f"collected {n_ok}/{total} successful episodes ({sum(failures.values())} failed attempts) in "
          f"{wall:.1f} s with {args.workers} worker(s): {60.0 * n_ok / max(wall, 1e-9):.2f} episodes/minute")
    if recorded:
        print(f"{recorded} episode file(s), {bytes_written / recorded / 1e6:.2f} MB per episode on average")
    print(f"dataset {args.out}: {prog}")
    # Twin scenes are drawn from their seeds: the task object's position becomes a privileged training label
    # (teleop/object_labels.py; the towers model's auxiliary object loss).
    if _cell_of(tasks[0], task_files) == "sim_twin":  # MetaWorld scenes are not twin scenes: no labels there
        from teleop.object_labels import LABELS_FILE, label_dataset
        counts = label_dataset(args.out, workers=1, progress=False)
        print(f"object labels: {counts['labelled']} new in {Path(args.out) / LABELS_FILE}")
    short = [t for t in tasks if got[t] < wanted[t]]
    if short:
        print(f"irevla collect: gave up on {short} after {[attempts[t] for t in short]} attempts "
              f"(--max-attempts {args.max_attempts:g})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
