"""camera_node: publishes sensor_msgs/Image (rgb8) per camera from a CameraSource.

All capture happens in ONE dedicated thread owned by the node (MuJoCo EGL contexts and camera SDK handles are
thread-bound); the executor never renders. Publishing from that thread is thread-safe in rclpy.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from typing import Optional

import numpy as np
from rclpy.context import Context
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image

from robot_server import ros_interface as ri
from robot_server.cameras.base import CameraSource, Frame
from robot_server.ros_main import declare_config, stamp_msg

LOG = logging.getLogger("robot_server.camera_node")


def camera_info_msg(intr, header) -> CameraInfo:
    """sensor_msgs/CameraInfo of an undistorted pinhole (robot_server.cell_frames.Intrinsics), same header as the
    image it describes."""
    msg = CameraInfo()
    msg.header = header
    msg.width, msg.height = int(intr.width), int(intr.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [intr.fx, 0.0, intr.cx, 0.0, intr.fy, intr.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [intr.fx, 0.0, intr.cx, 0.0, 0.0, intr.fy, intr.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def frame_to_msg(frame: Frame) -> Image:
    img = np.ascontiguousarray(frame.image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"camera {frame.name}: expected HxWx3 uint8, got {img.shape} {img.dtype}")
    msg = Image()
    msg.header.stamp = stamp_msg(frame.stamp)
    msg.header.frame_id = ri.camera_frame(frame.name)
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = int(img.shape[1] * 3)
    msg.data = img.tobytes()
    return msg


def _param(help: str, **field):
    return dataclasses.field(metadata={"help": help, "read_only": True}, **field)


@dataclasses.dataclass(frozen=True)
class CameraParams:
    """camera_node's ROS parameters (robot_server.ros_main.declare_config), all read-only."""
    source: str = _param("camera source (robot_server/cameras: realsense; the sim cameras come with sim_bringup)",
                         default="sim")
    config: str = _param("YAML of the source, e.g. config/backends/realsense.yaml", default="")
    rate: float = _param("frames per second per camera, (0, 120] Hz", default=10.0)
    cameras: list[str] = _param("only these cameras of the config (one node per RealSense serial); empty: all",
                                default_factory=list)

    def __post_init__(self):
        if not (0.0 < self.rate <= 120.0):
            raise ValueError(f"rate must be in (0, 120] Hz, got {self.rate}")


class CameraNode(Node):
    """Publishes every camera of `source`; without one (the `camera_node` executable) the node builds it from its own
    `source` and `config` parameters, so all three parameters are declared and listed by `ros2 param list`."""

    def __init__(self, source: Optional[CameraSource] = None, *, context: Optional[Context] = None,
                 node_name: str = "camera_node", namespace: str = "/irevla",
                 parameter_overrides: Optional[list[Parameter]] = None, autostart: bool = True):
        super().__init__(node_name, context=context, namespace=namespace,
                         parameter_overrides=parameter_overrides or [])
        try:
            p = declare_config(self, CameraParams)
            if source is None:
                from robot_server.cameras import make_camera_source
                from robot_server.config import resolve_config
                source = make_camera_source(p.source, str(resolve_config(p.config)) if p.config else None,
                                            names=[c for c in p.cameras if c])
        except Exception:
            super().destroy_node()  # nothing else was created yet
            raise
        rate = p.rate
        self.period = 1.0 / rate
        self.source = source
        self.pubs = {name: self.create_publisher(Image, ri.camera_topic(name), ri.IMAGE_QOS) for name in source.names}
        self._intrinsics: dict = {}
        self.info_pubs = {name: self.create_publisher(CameraInfo, ri.camera_info_topic(name), ri.IMAGE_QOS)
                          for name in source.names}
        self.frames_published = 0
        self.capture_errors = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if autostart:
            self.start()
        self.get_logger().info(f"camera_node up: cameras={list(source.names)} rate={rate} Hz")

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="camera-capture", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        try:
            self.source.open()
        except Exception as e:  # noqa: BLE001
            self.get_logger().error(f"camera source failed to open: {e}")
            return
        try:
            next_t = time.monotonic()
            while not self._stop.is_set() and self.context.ok():
                for name, pub in self.pubs.items():
                    try:
                        msg = frame_to_msg(self.source.read(name))
                        pub.publish(msg)
                        intr = self._intrinsics.get(name)
                        if intr is None:  # asked until known (a device not yet started has none), then kept
                            intr = self._intrinsics[name] = self.source.intrinsics(name)
                        if intr is not None:
                            self.info_pubs[name].publish(camera_info_msg(intr, msg.header))
                        self.frames_published += 1
                    except Exception as e:  # noqa: BLE001 - one bad frame must not end the stream
                        self.capture_errors += 1
                        self.get_logger().error(f"camera {name}: {type(e).__name__}: {e}",
                                                throttle_duration_sec=1.0)
                next_t += self.period
                delay = next_t - time.monotonic()
                if delay < -self.period:  # fell behind (slow render): do not burst to catch up
                    next_t = time.monotonic()
                elif delay > 0:
                    self._stop.wait(delay)
        finally:
            try:
                self.source.close()
            except Exception as e:  # noqa: BLE001
                self.get_logger().error(f"camera source close failed: {e}")

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    """Standalone camera node for real cameras: `camera_node --ros-args -p source:=realsense -p config:=cams.yaml`.

    The sim cameras render the robot node's twin, so in the sim use `sim_bringup` (robot + camera node in one
    process)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from robot_server.ros_main import init_with_stop_event
    logging.basicConfig(level=logging.INFO)
    stop = init_with_stop_event(args)
    node = None
    try:
        try:
            node = CameraNode()  # source, config and rate from the command line (-p source:=realsense ...)
        except Exception as e:  # noqa: BLE001 - a clear message and a non-zero exit, not a traceback
            LOG.error("camera_node: %s", e)
            return 2
        executor = SingleThreadedExecutor()  # nothing to execute: capture runs in the node's own thread
        executor.add_node(node)
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
