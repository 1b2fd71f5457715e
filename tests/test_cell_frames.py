"""TF and CameraInfo: the cameras' extrinsics (twin model or calibration YAML) and intrinsics, checked by projecting a
known object into the rendered image, then published by robot_node (/tf_static, /tf) and camera_node (camera_info)
and read back over real DDS by a subscriber."""
from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter

from robot_server import cell_frames as cf
from robot_server import ros_interface as ri
from robot_server.backends.sim import SimTwinBackend
from sim_twin.twin import TwinConfig


def _project(xyz_base, cam: cf.Transform, tcp: cf.Transform, intr: cf.Intrinsics) -> tuple[float, float]:
    """Pixel (u, v) of a base-frame point through an optical-frame camera (parent base or TCP)."""
    pos, quat = np.asarray(cam.xyz), np.asarray(cam.quat_wxyz)
    if cam.parent == cf.TCP_FRAME:  # chain base -> tcp -> camera
        pos = np.asarray(tcp.xyz) + cf._rotate(tcp.quat_wxyz, pos)
        quat = cf._quat_mul(tcp.quat_wxyz, quat)
    p = cf._rotate(cf._quat_conj(quat), np.asarray(xyz_base) - pos)
    assert p[2] > 0, "the point is behind the camera"
    return intr.fx * p[0] / p[2] + intr.cx, intr.fy * p[1] / p[2] + intr.cy


@pytest.fixture(scope="module")
def backend():
    b = SimTwinBackend(config=TwinConfig(render_width=128, render_height=128), task="pick_red_block", seed=3,
                       realtime=False)
    yield b
    b.close()


def test_the_twin_calibration_projects_the_block_onto_its_pixels(backend):
    """Extrinsics and intrinsics together: the red block's centre, projected, lands on red pixels in both cameras."""
    cams = {t.child: t for t in backend.camera_calibration()}
    state = backend.read_state()
    tcp = cf.tcp_transform(state.ee_pos, state.ee_quat)
    assert cams[cf.camera_frame("front")].parent == cf.BASE_FRAME
    assert cams[cf.camera_frame("wrist")].parent == cf.TCP_FRAME
    block = backend.twin.object_pos("red_block")
    for name in ("front", "wrist"):
        intr = backend.camera_intrinsics(name)
        u, v = _project(block, cams[cf.camera_frame(name)], tcp, intr)
        assert 0 <= u < 128 and 0 <= v < 128, (name, u, v)
        img = backend.render(name).astype(int)
        r, g, b = img[int(round(v)), int(round(u))]
        assert r > 120 and r > g + 60 and r > b + 60, (name, u, v, (r, g, b))
        # ...and a point 10 cm to the side does not look like the block
        u2, v2 = _project(block + np.array([0.0, 0.1, 0.0]), cams[cf.camera_frame(name)], tcp, intr)
        if 0 <= u2 < 128 and 0 <= v2 < 128:
            r2, g2, b2 = img[int(round(v2)), int(round(u2))]
            assert not (r2 > 120 and r2 > g2 + 60 and r2 > b2 + 60)


def test_calibration_yaml_round_trip_and_errors(backend, tmp_path):
    cams = backend.camera_calibration()
    path = tmp_path / "calibration.yaml"
    cf.write_calibration(cams, path)
    back = {t.child: t for t in cf.load_calibration(path, cameras=["front", "wrist"])}
    for t in cams:
        assert back[t.child].parent == t.parent
        assert np.allclose(back[t.child].xyz, t.xyz, atol=1e-5)
        assert np.allclose(back[t.child].quat_wxyz, t.quat_wxyz, atol=1e-5)
    with pytest.raises(cf.CalibrationError, match="side"):
        cf.load_calibration(path, cameras=["front", "side"])
    path.write_text("calibration:\n  cameras:\n    front: {parent: base, xyz: [1, 0, 0.7], quat_wxyz: [1, 1, 0, 0]}\n")
    with pytest.raises(cf.CalibrationError, match="unit quaternion"):
        cf.load_calibration(path)
    path.write_text("calibration:\n  cameras:\n    front: {parent: elbow, xyz: [1, 0, 0.7], quat_wxyz: [1, 0, 0, 0]}\n")
    with pytest.raises(cf.CalibrationError, match="parent"):
        cf.load_calibration(path)


def test_intrinsics_follow_crop_and_resize():
    intr = cf.Intrinsics(640, 480, 600.0, 600.0, 319.5, 239.5)
    out = intr.cropped_resized((80, 0, 480, 480), (224, 224))
    assert (out.width, out.height) == (224, 224)
    assert out.fx == pytest.approx(600 * 224 / 480) and out.cx == pytest.approx(111.5)  # centre stays the centre
    f = cf.pinhole_from_fovy(90.0, 100, 100)
    assert f.fy == pytest.approx(50.0) and f.cy == pytest.approx(49.5)


@pytest.mark.ros
def test_tf_and_camera_info_over_dds(ros_context, spin_thread):
    from sensor_msgs.msg import CameraInfo
    from tf2_msgs.msg import TFMessage
    from robot_server import sim_bringup
    b = sim_bringup.build(context=ros_context, robot_params=[Parameter("task", value="pick_red_block"),
                                                             Parameter("seed", value=3),
                                                             Parameter("sim_image_size", value=128)],
                          camera_params=[Parameter("rate", value=10.0)], make_executor=False)
    import rclpy
    node = rclpy.create_node("frames_probe", context=ros_context)
    got: dict = {"tf": [], "static": [], "info": {}}
    lock = threading.Lock()

    def keep(key):
        def cb(msg):
            with lock:
                got[key].append(msg)
        return cb

    def info(name):
        def cb(msg):
            with lock:
                got["info"][name] = msg
        return cb

    node.create_subscription(TFMessage, ri.TOPIC_TF, keep("tf"), ri.TF_QOS)
    for name in ("front", "wrist"):
        node.create_subscription(CameraInfo, ri.camera_info_topic(name), info(name), ri.IMAGE_QOS)
    spin_thread([b.camera, b.robot, node])
    time.sleep(1.0)  # /tf_static is latched: a late subscriber still gets it
    node.create_subscription(TFMessage, ri.TOPIC_TF_STATIC, keep("static"), ri.TF_STATIC_QOS)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with lock:
            if got["static"] and len(got["tf"]) > 5 and len(got["info"]) == 2:
                break
        time.sleep(0.1)
    static = {t.child_frame_id: t for t in got["static"][0].transforms}
    assert set(static) == {cf.camera_frame("front"), cf.camera_frame("wrist")}
    assert static[cf.camera_frame("front")].header.frame_id == ri.BASE_FRAME
    assert static[cf.camera_frame("wrist")].header.frame_id == cf.TCP_FRAME
    tcp = got["tf"][-1].transforms[0]
    assert tcp.header.frame_id == ri.BASE_FRAME and tcp.child_frame_id == cf.TCP_FRAME
    ee = b.robot.backend.read_state().ee_pos
    assert math.dist((tcp.transform.translation.x, tcp.transform.translation.y, tcp.transform.translation.z),
                     ee) < 0.01
    for name in ("front", "wrist"):
        m = got["info"][name]
        intr = b.robot.backend.camera_intrinsics(name)
        assert m.header.frame_id == cf.camera_frame(name) and (m.width, m.height) == (128, 128)
        assert m.k[0] == pytest.approx(intr.fx) and m.k[2] == pytest.approx(intr.cx) and m.k[8] == 1.0
    assert b.robot.callback_errors == 0 and b.camera.capture_errors == 0
