"""RealSense camera source: recordings synthesized with librealsense itself (rs.software_device + rs.recorder), played
back through the real pyrealsense2 pipeline, published by camera_node over real DDS.

Only the camera hardware is replaced (at the lowest layer: librealsense's own software device writes the recording
a real camera would); selection by serial, crop / resize, aligned depth, device-clock stamps, the lost-camera path
(the recording ends like an unplug) and the reconnect run the production code.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image

from helpers import wait_for
from robot_server import ros_interface as ri
from robot_server.camera_node import CameraNode
from robot_server.cameras import make_camera_source
from ros_clients import Sink, stamp_s

rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 not importable (apt-get install libusb-1.0-0?)")

from realsense_recordings import FPS, N_FRAMES, marker_image, synthesize  # noqa: E402


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    d = tmp_path_factory.mktemp("realsense")
    front, wrist = str(d / "front.db3"), str(d / "wrist.db3")
    stamps = synthesize({front: ("111", 64, 48, True), wrist: ("222", 40, 30, False)}, N_FRAMES)
    return {"front": (front, stamps[front]), "wrist": (wrist, stamps[wrist])}


def _config(recordings, **front_extra):
    return {"realsense": {"cameras": [
        {"name": "front", "serial": "111", "playback_file": recordings["front"][0], "crop": [8, 8, 48, 32],
         "resize": [24, 16], "align_depth": True, **front_extra},
        {"name": "wrist", "serial": "222", "playback_file": recordings["wrist"][0], "playback_loop": True}]}}


def _image(msg) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


@pytest.mark.ros
def test_playback_through_camera_node(recordings, ros_context, spin_thread):
    import rclpy
    source = make_camera_source("realsense", _config(recordings, frame_timeout_s=0.5, reconnect_interval_s=0.5))
    node = CameraNode(source, context=ros_context, parameter_overrides=[rclpy.parameter.Parameter("rate", value=10.0)])
    client = rclpy.create_node("realsense_test_client", context=ros_context)
    sinks = {n: Sink() for n in ("front", "wrist")}
    for n, sink in sinks.items():
        client.create_subscription(Image, ri.camera_topic(n), sink, ri.IMAGE_QOS)
    spin_thread([node, client])
    # The front recording (3 s, no loop) ends, counts as unplugged, is reopened: frame 0 must come round again.
    def restarted():
        ks = [int(_image(r.msg)[0, 0, 0]) for r in sinks["front"].items]
        return any(b < a for a, b in zip(ks, ks[1:]))
    wait_for(restarted, 15.0, interval=0.1, message="front camera did not come back after its recording ended")
    node.stop()

    front_path, front_stamps = recordings["front"]
    seen = set()
    for r in sinks["front"].items:
        m = r.msg
        assert (m.encoding, m.width, m.height, m.header.frame_id) == ("rgb8", 24, 16, ri.camera_frame("front"))
        img = _image(m)
        k = int(img[0, 0, 0])
        # crop (8, 8, 48, 32) then 2x down: output pixel (v, u) shows source (8 + 2v, 8 + 2u)
        np.testing.assert_array_equal(img, marker_image(k, 64, 48)[8:40:2, 8:56:2])
        assert abs(stamp_s(m.header) - front_stamps[k]) < 1e-3, "stamp must be the recorded device stamp"
        seen.add(k)
    assert len(seen) >= 8, f"only frames {sorted(seen)} arrived"
    ks = [int(_image(r.msg)[0, 0, 0]) for r in sinks["front"].items]
    first_run = ks[:next(i for i, (a, b) in enumerate(zip(ks, ks[1:])) if b < a) + 1]
    assert first_run == sorted(first_run), "frames out of order"

    wrist_stamps = recordings["wrist"][1]
    for r in sinks["wrist"].items:
        img = _image(r.msg)
        assert img.shape == (30, 40, 3)
        k = int(img[0, 0, 0])
        np.testing.assert_array_equal(img, marker_image(k, 40, 30))
        assert abs(stamp_s(r.msg.header) - wrist_stamps[k]) < 1e-3
    assert len(sinks["wrist"].items) >= 8

    st = source.status()
    assert st["front"]["serial"] == "111" and st["wrist"]["serial"] == "222", st
    assert st["front"]["reconnects"] >= 1 and st["wrist"]["reconnects"] == 0, st
    assert node.capture_errors >= 1  # the lost front camera was reported (and the node kept running)


def test_aligned_depth_crop_resize_and_serial_check(recordings):
    source = make_camera_source("realsense", _config(recordings))
    source.open()
    try:
        frame = source.read("front")
        k = int(frame.image[0, 0, 0])
        depth = source.latest_depth("front")
        assert depth is not None and depth.shape == (16, 24) and depth.dtype == np.uint16
        assert (depth == 500 + k).all(), "depth must be the frame aligned with this colour image"
        assert abs(source.depth_scale("front") - 0.001) < 1e-6
    finally:
        source.close()

    wrong = make_camera_source("realsense", {"cameras": [
        {"name": "front", "serial": "999", "playback_file": recordings["front"][0]}]})
    wrong.open()  # logs, does not raise: the node keeps running and retries
    for _ in range(2):  # the first read and the retry both name the mismatch
        with pytest.raises(RuntimeError, match="recorded by serial 111, but serial 999 is configured"):
            wrong.read("front")
    wrong.close()

    with pytest.raises(ValueError, match="unknown key"):
        make_camera_source("realsense", {"cameras": [{"name": "front", "serail": "1"}]})
    with pytest.raises(ValueError, match="several live cameras"):
        make_camera_source("realsense", {"cameras": [{"name": "a"}, {"name": "b", "serial": "2"}]})


def _call(node, srv_type, name: str, request, timeout: float = 10.0):
    cli = node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=timeout), f"{name} not offered"
    fut = cli.call_async(request)
    wait_for(fut.done, timeout, interval=0.05, message=f"{name} did not answer")
    return fut.result()


@pytest.mark.ros
def test_camera_node_declares_source_config_and_rate(recordings, ros_context, spin_thread, tmp_path):
    """The camera_node executable's way: the node builds its source from its own parameters, all declared with a
    description, so `ros2 param list` / `ros2 param describe` show them (asked here over DDS, as ros2 param does)."""
    import rclpy
    import yaml
    from rcl_interfaces.srv import DescribeParameters, ListParameters
    from rclpy.parameter import Parameter
    cfg = tmp_path / "cams.yaml"
    cfg.write_text(yaml.safe_dump(_config(recordings)))
    node = CameraNode(context=ros_context, parameter_overrides=[Parameter("source", value="realsense"),
                                                                Parameter("config", value=str(cfg))])
    probe = rclpy.create_node("camera_param_probe", context=ros_context)
    spin_thread([node, probe])
    try:
        assert sorted(node.source.names) == ["front", "wrist"]  # built from the `config` parameter
        listed = _call(probe, ListParameters, "/irevla/camera_node/list_parameters", ListParameters.Request())
        assert {"source", "config", "rate"} <= set(listed.result.names), listed.result.names
        described = _call(probe, DescribeParameters, "/irevla/camera_node/describe_parameters",
                          DescribeParameters.Request(names=["source", "config", "rate"]))
        assert all(d.description for d in described.descriptors), described.descriptors
    finally:
        node.stop()


@pytest.mark.ros
def test_camera_node_executable_rejects_an_unknown_source_in_one_line():
    out = subprocess.run([sys.executable, "-m", "robot_server.camera_node", "--ros-args", "-p", "source:=no_such"],
                         capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "unknown camera source 'no_such'" in out.stderr, out.stderr
