"""Export of an expert set to LeRobotDataset v3.0 (layout: teleop/lerobot_format.py)."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from teleop import episode_format as ef
from teleop.lerobot_format import (ACTION_KEY, CHUNKS_SIZE, CODEBASE_VERSION, DATA_FILE_SIZE_MB, DATA_PATH,
                                   EPISODES_PATH, IMAGE_PREFIX, STATE_KEY, VIDEO_FILE_SIZE_MB, VIDEO_PATH, PathLike,
                                   _check_pyarrow, _codec_name)


def _next_location(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    file += 1
    if file >= chunks_size:
        return chunk + 1, 0
    return chunk, file


class _VideoFile:
    """One camera's current mp4 file; episodes are appended, frame pts run on across episodes."""

    def __init__(self, path: Path, width: int, height: int, fps: int, codec: str, pix_fmt: str, crf: int,
                 gop: int):
        import av
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(codec, rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, pix_fmt
        opts = {"g": str(gop)}
        if codec in ("libx264", "libx265", "libsvtav1", "libaom-av1"):
            opts["crf"] = str(crf)
        if codec in ("libx264", "libx265"):
            opts["preset"] = "medium"
        self.stream.options = opts
        self.time_base = Fraction(1, fps)
        self.n = 0  # frames written

    def add(self, frames: np.ndarray) -> None:
        import av
        for img in frames:
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            fr.pts = self.n
            fr.time_base = self.time_base
            for packet in self.stream.encode(fr):
                self.container.mux(packet)
            self.n += 1

    def size(self) -> int:
        """Bytes on disk so far (0 until the encoder's first packets reach the muxer)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [int(x.shape[0])]}


class _RunningImageStats:
    """Per-channel stats of images scaled to [0, 1], shaped (3, 1, 1) as LeRobot stores them."""

    def __init__(self):
        self.n = 0
        self.s = np.zeros(3)
        self.s2 = np.zeros(3)
        self.lo = np.full(3, np.inf)
        self.hi = np.full(3, -np.inf)
        self.frames = 0

    def add(self, frames: np.ndarray) -> None:
        x = frames.reshape(-1, 3).astype(np.float64) / 255.0
        self.n += x.shape[0]
        self.s += x.sum(0)
        self.s2 += (x * x).sum(0)
        self.lo = np.minimum(self.lo, x.min(0))
        self.hi = np.maximum(self.hi, x.max(0))
        self.frames += frames.shape[0]

    def result(self) -> dict:
        mean = self.s / max(self.n, 1)
        std = np.sqrt(np.maximum(self.s2 / max(self.n, 1) - mean * mean, 0.0))
        shape = lambda v: np.asarray(v).reshape(3, 1, 1).tolist()  # noqa: E731
        return {"min": shape(self.lo), "max": shape(self.hi), "mean": shape(mean), "std": shape(std),
                "count": [self.frames]}


def _fixed_list(pa, values: np.ndarray, dtype):
    values = np.ascontiguousarray(values, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def export_lerobot(src_dataset_dir: PathLike, out_dir: PathLike, fps: Optional[float] = None,
                   include_failed: bool = False, codec: str = "libx264", pix_fmt: str = "yuv444p", crf: int = 0,
                   gop: int = 2, dtype: str = "float64", data_file_size_mb: float = DATA_FILE_SIZE_MB,
                   video_file_size_mb: float = VIDEO_FILE_SIZE_MB, tasks: Optional[Iterable[str]] = None,
                   progress=None) -> dict:
    """Write the expert set at `src_dataset_dir` as a LeRobotDataset v3.0 at `out_dir` (must not exist or be
    empty). Successful episodes only unless `include_failed`. Returns a summary (episodes, frames, bytes...).

    `fps` defaults to the episodes' control rate (all episodes must share it, their cameras and state layout).
    Video: `codec` (a PyAV encoder, e.g. libx264, libsvtav1, mpeg4), `pix_fmt` (yuv444p keeps full colour
    resolution; yuv420p is what browsers play), `crf` (0 = lossless in YUV for x264), `gop` (keyframe interval:
    small = fast seeking to an episode). `dtype` float64 (exact) or float32 (LeRobot's usual) for state/action.
    """
    pa, pq = _check_pyarrow()
    import av
    from teleop.dataset import read_episode, selected_entries

    src, out = Path(src_dataset_dir), Path(out_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"no dataset directory {src}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} exists and is not an empty directory; choose a new --out")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be float64 or float32, got {dtype!r}")
    if codec not in av.codecs_available:
        raise ValueError(f"video codec {codec!r} is not available in this PyAV build "
                         f"(try libx264, libsvtav1 or mpeg4)")
    entries = selected_entries(src, include_failed=include_failed, tasks=tasks)
    if not entries:
        raise ValueError(f"{src}: no {'' if include_failed else 'successful '}episodes to export")

    first = entries[0]
    cams = [(c["name"], int(c["height"]), int(c["width"])) for c in first["cameras"]]
    state_names = list(first.get("state_names") or [])
    hz = float(first.get("control_hz", 10.0))
    for e in entries[1:]:
        if [(c["name"], int(c["height"]), int(c["width"])) for c in e["cameras"]] != cams:
            raise ValueError(f"{e['name']}: cameras {e['cameras']} differ from {first['name']}'s; a LeRobot "
                             "dataset has one camera layout (export the episodes separately)")
        if list(e.get("state_names") or []) != state_names:
            raise ValueError(f"{e['name']}: state layout differs from {first['name']}'s")
        if float(e.get("control_hz", 10.0)) != hz:
            raise ValueError(f"{e['name']}: control_hz {e.get('control_hz')} differs from {first['name']}'s {hz}")
    fps_f = float(fps) if fps is not None else hz
    if not (fps_f > 0 and abs(fps_f - round(fps_f)) < 1e-9):
        raise ValueError(f"fps must be a positive integer (LeRobot's info.json), got {fps_f:g}")
    fps_i = int(round(fps_f))
    if pix_fmt == "yuv420p" and any(h % 2 or w % 2 for _, h, w in cams):
        raise ValueError("yuv420p needs even image sizes; use pix_fmt yuv444p")

    out.mkdir(parents=True, exist_ok=True)
    np_dtype = np.float64 if dtype == "float64" else np.float32
    keys = {name: IMAGE_PREFIX + name for name, _, _ in cams}
    task_index: dict[str, int] = {}
    ep_rows: list[dict] = []
    all_actions, all_states = [], []
    img_stats = {name: _RunningImageStats() for name, _, _ in cams}
    # data files: rows buffered until the file is full
    data_loc = (0, 0)
    data_buf: list[dict] = []
    data_bytes = 0
    # video files: one open file per camera
    video_loc = {name: (0, 0) for name, _, _ in cams}
    videos: dict[str, _VideoFile] = {}
    global_index = 0
    robot_type = None

    def flush_data():
        nonlocal data_buf, data_bytes
        if not data_buf:
            return
        cat = lambda k: np.concatenate([b[k] for b in data_buf])  # noqa: E731
        table = pa.table({
            STATE_KEY: _fixed_list(pa, cat("state"), np_dtype),
            ACTION_KEY: _fixed_list(pa, cat("action"), np_dtype),
            "timestamp": pa.array(cat("timestamp").astype(np.float32)),
            "frame_index": pa.array(cat("frame_index").astype(np.int64)),
            "episode_index": pa.array(cat("episode_index").astype(np.int64)),
            "index": pa.array(cat("index").astype(np.int64)),
            "task_index": pa.array(cat("task_index").astype(np.int64)),
        })
        path = out / DATA_PATH.format(chunk_index=data_loc[0], file_index=data_loc[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        data_buf, data_bytes = [], 0

    try:
        for k, e in enumerate(entries):
            ep = read_episode(e["path"])
            n = len(ep)
            if ep.state.shape[1] != len(state_names):
                raise ValueError(f"{e['name']}: state has {ep.state.shape[1]} values, names {state_names}")
            if ep.action.shape != (n, len(ef.ACTION_NAMES)):
                raise ValueError(f"{e['name']}: action has shape {ep.action.shape}, expected ({n}, 7)")
            robot = ep.meta.get("robot") or {}
            robot_type = robot_type or robot.get("robot_type") or robot.get("type") or robot.get("backend")
            ti = task_index.setdefault(ep.instruction, len(task_index))
            row: dict[str, Any] = {"episode_index": k, "tasks": [ep.instruction], "length": n,
                                   "data/chunk_index": data_loc[0], "data/file_index": data_loc[1],
                                   "dataset_from_index": global_index, "dataset_to_index": global_index + n}
            data_buf.append({"state": ep.state, "action": ep.action,
                             "timestamp": np.arange(n, dtype=np.float64) / fps_i,
                             "frame_index": np.arange(n), "episode_index": np.full(n, k),
                             "index": np.arange(global_index, global_index + n), "task_index": np.full(n, ti)})
            data_bytes += n * (len(state_names) + 7) * np.dtype(np_dtype).itemsize + n * 36
            global_index += n
            all_actions.append(ep.action)
            all_states.append(ep.state)
            for name, h, w in cams:
                frames = ep.images[name]
                if frames.shape != (n, h, w, 3):
                    raise ValueError(f"{e['name']}: camera {name} frames {frames.shape}, expected {(n, h, w, 3)}")
                key = keys[name]
                v = videos.get(name)
                if v is None:
                    c, f = video_loc[name]
                    v = videos[name] = _VideoFile(out / VIDEO_PATH.format(video_key=key, chunk_index=c,
                                                                          file_index=f),
                                                  w, h, fps_i, codec, pix_fmt, crf, gop)
                row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"] = video_loc[name]
                row[f"videos/{key}/from_timestamp"] = v.n / fps_i
                v.add(frames)
                row[f"videos/{key}/to_timestamp"] = v.n / fps_i
                img_stats[name].add(frames)
                if v.size() >= video_file_size_mb * 1e6:  # full: the next episode opens a new file
                    v.close()
                    del videos[name]
                    video_loc[name] = _next_location(*video_loc[name], CHUNKS_SIZE)
            for key_, x in (("action", ep.action), ("observation.state", ep.state)):
                for s, val in _stats(x).items():
                    row[f"stats/{key_}/{s}"] = val
            meta = ep.meta
            row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        "irevla/name": meta.get("name", ""), "irevla/task": meta.get("task", ""),
                        "irevla/category": meta.get("category", ""), "irevla/success": bool(meta.get("success")),
                        "irevla/operator": meta.get("operator", ""),
                        "irevla/extra": json.dumps(meta.get("extra") or {}, sort_keys=True)})
            ep_rows.append(row)
            if data_bytes >= data_file_size_mb * 1e6:
                flush_data()
                data_loc = _next_location(*data_loc, CHUNKS_SIZE)
            if progress is not None:
                progress(k + 1, len(entries))
        flush_data()
    finally:
        for v in videos.values():
            v.close()

    # meta/episodes
    ep_path = out / EPISODES_PATH
    ep_path.parent.mkdir(parents=True, exist_ok=True)
    cols: dict[str, Any] = {}
    for key in ep_rows[0]:
        vals = [r[key] for r in ep_rows]
        if key == "tasks":
            cols[key] = pa.array(vals, type=pa.list_(pa.string()))
        elif key.startswith("stats/"):
            cols[key] = pa.array(vals, type=pa.list_(pa.float64()) if "count" not in key else pa.list_(pa.int64()))
        elif isinstance(vals[0], bool):
            cols[key] = pa.array(vals, type=pa.bool_())
        elif isinstance(vals[0], int):
            cols[key] = pa.array(vals, type=pa.int64())
        elif isinstance(vals[0], float):
            cols[key] = pa.array(vals, type=pa.float64())
        else:
            cols[key] = pa.array(vals, type=pa.string())
    pq.write_table(pa.table(cols), ep_path)

    # meta/tasks.parquet: task string -> task_index (written as pandas writes a DataFrame indexed by the task)
    tasks_sorted = sorted(task_index.items(), key=lambda kv: kv[1])
    pandas_meta = {"index_columns": ["task"], "column_indexes": [],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": "task", "field_name": "task", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.3"}
    tt = pa.table({"task_index": pa.array([i for _, i in tasks_sorted], pa.int64()),
                   "task": pa.array([t for t, _ in tasks_sorted], pa.string())})
    tt = tt.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(tt, out / "meta" / "tasks.parquet")

    # meta/stats.json
    A, S = np.concatenate(all_actions), np.concatenate(all_states)
    n_total = int(A.shape[0])
    stats = {ACTION_KEY: _stats(A), STATE_KEY: _stats(S)}
    for name, _, _ in cams:
        stats[keys[name]] = img_stats[name].result()
    idx = np.arange(n_total, dtype=np.float64)[:, None]
    stats["index"] = _stats(idx)
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=1))

    # meta/info.json
    features: dict[str, dict] = {
        STATE_KEY: {"dtype": dtype, "shape": [len(state_names)], "names": state_names},
        ACTION_KEY: {"dtype": dtype, "shape": [len(ef.ACTION_NAMES)], "names": list(ef.ACTION_NAMES)},
    }
    for name, h, w in cams:
        features[keys[name]] = {
            "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
            "info": {"video.height": h, "video.width": w, "video.codec": _codec_name(codec),
                     "video.pix_fmt": pix_fmt, "video.is_depth_map": False, "video.fps": fps_i,
                     "video.channels": 3, "has_audio": False}}
    for key, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                    ("index", "int64"), ("task_index", "int64")):
        features[key] = {"dtype": dt, "shape": [1], "names": None}
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type or "unknown",
        "total_episodes": len(ep_rows),
        "total_frames": n_total,
        "total_tasks": len(task_index),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": data_file_size_mb,
        "video_files_size_in_mb": video_file_size_mb,
        "fps": fps_i,
        "splits": {"train": f"0:{len(ep_rows)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    video_bytes = sum(p.stat().st_size for p in (out / "videos").rglob("*.mp4"))
    return {"out": str(out), "episodes": len(ep_rows), "frames": n_total, "tasks": len(task_index),
            "cameras": [n for n, _, _ in cams], "fps": fps_i, "bytes": size, "video_bytes": video_bytes}
