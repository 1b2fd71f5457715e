"""The operator's side of teleop collection, without ROS: task prompt, status line, and one control tick.

Everything here works in a plain terminal (also over SSH: no display, no X server). The teleop node
(`teleop/teleop_node.py`) is a thin ROS shell over `OperatorLoop`.

* `TaskCatalog`: the tasks an operator can choose (the twin's task registry: name, category, phrasings).
* `TaskPrompt`: a two-question prompt fed with key names (`teleop.devices.parse_keys`), answered in the terminal:
  task (number or name from the registry, or a new task name; Enter keeps the current one), then instruction
  (Enter takes the registry's phrasing, a number picks another phrasing, anything else is typed as is).
  Esc cancels. Result: a `TaskChoice`.
* `format_status`: the one-line progress display (37/2000, per-task counts, time per episode, task, instruction).
* `OperatorLoop.tick()`: read the device(s) once, feed keys to the prompt while it is open (the arm then holds
  still), map everything else to the 7-D action and the episode events (start, success, failure, discard, quit).
  Key `t` opens the prompt; `start` with no task chosen opens it first and starts once it is answered.
* `TerminalView`: prints prompt/menu lines and redraws the status line in place (\\r + erase line).
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence, TextIO

import numpy as np

from teleop.controller import Teleop
from teleop.devices import KeyboardSample
from teleop.mapping import KeyboardMapper, TeleopCommand

CATEGORY_ORDER = ("expert", "rl", "unseen")
TASK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class TaskChoice:
    task: str
    instruction: str
    category: str = ""  # the registry's category (expert / rl / unseen); "" for a task not in the registry


@dataclass(frozen=True)
class CatalogTask:
    name: str
    category: str
    phrasings: tuple[str, ...]


class TaskCatalog:
    """Tasks to choose from, numbered from 1 in display order."""

    def __init__(self, tasks: Iterable[CatalogTask] = ()):
        self.tasks = list(tasks)
        self._by_name = {t.name: t for t in self.tasks}

    @classmethod
    def from_registry(cls, task_files: Sequence[str] = ()) -> "TaskCatalog":
        """The twin's task registry (sim_twin/tasks/tasks.yaml plus `task_files`), grouped by category."""
        from sim_twin.tasks.registry import TaskRegistry
        reg = TaskRegistry.load(extra_files=list(task_files))
        order = {c: i for i, c in enumerate(CATEGORY_ORDER)}
        specs = sorted(reg.tasks.values(), key=lambda t: (order.get(t.category, len(order)), t.name))
        return cls(CatalogTask(t.name, t.category, tuple(t.phrasings(reg))) for t in specs)

    def __len__(self) -> int:
        return len(self.tasks)

    def lookup(self, text: str) -> Optional[CatalogTask]:
        """A task by its number (1-based), its exact name, or an unambiguous prefix of its name."""
        text = text.strip()
        if text.isdigit():
            i = int(text)
            return self.tasks[i - 1] if 1 <= i <= len(self.tasks) else None
        if text in self._by_name:
            return self._by_name[text]
        hits = [t for t in self.tasks if t.name.startswith(text)] if text else []
        return hits[0] if len(hits) == 1 else None

    def menu_lines(self) -> list[str]:
        width = max((len(t.name) for t in self.tasks), default=0)
        return [f"{i:>3}  {t.name:<{width}}  {t.category:<6}  {t.phrasings[0] if t.phrasings else ''}"
                for i, t in enumerate(self.tasks, 1)]


class LineEditor:
    """A one-line text input fed with key names: printable keys type, backspace deletes, enter submits."""

    def __init__(self):
        self.text = ""

    def feed(self, key: str) -> Optional[str]:
        """Returns the submitted line on enter, else None."""
        if key == "enter":
            line, self.text = self.text, ""
            return line
        if key == "backspace":
            self.text = self.text[:-1]
        elif key == "space":
            self.text += " "
        elif len(key) == 1 and key.isprintable():
            self.text += key
        return None


class TaskPrompt:
    """Ask for the task, then the instruction. Feed key names; `done` once answered (`result`) or cancelled."""

    def __init__(self, catalog: TaskCatalog, current: Optional[TaskChoice] = None):
        self.catalog = catalog
        self.current = current
        self.stage = "task"
        self.editor = LineEditor()
        self.done = False
        self.cancelled = False
        self.result: Optional[TaskChoice] = None
        self._task: Optional[CatalogTask] = None
        self._out: list[str] = []
        cur = f"{current.task}: \"{current.instruction}\"" if current else "none"
        if catalog.tasks:
            self._out += ["Tasks in the registry:"] + catalog.menu_lines()
        self._out.append(f"Task for the next episodes (current: {cur}). Type its number or name, or a new task "
                         "name; Enter keeps the current one, Esc cancels.")

    def take_output(self) -> list[str]:
        """Lines to print (menus, questions, messages) since the last call."""
        out, self._out = self._out, []
        return out

    @property
    def input_line(self) -> str:
        return f"{self.stage}> {self.editor.text}"

    def feed(self, keys: Iterable[str]) -> bool:
        for key in keys:
            if self.done:
                break
            if key in ("esc", "ctrl-c"):
                self.done = self.cancelled = True
                self._out.append("task prompt cancelled: task and instruction unchanged")
                break
            line = self.editor.feed(key)
            if line is not None:
                self._answer(line.strip())
        return self.done

    def _answer(self, text: str) -> None:
        if self.stage == "task":
            if not text:
                if self.current is None:
                    self._out.append("no task chosen yet: type a number or a task name")
                    return
                self.result, self.done = self.current, True
                self._out.append(f"keeping {self.current.task}: \"{self.current.instruction}\"")
                return
            found = self.catalog.lookup(text)
            if found is None:
                if text.isdigit() or not TASK_NAME_RE.match(text):
                    self._out.append(f"{text!r} is neither a task number (1-{len(self.catalog)}) nor a task name "
                                     "(letters, digits, _ . -)")
                    return
                found = CatalogTask(text, "", ())
                self._out.append(f"{text!r} is not in the registry: recording it as a new task")
            self._task = found
            self.stage = "instruction"
            if found.phrasings:
                self._out += ["Instruction: Enter takes 1, a number picks another, or type your own:"]
                self._out += [f"{i:>3}  {p}" for i, p in enumerate(found.phrasings, 1)]
            else:
                keep = (self.current.instruction if self.current and self.current.task == found.name else "")
                self._out.append("Type the instruction" + (f" (Enter keeps \"{keep}\")" if keep else "") + ":")
            return
        task = self._task
        if not text:
            if task.phrasings:
                text = task.phrasings[0]
            elif self.current and self.current.task == task.name and self.current.instruction:
                text = self.current.instruction
            else:
                self._out.append("an instruction is needed: type it")
                return
        elif text.isdigit() and task.phrasings and 1 <= int(text) <= len(task.phrasings):
            text = task.phrasings[int(text) - 1]
        self.result = TaskChoice(task.name, text, task.category)
        self.done = True
        self._out.append(f"task {task.name}: \"{text}\"")


def format_status(progress: Optional[dict], prompt_open: bool = False, gripper_closed: Optional[bool] = None,
                  message: str = "") -> str:
    """The status line: progress against the target, per-task counts, time per episode, what is recorded."""
    if not progress:
        return "waiting for the recorder node (/irevla/recorder/progress) ..."
    parts = []
    if progress.get("recording"):
        parts.append(f"REC {progress['recording']} {progress.get('steps_in_progress', 0)} steps")
    else:
        parts.append("idle")
    if progress.get("stalled"):
        parts.append(f"STALLED: {progress['stalled']}")
    parts.append(f"{progress.get('done', 0)}/{progress.get('target', 0)}"
                 + (f" ({progress['failed']} failed)" if progress.get("failed") else ""))
    task = progress.get("task") or ""
    parts.append(f"task {task}: \"{progress.get('instruction', '')}\"" if task else "NO TASK (press t)")
    if progress.get("seconds_per_episode") is not None:
        s = f"{progress['seconds_per_episode']:.1f} s/episode"
        if progress.get("seconds_per_cycle") is not None:
            s += f", {progress['seconds_per_cycle']:.1f} s/cycle"
        parts.append(s)
    per_task = progress.get("per_task") or {}
    if per_task:
        parts.append(", ".join(f"{t} {c.get('success', 0)}" + (f"+{c['failure']}f" if c.get("failure") else "")
                               for t, c in sorted(per_task.items())))
    if gripper_closed is not None:
        parts.append("gripper closed" if gripper_closed else "gripper open")
    if prompt_open:
        parts.append("answer the prompt")
    if message:
        parts.append(message)
    return " | ".join(parts)


@dataclass
class TickResult:
    action: np.ndarray  # (7,) contract action to publish
    events: tuple[str, ...] = ()  # episode events for the recorder: start / success / failure / discard / quit
    choice: Optional[TaskChoice] = None  # the prompt was answered with this (new or kept) task this tick
    gripper_closed: bool = False
    prompt_open: bool = False
    output: list[str] = field(default_factory=list)  # lines to print (prompt)


class OperatorLoop:
    """One control tick without ROS. `teleop` moves the arm; `keys` (a terminal KeyboardDevice, optional) gives
    episode keys and answers the prompt. With a keyboard teleop device, pass the same device as `keys`."""

    def __init__(self, teleop: Teleop, keys: Any = None, key_mapper: Optional[KeyboardMapper] = None,
                 catalog: Optional[TaskCatalog] = None):
        self.teleop = teleop
        self.keys = keys
        self.keyboard_teleop = keys is not None and keys is teleop.device
        if self.keyboard_teleop:
            key_mapper = teleop.mapper
        elif keys is not None and key_mapper is None:
            key_mapper = KeyboardMapper()
        self.key_mapper = key_mapper  # with a SpaceMouse: only its events (and `t`) are used
        self.catalog = catalog or TaskCatalog()
        self.prompt: Optional[TaskPrompt] = None
        self._current: Optional[TaskChoice] = None
        self._start_after_prompt = False

    @property
    def current(self) -> Optional[TaskChoice]:
        """What the recorder records now (from its progress); what Enter keeps in the prompt."""
        return self._current

    @current.setter
    def current(self, choice: Optional[TaskChoice]) -> None:
        self._current = choice
        if self.prompt is not None:
            self.prompt.current = choice

    @property
    def has_console(self) -> bool:
        return self.keys is not None

    def open_prompt(self, start_after: bool = False) -> bool:
        if self.keys is None:
            return False
        if self.prompt is None:
            self.prompt = TaskPrompt(self.catalog, self.current)
        self._start_after_prompt = self._start_after_prompt or start_after
        return True

    def tick(self) -> TickResult:
        keys_sample: Optional[KeyboardSample] = self.keys.read() if self.keys is not None else None
        out: list[str] = []
        choice = None
        keys = keys_sample.keys if keys_sample is not None else ()
        answered = False
        if self.prompt is not None:
            self.prompt.feed(keys)
            keys = ()  # typed into the prompt, not moving the arm
            out += self.prompt.take_output()
            if self.prompt.done:
                choice, answered = self.prompt.result, True
                if choice is not None:
                    self.current = choice
                self.prompt = None
        key_cmd: Optional[TeleopCommand] = None
        if self.key_mapper is not None and keys_sample is not None:
            key_cmd = self.key_mapper.map(KeyboardSample(keys_sample.t, tuple(keys)))
        if self.keyboard_teleop:
            cmd = key_cmd
            raw_events = list(key_cmd.events)
        else:
            cmd = self.teleop.step()
            raw_events = list(cmd.events) + (list(key_cmd.events) if key_cmd is not None else [])
        events = []
        for ev in raw_events:
            if ev == "task":
                self.open_prompt()
            elif ev == "start" and self.current is None and self.open_prompt(start_after=True):
                out.append("choose the task first; recording starts once it is answered")
            else:
                events.append(ev)
        if self.prompt is not None:
            out += self.prompt.take_output()
        if answered and self._start_after_prompt:
            self._start_after_prompt = False
            if choice is not None:  # answered, not cancelled: the start that opened the prompt goes ahead
                events.insert(0, "start")
        action = np.array(cmd.action, dtype=float)
        closed = bool(cmd.gripper_closed)
        if "start" in events:
            self.teleop.reset()  # a new episode starts from the initial gripper state (open)
            closed = bool(self.teleop.mapper.gripper_closed)
            action[6] = 1.0 if closed else -1.0
        if self.prompt is not None:
            action[:6] = 0.0  # hold still while the operator types
        return TickResult(action, tuple(events), choice, closed, self.prompt is not None, out)


class TerminalView:
    """Prompt lines scroll, the status line is redrawn in place. Uses \\r\\n so it works in cbreak and raw mode."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._line = ""
        self._input = ""

    def _width(self) -> int:
        return max(20, shutil.get_terminal_size(fallback=(160, 24)).columns - 1)

    def print_lines(self, lines: Sequence[str]) -> None:
        if not lines:
            return
        self.stream.write("\r\x1b[2K" + "".join(f"{ln}\r\n" for ln in lines))
        self._redraw()

    def set_status(self, text: str, input_line: str = "") -> None:
        if text == self._line and input_line == self._input:
            return
        self._line, self._input = text, input_line
        self._redraw()

    def _redraw(self) -> None:
        text = self._input or self._line  # while the prompt is open, its input line is what matters
        self.stream.write("\r\x1b[2K" + text[: self._width()])
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\r\n")
        self.stream.flush()
