"""An independent reader of LeRobotDataset v3.0 directories, written only against the published layout with
pyarrow + PyAV (the `lerobot-dataset` package does not install beside the pins: it needs av<16 and
huggingface-hub<0.36). It deliberately shares no code with teleop/lerobot_*.py: it reads every data file
whole and decodes each video file sequentially from its start (no seeking), then slices episodes by the
from/to timestamps of meta/episodes.

    r = LeRobotV3(root)
    r.problems()             # [] when the layout is consistent
    ep = r.episode(0)        # {"action", "observation.state", "timestamp", "frame_index", "index", "task",
                             #  "images": {"observation.images.front": (n, H, W, 3) uint8, ...}}
"""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

INFO_KEYS = ("codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
             "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
             "features")
FRAME_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _matrix(chunked) -> np.ndarray:
    """A (fixed size) list column -> (rows, width) float64."""
    arr = chunked.combine_chunks()
    if pa.types.is_fixed_size_list(arr.type):
        width = arr.type.list_size
    else:
        lengths = np.diff(arr.offsets.to_numpy())
        assert lengths.size == 0 or np.all(lengths == lengths[0]), "ragged list column"
        width = int(lengths[0]) if lengths.size else 0
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, np.float64).reshape(len(arr), width)


class LeRobotV3:
    def __init__(self, root):
        self.root = Path(root)
        self.info = json.loads((self.root / "meta" / "info.json").read_text())
        self.fps = self.info["fps"]
        self.features = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        tasks = pq.read_table(self.root / "meta" / "tasks.parquet").to_pydict()
        task_col = "task" if "task" in tasks else "__index_level_0__"
        self.tasks = dict(zip(tasks["task_index"], tasks[task_col]))
        rows = []
        for p in sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
            rows += pq.read_table(p).to_pylist()
        self.episodes = sorted(rows, key=lambda r: r["episode_index"])
        data_files = sorted((self.root / "data").glob("chunk-*/file-*.parquet"))
        self.data = pa.concat_tables([pq.read_table(p) for p in data_files])
        self.data_files = data_files
        self._frames_cache: dict[Path, tuple[np.ndarray, np.ndarray]] = {}

    # ------------------------------------------------------------------------------------------ checks
    def problems(self) -> list[str]:
        out = []
        missing = [k for k in INFO_KEYS if k not in self.info]
        if missing:
            out.append(f"info.json lacks {missing}")
        if self.info.get("codebase_version") != "v3.0":
            out.append(f"codebase_version {self.info.get('codebase_version')!r}")
        for k in ("observation.state", "action") + FRAME_FEATURES:
            if k not in self.features:
                out.append(f"feature {k} missing")
        for k in self.video_keys:
            f = self.features[k]
            if len(f["shape"]) != 3 or f["shape"][2] != 3 or f["names"] != ["height", "width", "channels"]:
                out.append(f"{k}: shape/names {f['shape']} {f['names']}")
        n = self.data.num_rows
        if n != self.info.get("total_frames"):
            out.append(f"{n} data rows, total_frames {self.info.get('total_frames')}")
        if len(self.episodes) != self.info.get("total_episodes"):
            out.append(f"{len(self.episodes)} episode rows, total_episodes {self.info.get('total_episodes')}")
        if len(self.tasks) != self.info.get("total_tasks"):
            out.append(f"{len(self.tasks)} tasks, total_tasks {self.info.get('total_tasks')}")
        if self.info.get("splits", {}).get("train") != f"0:{len(self.episodes)}":
            out.append(f"splits {self.info.get('splits')}")
        for k in ("observation.state", "action"):
            m = _matrix(self.data.column(k))
            if list(m.shape[1:]) != self.features[k]["shape"]:
                out.append(f"{k} values have width {m.shape[1:]}, feature shape {self.features[k]['shape']}")
        index = self.data.column("index").to_numpy()
        if not np.array_equal(np.sort(index), np.arange(n)):
            out.append("global index is not 0..total_frames-1")
        start = 0
        for r in self.episodes:
            ln = r["length"]
            if (r["dataset_from_index"], r["dataset_to_index"]) != (start, start + ln):
                out.append(f"episode {r['episode_index']}: index range {r['dataset_from_index']}.."
                           f"{r['dataset_to_index']}, expected {start}..{start + ln}")
            start += ln
            for k in self.video_keys:
                span = r[f"videos/{k}/to_timestamp"] - r[f"videos/{k}/from_timestamp"]
                if abs(span - ln / self.fps) > 1e-6:
                    out.append(f"episode {r['episode_index']} {k}: {span:.4f} s of video for {ln} frames")
        expected_data = {self.root / self.info["data_path"].format(chunk_index=r["data/chunk_index"],
                                                                   file_index=r["data/file_index"])
                         for r in self.episodes}
        if expected_data != set(self.data_files):
            out.append(f"data files {sorted(map(str, self.data_files))} != referenced "
                       f"{sorted(map(str, expected_data))}")
        return out

    # ------------------------------------------------------------------------------------------ reading
    def _decode(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(times in s, frames (N, H, W, 3)) of a whole mp4, decoded from the start."""
        if path not in self._frames_cache:
            times, frames = [], []
            with av.open(str(path)) as c:
                s = c.streams.video[0]
                for fr in c.decode(s):
                    times.append(float(fr.pts * s.time_base))
                    frames.append(fr.to_ndarray(format="rgb24"))
            order = np.argsort(times)
            self._frames_cache[path] = (np.asarray(times)[order], np.stack(frames)[order])
        return self._frames_cache[path]

    def video_frame_count(self, key: str, chunk: int, file: int) -> int:
        path = self.root / self.info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
        return len(self._decode(path)[0])

    def episode(self, k: int) -> dict:
        r = next(r for r in self.episodes if r["episode_index"] == k)
        rows = self.data.filter(pa.compute.equal(self.data.column("episode_index"), k))
        order = np.argsort(rows.column("frame_index").to_numpy())
        rows = rows.take(pa.array(order))
        out = {"length": r["length"], "action": _matrix(rows.column("action")),
               "observation.state": _matrix(rows.column("observation.state")),
               "timestamp": rows.column("timestamp").to_numpy(),
               "frame_index": rows.column("frame_index").to_numpy(), "index": rows.column("index").to_numpy(),
               "task": self.tasks[rows.column("task_index")[0].as_py()], "tasks": r["tasks"], "images": {}}
        for key in self.video_keys:
            path = self.root / self.info["video_path"].format(video_key=key,
                                                              chunk_index=r[f"videos/{key}/chunk_index"],
                                                              file_index=r[f"videos/{key}/file_index"])
            times, frames = self._decode(path)
            t0, t1 = r[f"videos/{key}/from_timestamp"], r[f"videos/{key}/to_timestamp"]
            eps = 0.25 / self.fps
            sel = (times >= t0 - eps) & (times < t1 - eps)
            out["images"][key] = frames[sel]
        return out
