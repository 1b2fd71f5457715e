"""teleop_node: the ROS 2 shell over teleop.controller (issue #3, teleop collection).

At 10 Hz (the control contract) it reads the input device once through `Teleop.step()`, publishes the contract
action on the robot's action topic (RobotClient.send_action: reliable, COMMAND_QOS) and passes episode keys to
the recorder node's services (robot_server.ros_interface.SRV_RECORDER_*):

    start -> /irevla/robot/reset (when reset_on_start) then /irevla/recorder/start
    success -> stop_success, failure -> stop_failure, discard -> discard, quit -> quit (then this node exits)

Parameters: device (keyboard | spacemouse; "" = the config's), config (YAML with a `teleop:` section, see
teleop/example_config.yaml), rate (10.0), reset_on_start (true). With no device present it exits with code 2
and one clear message. Task and instruction are the recorder node's parameters
(`ros2 param set /irevla/recorder_node instruction "..."`).

    teleop_node --ros-args -p device:=keyboard
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import replace
from typing import Optional

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from std_srvs.srv import Trigger

from robot_server import ros_interface as ri
from robot_server.client import RobotClient
from teleop.controller import TeleopConfig, make_teleop
from teleop.devices import DeviceError
from robot_server.ros_main import init_with_stop_event

EVENT_SERVICES = {"start": ri.SRV_RECORDER_START, "success": ri.SRV_RECORDER_SUCCESS,
                  "failure": ri.SRV_RECORDER_FAILURE, "discard": ri.SRV_RECORDER_DISCARD, "quit": ri.SRV_RECORDER_QUIT}


def load_config(path: str, device: str) -> TeleopConfig:
    cfg = TeleopConfig.from_yaml(path) if path else TeleopConfig()
    return replace(cfg, device=device) if device else cfg


def main(args: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO)
    stop = init_with_stop_event(args)
    node = executor = teleop = None
    try:
        node = rclpy.create_node("teleop_node", namespace="/irevla")
        node.declare_parameter("device", "")
        node.declare_parameter("config", "")
        node.declare_parameter("rate", 10.0)
        node.declare_parameter("reset_on_start", True)
        p = lambda n: node.get_parameter(n).value  # noqa: E731
        log = node.get_logger()
        try:
            cfg = load_config(str(p("config")), str(p("device")))
            teleop = make_teleop(cfg).open()
        except (DeviceError, ValueError, OSError) as e:
            print(f"teleop_node: cannot use input device: {e}", file=sys.stderr)
            teleop = None
            return 2
        robot = RobotClient(node)
        clients = {ev: node.create_client(Trigger, srv) for ev, srv in EVENT_SERVICES.items()}
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        spin = threading.Thread(target=lambda: _spin(executor, stop), daemon=True)
        spin.start()

        busy = threading.Lock()  # one episode command at a time, off the control loop

        def handle(event: str) -> None:
            with busy:
                if event == "start":
                    teleop.reset()
                    if p("reset_on_start"):
                        ok, msg = robot.call("reset", timeout_s=20.0)
                        (log.info if ok else log.error)(f"robot reset: {msg}")
                        if not ok:
                            return
                ok, msg = _call(clients[event], 10.0)
                (log.info if ok else log.error)(f"{event}: {msg}")
                if event == "quit":
                    stop.set()

        log.info(f"teleop with {cfg.device} at {p('rate'):g} Hz; keys/buttons: start, success, failure, discard, "
                 "quit (see teleop/README.md)")
        period = 1.0 / float(p("rate"))
        t_next = time.monotonic()
        while not stop.is_set():
            try:
                cmd = teleop.step()
            except DeviceError as e:
                log.error(f"input device lost: {e}")
                return 3
            robot.send_action(cmd.action)
            for ev in cmd.events:
                if ev in clients:
                    threading.Thread(target=handle, args=(ev,), daemon=True).start()
                else:
                    log.warning(f"unbound event {ev!r}")
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
            if time.monotonic() - t_next > period:  # fell behind: do not burst
                t_next = time.monotonic()
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        stop.set()
        if teleop is not None:
            teleop.close()
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


def _spin(executor, stop: threading.Event) -> None:
    try:
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.05)
    except ExternalShutdownException:
        pass


def _call(client, timeout_s: float) -> tuple[bool, str]:
    if not client.wait_for_service(timeout_sec=timeout_s):
        return False, f"service {client.srv_name} not available (is recorder_node running?)"
    fut = client.call_async(Trigger.Request())
    deadline = time.monotonic() + timeout_s
    while not fut.done():
        if time.monotonic() > deadline:
            client.remove_pending_request(fut)
            return False, f"service {client.srv_name} did not answer within {timeout_s:.0f} s"
        time.sleep(0.01)
    res = fut.result()
    return bool(res.success), str(res.message)


if __name__ == "__main__":
    sys.exit(main())
