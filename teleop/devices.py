"""Input devices, the lowest layer of teleop: each device is a class whose `read()` returns one raw sample.

`read()` is the only thing that touches hardware (a HID device, a terminal) and the only thing tests fake; all the
meaning (axis mapping, scaling, gripper latch, key bindings) lives in the pure `teleop.mapping`.

* `SpaceMouseDevice` wraps pyspacemouse (3Dconnexion SpaceMouse over HID). pyspacemouse's own `read()` consumes
  at most one HID report per call; ours drains every pending report so a 10 Hz caller always gets the newest
  state. Axis values use pyspacemouse's legacy convention (the one SERL's mapping was written for).
* `KeyboardDevice` reads keys from a terminal in non-canonical mode (works over SSH, needs no display or X
  server). A terminal delivers key presses (and auto-repeats while a key is held), never releases; the mapping
  turns that into motion (see `KeyboardMapper`).
"""
from __future__ import annotations

import os
import select
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

AXIS_NAMES = ("x", "y", "z", "roll", "pitch", "yaw")


class DeviceError(RuntimeError):
    """An input device cannot be opened or read (not connected, no permission, not a terminal...)."""


@dataclass(frozen=True)
class SpaceMouseSample:
    t: float  # time of the sample (monotonic seconds)
    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0
    buttons: tuple[int, ...] = ()

    def axis(self, name: str) -> float:
        return float(getattr(self, name))


@dataclass(frozen=True)
class KeyboardSample:
    t: float  # time of the read (monotonic seconds)
    keys: tuple[str, ...] = ()  # key names pressed (or auto-repeated) since the previous read, in order


class SpaceMouseDevice:
    """A 3Dconnexion SpaceMouse via pyspacemouse. `open()` raises DeviceError when none is connected."""

    def __init__(self, device_name: str = "", device_index: int = 0, max_drain: int = 256,
                 opener: Optional[Callable[..., Any]] = None, clock: Callable[[], float] = time.monotonic):
        self.device_name = device_name
        self.device_index = device_index
        self.max_drain = max_drain
        self._opener = opener
        self._clock = clock
        self._dev: Any = None

    def open(self) -> "SpaceMouseDevice":
        if self._dev is not None:
            return self
        opener = self._opener
        if opener is None:
            try:
                import pyspacemouse
            except Exception as exc:  # ImportError, or OSError when libhidapi is missing
                raise DeviceError(
                    f"pyspacemouse cannot be imported ({exc}); install it and the HID libraries "
                    "(apt-get install libhidapi-hidraw0 libhidapi-libusb0)") from exc
            opener = pyspacemouse.open
        try:
            self._dev = opener(device=self.device_name or None, device_index=self.device_index)
        except Exception as exc:  # pyspacemouse raises RuntimeError/ValueError/OSError
            raise DeviceError(
                f"no SpaceMouse could be opened ({type(exc).__name__}: {exc}). Check that it is plugged in, "
                "that this user may read /dev/hidraw* (udev rule), and that no other program holds it; or use "
                "the keyboard device (--device keyboard)") from exc
        return self

    def read(self) -> SpaceMouseSample:
        if self._dev is None:
            raise DeviceError("SpaceMouse is not open (call open() first)")
        try:
            state = self._dev.read()
            for _ in range(self.max_drain):  # drain queued HID reports: the newest state wins
                t_prev = state.t
                state = self._dev.read()
                if state.t == t_prev:
                    break
        except OSError as exc:
            raise DeviceError(f"SpaceMouse read failed (unplugged?): {exc}") from exc
        return SpaceMouseSample(self._clock(), float(state.x), float(state.y), float(state.z), float(state.roll),
                                float(state.pitch), float(state.yaw), tuple(int(b) for b in state.buttons))

    def close(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            try:
                dev.close()
            except Exception:
                pass

    def __enter__(self) -> "SpaceMouseDevice":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------ keyboard
_ESCAPES = {
    "\x1b[A": "up", "\x1b[B": "down", "\x1b[C": "right", "\x1b[D": "left",
    "\x1bOA": "up", "\x1bOB": "down", "\x1bOC": "right", "\x1bOD": "left",
    "\x1b[5~": "pageup", "\x1b[6~": "pagedown", "\x1b[H": "home", "\x1b[F": "end",
    "\x1b[1~": "home", "\x1b[4~": "end", "\x1b[2~": "insert", "\x1b[3~": "delete",
}
_SINGLE = {" ": "space", "\r": "enter", "\n": "enter", "\t": "tab", "\x7f": "backspace", "\x08": "backspace",
           "\x03": "ctrl-c", "\x04": "ctrl-d", "\x1b": "esc"}


def parse_keys(data: str, final: bool = False) -> tuple[list[str], str]:
    """Split terminal input into key names. Returns (keys, rest) where `rest` is an unfinished escape sequence
    (always "" with `final`: then an unfinished sequence is a lone ESC followed by ordinary keys)."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        ch = data[i]
        if ch == "\x1b":
            for seq, name in _ESCAPES.items():
                if data.startswith(seq, i):
                    keys.append(name)
                    i += len(seq)
                    break
            else:
                tail = data[i:]
                if not final and len(tail) < 4 and any(seq.startswith(tail) for seq in _ESCAPES):
                    return keys, tail  # maybe the rest of the sequence has not arrived yet
                if len(tail) >= 2 and tail[1] in "[O":  # unknown CSI/SS3 sequence: skip it whole
                    j = i + 2
                    while j < len(data) and not (data[j].isalpha() or data[j] == "~"):
                        j += 1
                    if j < len(data):
                        i = j + 1
                        continue
                keys.append("esc")
                i += 1
            continue
        keys.append(_SINGLE.get(ch, ch))
        i += 1
    return keys, ""


class KeyboardDevice:
    """Keys from a terminal (stdin by default) in non-canonical, no-echo mode; restores the terminal on close.

    mode "cbreak" (default) keeps Ctrl-C as SIGINT and normal output; mode "raw" delivers Ctrl-C as the key
    "ctrl-c" (the mapping binds it to quit) and needs "\\r\\n" line ends in any output.
    """

    def __init__(self, fd: Optional[int] = None, mode: str = "cbreak", clock: Callable[[], float] = time.monotonic):
        if mode not in ("cbreak", "raw"):
            raise ValueError(f"keyboard mode must be 'cbreak' or 'raw', got {mode!r}")
        self.fd = fd
        self.mode = mode
        self._clock = clock
        self._saved: Any = None
        self._pending = ""
        self._open = False

    def open(self) -> "KeyboardDevice":
        if self._open:
            return self
        import sys
        import termios
        import tty
        if self.fd is None:
            self.fd = sys.stdin.fileno()
        if not os.isatty(self.fd):
            raise DeviceError("keyboard teleop needs a terminal on stdin (run it in an interactive shell or "
                              "`ssh -t`); stdin is not a TTY")
        self._saved = termios.tcgetattr(self.fd)
        (tty.setraw if self.mode == "raw" else tty.setcbreak)(self.fd)
        self._open = True
        return self

    def _read_available(self, timeout: float = 0.0) -> str:
        chunks = []
        while True:
            r, _, _ = select.select([self.fd], [], [], timeout)
            if not r:
                break
            data = os.read(self.fd, 1024)
            if not data:
                break
            chunks.append(data.decode("utf-8", errors="replace"))
            timeout = 0.0
        return "".join(chunks)

    def read(self) -> KeyboardSample:
        if not self._open:
            raise DeviceError("keyboard is not open (call open() first)")
        data = self._pending + self._read_available()
        keys, rest = parse_keys(data)
        if rest:  # half an escape sequence: give the terminal 10 ms for the rest, else it was a lone key
            more = self._read_available(0.01)
            keys2, rest = parse_keys(rest + more)
            keys += keys2
            if rest:
                keys += parse_keys(rest, final=True)[0]
                rest = ""
        self._pending = rest
        return KeyboardSample(self._clock(), tuple(keys))

    def close(self) -> None:
        if self._open and self._saved is not None:
            import termios
            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            except Exception:
                pass
        self._open = False

    def __enter__(self) -> "KeyboardDevice":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
