"""EpisodeRecorder: the recording core behind the recorder node (pure Python, no ROS).

    rec = EpisodeRecorder(RecorderConfig(root="data/expert"))
    rec.start(task="pick_red_block", category="expert", instruction="pick up the red block", operator="ana")
    for each control step:
        rec.add_step(images={"front": rgb, "wrist": rgb}, state=robot_state, action=a, stamp=t)
    rec.stop(success=True)          # or rec.discard(); returns once the episode is saved
    print(rec.progress())           # 37/2000 successful episodes ...
    rec.close()

`stop_async(success)` ends the episode at once and saves it on a background thread (closing the MCAP file, fsync,
atomic rename, index line: 40-100 ms), so the next `start()` can follow immediately without losing a frame. It
returns a Future of the index entry; episodes are saved in the order they were stopped. A file becomes visible only
when it is complete, so a SIGKILL loses at most the episodes not yet saved: the one in progress and, for about
the length of a save after a `stop_async()`, the one being saved.

Every input is validated before anything is written: a bad step raises RecorderInputError naming what is wrong
and leaves the episode in progress untouched (the caller may go on, or discard it). A write failure (OSError,
e.g. ENOSPC) raises RecorderDiskError with a clear message; that episode is dropped (its partial file removed),
finished episodes are never touched. A background save that fails is raised by its Future and, if nobody took it
from `stop()`, by the next `start()` / `add_step()` / `stop()` (the episode in progress is then dropped as well:
recording stops). Thread-safe (one lock), so ROS callbacks may call it from several threads.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from teleop import episode_format as ef
from teleop import storage
from teleop.config import from_dict, load_yaml, to_dict
from teleop.episode_format import CameraConfig

LOG = logging.getLogger("teleop.recorder")


class RecorderError(Exception):
    """Base class of recorder errors."""


class RecorderInputError(RecorderError, ValueError):
    """A step's data is invalid (the episode in progress is kept)."""


class RecorderStateError(RecorderError, RuntimeError):
    """The call does not fit the recorder's state (e.g. add_step with no episode started)."""


class RecorderDiskError(RecorderError):
    """Writing failed (disk full, I/O error): the episode in progress was dropped, finished ones are intact."""

    def __init__(self, message: str, errno: Optional[int] = None):
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class RecorderConfig:
    root: str = "data/expert"
    cameras: tuple[CameraConfig, ...] = ef.DEFAULT_CAMERAS
    control_hz: float = 10.0
    target_episodes: int = 2000  # successful episodes wanted
    task_targets: dict[str, int] = field(default_factory=dict)  # optional per-task targets
    ros_distro: str = "kilted"  # message definitions (identical for these types in humble/jazzy/kilted)
    compression: str = "zstd"  # MCAP chunk compression: zstd | none
    fsync: bool = True  # fsync each finished episode before its rename (durable across power loss)
    min_free_mb: float = 200.0  # start() refuses when less is free on the dataset's filesystem
    base_frame: str = "panda_link0"
    joint_names: tuple[str, ...] = ef.DEFAULT_JOINT_NAMES  # used when a state carries no joint names
    action_limit: float = 1.0  # |a_i| must be <= this (+1e-6): the contract's range
    robot: dict[str, Any] = field(default_factory=dict)  # free-form robot configuration stored in the metadata

    def __post_init__(self):
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        if not (self.control_hz > 0 and math.isfinite(self.control_hz)):
            raise ValueError(f"control_hz must be positive, got {self.control_hz}")
        if self.compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', got {self.compression!r}")
        if self.ros_distro not in ef.DISTROS:
            raise ValueError(f"ros_distro must be one of {ef.DISTROS}, got {self.ros_distro!r}")
        if self.target_episodes < 0 or self.min_free_mb < 0 or self.action_limit <= 0:
            raise ValueError("target_episodes and min_free_mb must be >= 0, action_limit > 0")
        try:
            json.dumps(self.robot)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"robot metadata must be JSON-serialisable: {exc}") from None

    @classmethod
    def from_dict(cls, data: Optional[dict]) -> "RecorderConfig":
        return from_dict(cls, data)

    @classmethod
    def from_yaml(cls, path: Union[str, Path], section: Optional[str] = "recorder") -> "RecorderConfig":
        return load_yaml(cls, path, section)


@dataclass
class Progress:
    done: int  # successful episodes
    target: int
    failed: int
    per_task: dict[str, dict[str, int]]  # task -> {"success": n, "failure": m}
    mean_episode_s: Optional[float]  # mean recorded duration (stamps) of all episodes
    mean_cycle_s: Optional[float]  # this session: mean time from one stop() to the next (includes resets)
    eta_s: Optional[float]
    recording: Optional[str] = None  # name of the episode in progress
    steps_in_progress: int = 0
    last_error: str = ""
    saving: int = 0  # episodes stopped with stop_async() whose save has not finished yet

    def __str__(self) -> str:
        s = f"{self.done}/{self.target} successful episodes ({self.failed} failed)"
        if self.per_task:
            s += "; " + ", ".join(f"{t} {c['success']}" + (f"+{c['failure']}f" if c["failure"] else "")
                                  for t, c in sorted(self.per_task.items()))
        if self.mean_episode_s is not None:
            s += f"; mean {self.mean_episode_s:.1f} s/episode"
        if self.mean_cycle_s is not None:
            s += f", {self.mean_cycle_s:.1f} s/cycle"
        if self.eta_s is not None:
            s += f"; ETA {self.eta_s / 3600:.1f} h"
        if self.recording:
            s += f"; recording {self.recording} ({self.steps_in_progress} steps)"
        if self.saving:
            s += f"; saving {self.saving}"
        return s


def software_info() -> dict[str, str]:
    info = {"python": sys.version.split()[0]}
    try:
        import importlib.metadata as md
        for dist in ("irevla", "rosbags", "numpy"):
            try:
                info[dist] = md.version(dist)
            except md.PackageNotFoundError:
                pass
    except Exception:
        pass
    try:
        repo = Path(__file__).resolve().parents[1]
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=2)
        if out.returncode == 0 and out.stdout.strip():
            info["git"] = out.stdout.strip()
    except Exception:
        pass
    return info


_MAX_NS = (2**31 - 1) * 1_000_000_000  # builtin_interfaces/Time.sec is int32


def _to_ns(stamp: Union[int, float, np.integer, np.floating]) -> int:
    if isinstance(stamp, (bool, np.bool_)):
        raise RecorderInputError(f"stamp must be seconds (float) or nanoseconds (int), got {stamp!r}")
    if isinstance(stamp, (int, np.integer)):
        ns = int(stamp)
    elif isinstance(stamp, (float, np.floating)):
        if not math.isfinite(stamp):
            raise RecorderInputError(f"stamp is not finite: {stamp!r}")
        ns = int(round(float(stamp) * 1e9))
    else:
        raise RecorderInputError(f"stamp must be seconds (float) or nanoseconds (int), got {type(stamp).__name__}")
    if not 0 <= ns <= _MAX_NS:
        raise RecorderInputError(f"stamp {stamp!r} is outside the ROS time range [0, 2^31) s (seconds since the "
                                 "epoch as float, or nanoseconds as int)")
    return ns


class EpisodeRecorder:
    IDLE, RECORDING, CLOSED = "idle", "recording", "closed"

    def __init__(self, config: RecorderConfig = RecorderConfig(), clock=time.time):
        self.config = config
        self.root = Path(config.root)
        self._clock = clock
        self._lock = threading.RLock()
        self.ts = ef.typestore(config.ros_distro)
        self.topics = ef.topics_for(config.cameras)
        self._cams = {c.name: c for c in config.cameras}
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / storage.EPISODES).mkdir(exist_ok=True)
        self._dirlock = storage.DirectoryLock(self.root)
        self._dirlock.acquire()
        try:
            entries, self.reconcile_report = storage.reconcile(self.root, fsync=config.fsync)
        except BaseException:
            self._dirlock.release()
            raise
        if self.reconcile_report.removed_partials or self.reconcile_report.rebuilt:
            LOG.warning("%s: %s", self.root, self.reconcile_report.summary())
        self._entries = entries
        numbers = [storage.episode_number(n) for n in storage.episode_files(self.root)]
        self._next_number = max([n for n in numbers if n is not None], default=-1) + 1
        self._software = software_info()
        self._warm_up()
        self.state = self.IDLE
        self.last_error = ""
        self._file: Optional[storage.EpisodeFile] = None
        self._cycle_times: list[float] = []
        self._last_stop_wall: Optional[float] = None
        # One saver thread: saves happen in stop order, so index lines and numbers stay in order.
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="episode-saver")
        self._saving: dict[str, Future] = {}  # episode name -> Future of its index entry
        # The next episode's file (header and schemas written), opened on the saver thread so that start() right
        # after a stop() does not wait for it: (episode number, Future of the EpisodeFile).
        self._spare: Optional[tuple[int, Future]] = None
        self._save_error: Optional[RecorderDiskError] = None  # failed background save nobody was told about

    # ------------------------------------------------------------------------------------------ properties
    @property
    def next_episode_number(self) -> int:
        return self._next_number

    @property
    def episodes(self) -> list[dict]:
        """Index entries of the finished episodes (copy)."""
        with self._lock:
            return [dict(e) for e in self._entries]

    @property
    def recording(self) -> bool:
        return self.state == self.RECORDING

    # ------------------------------------------------------------------------------------------ episode
    def start(self, task: str, category: str = "", instruction: str = "", operator: str = "",
              extra: Optional[Mapping[str, Any]] = None) -> str:
        """Begin an episode; returns its name (episode_NNNNNN)."""
        with self._lock:
            self._check_open()
            self._raise_save_error()
            if self.state == self.RECORDING:
                raise RecorderStateError(f"episode {self._name} is in progress ({self._n} steps): stop() or "
                                         "discard() it before starting another")
            for label, v in (("task", task), ("category", category), ("instruction", instruction),
                             ("operator", operator)):
                if not isinstance(v, str):
                    raise RecorderInputError(f"{label} must be a string, got {type(v).__name__}")
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise RecorderInputError(f"{label} is not valid UTF-8 text: {exc}") from None
            if not task.strip():
                raise RecorderInputError("task must be a non-empty string")
            try:
                json.dumps(dict(extra or {}))
            except (TypeError, ValueError) as exc:
                raise RecorderInputError(f"extra metadata must be JSON-serialisable: {exc}") from None
            self._check_free_space()
            name = storage.episode_name(self._next_number)
            self._file = self._take_spare(self._next_number)
            if self._file is None:
                try:
                    self._file = self._new_file(self._next_number)
                except OSError as exc:
                    raise self._disk_error(exc, name, "cannot create") from exc
            self._name, self._number = name, self._next_number
            if self._spare is None:  # the next episode's file is opened on the saver thread meanwhile
                self._spare = (self._number + 1, self._saver.submit(self._new_file, self._number + 1))
            self._n = 0
            self._last_ns: Optional[int] = None
            self._first_ns: Optional[int] = None
            self._meta_in = {"task": task, "category": category, "instruction": instruction,
                             "operator": operator, "extra": dict(extra or {})}
            self._start_wall = self._clock()
            self.state = self.RECORDING
            self.last_error = ""
            return name

    def add_step(self, images: Mapping[str, np.ndarray], state: Any, action: Any,
                 stamp: Union[int, float]) -> int:
        """Record one control step; returns the number of steps so far. `stamp`: s (float) or ns (int)."""
        with self._lock:
            self._check_open()
            self._raise_save_error()
            if self.state != self.RECORDING:
                raise RecorderStateError("no episode in progress: call start() first")
            stamp_ns = _to_ns(stamp)
            if self._last_ns is not None and stamp_ns <= self._last_ns:
                raise RecorderInputError(
                    f"non-monotonic stamps: step {self._n} has stamp {stamp_ns / 1e9:.9f} s, not after the "
                    f"previous step's {self._last_ns / 1e9:.9f} s")
            imgs = self._check_images(images)
            try:
                st = ef.coerce_state(state, self.config.joint_names, len(self.config.joint_names))
            except ValueError as exc:
                raise RecorderInputError(f"step {self._n}: {exc}") from None
            act = self._check_action(action)
            try:
                msgs = [(c.topic, ef.encode_image(self.ts, c, imgs[c.name], stamp_ns)) for c in self._cams.values()]
            except ValueError as exc:
                raise RecorderInputError(f"step {self._n}: {exc}") from None
            msgs += list(ef.robot_messages(self.ts, st, stamp_ns, self.config.base_frame).items())
            msgs.append((ef.TOPIC_ACTION, ef.action_message(self.ts, act)))
            msgs.append((ef.TOPIC_INSTRUCTION, ef.string_message(self.ts, self._meta_in["instruction"])))
            try:  # serialize the whole step first: a step is written completely or not at all
                data = [(topic, self._file.serialize(topic, msg)) for topic, msg in msgs]
            except Exception as exc:
                raise RecorderInputError(f"step {self._n}: cannot serialize ({type(exc).__name__}: {exc})") from exc
            try:
                for topic, d in data:
                    self._file.write_serialized(topic, stamp_ns, d)
            except OSError as exc:
                raise self._fail(exc, "cannot write to") from exc
            if self._first_ns is None:
                self._first_ns = stamp_ns
            self._last_ns = stamp_ns
            self._n += 1
            return self._n

    def stop(self, success: bool, extra: Optional[Mapping[str, Any]] = None) -> dict:
        """Finish the episode and return its index entry once it is saved (complete, fsynced, renamed).

        `extra` (JSON-serialisable) is merged into the `extra` metadata given to start()."""
        future = self.stop_async(success, extra)
        try:
            return future.result()
        except RecorderDiskError:
            with self._lock:  # reported here: the next call need not raise it again
                self._save_error = None
            raise

    def stop_async(self, success: bool, extra: Optional[Mapping[str, Any]] = None) -> Future:
        """End the episode now and save it on the saver thread; returns a Future of its index entry.

        The recorder is ready for `start()` at once. The Future raises RecorderDiskError if the save fails."""
        with self._lock:
            self._check_open()
            self._raise_save_error()
            if self.state != self.RECORDING:
                raise RecorderStateError("no episode in progress: nothing to stop")
            if not isinstance(success, (bool, np.bool_)):
                raise RecorderInputError(f"success must be true/false, got {success!r}")
            if self._n == 0:
                raise RecorderStateError(f"episode {self._name} has no steps: record some or discard() it")
            if extra:
                try:
                    json.dumps(dict(extra))
                except (TypeError, ValueError) as exc:
                    raise RecorderInputError(f"extra metadata must be JSON-serialisable: {exc}") from None
                self._meta_in["extra"].update(extra)
            now = self._clock()
            meta = self._metadata(bool(success), now)
            file, name, number = self._file, self._name, self._number
            self._file = None
            self.state = self.IDLE
            self._next_number = number + 1
            if self._last_stop_wall is not None:
                self._cycle_times.append(now - self._last_stop_wall)
            self._last_stop_wall = now
            future = self._saver.submit(self._save, file, meta)
            self._saving[name] = future
            return future

    def wait_saved(self, timeout: Optional[float] = None) -> bool:
        """Wait until every stopped episode is saved (or failed); False on timeout."""
        with self._lock:
            pending = list(self._saving.values())
        return not wait_futures(pending, timeout=timeout).not_done

    def _save(self, file: storage.EpisodeFile, meta: dict) -> dict:
        """Saver thread: close the file (footer, fsync), rename it into episodes/, append the index line."""
        name, number = meta["name"], meta["episode_index"]
        try:
            path = file.finalize(ef.metadata_to_custom_data(meta))
        except OSError as exc:
            file.abort()
            with self._lock:
                self._drop_spare()
                self._saving.pop(name, None)
                if self._next_number == number + 1 and self.state != self.RECORDING:
                    self._next_number = number  # nothing claimed a later number: reuse this one
                err = self._disk_error(exc, name, "cannot finish")
                self._save_error = err
            raise err from exc
        entry = storage.index_entry(meta, path)
        try:
            storage.append_index(self.root, entry, fsync=self.config.fsync)
        except OSError as exc:  # the episode file is safe; the next start re-indexes it from the files
            with self._lock:
                self.last_error = (f"episode {name} saved, but the index could not be updated: "
                                   f"{storage.describe_os_error(exc, self.root)}")
            LOG.error(self.last_error)
        with self._lock:
            self._entries.append(entry)
            self._saving.pop(name, None)
        LOG.info("saved %s (%s, %d steps): %s", name, "success" if meta["success"] else "failure",
                 meta["n_steps"], self.progress())
        return dict(entry)

    def _new_file(self, number: int) -> storage.EpisodeFile:
        return storage.EpisodeFile(self.root, storage.episode_name(number), self.topics, self.ts,
                                   self.config.compression, self.config.fsync)

    def _take_spare(self, number: int) -> Optional[storage.EpisodeFile]:
        """The prepared file for episode `number`, or None (then start() opens one itself)."""
        if self._spare is None or self._spare[0] > number:  # kept for later (a discarded number is reused)
            return None
        n, future = self._spare
        self._spare = None
        if not future.cancel():  # done, or being made now (needs no lock: waiting here cannot deadlock)
            try:
                f = future.result()
            except Exception:  # noqa: BLE001 - e.g. disk full: start() tries itself and reports it
                return None
            if n == number:
                return f
            f.abort()
        return None

    def _drop_spare(self) -> None:
        """Close and delete the prepared file (recording stopped, or closing)."""
        spare, self._spare = self._spare, None
        if spare is not None and not spare[1].cancel():
            try:
                spare[1].result().abort()
            except Exception:  # noqa: BLE001 - it failed to open: nothing to delete
                pass

    def _raise_save_error(self) -> None:
        """A background save failed (disk full...) and nobody was told: recording stops, say so now."""
        err, self._save_error = self._save_error, None
        if err is None:
            return
        msg = str(err)
        if self.state == self.RECORDING:
            self._file.abort()
            self._file = None
            self.state = self.IDLE
            msg += f"; the episode in progress ({self._name}, {self._n} steps) was discarded as well"
            self.last_error = msg
        if not self._saving:  # nothing above the last finished episode is claimed any more: number on from it
            numbers = [storage.episode_number(e.get("name", "")) for e in self._entries]
            self._next_number = max([n for n in numbers if n is not None], default=-1) + 1
        raise RecorderDiskError(msg, err.errno)

    def discard(self) -> bool:
        """Drop the episode in progress (its partial file is deleted). False if none was in progress."""
        with self._lock:
            if self.state != self.RECORDING:
                return False
            self._file.abort()
            self._file = None
            self.state = self.IDLE
            LOG.info("discarded %s (%d steps)", self._name, self._n)
            return True

    def close(self) -> Progress:
        """Quit: discard any episode in progress, finish the pending saves, release the directory. Idempotent."""
        with self._lock:
            if self.state == self.CLOSED:
                return self.progress()
            if self.state == self.RECORDING:
                LOG.warning("closing with episode %s in progress: discarded", self._name)
                self.discard()
            self.state = self.CLOSED  # no new calls from here on
        self._saver.shutdown(wait=True)  # outside the lock: the saver needs it
        with self._lock:
            self._drop_spare()
            self._dirlock.release()
            return self.progress()

    quit = close

    def __enter__(self) -> "EpisodeRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ progress
    def progress(self) -> Progress:
        with self._lock:
            per_task: dict[str, dict[str, int]] = {}
            durations = []
            for e in self._entries:
                if "error" in e:
                    continue
                c = per_task.setdefault(e.get("task", "?"), {"success": 0, "failure": 0})
                c["success" if e.get("success") else "failure"] += 1
                if e.get("duration_s") is not None:
                    durations.append(float(e["duration_s"]))
            done = sum(c["success"] for c in per_task.values())
            failed = sum(c["failure"] for c in per_task.values())
            mean_ep = float(np.mean(durations)) if durations else None
            mean_cycle = float(np.mean(self._cycle_times)) if self._cycle_times else None
            remaining = max(self.config.target_episodes - done, 0)
            per = mean_cycle if mean_cycle is not None else mean_ep
            eta = None
            if per is not None and done + failed > 0:
                eta = remaining * per * (done + failed) / max(done, 1)  # failures also cost time
            return Progress(done, self.config.target_episodes, failed, per_task, mean_ep, mean_cycle, eta,
                            self._name if self.state == self.RECORDING else None,
                            self._n if self.state == self.RECORDING else 0, self.last_error, len(self._saving))

    def task_progress(self) -> dict[str, str]:
        """task -> "done/target" for the configured per-task targets."""
        counts = Counter(e.get("task") for e in self._entries if e.get("success"))
        return {t: f"{counts.get(t, 0)}/{n}" for t, n in self.config.task_targets.items()}

    # ------------------------------------------------------------------------------------------ internals
    def _warm_up(self) -> None:
        """Serialize one dummy step: rosbags generates its serializers (and cv2 loads) now, not in step 0."""
        n = len(self.config.joint_names)
        st = ef.StepState(tuple(self.config.joint_names), np.zeros(n), np.zeros(n), np.zeros(0), np.zeros(3),
                          np.array([1.0, 0.0, 0.0, 0.0]), 0.0)
        msgs = [(c.msgtype, ef.encode_image(self.ts, c, np.zeros((c.height, c.width, 3), np.uint8), 0))
                for c in self.config.cameras]
        msgs += [(self.topics[t], m) for t, m in ef.robot_messages(self.ts, st, 0, self.config.base_frame).items()]
        msgs += [(ef.T_ARRAY, ef.action_message(self.ts, np.zeros(7))), (ef.T_STRING, ef.string_message(self.ts, ""))]
        for msgtype, msg in msgs:
            self.ts.serialize_cdr(msg, msgtype)

    def _check_open(self) -> None:
        if self.state == self.CLOSED:
            raise RecorderStateError("recorder is closed")

    def _check_free_space(self) -> None:
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise RecorderDiskError(f"cannot check free space on {self.root}: {exc}", exc.errno) from exc
        need = self.config.min_free_mb * 1e6
        if free < need:
            self.last_error = (f"not starting an episode: only {free / 1e6:.1f} MB free on the filesystem of "
                               f"{self.root} (min_free_mb = {self.config.min_free_mb:g}); free some space. "
                               f"{len(self._entries)} finished episodes are intact")
            raise RecorderDiskError(self.last_error)

    def _check_images(self, images: Any) -> dict[str, np.ndarray]:
        if not isinstance(images, Mapping):
            raise RecorderInputError(f"step {self._n}: images must be a dict camera name -> HxWx3 uint8 array, "
                                     f"got {type(images).__name__}")
        missing = [n for n in self._cams if n not in images]
        extra = [n for n in images if n not in self._cams]
        if missing or extra:
            raise RecorderInputError(f"step {self._n}: images for cameras {sorted(images)} do not match the "
                                     f"configured cameras {list(self._cams)} (missing {missing}, unexpected {extra})")
        out = {}
        for name, cam in self._cams.items():
            img = images[name]
            if not isinstance(img, np.ndarray):
                raise RecorderInputError(f"step {self._n}: camera {name}: image must be a numpy array, "
                                         f"got {type(img).__name__}")
            if img.shape != (cam.height, cam.width, 3):
                raise RecorderInputError(f"step {self._n}: camera {name}: image shape {img.shape} does not match "
                                         f"the configured {cam.height}x{cam.width}x3 (HxWx3)")
            if img.dtype != np.uint8:
                raise RecorderInputError(f"step {self._n}: camera {name}: image dtype {img.dtype}, expected uint8")
            out[name] = np.ascontiguousarray(img)
        return out

    def _check_action(self, action: Any) -> np.ndarray:
        try:
            a = np.asarray(action, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise RecorderInputError(f"step {self._n}: action is not numeric: {action!r}") from None
        if a.shape != (len(ef.ACTION_NAMES),):
            raise RecorderInputError(f"step {self._n}: action has {a.size} values, expected 7 "
                                     f"{list(ef.ACTION_NAMES)}")
        bad = [ef.ACTION_NAMES[i] for i in range(7) if not math.isfinite(a[i])]
        if bad:
            raise RecorderInputError(f"step {self._n}: action contains NaN/inf in {bad}: {a.tolist()}")
        lim = self.config.action_limit + 1e-6
        out = [ef.ACTION_NAMES[i] for i in range(7) if abs(a[i]) > lim]
        if out:
            raise RecorderInputError(f"step {self._n}: action outside [-{self.config.action_limit:g}, "
                                     f"{self.config.action_limit:g}] in {out}: {a.tolist()}")
        return a

    def _metadata(self, success: bool, now: float) -> dict:
        m = self._meta_in
        start = _dt.datetime.fromtimestamp(self._start_wall, _dt.timezone.utc)
        return {
            "format": ef.FORMAT,
            "name": self._name,
            "episode_index": self._number,
            "task": m["task"], "category": m["category"], "instruction": m["instruction"],
            "operator": m["operator"], "success": success, "n_steps": self._n,
            "start_time": start.isoformat(), "start_wall": self._start_wall,
            "first_stamp_ns": self._first_ns, "last_stamp_ns": self._last_ns,
            "duration_s": (self._last_ns - self._first_ns) / 1e9 + 1.0 / self.config.control_hz,
            "wall_duration_s": now - self._start_wall,
            "control_hz": self.config.control_hz,
            "cameras": [dict(to_dict(c), topic=c.topic, msgtype=c.msgtype, frame_id=c.optical_frame)
                        for c in self.config.cameras],
            "robot": dict(self.config.robot, base_frame=self.config.base_frame,
                          joint_names=list(self.config.joint_names)),
            "topics": dict(self.topics),
            "state_names": ef.state_names(self.config.joint_names),
            "action_names": list(ef.ACTION_NAMES),
            "ros_distro": self.config.ros_distro,
            "compression": self.config.compression,
            "software": self._software,
            "extra": m["extra"],
        }

    def _disk_error(self, exc: OSError, name: str, what: str) -> RecorderDiskError:
        msg = (f"recording stopped: {what} episode {name} in {self.root}: "
               f"{storage.describe_os_error(exc, self.root)}. The episode in progress was discarded; "
               f"{len(self._entries)} finished episodes are intact")
        self.last_error = msg
        LOG.error(msg)
        return RecorderDiskError(msg, exc.errno)

    def _fail(self, exc: OSError, what: str) -> RecorderDiskError:
        err = self._disk_error(exc, self._name, what)
        if self._file is not None:
            self._file.abort()
        self._file = None
        self._drop_spare()
        self.state = self.IDLE
        return err
