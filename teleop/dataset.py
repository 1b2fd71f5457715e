"""Dataset tools for recorded episodes: read, validate, stats, video, and a cached loader for training.

Reading uses the `mcap` library for the container and rosbags' CDR deserializer for the messages (the files
are written by rosbags' MCAP writer; tests cross-check with the independent mcap_ros2 decoder).

    ep = read_episode("data/expert/episodes/episode_000000.mcap")
    ep.images["front"]   # (N, H, W, 3) uint8      ep.state  (N, 15)      ep.action (N, 7)
    report = validate_dataset("data/expert");  report.ok
    stats = compute_stats("data/expert")       # normalization statistics for training
    ds = EpisodeDataset("data/expert");  ds[i] -> {"images", "state", "action", "instruction", ...}
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

from teleop import episode_format as ef
from teleop import storage

LOG = logging.getLogger("teleop.dataset")
PathLike = Union[str, Path]
REQUIRED_META = ("format", "name", "task", "category", "instruction", "operator", "success", "n_steps",
                 "start_time", "cameras", "robot", "software", "control_hz")


class EpisodeReadError(Exception):
    """An episode file cannot be read or lacks its metadata."""


# ---------------------------------------------------------------------------------------------- reading
def _reader(f):
    from mcap.reader import make_reader
    return make_reader(f)


def _metadata_from_reader(reader, path) -> dict:
    import yaml
    for rec in reader.iter_metadata():
        if rec.name != "rosbag2":
            continue
        info = yaml.safe_load(rec.metadata.get("serialized_metadata", "")) or {}
        custom = info.get("custom_data") or {}
        if ef.METADATA_KEY in custom:
            return json.loads(custom[ef.METADATA_KEY])
    raise EpisodeReadError(f"{path}: no irevla episode metadata (rosbag2 custom_data '{ef.METADATA_KEY}')")


def read_metadata(path: PathLike) -> dict:
    """The episode metadata stored in the file's MCAP metadata record (reads only the summary section)."""
    try:
        with open(path, "rb") as f:
            return _metadata_from_reader(_reader(f), path)
    except EpisodeReadError:
        raise
    except Exception as exc:
        raise EpisodeReadError(f"{path}: not a readable MCAP episode ({type(exc).__name__}: {exc})") from exc


@dataclass
class Episode:
    path: Path
    meta: dict
    stamps: np.ndarray  # (N,) int64 ns, the step times
    images: dict[str, np.ndarray]  # camera -> (N, H, W, 3) uint8 (empty dict when not decoded)
    state: np.ndarray  # (N, S) float64, layout meta["state_names"]
    action: np.ndarray  # (N, 7) float64
    instructions: list[str]
    joint_velocity: np.ndarray  # (N, n) or (N, 0)

    @property
    def instruction(self) -> str:
        return self.meta.get("instruction", self.instructions[0] if self.instructions else "")

    def __len__(self) -> int:
        return len(self.stamps)


def iter_raw(path: PathLike, topics: Optional[Iterable[str]] = None):
    """(topic, msgtype, log_time_ns, cdr bytes) in file (= recording) order."""
    with open(path, "rb") as f:
        for schema, channel, msg in _reader(f).iter_messages(topics=list(topics) if topics else None,
                                                             log_time_order=False):
            yield channel.topic, (schema.name if schema else ""), msg.log_time, msg.data


def _decode_all(path: Path, meta: dict, want_images: bool) -> dict[str, list]:
    ts = ef.typestore(meta.get("ros_distro", "kilted"))
    cam_topics = {c["topic"] for c in meta.get("cameras", [])}
    topics = None if want_images else [t for t in meta.get("topics", {}) if t not in cam_topics] or None
    out: dict[str, list] = {}
    for topic, msgtype, log_time, data in iter_raw(path, topics):
        out.setdefault(topic, []).append((log_time, msgtype, ts.deserialize_cdr(data, msgtype)))
    return out


def read_episode(path: PathLike, images: bool = True) -> Episode:
    """Decode a whole episode. Raises EpisodeReadError when the topics do not line up step by step."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        msgs = _decode_all(path, meta, images)
    except Exception as exc:
        raise EpisodeReadError(f"{path}: cannot decode messages ({type(exc).__name__}: {exc})") from exc
    n = int(meta.get("n_steps", 0))
    need = [ef.TOPIC_JOINTS, ef.TOPIC_EE_POSE, ef.TOPIC_GRIPPER, ef.TOPIC_ACTION, ef.TOPIC_INSTRUCTION]
    if images:
        need += [c["topic"] for c in meta["cameras"]]
    for t in need:
        if len(msgs.get(t, [])) != n:
            raise EpisodeReadError(f"{path}: topic {t} has {len(msgs.get(t, []))} messages, expected {n}")
    stamps = np.array([lt for lt, _, _ in msgs[ef.TOPIC_ACTION]], dtype=np.int64)
    for t in need:
        if not np.array_equal(np.array([lt for lt, _, _ in msgs[t]], dtype=np.int64), stamps):
            raise EpisodeReadError(f"{path}: topic {t} is not time-synchronized with {ef.TOPIC_ACTION}")
    joints = [m for _, _, m in msgs[ef.TOPIC_JOINTS]]
    poses = [m.pose for _, _, m in msgs[ef.TOPIC_EE_POSE]]
    grip = [m for _, _, m in msgs[ef.TOPIC_GRIPPER]]
    state = np.array([np.concatenate([np.asarray(j.position, float),
                                      [p.position.x, p.position.y, p.position.z, p.orientation.w,
                                       p.orientation.x, p.orientation.y, p.orientation.z],
                                      np.asarray(g.position, float)[:1]])
                      for j, p, g in zip(joints, poses, grip)]).reshape(n, -1)
    vel = np.array([np.asarray(j.velocity, float) for j in joints]).reshape(n, -1)
    action = np.array([np.asarray(m.data, float) for _, _, m in msgs[ef.TOPIC_ACTION]]).reshape(n, -1)
    instr = [m.data for _, _, m in msgs[ef.TOPIC_INSTRUCTION]]
    imgs = {}
    if images:
        for c in meta["cameras"]:
            frames = [ef.decode_image(m, mt) for _, mt, m in msgs[c["topic"]]]
            imgs[c["name"]] = (np.stack(frames) if frames
                               else np.zeros((0, c["height"], c["width"], 3), np.uint8))
    return Episode(path, meta, stamps, imgs, state, action, instr, vel)


def resolve_episode(root: PathLike, episode: Union[str, int]) -> Path:
    """An episode given as a path, a name (episode_000042), or a number (42) -> its file."""
    p = Path(str(episode))
    if p.suffix == ".mcap" and p.is_file():
        return p
    root = Path(root)
    s = str(episode)
    name = storage.episode_name(int(s)) if s.isdigit() else s
    f = root / storage.EPISODES / f"{name}.mcap"
    if not f.is_file():
        raise FileNotFoundError(f"no episode {episode!r} in {root / storage.EPISODES}")
    return f


# ---------------------------------------------------------------------------------------------- validate
@dataclass
class ValidationReport:
    root: str
    n_files: int = 0
    n_steps: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        head = (f"{self.root}: {self.n_files} episodes, {self.n_steps} steps: "
                f"{'OK' if self.ok else f'{len(self.errors)} problem(s)'}"
                + (f", {len(self.warnings)} warning(s)" if self.warnings else ""))
        return "\n".join([head] + [f"ERROR {e}" for e in self.errors] + [f"WARNING {w}" for w in self.warnings])


def validate_episode(path: PathLike, entry: Optional[dict] = None) -> tuple[list[str], int]:
    """Problems of one episode file (empty list = valid) and its step count."""
    path = Path(path)
    name = path.stem
    errs: list[str] = []

    def err(msg: str) -> None:
        errs.append(f"{name}: {msg}")

    try:
        meta = read_metadata(path)
    except EpisodeReadError as exc:
        return [f"{name}: {exc}"], 0
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        err(f"metadata lacks {missing}")
        return errs, 0
    if meta["format"] != ef.FORMAT:
        err(f"unknown format {meta['format']!r} (expected {ef.FORMAT})")
    if meta["name"] != name:
        err(f"metadata name {meta['name']!r} differs from the file name")
    n = meta["n_steps"]
    if not isinstance(n, int) or n <= 0:
        err(f"n_steps {n!r} is not a positive integer")
        return errs, 0
    cams = meta["cameras"]
    expected = {c["topic"]: c["msgtype"] for c in cams}
    expected.update({ef.TOPIC_JOINTS: ef.T_JOINTS, ef.TOPIC_EE_POSE: ef.T_POSE, ef.TOPIC_GRIPPER: ef.T_JOINTS,
                     ef.TOPIC_ACTION: ef.T_ARRAY, ef.TOPIC_INSTRUCTION: ef.T_STRING})
    try:
        ts = ef.typestore(meta.get("ros_distro", "kilted"))
        found_types: dict[str, set] = {}
        per_topic: dict[str, list] = {t: [] for t in expected}
        for topic, msgtype, log_time, data in iter_raw(path):
            found_types.setdefault(topic, set()).add(msgtype)
            if topic in per_topic:
                per_topic[topic].append((log_time, msgtype, ts.deserialize_cdr(data, msgtype)))
    except Exception as exc:
        err(f"messages do not decode ({type(exc).__name__}: {exc})")
        return errs, 0
    for topic, mt in expected.items():
        if topic not in found_types:
            err(f"topic {topic} is missing")
        elif found_types[topic] != {mt}:
            err(f"topic {topic} has schema {sorted(found_types[topic])}, expected {mt}")
    for topic in sorted(set(found_types) - set(expected)):
        err(f"unexpected topic {topic}")
    counts = {t: len(v) for t, v in per_topic.items()}
    if len(set(counts.values()) | {n}) != 1:
        err(f"frame counts differ across topics / from n_steps={n}: {counts}")
    ref = np.array([lt for lt, _, _ in per_topic[ef.TOPIC_ACTION]], dtype=np.int64)
    if ref.size and np.any(np.diff(ref) <= 0):
        err(f"{ef.TOPIC_ACTION} stamps are not strictly increasing")
    for topic, msgs in per_topic.items():
        lts = np.array([lt for lt, _, _ in msgs], dtype=np.int64)
        if lts.size and np.any(np.diff(lts) <= 0):
            err(f"{topic}: stamps are not strictly increasing")
        if lts.size == ref.size and not np.array_equal(lts, ref):
            err(f"{topic}: stamps differ from {ef.TOPIC_ACTION} (not time-synchronized)")
        hdr = [ef.stamp_ns_of(m.header) for _, _, m in msgs if hasattr(m, "header")]
        if hdr and hdr != lts.tolist():
            err(f"{topic}: header stamps differ from the log times")
    if ref.size and (meta.get("first_stamp_ns") not in (None, int(ref[0]))
                     or meta.get("last_stamp_ns") not in (None, int(ref[-1]))):
        err("first/last stamps in the metadata differ from the messages")
    for i, (_, _, m) in enumerate(per_topic[ef.TOPIC_ACTION]):
        a = np.asarray(m.data, float)
        if a.shape != (7,):
            err(f"step {i}: action has {a.size} values, expected 7")
            break
        if not np.all(np.isfinite(a)):
            err(f"step {i}: action contains NaN/inf: {a.tolist()}")
            break
        if np.any(np.abs(a) > 1.0 + 1e-6):
            err(f"step {i}: action outside [-1, 1]: {a.tolist()}")
            break
    n_joints = len(meta["robot"].get("joint_names", ef.DEFAULT_JOINT_NAMES))
    for i, (_, _, m) in enumerate(per_topic[ef.TOPIC_JOINTS]):
        q, v = np.asarray(m.position, float), np.asarray(m.velocity, float)
        if q.shape != (n_joints,) or len(m.name) != n_joints or v.size not in (0, n_joints):
            err(f"step {i}: joint_states has {len(m.name)} names / {q.size} positions, expected {n_joints}")
            break
        if not (np.all(np.isfinite(q)) and np.all(np.isfinite(v))):
            err(f"step {i}: joint_states contains NaN/inf")
            break
    for i, (_, _, m) in enumerate(per_topic[ef.TOPIC_EE_POSE]):
        p, o = m.pose.position, m.pose.orientation
        vals = np.array([p.x, p.y, p.z, o.x, o.y, o.z, o.w], float)
        if not np.all(np.isfinite(vals)) or not 0.5 < np.linalg.norm(vals[3:]) < 1.5:
            err(f"step {i}: ee_pose is NaN/inf or its quaternion is not unit: {vals.tolist()}")
            break
    for i, (_, _, m) in enumerate(per_topic[ef.TOPIC_GRIPPER]):
        g = np.asarray(m.position, float)
        if list(m.name) != ["gripper_width"] or g.shape != (1,) or not np.all(np.isfinite(g)):
            err(f"step {i}: gripper message is not name ['gripper_width'] with one finite position")
            break
    for i, (_, _, m) in enumerate(per_topic[ef.TOPIC_INSTRUCTION]):
        if m.data != meta["instruction"]:
            err(f"step {i}: instruction {m.data!r} differs from the metadata's {meta['instruction']!r}")
            break
    for c in cams:
        for i, (_, mt, m) in enumerate(per_topic.get(c["topic"], [])):
            try:
                img = ef.decode_image(m, mt)
            except Exception as exc:
                err(f"camera {c['name']} step {i}: image does not decode ({exc})")
                break
            if img.shape != (c["height"], c["width"], 3):
                err(f"camera {c['name']} step {i}: image is {img.shape}, metadata says "
                    f"{c['height']}x{c['width']}x3")
                break
    if entry is not None:
        for k in ("n_steps", "success", "task", "instruction", "category"):
            if k in entry and entry.get(k) != meta.get(k):
                err(f"index says {k}={entry.get(k)!r}, the file says {meta.get(k)!r}")
        if "bytes" in entry and entry["bytes"] != path.stat().st_size:
            err(f"index says {entry['bytes']} bytes, the file has {path.stat().st_size}")
    return errs, n


def _validate_job(args):
    path, entry = args
    try:
        return validate_episode(path, entry)
    except Exception as exc:  # a validator bug must not hide the other files
        return [f"{Path(path).stem}: validation crashed ({type(exc).__name__}: {exc})"], 0


def validate_dataset(root: PathLike, jobs: int = 1) -> ValidationReport:
    root = Path(root)
    rep = ValidationReport(str(root))
    if not (root / storage.EPISODES).is_dir():
        rep.errors.append(f"{root / storage.EPISODES} does not exist (not a dataset directory?)")
        return rep
    files = storage.episode_files(root)
    rep.n_files = len(files)
    entries, bad_lines = storage.read_index(root)
    if not (root / storage.INDEX).exists():
        rep.errors.append(f"{storage.INDEX} is missing (a recorder start rebuilds it from the files)")
    if bad_lines:
        rep.errors.append(f"{storage.INDEX}: {bad_lines} unparsable line(s)")
    by_name: dict[str, dict] = {}
    for e in entries:
        if e["name"] in by_name:
            rep.errors.append(f"{storage.INDEX}: {e['name']} listed more than once")
        by_name[e["name"]] = e
    for name in sorted(set(by_name) - set(files)):
        rep.errors.append(f"{storage.INDEX}: {name} has no file in {storage.EPISODES}/")
    for name in sorted(set(files) - set(by_name)):
        rep.errors.append(f"{name}: file is not in {storage.INDEX}")
    for name in files:
        if storage.episode_number(name) is None:
            rep.warnings.append(f"{name}: file name does not follow episode_NNNNNN.mcap")
    partial = root / storage.PARTIAL
    if partial.is_dir() and any(partial.iterdir()):
        rep.warnings.append(f"{storage.PARTIAL}/ holds unfinished episodes {sorted(p.name for p in partial.iterdir())}"
                            " (interrupted, or a recorder is running; removed at the next recorder start)")
    work = [(str(p), by_name.get(n)) for n, p in files.items()]
    if jobs > 1 and len(work) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            results = list(ex.map(_validate_job, work, chunksize=4))
    else:
        results = [_validate_job(w) for w in work]
    for errs, n in results:
        rep.errors += errs
        rep.n_steps += n
    return rep


# ---------------------------------------------------------------------------------------------- stats
def _summary(x: np.ndarray, names: list[str]) -> dict:
    x = np.asarray(x, float)
    if x.size == 0:
        return {"names": names, "count": 0}
    return {"names": names, "count": int(x.shape[0]),
            "mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
            "max": x.max(0).tolist(), "p01": np.percentile(x, 1, axis=0).tolist(),
            "p99": np.percentile(x, 99, axis=0).tolist()}


def selected_entries(root: PathLike, include_failed: bool = False, tasks: Optional[Iterable[str]] = None,
                     category: Optional[str] = None) -> list[dict]:
    """Index entries (files are checked to exist) filtered for training: successful only by default."""
    root = Path(root)
    files = storage.episode_files(root)
    entries, _ = storage.read_index(root)
    by_name = {e["name"]: e for e in entries}
    out = []
    for name, path in files.items():
        e = by_name.get(name)
        if e is None or e.get("bytes") != path.stat().st_size:
            try:
                e = storage.index_entry(read_metadata(path), path)
            except EpisodeReadError as exc:
                LOG.warning("skipping %s: %s", name, exc)
                continue
        if "error" in e:
            continue
        if not include_failed and not e.get("success"):
            continue
        if tasks is not None and e.get("task") not in set(tasks):
            continue
        if category is not None and e.get("category") != category:
            continue
        out.append(dict(e, path=str(path)))
    return out


def compute_stats(root: PathLike, include_failed: bool = False) -> dict:
    """Per-task counts, lengths, action ranges and per-dimension normalization statistics (actions, states)."""
    root = Path(root)
    all_entries = selected_entries(root, include_failed=True)
    used = [e for e in all_entries if include_failed or e.get("success")]
    per_task: dict[str, dict] = {}
    for e in all_entries:
        c = per_task.setdefault(e["task"], {"success": 0, "failure": 0, "steps": []})
        c["success" if e.get("success") else "failure"] += 1
    actions, states, lengths = [], [], []
    state_names: Optional[list[str]] = None
    for e in used:
        ep = read_episode(e["path"], images=False)
        actions.append(ep.action)
        states.append(ep.state)
        lengths.append(len(ep))
        per_task[e["task"]]["steps"].append(len(ep))
        names = ep.meta.get("state_names") or [f"s{i}" for i in range(ep.state.shape[1])]
        if state_names is None:
            state_names = names
        elif names != state_names:
            raise ValueError(f"{e['name']}: state layout {names} differs from {state_names}")
    A = np.concatenate(actions) if actions else np.zeros((0, 7))
    S = np.concatenate(states) if states else np.zeros((0, len(state_names or [])))
    L = np.array(lengths, float)

    def length_stats(v):
        v = np.asarray(v, float)
        return ({"mean": float(v.mean()), "min": int(v.min()), "max": int(v.max()), "median": float(np.median(v))}
                if v.size else {})

    return {
        "root": str(root),
        "episodes": len(used),
        "steps": int(L.sum()) if L.size else 0,
        "include_failed": include_failed,
        "per_task": {t: {"success": c["success"], "failure": c["failure"], "length": length_stats(c["steps"])}
                     for t, c in sorted(per_task.items())},
        "length": length_stats(L),
        "action": _summary(A, list(ef.ACTION_NAMES)),
        "state": _summary(S, state_names or []),
        "gripper_closed_fraction": float(np.mean(A[:, 6] > 0)) if A.size else None,
    }


# ---------------------------------------------------------------------------------------------- video
def render_video(path: PathLike, out: PathLike, scale: int = 2, fps: Optional[float] = None) -> int:
    """Cameras side by side with the instruction and the action values overlaid -> video file. Returns frames."""
    import av
    import cv2

    ep = read_episode(path)
    cams = [c["name"] for c in ep.meta["cameras"]]
    fps = fps or float(ep.meta.get("control_hz", 10.0))
    n = len(ep)
    tiles_h = max(ep.images[c].shape[1] for c in cams) * scale
    band = 64
    width = sum(ep.images[c].shape[2] * scale for c in cams)
    width += width % 2
    height = tiles_h + band
    height += height % 2
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(out), mode="w")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = container.add_stream(codec, rate=int(round(fps)))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    font = cv2.FONT_HERSHEY_SIMPLEX
    try:
        for i in range(n):
            frame = np.zeros((height, width, 3), np.uint8)
            x = 0
            for c in cams:
                img = ep.images[c][i]
                big = cv2.resize(img, (img.shape[1] * scale, img.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
                frame[: big.shape[0], x: x + big.shape[1]] = big
                cv2.putText(frame, c, (x + 6, 18), font, 0.5, (255, 255, 0), 1, cv2.LINE_AA)
                x += big.shape[1]
            a = ep.action[i]
            t = (ep.stamps[i] - ep.stamps[0]) / 1e9
            cv2.putText(frame, f"{ep.instruction}", (6, tiles_h + 20), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            txt = (f"step {i + 1}/{n} t={t:5.1f}s  d=[{a[0]:+.2f} {a[1]:+.2f} {a[2]:+.2f}] "
                   f"r=[{a[3]:+.2f} {a[4]:+.2f} {a[5]:+.2f}] grip={'CLOSE' if a[6] > 0 else 'open'}")
            cv2.putText(frame, txt, (6, tiles_h + 44), font, 0.42, (200, 255, 200), 1, cv2.LINE_AA)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return n


# ---------------------------------------------------------------------------------------------- loader
_HASH_MEMO = "hashes.json"


def file_hash(path: PathLike, memo: Optional[dict] = None) -> str:
    """blake2b-128 of the file content; `memo` (path -> [size, mtime_ns, hash]) skips rehashing unchanged files."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    if memo is not None:
        m = memo.get(key)
        if m and m[0] == st.st_size and m[1] == st.st_mtime_ns:
            return m[2]
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        memo[key] = [st.st_size, st.st_mtime_ns, digest]
    return digest


def _write_cache(ep: Episode, dest: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        for cam, arr in ep.images.items():
            np.save(tmp / f"image_{cam}.npy", arr)
        np.save(tmp / "state.npy", ep.state.astype(np.float32))
        np.save(tmp / "action.npy", ep.action.astype(np.float32))
        np.save(tmp / "stamps.npy", ep.stamps)
        (tmp / "meta.json").write_text(json.dumps(ep.meta, sort_keys=True))
        try:
            os.rename(tmp, dest)  # atomic; fails if another process cached it first
        except OSError:
            if not dest.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class EpisodeDataset:
    """Per-step access to a dataset's episodes, decoded once into a .npy memmap cache keyed by file hash.

    ds[i] -> {"images": {camera: (H, W, 3) uint8}, "state": (S,) float32, "action": (7,) float32,
              "instruction": str, "task": str, "episode": name, "step": int}
    Default: successful episodes only (`include_failed=True` for all). The cache lives in
    `cache_dir` (default <root>/.cache); it holds decoded frames: ~H*W*3 bytes per image.
    """

    def __init__(self, root: PathLike, cache_dir: Optional[PathLike] = None, include_failed: bool = False,
                 tasks: Optional[Iterable[str]] = None, category: Optional[str] = None):
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".cache"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.entries = selected_entries(self.root, include_failed, tasks, category)
        memo_path = self.cache_dir / _HASH_MEMO
        try:
            memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
        except ValueError:
            memo = {}
        self.decoded = 0  # episodes decoded (cache misses) by this instance
        self._episodes = []
        for e in self.entries:
            digest = file_hash(e["path"], memo)
            d = self.cache_dir / digest
            if not (d / "meta.json").exists():
                _write_cache(read_episode(e["path"]), d)
                self.decoded += 1
            self._episodes.append(self._open(d, e))
        # A temp file of its own: several processes (training ranks, feature workers) may open the dataset at once.
        fd, tmp = tempfile.mkstemp(prefix=memo_path.name + ".", dir=self.cache_dir)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(memo))
        os.replace(tmp, memo_path)
        lengths = np.array([len(ep["action"]) for ep in self._episodes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])

    @staticmethod
    def _open(d: Path, entry: dict) -> dict:
        meta = json.loads((d / "meta.json").read_text())
        return {
            "name": meta["name"], "task": meta["task"], "instruction": meta["instruction"], "meta": meta,
            "images": {c["name"]: np.load(d / f"image_{c['name']}.npy", mmap_mode="r") for c in meta["cameras"]},
            # Small arrays in memory: a memmap holds a file descriptor, and a 3,000-episode set opened twice
            # (per-task batches) must stay under the open-file limit.
            "state": np.load(d / "state.npy"),
            "action": np.load(d / "action.npy"),
        }

    def release(self) -> None:
        """Drop the episodes' memory maps (their file descriptors); the dataset is unusable afterwards."""
        self._episodes = []

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    def episode(self, k: int) -> dict:
        """The k-th episode's arrays (memmaps) and metadata."""
        return self._episodes[k]

    def locate(self, i: int) -> tuple[int, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"step {i} out of range for {len(self)} steps")
        i %= len(self)
        k = int(np.searchsorted(self._starts, i, side="right") - 1)
        return k, i - int(self._starts[k])

    def __getitem__(self, i: int) -> dict:
        k, t = self.locate(i)
        ep = self._episodes[k]
        return {"images": {c: np.asarray(v[t]) for c, v in ep["images"].items()},
                "state": np.asarray(ep["state"][t]), "action": np.asarray(ep["action"][t]),
                "instruction": ep["instruction"], "task": ep["task"], "episode": ep["name"], "step": t}
