"""Shared start-up for irevla's node executables: signals, the executor, typed parameters."""
from __future__ import annotations

import dataclasses
import signal
import threading
import time
import types
import typing
from typing import Optional, TypeVar

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, ParameterUninitializedException
from rclpy.executors import (ConditionReachedException, ExternalShutdownException, MultiThreadedExecutor,
                             ShutdownException, TimeoutException)
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from robot_server.typed_config import ConfigError, from_dict

T = TypeVar("T")


def stamp_msg(seconds: float):
    """builtin_interfaces/Time from wall-clock seconds since the epoch."""
    from rclpy.time import Time
    return Time(nanoseconds=int(round(seconds * 1e9))).to_msg()


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


_ARRAY_TYPES = {str: Parameter.Type.STRING_ARRAY, float: Parameter.Type.DOUBLE_ARRAY,
                int: Parameter.Type.INTEGER_ARRAY, bool: Parameter.Type.BOOL_ARRAY}


def declare_config(node, cls: type[T]) -> T:
    """ROS parameters onto a typed config: one parameter per field of the flat dataclass `cls`, its default the
    field's, the values then built into `cls` by typed_config.from_dict -- the loader every YAML config goes through,
    so a wrong value is a ConfigError naming `<node>.<parameter>`, and a later `ros2 param set` the dataclass refuses
    is refused with that message. Fields typed Union or Any take any ROS type; a field's metadata may give `help`
    (its description) and `read_only`. current_config reads the values again."""
    from rcl_interfaces.msg import ParameterDescriptor

    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: a ROS parameter needs a default")
        tp = hints[f.name]
        dynamic = tp is typing.Any or typing.get_origin(tp) in (typing.Union, types.UnionType)
        if tp is float and isinstance(default, int):
            default = float(default)  # a DOUBLE parameter, so `-p x:=0.5` is accepted
        if isinstance(default, tuple):
            default = list(default)
        declared = default
        if isinstance(default, list) and not default:  # ROS cannot tell an empty list's type: name it
            item = (typing.get_args(tp) or (str,))[0]
            declared = _ARRAY_TYPES.get(item, Parameter.Type.STRING_ARRAY)
        descriptor = ParameterDescriptor(description=f.metadata.get("help", ""), dynamic_typing=dynamic,
                                         read_only=bool(f.metadata.get("read_only", False)))
        try:
            value = node.declare_parameter(f.name, declared, descriptor).value
            values[f.name] = default if value is None else value
        except InvalidParameterTypeException as exc:  # e.g. seed:=abc, a string for an integer
            raise ConfigError(f"{node.get_name()}.{f.name}: expected {getattr(tp, '__name__', tp)} "
                              f"(default {default!r}): {exc}") from None
    name = node.get_name()
    config = from_dict(cls, values, name)

    def check(params):  # `ros2 param set` with a value the dataclass refuses is refused, with the reason
        # (no reference to the node: a node whose constructor fails must not be kept alive by its own callback)
        from rcl_interfaces.msg import SetParametersResult
        proposed = dict(values)
        proposed.update({p.name: p.value for p in params if p.name in values})
        try:
            from_dict(cls, proposed, name)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        values.update(proposed)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(check)
    return config


def current_config(node, cls: type[T]) -> T:
    """`cls` from its parameters' values now (after a `ros2 param set`), checked like declare_config's."""
    values = {}
    for f in dataclasses.fields(cls):
        try:
            value = node.get_parameter(f.name).value
        except ParameterUninitializedException:
            value = None
        if value is None:  # an empty list declared by type only
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        values[f.name] = value
    return from_dict(cls, values, node.get_name())

