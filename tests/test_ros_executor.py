"""robot_server.ros_main.SteadyMultiThreadedExecutor over real DDS: every message taken once, callbacks still run in
parallel, errors still surface, and the spinning thread goes round about once per callback (rclpy's own
MultiThreadedExecutor goes round hundreds to thousands of times a second on the same traffic)."""
from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.ros


def _spin_for(executor, seconds: float) -> int:
    rounds, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        executor.spin_once(timeout_sec=0.05)
        rounds += 1
    return rounds


def _pub_sub(ctx, topic: str, rate_hz: float, on_msg, group=None):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import Int32
    pub_node = rclpy.create_node("steady_pub", context=ctx)
    sub_node = rclpy.create_node("steady_sub", context=ctx)
    pub = pub_node.create_publisher(Int32, topic, 100)
    count = [0]

    def tick():
        count[0] += 1
        pub.publish(Int32(data=count[0]))

    pub_node.create_timer(1.0 / rate_hz, tick)
    sub_node.create_subscription(Int32, topic, on_msg, 100, callback_group=group)
    pub_exec = SingleThreadedExecutor(context=ctx)
    pub_exec.add_node(pub_node)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: [pub_exec.spin_once(0.05) for _ in iter(stop.is_set, True)], daemon=True)
    thread.start()

    def close():
        stop.set()
        thread.join(5)
        pub_exec.shutdown(1.0)
        pub_node.destroy_node()

    return sub_node, count, close


def test_one_round_per_message_and_every_message_taken(ros_context):
    from rclpy.callback_groups import ReentrantCallbackGroup

    from robot_server.ros_main import SteadyMultiThreadedExecutor
    got: list[int] = []
    lock = threading.Lock()

    def on_msg(msg):
        with lock:
            got.append(msg.data)

    sub, sent, close = _pub_sub(ros_context, "/steady/count", 100.0, on_msg, ReentrantCallbackGroup())
    executor = SteadyMultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(sub)
    try:
        _spin_for(executor, 1.0)  # discovery
        n0 = len(got)
        rounds = _spin_for(executor, 2.0)
        taken = len(got) - n0
    finally:
        close()
        executor.shutdown(2.0)
        sub.destroy_node()
    assert taken >= 100, f"only {taken} of ~200 messages taken in 2 s"
    assert len(set(got)) == len(got), "a message was handed to a callback twice"
    # one round per callback plus the 50 ms timeouts of idle moments; the busy loop makes it >> 2 x messages
    assert rounds <= 2 * taken + 60, f"{rounds} spin rounds for {taken} messages: the executor is busy-looping"


def test_callbacks_of_a_reentrant_group_still_run_in_parallel_and_errors_surface(ros_context):
    from rclpy.callback_groups import ReentrantCallbackGroup

    from robot_server.ros_main import SteadyMultiThreadedExecutor
    inside, peak, lock = [0], [0], threading.Lock()

    def slow(msg):
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        time.sleep(0.2)
        with lock:
            inside[0] -= 1

    sub, _, close = _pub_sub(ros_context, "/steady/slow", 50.0, slow, ReentrantCallbackGroup())
    executor = SteadyMultiThreadedExecutor(num_threads=3, context=ros_context)
    executor.add_node(sub)
    try:
        _spin_for(executor, 2.0)
    finally:
        close()
    assert peak[0] >= 2, "callbacks of a reentrant group ran one at a time"
    executor.shutdown(2.0)
    sub.destroy_node()

    def broken(msg):
        raise RuntimeError("callback failed")

    sub, _, close = _pub_sub(ros_context, "/steady/broken", 50.0, broken)
    executor = SteadyMultiThreadedExecutor(num_threads=2, context=ros_context)
    executor.add_node(sub)
    try:
        with pytest.raises(RuntimeError, match="callback failed"):
            _spin_for(executor, 3.0)
    finally:
        close()
        executor.shutdown(2.0)
        sub.destroy_node()
