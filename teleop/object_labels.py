"""Privileged object labels for twin datasets: where the instructed object was, for an auxiliary training loss.

    irevla dataset label-objects DATA [--workers 2]

A twin episode's scene is drawn from its seed alone (sim_twin/seeds.py), so the position of the task's object at the
first step can be recovered after the fact by resetting the twin with the recorded task and seed, with no stepping
and no rendering (~25 ms per episode). Each line of `<dataset>/object_labels.jsonl` is

    {"episode": NAME, "task": TASK, "seed": SEED, "object": OBJECT, "xyz": [x, y, z], "until_step": T,
     "others": [{"object": DISTRACTOR, "xyz": [...], "instruction": INSTRUCTION}, ...]}

with T the first step whose action closes the gripper: before it the object has not been grasped, so the label is
its position at every step before T (what training uses); after it the object moves with the hand and no label is
given. `others` are the scene's other objects with the episode's instruction re-worded to name them ("grasp the red
block" -> "grasp the green cube"): counterfactual rows for the readout alone (no action label), so that the latents
must follow the named object, not the scene's composition (each expert scene has one target). Scenes collected
with training-only clutter (`irevla collect --clutter K`) replay it from the same seed, and its objects join `others`. Episodes without an object (button, drawer, cable), without a seed, or not recorded on the twin get no line:
the auxiliary loss is masked there. A real cell's teleop episodes have no such labels.

Grasp labels need no twin (`label_grasps`, `irevla dataset label-grasps DATA`; iterate runs it on every harvested
set with `stage2_grasp_labels: true`): in a successful pick or place the gripper closed on the task's object, so the
hand's own position at the step whose action closes the gripper is where the object was (the scripted experts close
within 1.5 mm of the object's centre on the twin's picks). Stage 2 then trains the readout (through the LoRA) on the
new object of an RL task, whose position the latents carry (a ridge probe: 2.0 cm) but the readout, trained on other
objects, misplaces by 4 cm (measured: the readout follows, the pick does not; docs/results/rl_pick_stage1.md). They
work from recorded robot states alone, so real-cell data (teleop or harvested) gets them too. An episode whose
gripper closed more than once is skipped: an earlier attempt may have moved the object.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

LABELS_FILE = "object_labels.jsonl"
PathLike = Union[str, Path]


class ObjectLabelError(ValueError):
    """A labels file that cannot be read (corrupt line, missing field)."""


def read_object_labels(root: PathLike) -> dict[str, dict]:
    """episode name -> label; {} when the dataset has no labels file."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            e = json.loads(line)
            xyz = np.asarray(e["xyz"], np.float32)
            if xyz.shape != (3,) or not np.isfinite(xyz).all() or int(e["until_step"]) < 0:
                raise ValueError("xyz must be 3 finite numbers and until_step >= 0")
            others = []
            for o in e.get("others") or []:
                oxyz = np.asarray(o["xyz"], np.float32)
                if oxyz.shape != (3,) or not np.isfinite(oxyz).all() or not str(o["instruction"]).strip():
                    raise ValueError("others: each needs 3 finite numbers and a non-empty instruction")
                others.append((str(o["instruction"]), oxyz))
            out[str(e["episode"])] = {"task": e.get("task"), "object": e.get("object"), "xyz": xyz,
                                      "until_step": int(e["until_step"]), "others": others}
        except (ValueError, KeyError, TypeError) as exc:
            raise ObjectLabelError(f"{path}:{n}: not an object label ({exc}); delete the file and rerun "
                                   "`irevla dataset label-objects`") from exc
    return out


def first_close_step(actions: np.ndarray) -> int:
    """Index of the first action that closes the gripper (contract: +1 closes), or the episode length."""
    closing = np.flatnonzero(np.asarray(actions)[:, 6] > 0)
    return int(closing[0]) if len(closing) else len(actions)


def reword(instruction: str, nouns: tuple, other_nouns: tuple, pick: int) -> Optional[str]:
    """The instruction with the object's noun (longest match first) replaced by one of another object's nouns."""
    for noun in sorted(nouns, key=len, reverse=True):
        if noun and noun in instruction:
            return instruction.replace(noun, other_nouns[pick % len(other_nouns)], 1)
    return None


GRASP_SKILLS = ("pick", "place")  # skills whose task object is what the gripper closes on
EE_XYZ = ("ee_x", "ee_y", "ee_z")


def grasp_label(actions: np.ndarray, ee_xyz: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
    """(hand position when the gripper closed, that step) for an episode whose gripper closed exactly once; None
    when it never closed or closed again after opening (the object may have moved between the attempts)."""
    t = first_close_step(actions)
    closing = (np.asarray(actions)[t:, 6] > 0).astype(int)
    if not len(closing) or (np.diff(closing) > 0).any():  # never closed, or closed again after opening
        return None
    xyz = np.asarray(ee_xyz, np.float64)[t]
    return (xyz, t) if np.isfinite(xyz).all() else None


def label_grasps(root: PathLike, task_files: tuple = ()) -> dict:
    """Write (or extend) `<root>/object_labels.jsonl` with grasp labels for the successful pick / place episodes
    that have no label yet, from their recorded actions and hand positions. Returns counts."""
    from sim_twin.tasks.registry import TaskRegistry
    from teleop.dataset import EpisodeReadError, read_episode, selected_entries
    root = Path(root)
    have = read_object_labels(root)
    reg = TaskRegistry.load(extra_files=list(task_files))
    rows, counts = [], {"labelled": 0, "already": 0, "not_a_grasp_task": 0, "not_closed_once": 0, "unreadable": 0}
    for e in selected_entries(root):
        task = reg.tasks.get(e.get("task"))
        if e["name"] in have:
            counts["already"] += 1
            continue
        if task is None or task.skill not in GRASP_SKILLS or not task.objects:
            counts["not_a_grasp_task"] += 1
            continue
        try:
            ep = read_episode(e["path"], images=False)
            names = list(ep.meta.get("state_names") or [])
            cols = [names.index(n) for n in EE_XYZ]
        except (EpisodeReadError, ValueError):
            counts["unreadable"] += 1
            continue
        found = grasp_label(ep.action, ep.state[:, cols])
        if found is None:
            counts["not_closed_once"] += 1
            continue
        xyz, until = found
        seed = (e.get("extra") or {}).get("seed")
        rows.append({"episode": e["name"], "task": task.name, "seed": seed if isinstance(seed, int) else None,
                     "object": task.objects[0], "xyz": [round(float(v), 5) for v in xyz], "until_step": until,
                     "others": [], "source": "grasp"})
    _append_labels(root, rows)
    counts["labelled"] = len(rows)
    return counts


def _append_labels(root: Path, rows: list[dict]) -> None:
    """The labels file with `rows` added, replaced atomically: a kill leaves the old file whole."""
    old_lines = (root / LABELS_FILE).read_text().splitlines() if (root / LABELS_FILE).is_file() else []
    fd, tmp = tempfile.mkstemp(prefix=LABELS_FILE + ".", dir=root)
    with os.fdopen(fd, "w") as f:
        for line in old_lines:
            if line.strip():
                f.write(line + "\n")
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, root / LABELS_FILE)


def _label_one(job: tuple) -> Optional[dict]:
    name, task, seed, until, instruction, clutter = job
    from sim_twin.twin import Twin, TwinConfig
    twin = _TWIN.get(clutter)
    if twin is None:
        twin = _TWIN[clutter] = Twin(TwinConfig(clutter=clutter))
    twin.reset(task, seed=seed)
    objects = tuple(twin.task.objects)
    if not objects:
        return None
    objs = twin.registry.objects

    def pos(o):
        return [round(float(v), 5) for v in twin.object_pos(o)]

    others = []
    for j, o in enumerate(tuple(twin.task.distractors) + twin.clutter_objects):
        text = reword(instruction, objs[objects[0]].nouns, objs[o].nouns, seed + j)
        if text:
            others.append({"object": o, "xyz": pos(o), "instruction": text})
    return {"episode": name, "task": task, "seed": seed, "object": objects[0], "xyz": pos(objects[0]),
            "until_step": until, "others": others}


_TWIN: dict = {}


def label_dataset(root: PathLike, workers: int = 1, progress: bool = True) -> dict:
    """Write (or extend) `<root>/object_labels.jsonl` for the dataset's twin episodes. Returns counts."""
    from teleop.dataset import EpisodeReadError, read_episode, selected_entries
    root = Path(root)
    have = read_object_labels(root)
    jobs, skipped = [], 0
    for e in selected_entries(root, include_failed=True):
        seed = (e.get("extra") or {}).get("seed")
        if e["name"] in have:
            continue
        if (e.get("robot") or {}).get("backend") != "sim_twin" or not isinstance(seed, int):
            skipped += 1
            continue
        try:
            actions = read_episode(e["path"], images=False).action  # no image decoding: ~10 ms per episode
        except EpisodeReadError:
            skipped += 1
            continue
        clutter = int((e.get("extra") or {}).get("clutter") or 0)  # the scene's training-only clutter, replayed
        jobs.append((e["name"], e["task"], seed, first_close_step(actions), e.get("instruction", ""), clutter))
    rows = []
    if jobs:
        from tqdm import tqdm
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor
            with ProcessPoolExecutor(workers) as pool:
                it = pool.map(_label_one, jobs, chunksize=32)
                rows = list(tqdm(it, total=len(jobs), desc="object labels", unit="ep", disable=not progress))
        else:
            rows = [_label_one(j) for j in tqdm(jobs, desc="object labels", unit="ep", disable=not progress)]
    new = [r for r in rows if r is not None]
    _append_labels(root, new)
    return {"labelled": len(new), "without_object": len(rows) - len(new), "already": len(have),
            "not_twin": skipped}
