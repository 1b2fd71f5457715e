"""What a node's executor costs the computation beside it: the policy server's pattern (10 Hz frames of two cameras
and 50 Hz robot state on a reentrant callback group, a control thread running the encoder) with rclpy's
MultiThreadedExecutor and with robot_server.ros_main.SteadyMultiThreadedExecutor, against no executor at all.

    python benchmarks/bench_executor.py [--seconds 8]

Prints, per executor, the spin rounds per second and the compute thread's work rate as a ratio of the rate measured
with no executor in the same run (1.00 = the executor costs nothing).
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", "87")


def compute_rate(seconds: float, stop: threading.Event | None = None) -> float:
    """Small torch ops in a Python loop (the shape of an encoder's forward on a CPU): ops per second."""
    import torch
    torch.set_num_threads(1)
    x = torch.randn(64, 64)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(50):
            x = torch.tanh(x @ x.T * 0.01)
        n += 50
    return n / (time.perf_counter() - t0)


def run(executor_cls, seconds: float) -> tuple[float, float]:
    import numpy as np
    import rclpy
    from rclpy.callback_groups import ReentrantCallbackGroup
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState

    from robot_server import ros_interface as ri
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    pub = rclpy.create_node("bench_executor_pub", context=ctx)
    sub = rclpy.create_node("bench_executor_sub", context=ctx)
    frame = Image(height=128, width=128, encoding="rgb8", step=384, data=np.zeros(128 * 384, np.uint8).tobytes())
    pubs = [pub.create_publisher(Image, ri.camera_topic(c), ri.LATEST_QOS) for c in ("front", "wrist")]
    state = pub.create_publisher(JointState, ri.TOPIC_JOINT_STATES, ri.LATEST_QOS)
    pub.create_timer(0.1, lambda: [p.publish(frame) for p in pubs])
    pub.create_timer(0.02, lambda: state.publish(JointState(position=[0.0] * 7)))
    group = ReentrantCallbackGroup()
    got = [0]
    for c in ("front", "wrist"):
        sub.create_subscription(Image, ri.camera_topic(c), lambda m: got.__setitem__(0, got[0] + 1), ri.LATEST_QOS,
                                callback_group=group)
    sub.create_subscription(JointState, ri.TOPIC_JOINT_STATES, lambda m: got.__setitem__(0, got[0] + 1),
                            ri.LATEST_QOS, callback_group=group)
    pub_exec = SingleThreadedExecutor(context=ctx)
    pub_exec.add_node(pub)
    done = threading.Event()
    threading.Thread(target=lambda: [pub_exec.spin_once(0.05) for _ in iter(lambda: done.is_set(), True)],
                     daemon=True).start()
    executor = executor_cls(context=ctx)
    executor.add_node(sub)
    rounds = [0]

    def spin() -> None:
        while not done.is_set():
            executor.spin_once(timeout_sec=0.1)
            rounds[0] += 1

    threading.Thread(target=spin, daemon=True).start()
    time.sleep(1.0)  # discovery
    r0, g0 = rounds[0], got[0]
    rate = compute_rate(seconds)
    spins, msgs = (rounds[0] - r0) / seconds, (got[0] - g0) / seconds
    done.set()
    time.sleep(0.3)
    executor.shutdown(timeout_sec=1.0)
    pub_exec.shutdown(timeout_sec=1.0)
    rclpy.shutdown(context=ctx)
    return rate, spins, msgs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    from robot_server.ros_main import SteadyMultiThreadedExecutor
    compute_rate(1.0)  # warm-up
    base = compute_rate(args.seconds)
    print(f"no executor: {base:,.0f} ops/s (baseline)")
    for name, cls in [("rclpy SingleThreadedExecutor", SingleThreadedExecutor), ("rclpy MultiThreadedExecutor", MultiThreadedExecutor),
                      ("SteadyMultiThreadedExecutor", SteadyMultiThreadedExecutor)]:
        rate, spins, msgs = run(cls, args.seconds)
        print(f"{name}: {spins:,.0f} spin rounds/s, {msgs:.0f} messages/s taken, compute {rate:,.0f} ops/s = "
              f"{rate / base:.2f} x baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
