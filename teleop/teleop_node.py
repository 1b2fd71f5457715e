"""teleop_node: the ROS 2 shell over teleop.operator.OperatorLoop (issue #3, teleop collection).

At `rate` (10 Hz, the control contract) it reads the input device once (`OperatorLoop.tick()`), publishes the
contract action on the robot's action topic (RobotClient.send_action: reliable, COMMAND_QOS) and turns episode
keys/buttons into calls of the recorder node's services (robot_server.ros_interface.SRV_RECORDER_*):

    start -> /irevla/robot/reset (when reset_on_start) then /irevla/recorder/start
    success -> stop_success, failure -> stop_failure, discard -> discard, quit -> quit (then this node exits)

The same services are the ROS 2 interface for episode control from anywhere else (`ros2 service call
/irevla/recorder/stop_success std_srvs/srv/Trigger`).

Operator prompt (needs a terminal on stdin; works over SSH): key `t`, or `start` while no task is set, or start-up
(`prompt_at_start`), asks for the task (registry number or name, or a new name) and the instruction (the registry's
phrasing, another one by number, or typed). The answer is set as the recorder node's `task` / `instruction` /
`task_category` parameters through its standard set_parameters service, so it is stored in every following episode's
metadata and `ros2 param set` keeps working. The status line (progress 37/2000, per-task counts, time per episode,
task and instruction, gripper) is redrawn in place from the recorder's progress topic. With a SpaceMouse, the
terminal's keys still give the episode events and the prompt (its motion keys are ignored).

Parameters: device (keyboard | spacemouse; "" = the config's), config (YAML with a `teleop:` section, see
teleop/example_config.yaml), rate (10.0), reset_on_start (true), prompt_at_start (true), task_files (extra task
registry YAML files for the prompt), recorder_node (/irevla/recorder_node). With no device present it exits with
code 2 and one clear message; a device lost while running exits with code 3.

    teleop_node --ros-args -p device:=keyboard
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
from dataclasses import replace
from typing import Any, Optional

import rclpy
from rcl_interfaces.srv import SetParameters
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_server import ros_interface as ri
from robot_server.client import RobotClient
from robot_server.ros_main import SteadyMultiThreadedExecutor, current_config, declare_config, init_with_stop_event
from teleop.controller import Teleop, TeleopConfig, make_teleop
from teleop.devices import DeviceError, KeyboardDevice
from teleop.mapping import KeyboardMapper
from teleop.operator import OperatorLoop, TaskCatalog, TaskChoice, TerminalView, format_status

EVENT_SERVICES = {"start": ri.SRV_RECORDER_START, "success": ri.SRV_RECORDER_SUCCESS,
                  "failure": ri.SRV_RECORDER_FAILURE, "discard": ri.SRV_RECORDER_DISCARD, "quit": ri.SRV_RECORDER_QUIT}
SERVICE_TIMEOUT_S = 10.0
RESET_TIMEOUT_S = 20.0


def load_config(path: str, device: str) -> TeleopConfig:
    cfg = TeleopConfig.from_yaml(path) if path else TeleopConfig()
    return replace(cfg, device=device) if device else cfg


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (ValueError, OSError):
        return False


@dataclasses.dataclass(frozen=True)
class TeleopParams:
    """teleop_node's ROS parameters (robot_server.ros_main.declare_config declares one per field)."""
    device: str = ""  # spacemouse | keyboard (default: the config's)
    config: str = ""  # teleop YAML (teleop/example_config.yaml)
    rate: float = 10.0
    reset_on_start: bool = True  # read at each start
    prompt_at_start: bool = True
    task_files: list[str] = dataclasses.field(default_factory=list)  # task files beside the built-in registry
    recorder_node: str = "/irevla/recorder_node"


class TeleopNode(Node):
    """`teleop`, `keys` (terminal) and `out` (status stream) are built from the parameters unless given (tests)."""

    def __init__(self, context: Optional[Context] = None, node_name: str = "teleop_node",
                 namespace: str = "/irevla", parameter_overrides: Optional[list[Parameter]] = None,
                 teleop: Optional[Teleop] = None, keys: Any = None, out: Any = None,
                 catalog: Optional[TaskCatalog] = None):
        super().__init__(node_name, context=context, namespace=namespace,
                         parameter_overrides=parameter_overrides)
        p = self.params = declare_config(self, TeleopParams)
        log = self.get_logger()
        self.config = load_config(p.config, p.device)
        self.exit_code = 0
        self._quit = threading.Event()
        self._owns_devices = teleop is None
        if teleop is None:  # DeviceError / ValueError here: main() prints it and exits 2
            teleop = make_teleop(self.config).open()
            if self.config.device == "keyboard":
                keys = teleop.device
            elif _stdin_is_tty():
                keys = KeyboardDevice(mode=self.config.keyboard.mode).open()
            out = sys.stdout if sys.stdout.isatty() else None
        self.teleop, self.keys = teleop, keys
        if catalog is None:
            catalog = TaskCatalog()
            if keys is not None:
                try:
                    catalog = TaskCatalog.from_registry([f for f in p.task_files if f])
                except Exception as e:  # noqa: BLE001 - the prompt still takes typed task names
                    log.warning(f"task registry unavailable for the prompt ({type(e).__name__}: {e}); "
                                "type task names")
        key_mapper = KeyboardMapper(self.config.keyboard) if keys is not None and keys is not teleop.device else None
        self.loop = OperatorLoop(teleop, keys, key_mapper, catalog)
        self.view = TerminalView(out) if out is not None else None
        self.progress: Optional[dict] = None
        self.message = ""  # the last answer of a service call, shown on the status line
        self.robot = RobotClient(self)
        calls = ReentrantCallbackGroup()
        self.event_clients = {ev: self.create_client(Trigger, srv, callback_group=calls)
                        for ev, srv in EVENT_SERVICES.items()}
        self.set_params = self.create_client(SetParameters, f"{p.recorder_node.rstrip('/')}/set_parameters",
                                             callback_group=calls)
        self.create_subscription(String, ri.TOPIC_RECORDER_PROGRESS, self._on_progress, ri.LATCHED_QOS,
                                 callback_group=calls)
        self._busy = threading.Lock()  # one episode command at a time, off the control loop
        self._events: list[tuple] = []
        self._events_cv = threading.Condition()
        self._worker = threading.Thread(target=self._work, name="teleop-events", daemon=True)
        self._worker.start()
        self._prompt_at_start = p.prompt_at_start
        self._open_prompt = False  # set by the progress callback, done by the control loop (one thread)
        self.create_timer(1.0 / p.rate, self._tick, callback_group=MutuallyExclusiveCallbackGroup())
        log.info(f"teleop with {self.config.device} at {p.rate:g} Hz; keys: n start, Enter success, Backspace "
                 "failure, x discard, t task/instruction, q quit (teleop/README.md)")

    # ------------------------------------------------------------------------------------ control loop
    def _tick(self) -> None:
        if self._quit.is_set():
            return
        if self._open_prompt:
            self._open_prompt = False
            self.loop.open_prompt()
        try:
            res = self.loop.tick()
        except DeviceError as e:
            self.get_logger().error(f"input device lost: {e}")
            self.exit_code = 3
            self._quit.set()
            return
        self.robot.send_action(res.action)
        if res.choice is not None:
            self._queue(("task", res.choice))
        for ev in res.events:
            if ev in self.event_clients:
                self._queue(("event", ev))
            else:
                self.get_logger().warning(f"unbound event {ev!r}")
        if self.view is not None:
            self.view.print_lines(res.output)
            status = format_status(self.progress, res.prompt_open, res.gripper_closed, self.message)
            self.view.set_status(status, self.loop.prompt.input_line if self.loop.prompt else "")
        else:
            for line in res.output:
                self.get_logger().info(line)

    def _on_progress(self, msg: String) -> None:
        try:
            prog = json.loads(msg.data)
        except ValueError:
            return
        self.progress = prog
        if prog.get("task"):  # the recorder's current task is what the prompt offers to keep
            self.loop.current = TaskChoice(prog["task"], prog.get("instruction", ""), prog.get("task_category", ""))
        if self._prompt_at_start:  # once the recorder is known, so that Enter can keep its task
            self._prompt_at_start = False
            self._open_prompt = True

    # ------------------------------------------------------------------------------------ episode commands
    def _queue(self, item: tuple) -> None:
        with self._events_cv:
            self._events.append(item)
            self._events_cv.notify()

    def _work(self) -> None:
        while True:
            with self._events_cv:
                while not self._events:
                    self._events_cv.wait()
                item = self._events.pop(0)
            if item[0] == "stop":
                return
            try:
                self._handle(*item)
            except Exception as e:  # noqa: BLE001 - a failed command must not end the node
                self._say(f"{item[1]}: {type(e).__name__}: {e}", error=True)

    def _say(self, text: str, error: bool = False) -> None:
        self.message = text
        (self.get_logger().error if error else self.get_logger().info)(text)

    def _handle(self, kind: str, arg: Any) -> None:
        if kind == "task":
            ok, msg = self.set_recorder_task(arg)
            self._say(msg, error=not ok)
            return
        event = arg
        if event == "start" and current_config(self, TeleopParams).reset_on_start:
            ok, msg = self.robot.call("reset", timeout_s=RESET_TIMEOUT_S)
            if not ok:
                self._say(f"robot reset failed, not starting: {msg}", error=True)
                return
        ok, msg = _call(self.event_clients[event], Trigger.Request(), SERVICE_TIMEOUT_S)
        self._say(f"{event}: {msg}" if ok else f"{event} refused: {msg}", error=not ok)
        if event == "quit":
            self._quit.set()

    def set_recorder_task(self, choice: TaskChoice) -> tuple[bool, str]:
        """Set the recorder node's task / instruction / category parameters (its set_parameters service)."""
        req = SetParameters.Request()
        params = [Parameter("task", value=choice.task), Parameter("instruction", value=choice.instruction),
                  Parameter("task_category", value=choice.category)]
        req.parameters = [q.to_parameter_msg() for q in params]
        ok, res = _call(self.set_params, req, SERVICE_TIMEOUT_S)
        if not ok:
            return False, f"cannot set the task on the recorder: {res}"
        bad = [r.reason for r in res.results if not r.successful]
        if bad:
            return False, f"recorder refused the task: {'; '.join(bad)}"
        return True, f"task {choice.task}: \"{choice.instruction}\" (used from the next start)"

    @property
    def quit_requested(self) -> bool:
        return self._quit.is_set()

    def destroy_node(self):
        self._quit.set()
        self._queue(("stop", None))
        self._worker.join(timeout=RESET_TIMEOUT_S + SERVICE_TIMEOUT_S)
        if self.view is not None:
            self.view.close()
        if self._owns_devices:
            self.teleop.close()
            if self.keys is not None and self.keys is not self.teleop.device:
                self.keys.close()
        return super().destroy_node()


def _call(client, request, timeout_s: float) -> tuple[bool, Any]:
    """(True, response) or (False, why) for a service call; never raises, never waits longer than timeout_s."""
    if not client.wait_for_service(timeout_sec=timeout_s):
        return False, f"service {client.srv_name} not available (is recorder_node running?)"
    fut = client.call_async(request)
    deadline = time.monotonic() + timeout_s
    while not fut.done():
        if time.monotonic() > deadline:
            client.remove_pending_request(fut)
            return False, f"service {client.srv_name} did not answer within {timeout_s:.0f} s"
        time.sleep(0.01)
    res = fut.result()
    if isinstance(res, Trigger.Response):
        return bool(res.success), str(res.message)
    return True, res


def main(args: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO)
    stop = init_with_stop_event(args)
    node = executor = None
    try:
        try:
            node = TeleopNode()
        except (DeviceError, ValueError, OSError) as e:
            print(f"teleop_node: cannot use input device: {e}", file=sys.stderr)
            return 2
        executor = SteadyMultiThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and not node.quit_requested:
            executor.spin_once(timeout_sec=0.1)
        return node.exit_code
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if executor is not None:
            executor.shutdown(timeout_sec=2.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
