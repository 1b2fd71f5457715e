"""Task registry: objects and tasks come from YAML, skills (scene fixtures, predicates, experts) from code.

Users extend the suite with their own YAML files (new objects, colours, phrasings, tasks built on an existing skill)
without touching code: `TaskRegistry.load(extra_files=[...])`; later files override earlier entries by name.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import yaml

from sim_twin.scene import ObjectSpec

CATEGORIES = ("expert", "rl", "unseen")
DEFAULT_TASK_FILE = os.path.join(os.path.dirname(__file__), "tasks.yaml")


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    skill: str
    category: str
    instructions: tuple[str, ...]  # templates; {object} and {target} are filled from the nouns
    objects: tuple[str, ...]  # the task's object(s), target first
    distractors: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    max_steps: int = 100  # at 10 Hz

    def phrasings(self, registry: "TaskRegistry") -> list[str]:
        obj = registry.objects[self.objects[0]].nouns if self.objects else ("",)
        target = self.params.get("target_nouns", [self.params.get("target", "")])
        out = []
        for template in self.instructions:
            for noun in obj:
                out.append(template.format(object=noun, target=target[0]))
        return sorted(set(out))


def task_file_path(name: str) -> str:
    """A task file: a path, or the name of one shipped next to tasks.yaml ("metaworld" -> metaworld.yaml)."""
    shipped = os.path.join(os.path.dirname(__file__), f"{name}.yaml")
    if os.sep not in name and not name.endswith((".yaml", ".yml")) and os.path.isfile(shipped):
        return shipped
    return name


@dataclass
class TaskRegistry:
    objects: dict[str, ObjectSpec]
    tasks: dict[str, TaskSpec]
    # Training-only clutter: objects no task names, drawn into expert scenes when TwinConfig.clutter > 0, so the
    # expert set shows many more objects (and their nouns) than its targets.
    clutter: tuple[str, ...] = ()

    @classmethod
    def load(cls, extra_files: Iterable[str] = (), include_default: bool = True) -> "TaskRegistry":
        files = ([DEFAULT_TASK_FILE] if include_default else []) + [task_file_path(f) for f in extra_files]
        objects: dict[str, ObjectSpec] = {}
        tasks: dict[str, TaskSpec] = {}
        clutter: list[str] = []
        for path in files:
            try:
                with open(path) as f:
                    doc = yaml.safe_load(f) or {}
            except (OSError, yaml.YAMLError) as e:
                raise RegistryError(f"cannot read task file {path}: {e}") from e
            if not isinstance(doc, dict):
                raise RegistryError(f"{path}: top level must be a mapping with 'objects' and/or 'tasks'")
            for name, o in (doc.get("objects") or {}).items():
                objects[name] = _parse_object(path, name, o)
            for name, t in (doc.get("tasks") or {}).items():
                tasks[name] = _parse_task(path, name, t)
            if doc.get("clutter") is not None:
                clutter = [str(n) for n in doc["clutter"]]
        reg = cls(objects, tasks, tuple(clutter))
        reg.validate()
        return reg

    def validate(self) -> None:
        from sim_twin.tasks.skills import SKILLS
        for t in self.tasks.values():
            if t.skill not in SKILLS:
                raise RegistryError(f"task {t.name!r}: unknown skill {t.skill!r} (known: {sorted(SKILLS)})")
            for o in t.objects + t.distractors:
                if o not in self.objects:
                    raise RegistryError(f"task {t.name!r}: unknown object {o!r}")
            SKILLS[t.skill].check_task(t)
        for o in self.clutter:
            if o not in self.objects:
                raise RegistryError(f"clutter: unknown object {o!r}")
        # Clutter is training-only: an object some task uses (e.g. a user's new task) leaves the pool, so no task's
        # object can leak into training scenes as clutter.
        named = {o for t in self.tasks.values() for o in t.objects + t.distractors}
        self.clutter = tuple(o for o in self.clutter if o not in named)

    def by_category(self, category: str) -> list[TaskSpec]:
        return [t for t in self.tasks.values() if t.category == category]

    def get(self, name: str) -> TaskSpec:
        try:
            return self.tasks[name]
        except KeyError:
            raise RegistryError(f"unknown task {name!r}; known tasks: {', '.join(sorted(self.tasks))}") from None

    def fingerprint(self, names: Iterable[str]) -> str:
        """A short hash of everything that defines these tasks: the task entries (skill, variation params, step
        limit, phrasings) and their objects' shapes, sizes and colours. Equal fingerprints, same episodes."""
        doc = {}
        for name in sorted(names):
            spec = self.get(name)
            objects = {o: asdict(self.objects[o]) for o in (*spec.objects, *spec.distractors) if o in self.objects}
            doc[name] = {"task": asdict(spec), "objects": objects}
        text = json.dumps(doc, sort_keys=True, default=str)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _parse_object(path: str, name: str, o: Any) -> ObjectSpec:
    try:
        return ObjectSpec(name=name, shape=o["shape"], size=tuple(float(v) for v in o["size"]),
                          rgba=tuple(float(v) for v in o["rgba"]), nouns=tuple(o["nouns"]),
                          mass=float(o.get("mass", 0.05)), lying=bool(o.get("lying", False)),
                          friction=float(o.get("friction", 1.5)))
    except (KeyError, TypeError, ValueError) as e:
        raise RegistryError(f"{path}: object {name!r} is malformed ({e!r}); needs shape, size, rgba, nouns") from e


def _parse_task(path: str, name: str, t: Any) -> TaskSpec:
    try:
        category = t["category"]
        if category not in CATEGORIES:
            raise RegistryError(f"{path}: task {name!r}: category must be one of {CATEGORIES}, got {category!r}")
        instructions = tuple(t["instructions"])
        if not instructions:
            raise RegistryError(f"{path}: task {name!r} needs at least one instruction")
        return TaskSpec(name=name, skill=t["skill"], category=category, instructions=instructions,
                        objects=tuple(t.get("objects", ())), distractors=tuple(t.get("distractors", ())),
                        params=dict(t.get("params", {}) or {}), max_steps=int(t.get("max_steps", 100)))
    except (KeyError, TypeError) as e:
        raise RegistryError(f"{path}: task {name!r} is malformed ({e!r})") from e
