"""Intel RealSense cameras (pyrealsense2) as a CameraSource for camera_node: live devices or recordings.

Per camera (RealSenseCameraConfig): selected by serial number (required when several are plugged in), colour
stream at width x height @ fps in rgb8, optional depth aligned to colour (rs.align), then an optional crop box
(x, y, w, h in sensor pixels) and resize (w, h) applied to both. Recordings play back through the same path
(`playback_file`: .db3 from pyrealsense2 >= 2.56's recorder, .bag from older SDKs / the RealSense Viewer), at the
recorded rate, so a replay behaves like the camera did.

Stamps come from the device clock: frames in the global-time domain (enabled on every sensor that supports it) or
system-time domain carry host-epoch milliseconds already; hardware-clock frames are mapped to the epoch with an
offset measured at the first frame, so their spacing is the device's, not the USB arrival jitter.

Unplug / end of recording: a camera that delivers no frame for `frame_timeout_s` is marked lost with a clear message
(logged once, and raised from read() so camera_node logs it, rate limited); it is reopened every
`reconnect_interval_s` (a live camera once its serial shows up again), and frames resume by themselves.

Threading: open/read/close run in camera_node's capture thread (see cameras/base.py).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from robot_server.backends import load_config
from robot_server.cameras.base import CameraSource, Frame

LOG = logging.getLogger("robot_server.cameras.realsense")


@dataclass(frozen=True)
class RealSenseCameraConfig:
    name: str
    serial: str = ""  # "" = the only connected camera; with a recording: checked against the recorded serial
    width: int = 640
    height: int = 480
    fps: int = 30
    crop: Optional[tuple[int, int, int, int]] = None  # x, y, w, h in sensor pixels, before resize
    resize: Optional[tuple[int, int]] = None  # output width, height
    align_depth: bool = False  # also keep depth aligned to colour (latest_depth()); not published by camera_node
    playback_file: str = ""  # play a recording instead of a live device
    playback_loop: bool = False  # loop seamlessly; otherwise the end of the recording counts as an unplug
    stamps: str = "device"  # device: the frame's device-clock stamp; host: wall clock when read
    frame_timeout_s: float = 1.0
    reconnect_interval_s: float = 1.0

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"camera name must be non-empty without '/', got {self.name!r}")
        if min(self.width, self.height, self.fps) <= 0:
            raise ValueError(f"camera {self.name}: width, height and fps must be positive")
        if self.crop is not None:
            x, y, w, h = self.crop
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"camera {self.name}: crop (x, y, w, h) must be non-negative with w, h > 0")
            if not self.playback_file and (x + w > self.width or y + h > self.height):
                raise ValueError(f"camera {self.name}: crop {self.crop} exceeds {self.width}x{self.height}")
        if self.resize is not None and min(self.resize) <= 0:
            raise ValueError(f"camera {self.name}: resize (w, h) must be positive")
        if self.stamps not in ("device", "host"):
            raise ValueError(f"camera {self.name}: stamps must be 'device' or 'host', got {self.stamps!r}")
        if self.frame_timeout_s <= 0 or self.reconnect_interval_s <= 0:
            raise ValueError(f"camera {self.name}: timeouts must be positive")


@dataclass(frozen=True)
class RealSenseConfig:
    cameras: tuple[RealSenseCameraConfig, ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not self.cameras:
            raise ValueError("realsense: configure at least one camera (cameras: [{name: ..., serial: ...}])")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"realsense: camera names must be unique, got {names}")
        serials = [c.serial for c in self.cameras if c.serial and not c.playback_file]
        if len(set(serials)) != len(serials):
            raise ValueError(f"realsense: each serial may be used once, got {serials}")
        live = [c for c in self.cameras if not c.playback_file]
        if len(live) > 1 and any(not c.serial for c in live):
            raise ValueError("realsense: with several live cameras every camera needs its serial")


def create(config=None, names: tuple = ()) -> "RealSenseCameraSource":
    cfg = load_config(RealSenseConfig, config, section="realsense")
    if names:
        unknown = sorted(set(names) - {c.name for c in cfg.cameras})
        if unknown:
            raise ValueError(f"realsense: no camera(s) {unknown} in the config (has {[c.name for c in cfg.cameras]})")
        cfg = RealSenseConfig(tuple(c for c in cfg.cameras if c.name in names))
    return RealSenseCameraSource(cfg)


def crop_resize(image: np.ndarray, crop, resize, interpolation: Optional[int] = None) -> np.ndarray:
    """Crop box (x, y, w, h) then resize to (w, h); area averaging for colour, nearest for depth (pass it)."""
    if crop is not None:
        x, y, w, h = crop
        if x + w > image.shape[1] or y + h > image.shape[0]:
            raise ValueError(f"crop {crop} exceeds the {image.shape[1]}x{image.shape[0]} frame")
        image = image[y:y + h, x:x + w]
    if resize is not None and (image.shape[1], image.shape[0]) != tuple(resize):
        import cv2
        image = cv2.resize(image, tuple(resize), interpolation=cv2.INTER_AREA if interpolation is None
                           else interpolation)
    return np.ascontiguousarray(image)


class _Camera:
    """One device or recording: pipeline state, reconnection, clock mapping."""

    def __init__(self, rs, cfg: RealSenseCameraConfig):
        self.rs, self.cfg = rs, cfg
        self.pipeline = None
        self.align = None
        self.intrinsics = None  # robot_server.cell_frames.Intrinsics of the published images, once started
        self.serial = cfg.serial
        self.status = "not opened"
        self.lost_message = ""
        self.lost_since: Optional[float] = None
        self.next_attempt = 0.0
        self.clock_offset: Optional[float] = None  # host epoch - device clock (s), hardware-clock domain only
        self.depth: Optional[np.ndarray] = None
        self.depth_scale = 0.001
        self.frames = 0
        self.reconnects = 0

    @property
    def label(self) -> str:
        c = self.cfg
        return f"camera {c.name} ({'recording ' + c.playback_file if c.playback_file else 'serial ' + (self.serial or '?')})"

    def start(self) -> None:
        rs, c = self.rs, self.cfg
        config = rs.config()
        if c.playback_file:
            if not os.path.isfile(c.playback_file):
                raise RuntimeError(f"{self.label}: recording not found")
            config.enable_device_from_file(c.playback_file, repeat_playback=c.playback_loop)
            config.enable_stream(rs.stream.color)  # the recording decides resolution and rate
            if c.align_depth:
                config.enable_stream(rs.stream.depth)
        else:
            serials = [d.get_info(rs.camera_info.serial_number) for d in rs.context().query_devices()]
            if c.serial and c.serial not in serials:
                raise RuntimeError(f"{self.label}: not connected (connected: {serials or 'none'})")
            if not c.serial:
                if len(serials) != 1:
                    raise RuntimeError(f"camera {c.name}: {len(serials)} RealSense cameras connected ({serials}); "
                                       "set `serial` to choose one")
                self.serial = serials[0]
            config.enable_device(self.serial)
            config.enable_stream(rs.stream.color, c.width, c.height, rs.format.rgb8, c.fps)
            if c.align_depth:
                config.enable_stream(rs.stream.depth, c.width, c.height, rs.format.z16, c.fps)
        pipeline = rs.pipeline()
        profile = pipeline.start(config)
        try:
            device = profile.get_device()
            recorded = device.get_info(rs.camera_info.serial_number)
            if c.playback_file and c.serial and recorded != c.serial:
                raise RuntimeError(f"{self.label}: recorded by serial {recorded}, but serial {c.serial} is configured")
            if not c.playback_file:
                for sensor in device.query_sensors():  # device clock mapped to host time inside librealsense
                    if sensor.supports(rs.option.global_time_enabled):
                        sensor.set_option(rs.option.global_time_enabled, 1)
            self.serial = recorded
            from robot_server.cell_frames import Intrinsics
            i = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
            self.intrinsics = Intrinsics(int(i.width), int(i.height), float(i.fx), float(i.fy), float(i.ppx),
                                         float(i.ppy)).cropped_resized(c.crop, c.resize)
            if c.align_depth:
                self.depth_scale = device.first_depth_sensor().get_depth_scale()
                self.align = rs.align(rs.stream.color)
        except Exception:
            pipeline.stop()
            raise
        self.pipeline = pipeline
        self.clock_offset = None
        self.lost_since = None
        self.status = "streaming"
        LOG.info("%s: streaming", self.label)

    def stop(self) -> None:
        if self.pipeline is not None:
            try:
                self.pipeline.stop()
            except RuntimeError:
                pass  # already stopped (device gone)
            self.pipeline = None

    def _lost(self, why: str) -> RuntimeError:
        self.stop()
        now = time.monotonic()
        if self.lost_since is None:
            self.lost_since = now
        self.next_attempt = now + self.cfg.reconnect_interval_s
        message = f"{self.label}: {why}; reconnecting every {self.cfg.reconnect_interval_s:g} s"
        if self.status != f"lost: {why}":  # once per cause, not once per retry
            LOG.warning(message)
        self.status = f"lost: {why}"
        self.lost_message = message
        return RuntimeError(message)

    def ensure_started(self) -> None:
        if self.pipeline is not None:
            return
        if time.monotonic() < self.next_attempt:
            raise RuntimeError(self.lost_message)
        lost_since = self.lost_since
        try:
            self.start()
        except RuntimeError as e:
            raise self._lost(str(e).replace(f"{self.label}: ", "")) from None
        if lost_since is not None:
            self.reconnects += 1
            LOG.warning("%s: reconnected after %.1f s", self.label, time.monotonic() - lost_since)

    def stamp(self, frame) -> float:
        if self.cfg.stamps == "host":
            return time.time()
        t = frame.get_timestamp() / 1000.0
        domain = frame.get_frame_timestamp_domain()
        if domain in (self.rs.timestamp_domain.global_time, self.rs.timestamp_domain.system_time):
            return t
        if self.clock_offset is None or abs(t + self.clock_offset - time.time()) > 1.0:
            self.clock_offset = time.time() - t  # first frame, or the device clock was reset
        return t + self.clock_offset


class RealSenseCameraSource(CameraSource):
    def __init__(self, config: RealSenseConfig):
        try:
            import pyrealsense2 as rs
        except ImportError as e:
            raise RuntimeError(f"pyrealsense2 cannot be imported ({e}); `pip install pyrealsense2` and, on Debian / "
                               "Ubuntu, `apt-get install libusb-1.0-0`") from None
        self.rs = rs
        self.config = config
        self._cams = {c.name: _Camera(rs, c) for c in config.cameras}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._cams)

    def open(self) -> None:
        for cam in self._cams.values():
            try:
                cam.ensure_started()
            except RuntimeError as e:
                LOG.error("%s", e)  # read() retries; the node keeps publishing the other cameras

    def read(self, name: str) -> Frame:
        cam = self._cams[name]
        cam.ensure_started()
        try:
            ok, frames = cam.pipeline.try_wait_for_frames(int(cam.cfg.frame_timeout_s * 1000))
        except RuntimeError as e:  # the device vanished mid-wait
            raise cam._lost(f"stream failed ({e})") from None
        if not ok:
            raise cam._lost(f"no frame for {cam.cfg.frame_timeout_s:g} s (unplugged, or the recording ended)")
        if cam.align is not None:
            frames = cam.align.process(frames)
        color = frames.get_color_frame()
        if not color:
            raise RuntimeError(f"{cam.label}: frameset without colour")
        image = np.asanyarray(color.get_data())
        if color.get_profile().format() == self.rs.format.bgr8:
            image = image[..., ::-1]
        elif image.ndim != 3 or image.shape[2] != 3:
            raise RuntimeError(f"{cam.label}: colour format {color.get_profile().format()} is not rgb8/bgr8")
        stamp = cam.stamp(color)
        out = crop_resize(image, cam.cfg.crop, cam.cfg.resize)
        if cam.align is not None:
            depth = frames.get_depth_frame()
            if depth:
                import cv2
                cam.depth = crop_resize(np.asanyarray(depth.get_data()), cam.cfg.crop, cam.cfg.resize,
                                        interpolation=cv2.INTER_NEAREST)
        cam.frames += 1
        return Frame(name, out, stamp)

    def intrinsics(self, name: str):
        return self._cams[name].intrinsics

    def latest_depth(self, name: str) -> Optional[np.ndarray]:
        """Depth (uint16, units of depth_scale(name) metres) aligned to the last colour frame read, or None."""
        return self._cams[name].depth

    def depth_scale(self, name: str) -> float:
        return self._cams[name].depth_scale

    def status(self) -> dict[str, dict]:
        return {n: {"status": c.status, "serial": c.serial, "frames": c.frames, "reconnects": c.reconnects}
                for n, c in self._cams.items()}

    def close(self) -> None:
        for cam in self._cams.values():
            cam.stop()
