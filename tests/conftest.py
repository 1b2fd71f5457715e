"""Shared pytest setup for irevla.

- Keeps DDS on this machine and away from other runs: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and a
  ROS_DOMAIN_ID unique to this test session (unless already set, e.g. by scripts/test.sh).
- MUJOCO_GL defaults to egl (scripts/test.sh falls back to osmesa when EGL cannot render).
- Fixtures: ``ros_context`` (a fresh, initialised rclpy Context per test) and ``spin_thread``
  (spin nodes on a MultiThreadedExecutor in a background thread until teardown).
- Marker ``ros``: tests that need rclpy/DDS. Tests that use ``ros_context`` get it automatically;
  deselect them with ``-m 'not ros'``.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

# Must happen before anything imports rclpy / mujoco.
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
os.environ.setdefault('MUJOCO_GL', 'egl')
# Graph records (robot_server/isolation.py) of this session only: a user's running graph is never joined by a test.
if not os.environ.get('IREVLA_RUN_DIR'):
    import tempfile
    os.environ['IREVLA_RUN_DIR'] = tempfile.mkdtemp(prefix='irevla_graphs_')

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # so tests can `import helpers`
    sys.path.insert(0, str(TESTS_DIR))

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line('markers', 'ros: needs rclpy / DDS (ROS 2 middleware)')


def pytest_collection_modifyitems(config, items):
    for item in items:
        if 'ros_context' in getattr(item, 'fixturenames', ()) and item.get_closest_marker('ros') is None:
            item.add_marker(pytest.mark.ros)


def pytest_report_header(config):
    return (f"irevla: ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID')} "
            f"ROS_AUTOMATIC_DISCOVERY_RANGE={os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')} "
            f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}")


@pytest.fixture
def ros_context():
    """A fresh rclpy Context, initialised for this test and shut down after it.

    Create nodes with ``rclpy.create_node(name, context=ros_context)`` (or ``Node(..., context=...)``).
    """
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    # No rclpy signal handlers: Ctrl-C and pytest-timeout keep working as usual.
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    try:
        yield context
    finally:
        context.try_shutdown()


@pytest.fixture
def spin_thread(ros_context):
    """``spin_thread(nodes)`` spins the given node(s) on the nodes' executor (SteadyMultiThreadedExecutor) in a
    daemon thread.

    Returns the executor. At teardown the thread is stopped and joined, the executor shut down and the
    nodes destroyed (before ``ros_context`` shuts down). May be called more than once per test.
    ``spin_thread.stop_all()`` stops the spinning early (a fixture that must destroy action clients first).
    """
    from rclpy.executors import ExternalShutdownException

    from robot_server.ros_main import SteadyMultiThreadedExecutor

    started = []  # (executor, thread, stop_event, nodes)

    def start(nodes, num_threads: int | None = 4):
        if not isinstance(nodes, (list, tuple)):
            nodes = [nodes]
        context = nodes[0].context if nodes else ros_context
        executor = SteadyMultiThreadedExecutor(num_threads=num_threads, context=context)
        for node in nodes:
            executor.add_node(node)
        stop = threading.Event()

        def run():
            try:
                while not stop.is_set() and context.ok():
                    executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:
                pass

        thread = threading.Thread(target=run, name='spin_thread', daemon=True)
        thread.start()
        started.append((executor, thread, stop, list(nodes)))
        return executor

    def stop_all():
        for _, thread, stop, _ in started:
            stop.set()
            thread.join(timeout=10)

    start.stop_all = stop_all
    yield start

    for executor, thread, stop, nodes in reversed(started):
        stop.set()
        thread.join(timeout=10)
        executor.shutdown(timeout_sec=5)
        for node in nodes:
            try:
                executor.remove_node(node)
            except Exception:
                pass
            try:
                node.destroy_node()
            except Exception:
                pass
        assert not thread.is_alive(), 'spin_thread did not stop within 10 s'


@pytest.fixture(scope="module")
def tiny_model_env(tmp_path_factory):
    """IREVLA_CACHE (where the tiny backbone is written) in a temp dir for the module, two torch threads; yields
    the environment, for tests that hand it to subprocesses."""
    import torch
    mp = pytest.MonkeyPatch()
    mp.setenv("IREVLA_CACHE", str(tmp_path_factory.mktemp("irevla_cache")))
    torch.set_num_threads(2)
    yield dict(os.environ)
    mp.undo()
