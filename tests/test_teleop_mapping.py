"""Teleop input mapping (pure) and devices (only `read()` faked; the keyboard also through a real pty)."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import yaml

from teleop.config import ConfigError, from_dict, load_yaml, to_dict
from teleop.controller import Teleop, TeleopConfig, make_teleop
from teleop.devices import (DeviceError, KeyboardDevice, KeyboardSample, SpaceMouseDevice, SpaceMouseSample,
                            parse_keys)
from teleop.mapping import (DEFAULT_KEYS, KeyboardConfig, KeyboardMapper, SpaceMouseConfig, SpaceMouseMapper)


def sm(t=0.0, buttons=(0, 0), **axes) -> SpaceMouseSample:
    return SpaceMouseSample(t, buttons=tuple(buttons), **axes)


# ------------------------------------------------------------------------------------------------ SpaceMouse
def test_spacemouse_default_is_serl_mapping():
    m = SpaceMouseMapper(SpaceMouseConfig(deadzone=0.0))
    cmd = m.map(sm(x=0.1, y=0.2, z=0.3, roll=0.4, pitch=0.5, yaw=0.6))
    # SERL: [-y, x, z, -roll, -pitch, -yaw]; gripper starts open (-1)
    np.testing.assert_allclose(cmd.action, [-0.2, 0.1, 0.3, -0.4, -0.5, -0.6, -1.0])
    assert cmd.moving and not cmd.gripper_closed


def test_spacemouse_buttons_close_and_open_on_press_edge():
    m = SpaceMouseMapper()
    assert m.map(sm(buttons=(1, 0))).action[6] == 1.0  # left: close
    held = m.map(sm(buttons=(1, 0)))
    assert held.action[6] == 1.0 and not held.gripper_changed  # held: no new edge
    assert m.map(sm(buttons=(0, 0))).action[6] == 1.0  # latched after release
    c = m.map(sm(buttons=(0, 1)))
    assert c.action[6] == -1.0 and c.gripper_changed  # right: open
    m.reset()
    assert m.map(sm()).action[6] == -1.0


def test_spacemouse_scaling_deadzone_clipping_and_custom_axes():
    cfg = SpaceMouseConfig(axes=("x", "0", "-z", "yaw", "0", "roll"), scale=(0.5, 1, 2, 1, 1, 1), deadzone=0.1,
                           buttons=("toggle", "event:success"))
    m = SpaceMouseMapper(cfg)
    cmd = m.map(sm(x=0.55, y=0.9, z=0.8, roll=0.05, yaw=-1.0, buttons=(0, 1)))
    # x: deadzone-rescaled (0.55-0.1)/0.9 = 0.5, * 0.5; z: 0.7/0.9*-2 clipped to -1; roll inside the deadzone
    np.testing.assert_allclose(cmd.action[:6], [0.25, 0.0, -1.0, -1.0, 0.0, 0.0])
    assert cmd.events == ("success",) and cmd.active
    assert m.map(sm(buttons=(1, 0))).gripper_closed  # toggle
    assert m.map(sm(buttons=(0, 0))).gripper_closed  # release: no change
    assert not m.map(sm(buttons=(1, 0))).gripper_closed  # toggled back
    quiet = m.map(sm(x=0.05, yaw=float("nan")))
    assert not quiet.moving and np.all(np.isfinite(quiet.action))


@pytest.mark.parametrize("bad", [dict(axes=("x",) * 5), dict(axes=("x", "y", "z", "roll", "pitch", "w")),
                                 dict(deadzone=1.0), dict(buttons=("explode",)), dict(initial_gripper="half")])
def test_spacemouse_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SpaceMouseConfig(**bad)


class FakeHid:
    """Stands in for a pyspacemouse device: each read() consumes one queued report."""

    def __init__(self, reports):
        self.reports = list(reports)
        self.state = type("S", (), dict(t=-1.0, x=0.0, y=0.0, z=0.0, roll=0.0, pitch=0.0, yaw=0.0, buttons=[0, 0]))()
        self.closed = False

    def read(self):
        if self.reports:
            for k, v in self.reports.pop(0).items():
                setattr(self.state, k, v)
        return self.state

    def close(self):
        self.closed = True


def test_spacemouse_device_drains_queued_reports_and_closes():
    hid = FakeHid([{"t": 1.0, "x": 0.1}, {"t": 2.0, "x": 0.2}, {"t": 3.0, "y": -0.5, "buttons": [1, 0]}])
    dev = SpaceMouseDevice(opener=lambda **kw: hid, clock=lambda: 42.0).open()
    s = dev.read()
    assert (s.t, s.x, s.y, s.buttons) == (42.0, 0.2, -0.5, (1, 0))  # newest state, not the first report
    dev.close()
    assert hid.closed
    with pytest.raises(DeviceError):
        dev.read()


def test_spacemouse_open_without_device_raises_clear_error():
    try:
        import pyspacemouse
        connected = pyspacemouse.get_connected_devices()
    except Exception:  # pyspacemouse / hidapi not importable: open() must still raise DeviceError
        connected = []
    if not connected:  # the real library with no device plugged in
        with pytest.raises(DeviceError, match="no SpaceMouse|pyspacemouse cannot be imported"):
            SpaceMouseDevice().open()

    def opener(**kw):
        raise RuntimeError("No connected or supported devices found.")
    with pytest.raises(DeviceError, match="No connected"):
        SpaceMouseDevice(opener=opener).open()


# ------------------------------------------------------------------------------------------------ keyboard
def test_parse_keys_handles_escape_sequences_and_partials():
    assert parse_keys("wa \r\x1b[A\x1b[6~\x7fq")[0] == ["w", "a", "space", "enter", "up", "pagedown",
                                                          "backspace", "q"]
    keys, rest = parse_keys("w\x1b[")
    assert keys == ["w"] and rest == "\x1b["
    assert parse_keys("\x1b", final=True)[0] == ["esc"]
    assert parse_keys("\x1b[99Zx")[0] == ["x"]  # unknown CSI sequence skipped


def kb(t, *keys):
    return KeyboardSample(t, tuple(keys))


def test_keyboard_tap_moves_briefly_and_held_key_keeps_moving():
    m = KeyboardMapper(KeyboardConfig(translation_speed=0.5, rotation_speed=0.25, hold_s=0.15))
    c = m.map(kb(0.0, "w", "u"))
    np.testing.assert_allclose(c.action, [0.5, 0, 0, 0, 0, 0.25, -1.0])
    assert m.map(kb(0.1)).moving  # still within hold_s
    assert not m.map(kb(0.2)).moving  # released (no auto-repeat)
    for t in np.arange(1.0, 2.0, 0.033):  # auto-repeat ~30/s: continuous motion
        m.map(kb(t, "s"))
        assert m.map(kb(t + 0.02)).action[0] == -0.5
    both = m.map(kb(3.0, "a", "d", "r"))  # opposite keys cancel
    np.testing.assert_allclose(both.action[:3], [0, 0, 0.5])


def test_keyboard_gripper_and_events():
    m = KeyboardMapper()
    assert m.map(kb(0, "space")).action[6] == 1.0
    assert m.map(kb(0.1, "space")).action[6] == -1.0
    assert m.map(kb(0.2, "c")).gripper_closed and not m.map(kb(0.3, "v")).gripper_closed
    c = m.map(kb(0.4, "enter", "x", "q", "F12?"))
    assert c.events == ("success", "discard", "quit") and m.last_unbound == ("F12?",)


def test_keyboard_config_validation():
    with pytest.raises(ValueError, match="needs a sign"):
        KeyboardConfig(bindings={"w": "x"})
    with pytest.raises(ValueError):
        KeyboardConfig(bindings={"w": "+w"})
    with pytest.raises(ValueError):
        KeyboardConfig(translation_speed=2.0)


def test_keyboard_device_reads_a_real_terminal():
    master, slave = os.openpty()
    try:
        dev = KeyboardDevice(fd=slave, clock=lambda: 5.0).open()
        os.write(master, b"w\x1b[Bq")
        time.sleep(0.05)
        assert dev.read().keys == ("w", "down", "q")
        assert dev.read().keys == ()
        os.write(master, b"\x1b")  # lone ESC: resolved after the 10 ms grace period
        time.sleep(0.05)
        assert dev.read().keys == ("esc",)
        dev.close()
    finally:
        os.close(master)
        os.close(slave)


def test_keyboard_device_needs_a_tty(tmp_path):
    with open(tmp_path / "f", "w+") as f:
        with pytest.raises(DeviceError, match="not a TTY"):
            KeyboardDevice(fd=f.fileno()).open()


# ------------------------------------------------------------------------------------------------ config + Teleop
def test_teleop_config_yaml_round_trip_and_errors(tmp_path):
    cfg = TeleopConfig(device="keyboard", keyboard=KeyboardConfig(hold_s=0.2, bindings={"w": "+x", "space":
                                                                                       "gripper_toggle"}))
    p = tmp_path / "teleop.yaml"
    p.write_text(yaml.safe_dump({"teleop": to_dict(cfg)}))
    assert TeleopConfig.from_yaml(p) == cfg
    assert TeleopConfig.from_dict({}) == TeleopConfig()
    assert TeleopConfig().spacemouse.axes == ("-y", "x", "z", "-roll", "-pitch", "-yaw")
    p.write_text("teleop:\n  spacemouse:\n    deadzone: fast\n")
    with pytest.raises(ConfigError, match="teleop.spacemouse.deadzone"):
        TeleopConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TeleopConfig, {"devcie": "keyboard"})
    with pytest.raises(ConfigError, match="device must be one of"):
        from_dict(TeleopConfig, {"device": "joystick"})
    p.write_text("teleop:\n  spacemouse:\n    scale: [1, 1, 1, 1, 1]\n")
    with pytest.raises(ConfigError, match="6 finite"):
        load_yaml(TeleopConfig, p, "teleop")


class ScriptedDevice:
    def __init__(self, samples):
        self.samples = list(samples)
        self.opened = self.closed = False

    def open(self):
        self.opened = True

    def read(self):
        return self.samples.pop(0)

    def close(self):
        self.closed = True


def test_make_teleop_with_faked_read():
    dev = ScriptedDevice([sm(1.0, x=0.5, buttons=(1, 0)), sm(1.1)])
    with make_teleop(TeleopConfig(), device=dev) as tele:
        assert isinstance(tele, Teleop) and dev.opened
        first = tele.step()
        np.testing.assert_allclose(first.action, [0, (0.5 - 0.02) / 0.98, 0, 0, 0, 0, 1.0])  # deadzone 0.02
        assert not tele.step().moving
    assert dev.closed
    kdev = ScriptedDevice([kb(0.0, "r")])
    tele = make_teleop(TeleopConfig(device="keyboard"), device=kdev)
    assert DEFAULT_KEYS["r"] == "+z" and tele.step().action[2] == 0.5


def test_example_config_file_loads_to_the_defaults():
    from pathlib import Path

    from teleop.recorder import RecorderConfig
    path = Path(__file__).resolve().parents[1] / "teleop" / "example_config.yaml"
    assert TeleopConfig.from_yaml(path) == TeleopConfig()
    assert RecorderConfig.from_yaml(path) == RecorderConfig()
