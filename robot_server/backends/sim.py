"""The MuJoCo twin as a robot backend, stepped in real time in its own thread.

Why a thread: ROS front ends (and a real arm) expect the world to move on its own at wall-clock speed, whether or
not anybody sends commands. Physics advances in small chunks (a few ms of sim time), each followed by a sleep until
the wall clock has caught up, so commands and camera renders interleave with physics at fine granularity.
Everything touching the twin holds one lock (the twin is not thread-safe).

Use `realtime=False` to step it yourself with `step(seconds)` (tests, batch evaluation).
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Optional

import numpy as np

from robot_server.backends.base import PANDA_ARM_JOINTS, RobotBackend, RobotState
from robot_server.safety import HomeTarget
from sim_twin.twin import CAMERA_NAMES, Twin, TwinConfig

LOG = logging.getLogger("robot_server.backends.sim")


class SimTwinBackend(RobotBackend):
    def __init__(self, twin: Optional[Twin] = None, config: Optional[TwinConfig] = None, task: Optional[str] = None,
                 seed: Optional[int] = 0, realtime: bool = True, chunk_s: float = 0.005, max_lag_s: float = 0.1):
        self.twin = twin if twin is not None else Twin(config or TwinConfig())
        self._lock = threading.RLock()
        dt = self.twin.model.opt.timestep
        # A whole number of physics steps per chunk (5 ms -> 2 steps of 2 ms, i.e. 4 ms).
        self._chunk = max(1, int(chunk_s / dt)) * dt
        self._max_lag = max_lag_s
        self.slips = 0  # how often the sim fell more than max_lag behind the wall clock and skipped ahead
        self.error = ""  # set when the physics thread died; read_state then reports ok=False
        self._gripper = 0.0
        self._home_speed_m_s, self._home_speed_rad_s = 0.15, 0.6
        self.reset_task(task, seed)
        self._running = False
        self._thread: Optional[threading.Thread] = None
        if realtime:
            self.start()

    # ------------------------------------------------------------------ real-time stepping
    @property
    def realtime(self) -> bool:
        return self._running

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        # The physics thread, the camera thread and the ROS executor threads share one GIL. With CPython's default
        # 5 ms switch interval a waiting thread can stall for several ms per hand-off, which starved the 10 Hz
        # command path on 2 cores (measured: 2-17 of 30 actions applied, 4-7 images/s instead of 10). 0.5 ms
        # restores it (26-30 of 30, 10 images/s).
        sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        self._thread = threading.Thread(target=self._run, name="sim-physics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wall0 = time.monotonic()
        sim_elapsed = 0.0
        while self._running:
            with self._lock:
                try:
                    self.twin.advance(self._chunk)
                except Exception as e:  # noqa: BLE001 - report through read_state (ok=False), never die silently
                    self.error = f"physics failed: {type(e).__name__}: {e}"
                    LOG.error(self.error)
                    self._running = False
                    return
            sim_elapsed += self._chunk
            lag = (time.monotonic() - wall0) - sim_elapsed
            if lag > self._max_lag:
                # We cannot keep up (machine busy, long render): slip instead of a burst of catch-up steps.
                self.slips += 1
                sim_elapsed += lag
            elif lag < 0:
                time.sleep(-lag)

    def step(self, seconds: float) -> None:
        """Advance physics by hand (only when not running in real time)."""
        if self._running:
            raise RuntimeError("step() is for realtime=False backends")
        with self._lock:
            self.twin.advance(seconds)

    def _wait(self, seconds: float) -> None:
        if self._running:
            time.sleep(seconds)
        else:
            self.step(seconds)

    # ------------------------------------------------------------------ RobotBackend
    @property
    def home_quat(self) -> np.ndarray:
        return self.twin.home_quat.copy()

    @property
    def home_pos(self) -> np.ndarray:
        return self.twin.home_pos.copy()

    def read_state(self) -> RobotState:
        with self._lock:
            s = self.twin.state()
        ok = not self.error and bool(np.all(np.isfinite(s.q)) and np.all(np.isfinite(s.ee_pos)))
        return RobotState(stamp=time.time(), joint_names=PANDA_ARM_JOINTS, q=s.q, dq=s.dq, ee_pos=s.ee_pos,
                          ee_quat=s.ee_quat, gripper_width=s.gripper_width, ee_vel=s.ee_vel, ok=ok,
                          error=self.error or ("" if ok else "non-finite physics state"))

    def command_pose(self, pos, quat) -> None:
        with self._lock:
            self.twin.set_target(np.asarray(pos, float), np.asarray(quat, float), self._gripper)

    def command_gripper(self, close: float) -> None:
        with self._lock:
            self._gripper = float(np.clip(close, 0.0, 1.0))
            pos, quat, _ = self.twin.target
            self.twin.set_target(pos, quat, self._gripper)

    def hold(self) -> None:
        with self._lock:
            s = self.twin.state()
            if np.all(np.isfinite(s.ee_pos)) and np.all(np.isfinite(s.ee_quat)):
                self.twin.set_target(s.ee_pos, s.ee_quat, self._gripper)

    @property
    def home_target(self) -> HomeTarget:
        """The twin's home TCP pose, streamed by the server through the safety layer at a gentle speed."""
        return HomeTarget(pos=tuple(self.twin.home_pos), quat=tuple(self.twin.home_quat),
                          source="sim twin home (sim_twin/twin.py HOME_POS, HOME_QUAT)",
                          speed_m_s=self._home_speed_m_s, speed_rad_s=self._home_speed_rad_s, tolerance_m=0.005,
                          tolerance_rad=0.02, timeout_s=10.0)

    def wait(self, seconds: float) -> None:
        self._wait(seconds)

    def recover(self) -> None:
        """The twin has no reflexes to clear; the server re-seats the setpoint through the safety layer."""

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        with self._lock:
            self.twin.close()

    # ------------------------------------------------------------------ twin extras
    def reset_task(self, task: Optional[str] = None, seed: Optional[int] = None) -> RobotState:
        """Teleport the arm to the twin's home and re-randomize the task scene (sim only; the twin's controller
        target is its home pose). RobotServerCore checks that home against the safety layer first and re-seats
        the setpoint through the layer afterwards."""
        with self._lock:
            self.twin.reset(task, seed)
            self._gripper = 0.0
        return self.read_state()

    def success(self) -> bool:
        with self._lock:
            return bool(self.twin.success())

    def scene_json(self) -> str:
        """Ground truth of the scene (task, instruction, object poses) as JSON: sim_twin.snapshot."""
        from sim_twin.snapshot import SceneSnapshot
        with self._lock:
            return json.dumps(SceneSnapshot.capture(self.twin))

    def render(self, camera: str) -> np.ndarray:
        return self.render_stamped(camera)[0]

    def render_stamped(self, camera: str) -> tuple[np.ndarray, float]:
        """(image, wall-clock stamp of the physics state it shows).

        The twin creates its renderer lazily in the calling thread: call this from ONE thread only (EGL).
        """
        with self._lock:
            stamp = time.time()  # physics cannot advance while we hold the lock
            return self.twin.render(camera), stamp

    def release_renderers(self) -> None:
        """Free the twin's GL renderers; call from the thread that rendered (they are recreated on demand)."""
        with self._lock:
            self.twin.close()

    @property
    def instruction(self) -> str:
        return self.twin.instruction

    @property
    def task_name(self) -> Optional[str]:
        return None if self.twin.task is None else self.twin.task.name

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.twin.config.cameras)

    def camera_calibration(self) -> list:
        """The twin's cameras as a calibration (robot_server/cell_frames.py): what a real cell reads from YAML."""
        from robot_server.cell_frames import twin_calibration
        with self._lock:
            m = self.twin.model
            ids = {n: m.camera(CAMERA_NAMES[n]).id for n in self.cameras}
            return twin_calibration(m, self.twin.data, ids, self.twin.tcp_site)

    def camera_intrinsics(self, name: str):
        from robot_server.cell_frames import pinhole_from_fovy
        m = self.twin.model
        cfg = self.twin.config
        return pinhole_from_fovy(float(m.cam_fovy[m.camera(CAMERA_NAMES[name]).id]), cfg.render_width,
                                 cfg.render_height)

