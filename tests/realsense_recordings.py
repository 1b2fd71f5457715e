"""RealSense recordings synthesized with librealsense itself (rs.software_device + rs.recorder): what the camera
tests and the real-cell graph test play back instead of a device."""
from __future__ import annotations

import time

import numpy as np
import pyrealsense2 as rs

FPS = 10
N_FRAMES = 20  # 2 s of recording


def marker_image(k: int, w: int, h: int) -> np.ndarray:
    """Frame k: channel 0 = k everywhere; channels 1, 2 encode x and y in 2x2 blocks (so a 2x downscale of an
    even-aligned crop is exact whatever the interpolation)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.full((h, w), k), (x // 2) * 5 % 256, (y // 2) * 7 % 256], axis=-1).astype(np.uint8)


def synthesize(specs: dict, n: int) -> dict:
    """Record n frames at FPS for each spec {path: (serial, w, h, with_depth)} through software devices, all at once
    and paced in real time (playback paces by the recording's own clock). Returns {path: device stamps (s)}."""
    rigs = []
    for path, (serial, w, h, depth) in specs.items():
        dev = rs.software_device()
        dev.register_info(rs.camera_info.serial_number, serial)
        dev.register_info(rs.camera_info.name, "Intel RealSense D435 (software)")
        intr = rs.intrinsics()
        intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = w, h, 60.0, 60.0, w / 2, h / 2
        intr.model = rs.distortion.none

        def add(sensor_name, stream, fmt, bpp, uid):
            sensor = dev.add_sensor(sensor_name)
            vs = rs.video_stream()
            vs.type, vs.index, vs.uid, vs.width, vs.height, vs.fps, vs.bpp, vs.fmt, vs.intrinsics = \
                stream, 0, uid, w, h, FPS, bpp, fmt, intr
            return sensor, sensor.add_video_stream(vs)

        sensors = [add("RGB Camera", rs.stream.color, rs.format.rgb8, 3, 0)]
        if depth:
            sensors.append(add("Stereo Module", rs.stream.depth, rs.format.z16, 2, 1))
            sensors[1][0].add_read_only_option(rs.option.depth_units, 0.001)
            same_place = rs.extrinsics()  # colour and depth from one viewpoint: alignment is a pixel copy
            same_place.rotation, same_place.translation = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], [0.0, 0.0, 0.0]
            sensors[0][1].register_extrinsics_to(sensors[1][1], same_place)
        recorder = rs.recorder(str(path), dev)
        queue = rs.frame_queue(4 * n)
        for sensor, profile in sensors:
            sensor.open(profile)
            sensor.start(queue)
        rigs.append((path, w, h, dev, sensors, recorder, queue))
    t0 = time.time() - 3600.0  # device clock an hour off the host's: stamps must be the device's, not read times
    wall0 = time.monotonic()
    for k in range(n):
        time.sleep(max(0.0, wall0 + k / FPS - time.monotonic()))
        t_ms = (t0 + k / FPS) * 1000.0
        for path, w, h, dev, sensors, recorder, queue in rigs:
            for i, (sensor, profile) in enumerate(sensors):
                data = marker_image(k, w, h) if i == 0 else np.full((h, w), 500 + k, np.uint16)
                f = rs.software_video_frame()
                f.pixels, f.bpp = data, data.itemsize * (3 if i == 0 else 1)
                f.stride = w * f.bpp
                f.timestamp, f.domain, f.frame_number = t_ms, rs.timestamp_domain.global_time, k
                f.profile = profile.as_video_stream_profile()
                if i == 1:
                    f.depth_units = 0.001
                sensor.on_video_frame(f)
    for path, w, h, dev, sensors, recorder, queue in rigs:
        for sensor, _ in sensors:
            sensor.stop()
            sensor.close()
    del rigs, recorder  # finalizes the files
    return {path: [t0 + k / FPS for k in range(n)] for path in specs}
