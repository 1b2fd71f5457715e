"""Shared start-up for irevla's node executables."""
from __future__ import annotations

import signal
import threading
import time
from typing import Optional

import rclpy
from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)
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


class SteadyMultiThreadedExecutor(MultiThreadedExecutor):
    """rclpy's MultiThreadedExecutor without its busy loop (ros2/rclpy#1452, fixed upstream in #1547 after the rclpy
    we install): a callback handed to the thread pool counts as ready work until a worker starts it, so the spinning
    thread hands it over again and again (~3,000 rounds a second on an idle policy server), holding the interpreter
    against the threads that compute. Here the spinning thread waits until the worker has started the callback."""

    def _spin_once_impl(self, timeout_sec=None, wait_condition=lambda: False) -> None:
        try:
            handler, _entity, _node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        started = threading.Event()

        def run() -> None:
            started.set()
            handler()

        self._executor.submit(run)
        self._futures.append(handler)
        while not started.wait(0.1):  # every worker busy: wait for one (a single-threaded executor would too)
            if self._is_shutdown or not self._context.ok():
                return
        deadline = time.monotonic() + 0.05
        while not (handler.executing() or handler.done()) and time.monotonic() < deadline:
            time.sleep(0.0002)  # a few bytecodes until the worker marks the task running
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # raise any exceptions
