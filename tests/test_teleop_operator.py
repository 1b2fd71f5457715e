"""Operator side of teleop (pure, no ROS): task prompt over a real pty, status line, one control tick."""
from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest

from teleop.controller import Teleop, TeleopConfig, make_teleop
from teleop.devices import KeyboardDevice, SpaceMouseDevice
from teleop.mapping import KeyboardMapper
from teleop.operator import (OperatorLoop, TaskCatalog, TaskChoice, TaskPrompt, TerminalView, format_status)


@pytest.fixture(scope="module")
def catalog():
    return TaskCatalog.from_registry()


@pytest.fixture
def terminal():
    """A real pseudo-terminal: (write keys, KeyboardDevice reading the other end)."""
    master, slave = os.openpty()
    dev = KeyboardDevice(fd=slave).open()

    def type_keys(data: str) -> None:
        os.write(master, data.encode())
        time.sleep(0.03)

    yield type_keys, dev
    dev.close()
    os.close(master)
    os.close(slave)


def keys(text: str) -> list[str]:
    from teleop.devices import parse_keys
    return parse_keys(text, final=True)[0]


def test_catalog_is_the_task_registry(catalog):
    from sim_twin.tasks.registry import TaskRegistry
    reg = TaskRegistry.load()
    assert {t.name for t in catalog.tasks} == set(reg.tasks)
    cats = [t.category for t in catalog.tasks]
    assert cats == sorted(cats, key=("expert", "rl", "unseen").index)  # grouped by category
    first = catalog.tasks[0]
    assert catalog.lookup("1") is first and catalog.lookup(first.name) is first
    assert catalog.lookup("0") is None and catalog.lookup(str(len(catalog) + 1)) is None
    assert catalog.lookup("pick_red") is catalog.lookup("pick_red_block")  # unambiguous prefix
    assert catalog.lookup("pick") is None  # ambiguous
    assert first.phrasings == tuple(reg.get(first.name).phrasings(reg))
    assert len(catalog.menu_lines()) == len(catalog)


def test_prompt_registry_task_with_default_and_picked_phrasing(catalog):
    task = catalog.lookup("pick_red_block")
    p = TaskPrompt(catalog)
    out = p.take_output()
    assert any("pick_red_block" in ln for ln in out) and "Task for the next episodes" in out[-1]
    assert not p.feed(keys("pick_red_block\r"))
    assert p.stage == "instruction" and any(task.phrasings[0] in ln for ln in p.take_output())
    assert p.feed(keys("\r"))  # Enter: the registry's first phrasing
    assert p.result == TaskChoice("pick_red_block", task.phrasings[0], task.category)
    if len(task.phrasings) > 1:
        p = TaskPrompt(catalog)
        n = catalog.tasks.index(task) + 1
        p.feed(keys(f"{n}\r2\r"))
        assert p.result.instruction == task.phrasings[1]


def test_prompt_typed_instruction_new_task_editing_keep_and_cancel(catalog):
    p = TaskPrompt(catalog)
    p.feed(keys("press_buttonX\x7f\r"))  # backspace edits the line
    p.feed(keys("push the   button now\r"))
    assert p.result == TaskChoice("press_button", "push the   button now", catalog.lookup("press_button").category)
    # a task not in the registry: accepted as a new task, the instruction must be typed
    p = TaskPrompt(catalog)
    p.feed(keys("wipe_table\r"))
    assert any("not in the registry" in ln for ln in p.take_output())
    p.feed(keys("\r"))
    assert not p.done and "instruction is needed" in p.take_output()[-1]
    p.feed(keys("wipe the table\r"))
    assert p.result == TaskChoice("wipe_table", "wipe the table", "")
    # bad answers are explained and asked again
    p = TaskPrompt(catalog)
    p.feed(keys("99\r"))
    assert not p.done and "neither a task number" in p.take_output()[-1]
    p.feed(keys("\r"))
    assert not p.done and "no task chosen yet" in p.take_output()[-1]
    # Enter keeps the current choice; Esc cancels
    cur = TaskChoice("pick_red_block", "grab it", "expert")
    p = TaskPrompt(catalog, current=cur)
    assert 'pick_red_block: "grab it"' in p.take_output()[-1]
    assert p.feed(keys("\r")) and p.result == cur
    p = TaskPrompt(catalog, current=cur)
    assert p.feed(["p", "esc"]) and p.cancelled and p.result is None


def test_status_line_shows_progress_per_task_time_and_task():
    prog = {"done": 37, "target": 2000, "failed": 2, "recording": "episode_000039", "steps_in_progress": 57,
            "per_task": {"pick_red_block": {"success": 30, "failure": 2}, "press_button": {"success": 7,
                                                                                          "failure": 0}},
            "seconds_per_episode": 18.25, "seconds_per_cycle": 25.0, "task": "press_button",
            "instruction": "press the button", "stalled": ""}
    s = format_status(prog, gripper_closed=True)
    for part in ("REC episode_000039 57 steps", "37/2000 (2 failed)", "pick_red_block 30+2f", "press_button 7",
                 "18.2 s/episode", "25.0 s/cycle", 'task press_button: "press the button"', "gripper closed"):
        assert part in s, (part, s)
    assert "NO TASK" in format_status(dict(prog, task="", recording=None))
    assert "STALLED: camera stalled" in format_status(dict(prog, stalled="camera stalled: front"))
    assert "waiting for the recorder" in format_status(None)


def test_terminal_view_redraws_one_line_and_prints_prompt_lines():
    buf = io.StringIO()
    v = TerminalView(buf)
    v.set_status("1/10")
    v.set_status("1/10")  # unchanged: nothing written
    v.print_lines(["Tasks:", "  1 pick"])
    v.set_status("2/10")
    text = buf.getvalue()
    assert text.count("1/10") == 2 and "Tasks:\r\n  1 pick\r\n" in text and text.endswith("\r\x1b[2K2/10")


def test_loop_keyboard_prompt_then_start_and_motion(catalog, terminal):
    type_keys, dev = terminal
    loop = OperatorLoop(make_teleop(TeleopConfig(device="keyboard"), device=dev), keys=dev, catalog=catalog)
    type_keys("n")  # start with no task: the prompt opens first, the arm holds
    r = loop.tick()
    assert r.prompt_open and not r.events and any("choose the task first" in ln for ln in r.output)
    type_keys("ww\x7f\x7fpick_red_block\r")  # motion keys are typed into the prompt, not moving the arm
    r = loop.tick()
    assert r.prompt_open and not np.any(r.action[:6]) and loop.prompt.stage == "instruction"
    type_keys("grab the red block\r")
    r = loop.tick()
    assert r.choice == TaskChoice("pick_red_block", "grab the red block", "expert")
    assert r.events == ("start",) and not r.prompt_open  # the start that opened the prompt goes ahead
    type_keys("w ")
    r = loop.tick()
    assert r.action[0] == 0.5 and r.action[6] == 1.0 and r.gripper_closed and not r.events
    type_keys("\r")
    assert loop.tick().events == ("success",)
    type_keys("\x7fxqt")  # failure, discard, quit; t opens the prompt (not an event)
    r = loop.tick()
    assert r.events == ("failure", "discard", "quit") and r.prompt_open
    type_keys("\x1b")
    time.sleep(0.03)
    r = loop.tick()
    assert not r.prompt_open and r.choice is None and loop.current.instruction == "grab the red block"
    type_keys("n")  # a task is known now: start goes straight through and re-opens the gripper
    r = loop.tick()
    assert r.events == ("start",) and r.action[6] == -1.0


class FakeHid:
    """What pyspacemouse.open() returns: the lowest layer, the only faked part."""

    def __init__(self):
        self.state = dict(t=0.0, x=0.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0, buttons=[0, 0])

    def read(self):
        from types import SimpleNamespace
        return SimpleNamespace(**self.state)

    def close(self):
        pass


def test_loop_spacemouse_moves_and_terminal_keys_give_events(catalog, terminal):
    type_keys, dev = terminal
    hid = FakeHid()
    sm = SpaceMouseDevice(opener=lambda **kw: hid)
    tele = make_teleop(TeleopConfig(), device=sm).open()
    loop = OperatorLoop(tele, keys=dev, catalog=catalog)
    assert isinstance(loop.key_mapper, KeyboardMapper)
    loop.current = TaskChoice("pick_red_block", "pick it", "expert")
    hid.state.update(t=1.0, y=-0.5)  # SERL mapping: action x = -y
    type_keys("wn")  # keyboard motion ignored with a SpaceMouse; its events are used
    r = loop.tick()
    assert r.events == ("start",) and r.action[0] > 0.4 and r.action[1] == 0.0 and r.action[6] == -1.0
    hid.state.update(t=1.1, buttons=[1, 0])  # button 0 closes
    r = loop.tick()
    assert not r.events and r.action[6] == 1.0 and r.gripper_closed
    type_keys("t")
    r = loop.tick()
    assert r.prompt_open and not np.any(r.action[:6])  # the arm holds while the operator types


def test_loop_without_console_never_prompts():
    hid = FakeHid()
    tele = make_teleop(TeleopConfig(), device=SpaceMouseDevice(opener=lambda **kw: hid)).open()
    loop = OperatorLoop(tele)
    assert not loop.open_prompt()
    hid.state.update(t=1.0, x=0.3)
    r = loop.tick()
    assert not r.prompt_open and r.action[1] > 0.2 and isinstance(tele, Teleop)


def test_prompt_opened_before_the_current_task_is_known_keeps_it(catalog, terminal):
    type_keys, dev = terminal
    loop = OperatorLoop(make_teleop(TeleopConfig(device="keyboard"), device=dev), keys=dev, catalog=catalog)
    assert loop.open_prompt()
    loop.current = TaskChoice("press_button", "hit the button", "expert")  # the recorder's progress arrives
    type_keys("\r")
    r = loop.tick()
    assert r.choice == TaskChoice("press_button", "hit the button", "expert") and not r.prompt_open
