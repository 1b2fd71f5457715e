"""Shared start-up for irevla's node executables."""
from __future__ import annotations

import signal
import threading
from typing import Optional

import rclpy
from rclpy.signals import SignalHandlerOptions


def init_with_stop_event(args: Optional[list[str]] = None) -> threading.Event:
    """rclpy.init with our own SIGINT/SIGTERM handling: the returned event is set on a signal.

    rclpy's default handler invalidates the context while timers and capture threads are still publishing; the
    caller's spin loop checks the event instead, stops its threads, then shuts down.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
