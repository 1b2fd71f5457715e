"""sim_bringup: the simulated cell in ONE process - twin backend, robot node and camera node on one
MultiThreadedExecutor.

Why one process: both nodes need the same MuJoCo twin (the cameras must show the arm the robot node moves), and the
twin lives in memory. The robot node creates the backend from its parameters (backend, task, seed, rate); the
camera node renders from that backend in its own capture thread.

    sim_bringup --ros-args -p task:=pick_red_block -p seed:=3 -p camera_rate:=10.0
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import rclpy
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException
from rclpy.parameter import Parameter

from robot_server.camera_node import CameraNode
from robot_server.robot_node import RobotNode
from robot_server.ros_main import SteadyMultiThreadedExecutor, init_with_stop_event

if TYPE_CHECKING:  # imported where used: mujoco must not load before main() picks its GL backend
    from robot_server.backends.sim import SimTwinBackend


@dataclass
class SimBringup:
    robot: RobotNode
    camera: CameraNode
    executor: Optional[SteadyMultiThreadedExecutor]

    def shutdown(self) -> None:
        self.camera.stop()  # capture thread first: it renders from the backend the robot node owns
        if self.executor is not None:
            self.executor.shutdown(timeout_sec=2.0)
        self.camera.destroy_node()
        self.robot.destroy_node()  # closes the backend it created


def build(context: Optional[Context] = None, robot_params: Optional[list[Parameter]] = None,
          camera_params: Optional[list[Parameter]] = None,
          backend: Optional[SimTwinBackend] = None, make_executor: bool = True) -> SimBringup:
    """Robot node (creating the sim backend from its parameters unless one is given) + camera node."""
    from robot_server.backends.sim import SimTwinBackend
    from robot_server.cameras.sim import SimCameraSource
    robot = RobotNode(backend, context=context, parameter_overrides=robot_params)
    if not isinstance(robot.backend, SimTwinBackend):
        robot.destroy_node()
        raise ValueError("sim_bringup needs the 'sim' backend")
    camera = CameraNode(SimCameraSource(robot.backend), context=context, parameter_overrides=camera_params)
    executor = None
    if make_executor:
        executor = SteadyMultiThreadedExecutor(context=context)
        executor.add_node(robot)
        executor.add_node(camera)
    return SimBringup(robot, camera, executor)


def main(args: Optional[list[str]] = None) -> int:
    from robot_server.mujoco_gl import ensure_mujoco_gl
    ensure_mujoco_gl()  # the cameras render: a working offscreen backend (EGL, else OSMesa) unless MUJOCO_GL is set
    logging.basicConfig(level=logging.INFO)
    stop = init_with_stop_event(args)
    bringup = None
    try:
        # camera_rate is read from the global ROS args by a throwaway node, so one command line configures both.
        probe = rclpy.create_node("sim_bringup_args", allow_undeclared_parameters=True,
                                  automatically_declare_parameters_from_overrides=True)
        camera_rate = probe.get_parameter("camera_rate").value if probe.has_parameter("camera_rate") else 10.0
        probe.destroy_node()
        bringup = build(camera_params=[Parameter("rate", value=float(camera_rate))])
        while not stop.is_set():
            bringup.executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if bringup is not None:
            bringup.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
