"""LeRobotDataset v3.0 export / import of the expert set (`irevla dataset export --format lerobot`,
`irevla dataset import-lerobot`).

Export writes Hugging Face LeRobot's published v3.0 layout (pyarrow + PyAV, no `lerobot` package needed)::

    OUT/meta/info.json                                   codebase_version "v3.0", fps, features, paths, totals
    OUT/meta/stats.json                                  per feature mean/std/min/max/count
    OUT/meta/tasks.parquet                               task string (the instruction) -> task_index
    OUT/meta/episodes/chunk-000/file-000.parquet         one row per episode: length, data and video locations
    OUT/data/chunk-000/file-000.parquet                  frames of many episodes, concatenated
    OUT/videos/observation.images.<cam>/chunk-000/file-000.mp4   frames of many episodes, concatenated

Per frame: ``observation.state`` = the recorded state row (names = the episode's ``state_names``: joints, ee pose
wxyz, gripper width), ``action`` = the 7-D contract action ``[dx, dy, dz, rx, ry, rz, gripper]`` (end-effector
delta + gripper), one video feature per camera, ``timestamp`` = frame_index / fps, ``task_index`` -> the
instruction. float64 by default, so actions and states travel bit-exact; images go through the video codec
(default libx264, yuv444p, crf 0: lossless in YUV, only the RGB<->YUV rounding remains, see teleop/README.md).
Episode rows also carry ``irevla/*`` columns (task name, category, success, operator, extra) that LeRobot ignores
and the import uses when present.

Import reads a v3 dataset whose action is a 7-D end-effector delta (+ gripper) and whose observation.state is
laid out as irevla's (joints + STATE_TAIL) and writes episodes through `EpisodeRecorder` (MCAP + index.jsonl,
exactly as `irevla collect`); anything else is refused with an error naming the feature.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

from teleop import episode_format as ef

LOG = logging.getLogger("teleop.lerobot_format")
PathLike = Union[str, Path]

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"


def _check_pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError("LeRobot export/import needs pyarrow: pip install pyarrow -c "
                           "requirements/constraints.txt") from None
    import pyarrow as pa
    import pyarrow.parquet as pq
    return pa, pq


# ---------------------------------------------------------------------------------------------- export
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


def _codec_name(codec: str) -> str:
    return {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libaom-av1": "av1",
            "libopenh264": "h264"}.get(codec, codec)


# ---------------------------------------------------------------------------------------------- import
def _names(feature: dict) -> Optional[list[str]]:
    """A feature's names as a flat list ([...] or {"motors": [...]}); None when absent."""
    names = feature.get("names")
    if names is None:
        return None
    if isinstance(names, dict):
        vals = list(names.values())
        names = vals[0] if len(vals) == 1 else [x for v in vals for x in v]
    return [str(x) for x in names]


def read_info(lerobot_dir: PathLike) -> dict:
    """meta/info.json of a v3 dataset, checked for the fields the import relies on (ValueError / FileNotFound)."""
    root = Path(lerobot_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no LeRobot dataset directory {root}")
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {root} is not a LeRobotDataset v3 directory")
    try:
        info = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(info).__name__}")
    missing = [k for k in ("codebase_version", "fps", "features", "data_path") if k not in info]
    if missing:
        raise ValueError(f"{path}: lacks {missing}")
    version = str(info["codebase_version"])
    if not version.startswith("v3."):
        raise ValueError(f"{path}: codebase_version {version!r} is not v3.x (convert it with LeRobot's "
                         "v2.1 -> v3.0 converter first)")
    if not isinstance(info["features"], dict):
        raise ValueError(f"{path}: features must be an object")
    return info


def check_importable(info: dict, assume_ee_delta: bool = False) -> dict:
    """The import plan for an info.json: joint names, cameras (key, name, h, w) — or ValueError naming the
    feature that does not fit irevla's episodes (7-D ee-delta action, joints + ee pose + gripper state)."""
    feats = info["features"]
    act = feats.get(ACTION_KEY)
    if act is None:
        raise ValueError("feature 'action' is missing: nothing to import")
    shape = list(act.get("shape") or [])
    if shape != [7]:
        raise ValueError(f"feature 'action' has shape {shape}, expected [7] = end-effector delta "
                         f"{list(ef.ACTION_NAMES)} (joint-space or other actions cannot be imported)")
    if act.get("dtype") not in ("float32", "float64"):
        raise ValueError(f"feature 'action' has dtype {act.get('dtype')!r}, expected float32/float64")
    names = _names(act)
    if names is not None and names != list(ef.ACTION_NAMES) and not assume_ee_delta:
        raise ValueError(f"feature 'action' names {names} are not the end-effector delta layout "
                         f"{list(ef.ACTION_NAMES)}; if they are an ee delta + gripper in [-1, 1] in that order, "
                         "pass --assume-ee-delta")
    st = feats.get(STATE_KEY)
    if st is None:
        raise ValueError(f"feature '{STATE_KEY}' is missing: the robot state cannot be reconstructed")
    snames = _names(st)
    sshape = list(st.get("shape") or [])
    tail = list(ef.STATE_TAIL)
    if (snames is None or len(snames) != (sshape[0] if sshape else -1) or len(snames) <= len(tail)
            or snames[-len(tail):] != tail):
        raise ValueError(f"feature '{STATE_KEY}' (shape {sshape}, names {snames}) is not irevla's state layout "
                         f"[joint names..., {', '.join(tail)}]")
    cams = []
    for key, f in feats.items():
        if not key.startswith(IMAGE_PREFIX):
            continue
        if f.get("dtype") != "video":
            raise ValueError(f"feature '{key}' has dtype {f.get('dtype')!r}; only video cameras can be imported")
        fshape = list(f.get("shape") or [])
        fnames = _names(f) or ["height", "width", "channels"]
        if len(fshape) != 3:
            raise ValueError(f"feature '{key}' has shape {fshape}, expected [H, W, 3]")
        dims = dict(zip(fnames, fshape))
        h, w, c = dims.get("height", fshape[0]), dims.get("width", fshape[1]), dims.get("channels", fshape[2])
        if c != 3:
            raise ValueError(f"feature '{key}' has {c} channels, expected 3 (RGB)")
        name = re.sub(r"[^A-Za-z0-9_]", "_", key[len(IMAGE_PREFIX):]) or "camera"
        cams.append((key, name, int(h), int(w)))
    if not cams:
        raise ValueError(f"no '{IMAGE_PREFIX}<camera>' video feature: irevla episodes need at least one camera")
    if len({n for _, n, _, _ in cams}) != len(cams):
        raise ValueError(f"camera names {[n for _, n, _, _ in cams]} collide after sanitising")
    return {"joint_names": snames[: -len(tail)], "cameras": cams}


def _column_matrix(col) -> np.ndarray:
    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    flat = np.asarray(arr.flatten().to_numpy(zero_copy_only=False), np.float64)
    return flat.reshape(len(arr), -1)


class _VideoReader:
    """Frames of an episode from a (possibly many-episode) mp4, located by timestamps."""

    def __init__(self):
        self._open: dict[Path, Any] = {}

    def frames(self, path: Path, from_ts: float, n: int, fps: float) -> np.ndarray:
        import av
        c = self._open.get(path)
        if c is None:
            if not path.is_file():
                raise FileNotFoundError(f"video file {path} is missing")
            c = self._open[path] = av.open(str(path))
        stream = c.streams.video[0]
        tb = stream.time_base
        c.seek(int(math.floor(max(from_ts - 0.5 / fps, 0) / tb)), stream=stream, backward=True, any_frame=False)
        out: list[Optional[np.ndarray]] = [None] * n
        for frame in c.decode(stream):
            if frame.pts is None:
                continue
            i = int(round((float(frame.pts * tb) - from_ts) * fps))
            if i < 0:
                continue
            if i >= n:
                break
            out[i] = frame.to_ndarray(format="rgb24")
        missing = [i for i, f in enumerate(out) if f is None]
        if missing:
            raise ValueError(f"{path}: {len(missing)} of {n} frames from t={from_ts:.3f} s are missing from the "
                             f"video (first missing frame {missing[0]})")
        return np.stack(out)

    def close(self) -> None:
        for c in self._open.values():
            c.close()
        self._open.clear()


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return s[:60] or "lerobot_task"


def import_lerobot(lerobot_dir: PathLike, out_dataset_dir: PathLike, assume_ee_delta: bool = False,
                   task: Optional[str] = None, category: str = "lerobot", operator: str = "lerobot_import",
                   episodes: Optional[Iterable[int]] = None, progress=None) -> dict:
    """Write the episodes of the v3 dataset at `lerobot_dir` into the expert set at `out_dataset_dir` through
    `EpisodeRecorder` (appends, as `irevla collect` does). instruction = the episode's task string; task name =
    the episode's `irevla/task` column when the dataset came from irevla, else `task` or a slug of the
    instruction. Returns a summary."""
    pa, pq = _check_pyarrow()
    from teleop.episode_format import CameraConfig
    from teleop.recorder import EpisodeRecorder, RecorderConfig

    root = Path(lerobot_dir)
    info = read_info(root)
    plan = check_importable(info, assume_ee_delta)
    fps = float(info["fps"])
    if not fps > 0:
        raise ValueError(f"{root / 'meta' / 'info.json'}: fps {info['fps']!r} is not positive")
    ep_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not ep_files:
        raise FileNotFoundError(f"{root / 'meta' / 'episodes'} holds no episodes parquet file")
    ep_table = pa.concat_tables([pq.read_table(p) for p in ep_files], promote_options="default")
    rows = sorted(ep_table.to_pylist(), key=lambda r: r["episode_index"])
    if episodes is not None:
        want = set(int(i) for i in episodes)
        rows = [r for r in rows if r["episode_index"] in want]
    if not rows:
        raise ValueError(f"{root}: no episodes to import")
    need = ["episode_index", "length", "data/chunk_index", "data/file_index"]
    for key, _, _, _ in plan["cameras"]:
        need += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp")]
    lacking = [k for k in need if k not in rows[0]]
    if lacking:
        raise ValueError(f"{ep_files[0]}: episode rows lack {lacking}")
    tasks_path = root / "meta" / "tasks.parquet"
    task_strings: dict[int, str] = {}
    if tasks_path.is_file():
        tt = pq.read_table(tasks_path)
        tcol = "task" if "task" in tt.column_names else "__index_level_0__"
        if tcol in tt.column_names and "task_index" in tt.column_names:
            task_strings = dict(zip(tt.column("task_index").to_pylist(), tt.column(tcol).to_pylist()))

    joints = tuple(plan["joint_names"])
    n_j = len(joints)
    cams = plan["cameras"]
    cfg = RecorderConfig(root=str(out_dataset_dir),
                         cameras=tuple(CameraConfig(name, width=w, height=h) for _, name, h, w in cams),
                         control_hz=fps, target_episodes=len(rows), joint_names=joints,
                         robot={"robot_type": info.get("robot_type") or "unknown", "imported_from": "lerobot",
                                "source": str(root.resolve())})
    data_cache: dict[Path, Any] = {}
    videos = _VideoReader()
    rec = EpisodeRecorder(cfg)
    written, frames = [], 0
    try:
        for r in rows:
            k = int(r["episode_index"])
            n = int(r["length"])
            dpath = root / info["data_path"].format(chunk_index=int(r["data/chunk_index"]),
                                                     file_index=int(r["data/file_index"]))
            t = data_cache.get(dpath)
            if t is None:
                if not dpath.is_file():
                    raise FileNotFoundError(f"data file {dpath} of episode {k} is missing")
                data_cache.clear()  # episodes are stored in file order: keep one file in memory
                t = data_cache[dpath] = pq.read_table(dpath)
            for col in ("episode_index", "frame_index", ACTION_KEY, STATE_KEY):
                if col not in t.column_names:
                    raise ValueError(f"{dpath}: column {col!r} is missing")
            epi = t.column("episode_index").to_numpy()
            sel = np.nonzero(epi == k)[0]
            sub = t.take(pa.array(sel))
            order = np.argsort(sub.column("frame_index").to_numpy(), kind="stable")
            sub = sub.take(pa.array(order))
            if sub.num_rows != n:
                raise ValueError(f"{dpath}: episode {k} has {sub.num_rows} frames, the episode row says {n}")
            action = _column_matrix(sub.column(ACTION_KEY))
            state = _column_matrix(sub.column(STATE_KEY))
            if action.shape != (n, 7):
                raise ValueError(f"{dpath}: episode {k}: 'action' values have shape {action.shape[1:]}, "
                                 "expected (7,)")
            if state.shape != (n, n_j + len(ef.STATE_TAIL)):
                raise ValueError(f"{dpath}: episode {k}: '{STATE_KEY}' values have shape {state.shape[1:]}, "
                                 f"expected ({n_j + len(ef.STATE_TAIL)},)")
            ts = (sub.column("timestamp").to_numpy().astype(np.float64) if "timestamp" in sub.column_names
                  else np.arange(n) / fps)
            images = {}
            for key, name, h, w in cams:
                vpath = root / info.get("video_path", VIDEO_PATH).format(
                    video_key=key, chunk_index=int(r[f"videos/{key}/chunk_index"]),
                    file_index=int(r[f"videos/{key}/file_index"]))
                imgs = videos.frames(vpath, float(r[f"videos/{key}/from_timestamp"]), n, fps)
                if imgs.shape[1:] != (h, w, 3):
                    raise ValueError(f"{vpath}: frames are {imgs.shape[1:]}, feature '{key}' says {(h, w, 3)}")
                images[name] = imgs
            if task_strings and "task_index" in sub.column_names:
                instruction = task_strings.get(int(sub.column("task_index")[0].as_py()), "")
            else:
                instruction = (r.get("tasks") or [""])[0]
            ep_task = r.get("irevla/task") or task or _slug(instruction)
            extra = {"imported_from": "lerobot", "source_episode_index": k}
            if r.get("irevla/extra"):
                try:
                    extra = {**json.loads(r["irevla/extra"]), **extra}
                except ValueError:
                    pass
            rec.start(task=ep_task, category=r.get("irevla/category") or category, instruction=instruction,
                      operator=r.get("irevla/operator") or operator, extra=extra)
            t0_ns = time.time_ns()
            try:
                for i in range(n):
                    s = state[i]
                    st = {"q": s[:n_j], "ee_pos": s[n_j:n_j + 3], "ee_quat": s[n_j + 3:n_j + 7],
                          "gripper_width": float(s[n_j + 7]), "joint_names": joints}
                    rec.add_step({name: images[name][i] for name in images}, st, action[i],
                                 t0_ns + int(round(ts[i] * 1e9)))
            except BaseException:
                rec.discard()
                raise
            success = r.get("irevla/success")
            entry = rec.stop(success=True if success is None else bool(success))
            written.append(entry["name"])
            frames += n
            if progress is not None:
                progress(len(written), len(rows))
    finally:
        videos.close()
        rec.close()
    return {"out": str(out_dataset_dir), "episodes": len(written), "frames": frames, "names": written,
            "cameras": [name for _, name, _, _ in cams]}
