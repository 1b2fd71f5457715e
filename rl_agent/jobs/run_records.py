"""What an `irevla iterate` run directory remembers, and what each of its results depends on: state.json (RunState)
and the keys of its stages and evaluations. A finished stage or evaluation is reused only when its key matches
(same checkpoint content, task definitions, settings, seeds); anything else is re-evaluated or refused, and said.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


class RunState:
    """state.json of a run: completed stages and their outputs, written atomically after every stage."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "state.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str):
        return self.data.get(key)

    def set(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def _digest(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def stage0_key(vla_config_text: str, stage0: dict, expert: Path) -> dict:
    """What a trained stage 0 depends on: the VLA config file, the training overrides, the expert set."""
    return {"vla_config": _digest(vla_config_text), "stage0": _digest(stage0), "expert": str(expert)}


def task_key(task: str, task_files: list, start: str, variant: str, rl: dict, stage2: dict, expert: Path) -> dict:
    """What a curriculum task's result depends on: the model it starts from (content), the variant, the task's
    whole definition, the RL settings (session or PPO), the stage-2 / replay settings and the expert set."""
    from sim_twin.tasks.registry import TaskRegistry
    reg = TaskRegistry.load(extra_files=task_files)
    return {"start": checkpoint_identity(start), "variant": variant, "task_definition": reg.fingerprint([task]),
            "rl": _digest(rl), "stage2": _digest(stage2), "expert": str(expert)}


def check_same_settings(state: RunState, name: str, want: dict, what: str, say=print) -> None:
    """A stage this run directory finished (or began) with other settings is never reused or resumed silently: the
    run stops and names what changed. (A run from before these records is reused, and says so.)"""
    from robot_server.usage import UsageError
    have = state.get(name)
    if have is None:
        return
    if have == "unrecorded":
        say(f"{what}: no settings recorded by the run that made it; reused as it is")
        return
    changed = sorted(k for k in want if have.get(k) != want[k])
    if changed:
        raise UsageError(f"{state.path.parent}: {what} was made with other settings (changed: {', '.join(changed)});"
                         f" use another --out for the new settings (this run directory resumes only its own)")


def checkpoint_identity(ckpt: str) -> str:
    """Content identity of a VLA checkpoint: the weight hashes VLA.save records (vlm_id covers the backbone and any
    LoRA, head_id the head) plus the config; the same for a copy of it anywhere on disk."""
    d = Path(ckpt)
    meta = json.loads((d / "meta.json").read_text())
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{meta.get('vlm_id')}:{meta.get('head_id')}:".encode())
    h.update((d / "vla_config.yaml").read_bytes())
    return h.hexdigest()


def evaluation_key(ckpt: str, ev) -> dict:
    """What an evaluation's numbers depend on: the checkpoint's content, the tasks (their whole definitions from the
    registry and task files: variations, objects, instructions), the seeds, the render size and the step limit."""
    from sim_twin.tasks.registry import TaskRegistry
    reg = TaskRegistry.load(extra_files=ev.task_files)
    from policy.evaluate import select_tasks
    tasks = [t for t, _ in select_tasks(ev)]
    instructions = {t: list(reg.tasks[t].phrasings(reg)) for t in tasks}
    return {"checkpoint": checkpoint_identity(ckpt), "tasks": tasks, "seeds": list(ev.seeds),
            "instructions": hashlib.blake2b(json.dumps(instructions, sort_keys=True).encode(),
                                            digest_size=8).hexdigest(),
            "task_definitions": reg.fingerprint(tasks),
            "image_size": ev.image_size, "max_steps": ev.max_steps, "render_detail": ev.render_detail}
