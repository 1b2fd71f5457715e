"""Small reusable helpers for irevla tests (import as ``from helpers import ...``)."""
from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Callable, Optional

_counter = itertools.count()


def unique_name(prefix: str = 'test') -> str:
    """A ROS-legal name unique within this test session (node names, topic suffixes)."""
    return f'{prefix}_{os.getpid()}_{next(_counter)}'


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01,
             message: str | None = None) -> Any:
    """Poll ``predicate`` until it returns a truthy value (returned) or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f'condition not met within {timeout} s')
        time.sleep(interval)


class Collector:
    """Thread-safe message sink: ``node.create_subscription(T, topic, collector, qos)``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list = []

    def __call__(self, msg) -> None:
        with self._lock:
            self._items.append(msg)

    @property
    def items(self) -> list:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def wait(self, count: int = 1, timeout: float = 5.0) -> list:
        """Wait until at least ``count`` messages arrived; return them all."""
        wait_for(lambda: len(self) >= count, timeout,
                 message=f'got {len(self)} of {count} messages within {timeout} s')
        return self.items


def stream(send: Callable[[], Any], seconds: float, until: Optional[Callable[[], Any]] = None,
           period: float = 0.1) -> bool:
    """Send a command at the 10 Hz contract rate for up to `seconds` (or until `until()`); True if until() held."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        send()
        if until is not None and until():
            return True
        time.sleep(period)
    return until is not None and bool(until())
