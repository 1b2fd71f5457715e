"""Import of a LeRobotDataset v3.0 with 7-D end-effector-delta actions into the expert-set format (layout:
teleop/lerobot_format.py)."""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from teleop import episode_format as ef
from teleop.lerobot_format import ACTION_KEY, IMAGE_PREFIX, STATE_KEY, VIDEO_PATH, PathLike, _check_pyarrow


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
