"""The real-cell graph (`irevla launch sim_cell cell:=real`): robot_node with the FR3 backend against franky-sim (a
libfranka-protocol peer on 127.0.0.1) and one camera_node per RealSense camera playing back recordings, started by
the launcher as a lab would, on the (test's) host network; a subscriber checks state, images, CameraInfo and TF."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from peers import provision, servers
from robot_server import ros_interface as ri
from robot_server.cell_frames import TCP_FRAME, camera_frame

pytestmark = pytest.mark.ros
rs = pytest.importorskip("pyrealsense2", reason="pyrealsense2 not importable")
REPO = Path(__file__).resolve().parents[1]
BASE = "fr3_link0"


@pytest.fixture(scope="module")
def franky_sim():
    peer = servers.provisioned(servers.start_franky_sim)
    yield peer
    peer.stop()


def _cell_files(tmp_path, resize: int, crop_wrist: bool = True, stamps=None):
    """The real cell's files for a test: two RealSense recordings (64x48) and their camera config (front cropped and
    resized to `resize`; the wrist too unless crop_wrist is False), the FR3 backend config pointing at franky-sim,
    and a safety box. Returns (camera config, backend config, safety config)."""
    from realsense_recordings import synthesize
    front, wrist = str(tmp_path / "front.db3"), str(tmp_path / "wrist.db3")
    synthesize({front: ("111", 64, 48, False), wrist: ("222", 64, 48, False)}, 30)
    cameras = []
    for name, serial, path in (("front", "111", front), ("wrist", "222", wrist)):
        cam = {"name": name, "serial": serial, "playback_file": path, "playback_loop": True}
        if name == "front" or crop_wrist:
            cam.update(crop=[8, 0, 48, 48], resize=[resize, resize])
        if stamps:
            cam["stamps"] = stamps
        cameras.append(cam)
    cams = tmp_path / "cams.yaml"
    cams.write_text(yaml.safe_dump({"realsense": {"cameras": cameras}}))
    fr3 = tmp_path / "fr3.yaml"
    fr3.write_text(yaml.safe_dump({"franka_libfranka": {
        "hostname": servers.HOST, "realtime": False, "home_dynamics_factor": 1.0,
        "extra_pythonpath": [str(servers.provisioned(provision.franky_client))]}}))
    safety = tmp_path / "safety.yaml"
    safety.write_text(yaml.safe_dump({"safety": {"pos_min": [0.2, -0.3, 0.2], "pos_max": [0.6, 0.3, 0.6],
                                                 "nominal_quat": [0.0, 1.0, 0.0, 0.0]}}))
    return cams, fr3, safety


def test_real_cell_graph_against_franky_sim_and_realsense_playback(franky_sim, ros_context, spin_thread, tmp_path):
    from sensor_msgs.msg import CameraInfo, Image, JointState
    from tf2_msgs.msg import TFMessage
    import rclpy

    cams, fr3, safety = _cell_files(tmp_path, 32, crop_wrist=False)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "robot_server.launch_graph", "sim_cell", "cell:=real", "robot:=fr3",
         f"backend_config:={fr3}", f"camera_config:={cams}", f"safety_config:={safety}", f"base_frame:={BASE}",
         "calibration:=config/calibration.yaml", "camera_rate:=10.0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node = rclpy.create_node("real_cell_probe", context=ros_context)
    got = {"joints": [], "tf": [], "static": [], "front": [], "wrist": [], "info_front": [], "info_wrist": []}
    lock = threading.Lock()

    def keep(key):
        def cb(msg):
            with lock:
                got[key].append(msg)
        return cb

    node.create_subscription(JointState, ri.TOPIC_JOINT_STATES, keep("joints"), ri.STATE_QOS)
    node.create_subscription(TFMessage, ri.TOPIC_TF, keep("tf"), ri.TF_QOS)
    node.create_subscription(TFMessage, ri.TOPIC_TF_STATIC, keep("static"), ri.TF_STATIC_QOS)
    for name in ("front", "wrist"):
        node.create_subscription(Image, ri.camera_topic(name), keep(name), ri.IMAGE_QOS)
        node.create_subscription(CameraInfo, ri.camera_info_topic(name), keep(f"info_{name}"), ri.IMAGE_QOS)
    spin_thread([node])
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and launcher.poll() is None:
            with lock:
                if all(len(v) >= 3 for k, v in got.items() if k != "static") and got["static"]:
                    break
            time.sleep(0.2)
        with lock:
            counts = {k: len(v) for k, v in got.items()}
        assert all(n >= 1 for n in counts.values()), counts
        assert got["joints"][-1].name[0] == "fr3_joint1"  # the FR3 backend, through libfranka's protocol
        static = {t.child_frame_id: t for t in got["static"][0].transforms}
        assert static[camera_frame("front")].header.frame_id == BASE  # calibration: parent base -> the arm's base
        assert static[camera_frame("wrist")].header.frame_id == TCP_FRAME
        assert static[camera_frame("front")].transform.translation.z == pytest.approx(0.72)
        tcp = got["tf"][-1].transforms[0]
        assert tcp.header.frame_id == BASE and tcp.child_frame_id == TCP_FRAME
        p = tcp.transform.translation
        assert 0.2 < math.hypot(p.x, p.y) < 0.8 and 0.1 < p.z < 0.8  # a real pose of the simulated FR3
        f, w = got["front"][-1], got["wrist"][-1]
        assert (f.width, f.height, w.width, w.height) == (32, 32, 64, 48)
        fi, wi = got["info_front"][-1], got["info_wrist"][-1]
        assert fi.header.frame_id == camera_frame("front") and (fi.width, fi.height) == (32, 32)
        # the recording's intrinsics (fx 60, principal point at the centre) after the crop and the 1.5x downscale
        assert fi.k[0] == pytest.approx(60 * 32 / 48) and fi.k[2] == pytest.approx((32 - 8 + 0.5) * 32 / 48 - 0.5)
        assert wi.k[0] == pytest.approx(60.0) and wi.k[2] == pytest.approx(32.0)
    finally:
        launcher.send_signal(signal.SIGINT)
        try:
            log, _ = launcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            launcher.kill()
            log, _ = launcher.communicate()
    assert "real cell: host network" in log, log[-3000:]
    assert launcher.returncode == 0, log[-3000:]


def test_real_cell_teleop_collection_records_episodes_that_validate(franky_sim, tmp_path):
    """`irevla launch teleop_collection cell:=real` in a terminal: keys start an episode (the FR3 homes through
    libfranka), move the arm, end it as a success, quit; the episode validates with both cameras' frames."""
    from pty_process import ProcessTerminal
    from teleop.dataset import read_episode, validate_dataset
    from teleop import storage

    cams, fr3, safety = _cell_files(tmp_path, 32)
    data = tmp_path / "data"
    term = ProcessTerminal([sys.executable, "-m", "robot_server.launch_graph", "teleop_collection", "cell:=real",
                            "robot:=fr3", f"backend_config:={fr3}", f"camera_config:={cams}",
                            f"safety_config:={safety}", f"base_frame:={BASE}", "image_size:=32",
                            f"out_dir:={data}", "task:=pick_red_block", "instruction:=pick up the red block"],
                           dict(os.environ))
    try:
        at = term.expect(r"Task for the next episodes", 120)
        term.type("\r")  # keep the graph's task and instruction
        at = term.expect(r"idle \| 0/", 30, at)
        time.sleep(1.0)
        term.type("n")  # start: home through libfranka, then record
        at = term.expect(r"recording|episode_000000", 60, at)
        time.sleep(2.0)
        for _ in range(60):  # hold +x for ~3 s (a loaded machine samples the keys less often)
            term.type("w")
            time.sleep(0.05)
        time.sleep(1.0)
        term.type("\r")  # success
        term.expect(r"1/", 30, at)
        term.type("q")
        deadline = time.monotonic() + 30
        while term.proc.poll() is None and time.monotonic() < deadline:
            term.read()
    finally:
        screen = term.stop()
    rep = validate_dataset(data)
    assert rep.ok and rep.n_files == 1, rep.summary() + screen[-3000:]
    ep = read_episode(storage.episode_files(data)["episode_000000"])
    assert ep.meta["success"] is True and ep.meta["task"] == "pick_red_block"
    assert ep.images["front"].shape[1:] == (32, 32, 3) and ep.images["wrist"].shape[1:] == (32, 32, 3)
    assert len(ep.action) >= 10 and (ep.action[:, 0] > 0).sum() >= 2, ep.action[:, 0]  # the +x keys were recorded


def _real_rl_session(tmp_path, recorded, fr3, cams, safety, rl_cfg):
    from pty_process import ProcessTerminal
    return ProcessTerminal([sys.executable, "-m", "robot_server.launch_graph", "rl_session", "cell:=real",
                            "robot:=fr3", f"backend_config:={fr3}", f"camera_config:={cams}",
                            f"safety_config:={safety}", f"base_frame:={BASE}", "calibration:=config/calibration.yaml",
                            f"checkpoint:={REPO / 'policy' / 'default_model'}", "task:=press_button",
                            "instruction:=press the button", "reward:=operator", "auto_reset:=false", "demos:=0",
                            f"demo_data:={recorded}", f"rl_config:={rl_cfg}", "learning_starts:=5",
                            "checkpoint_every_minutes:=0.05", f"learner_out:={tmp_path / 'learner'}",
                            f"actor_out:={tmp_path / 'actor'}"], dict(os.environ))


def _episode(term, at: int, key: str, seconds: float = 2.5) -> int:
    at = term.expect(r"reset the scene, then press \[r\]", 120, at)
    term.type("r")
    time.sleep(seconds)  # the FR3 acts on the policy's actions (latents of the camera playback)
    return term.press_until(key, r"episode \d+: (success|failure)", 60, at)


def test_real_cell_rl_session_keys_sigkill_resume_harvest_handback(franky_sim, tmp_path):  # noqa: C901
    """Algorithm 1's stage 1 on a real cell, exercised against the peers: rl_session cell:=real (FR3 on franky-sim,
    RealSense playback), demos from a recorded episode set, episodes started and marked by keys in a pty, learner
    checkpoints with the RL head handed back into a VLA checkpoint; SIGKILL of the learner ends the graph, the same
    command resumes it (learner from its checkpoint, actor with its cached demos), the harvest keeps every
    success of both runs, and stage 2 trains a checkpoint on it."""
    import json
    import signal as sig
    import subprocess as sp
    from teleop.dataset import validate_dataset

    recorded = tmp_path / "recorded"
    proc = sp.run([sys.executable, "-m", "robot_server.cli", "collect", "--out", str(recorded), "--episodes-per-task",
                   "2", "--tasks", "press_button", "--workers", "1", "--image-size", "128", "--no-progress"],
                  capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cams, fr3, safety = _cell_files(tmp_path, 128, stamps="host")  # the recordings' clock is an hour off
    from rl_helpers import SMALL_SAC
    rl_cfg = tmp_path / "rl.yaml"
    rl_cfg.write_text(yaml.safe_dump({"session": {"sac": SMALL_SAC}}))

    term = _real_rl_session(tmp_path, recorded, fr3, cams, safety, rl_cfg)
    try:
        at = term.expect(r"2 recorded demo episode", 240)  # the recorded episodes, encoded once
        at = _episode(term, at, "s")
        at = _episode(term, at, "f")
        at = term.expect(r"RL head handed back into", 120, at)
        learner = sp.run(["pgrep", "-f", f"rl_learner.*{tmp_path / 'learner'}"], capture_output=True, text=True)
        pids = [int(p) for p in learner.stdout.split()]
        assert pids, "no learner process"
        os.kill(pids[0], sig.SIGKILL)  # a crash: no final checkpoint
        term.expect(r"rl_learner exited with code", 30, at)
        deadline = time.monotonic() + 60
        while term.proc.poll() is None and time.monotonic() < deadline:
            term.read()
    finally:
        first = term.stop()
    assert "Traceback" not in first, first[-4000:]
    ckpts = sorted((tmp_path / "learner" / "checkpoints").glob("*"))
    assert ckpts, first[-3000:]

    term = _real_rl_session(tmp_path, recorded, fr3, cams, safety, rl_cfg)  # the same command again
    try:
        at = term.expect(r"learner: resumed from", 240)
        at = term.expect(r"demos 2 \|", 240, at)  # the cached chunks, sent again
        _episode(term, at, "s")
        time.sleep(1.0)
    finally:
        second = term.stop()
    assert "Traceback" not in second, second[-4000:]
    assert "recorded demo episode" not in second  # cached: not encoded again
    rep = validate_dataset(tmp_path / "actor" / "harvest")
    actor_lines = "\n".join(ln for ln in (first + second).splitlines() if "rl_actor" in ln or "actor:" in ln)
    assert rep.ok and rep.n_files == 2, rep.summary() + "\n" + actor_lines[-4000:]  # one success per run
    meta = json.loads((tmp_path / "learner" / "rl_head_ckpt" / "meta.json").read_text())
    assert meta["stage"] == 1 and meta["rl_updates"] > 0
    # Stage 2 of Algorithm 1 on the robot's data: the recorded expert episodes + the harvest, from the handed-back
    # checkpoint (LoRA of the VLM + head), as a lab runs it after the session.
    stage2 = tmp_path / "stage2"
    proc = sp.run([sys.executable, "-m", "robot_server.cli", "train", "--config", "config/policy_towers.yaml",
                   "--data", str(recorded), "--data-rl", str(tmp_path / "actor" / "harvest"),
                   "--checkpoint", str(tmp_path / "learner" / "rl_head_ckpt"), "--out", str(stage2), "--steps", "2",
                   "--batch-size", "4", "--eval-samples", "0", "--eval-every", "0", "--no-progress"],
                  capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((stage2 / "final" / "meta.json").read_text())
    assert out["origin"] == str(tmp_path / "learner" / "rl_head_ckpt") and out["vlm_id"] != meta["vlm_id"]
