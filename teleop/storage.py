"""Crash-safe episode storage on disk (pure Python, no ROS).

Layout of a dataset directory::

    <dir>/episodes/episode_000042.mcap   finished episodes: the truth
    <dir>/index.jsonl                    one JSON line per finished episode, appended after its rename
    <dir>/.partial/episode_000043/       the episode being written (rosbags' rosbag2 writer: <name>.mcap inside)
    <dir>/.lock                          held (flock) by the one recorder using the directory

Writing an episode: rosbags writes ``.partial/<name>/<name>.mcap``; on finish the file is flushed and fsynced,
atomically renamed (os.replace) into ``episodes/``, the directory fsynced, and only then the index line appended.
A SIGKILL at any moment therefore leaves either a complete file in ``episodes/`` or a leftover in ``.partial/``
(the episode in progress: removed at the next start). `reconcile()` at start rebuilds the index from the files
whenever the two disagree (missing / extra / torn lines).

All file writes of an episode go through `_disk_write` (the lowest layer; tests inject OSError there).
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

LOG = logging.getLogger("teleop.storage")

EPISODES = "episodes"
PARTIAL = ".partial"
INDEX = "index.jsonl"
LOCK = ".lock"
NAME_RE = re.compile(r"^episode_(\d{6,})$")


def episode_name(number: int) -> str:
    return f"episode_{number:06d}"


def episode_number(name: str) -> Optional[int]:
    m = NAME_RE.match(name)
    return int(m.group(1)) if m else None


def _disk_write(f, data) -> int:
    """The one place episode bytes reach the OS (patched by the disk-full tests)."""
    return f.write(data)


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def describe_os_error(exc: OSError, path: Path) -> str:
    """A human sentence for a write failure, with the free space when the disk is full."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    msg = f"[Errno {exc.errno}] {what}" if exc.errno else str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(path).free
            msg += f" (disk full: {free / 1e6:.1f} MB free on the filesystem of {path})"
        except OSError:
            msg += " (disk full)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg += f" (no permission to write {path}, or a read-only filesystem)"
    return msg


class _DiskFile:
    """File object given to rosbags' MCAP storage: writes through `_disk_write`, fsyncs on close."""

    def __init__(self, f, fsync: bool):
        self._f = f
        self._fsync = fsync
        self.name = getattr(f, "name", "")

    def write(self, data) -> int:
        return _disk_write(self._f, data)

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            self._f.flush()
            if self._fsync:
                os.fsync(self._f.fileno())
        finally:
            self._f.close()

    def abort(self) -> None:
        try:
            self._f.close()
        except OSError:  # a full disk fails the final flush; the fd is closed anyway
            pass

    @property
    def closed(self) -> bool:
        return self._f.closed


def _writer_classes(fsync: bool):
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.storage_mcap import McapWriter

    class GuardedMcapWriter(McapWriter):
        def __init__(self, path, compression):
            super().__init__(path, compression)
            self.bio = _DiskFile(self.bio, fsync)

        def abort(self) -> None:
            self.bio.abort()

    class EpisodeBagWriter(Writer):
        STORAGE_PLUGINS = {StoragePlugin.MCAP: GuardedMcapWriter}

    return EpisodeBagWriter, StoragePlugin


class EpisodeFile:
    """One episode being written. `write()` messages, then `finalize()` (atomic) or `abort()`."""

    def __init__(self, root: Path, name: str, topics: dict[str, str], typestore, compression: str = "zstd",
                 fsync: bool = True):
        from rosbags.rosbag2 import CompressionFormat, CompressionMode
        self.root = Path(root)
        self.name = name
        self.fsync = fsync
        self.staging = self.root / PARTIAL / name
        self.final_path = self.root / EPISODES / f"{name}.mcap"
        self.typestore = typestore
        Writer, StoragePlugin = _writer_classes(fsync)
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.parent.mkdir(parents=True, exist_ok=True)
        self._writer = Writer(self.staging, version=9, storage_plugin=StoragePlugin.MCAP)
        if compression == "zstd":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        elif compression != "none":
            raise ValueError(f"compression must be 'zstd' or 'none', got {compression!r}")
        try:
            self._writer.open()
            self._conns = {t: self._writer.add_connection(t, mt, typestore=typestore) for t, mt in topics.items()}
        except BaseException:
            self.abort()
            raise
        self._msgtypes = dict(topics)
        self.closed = False

    @property
    def partial_path(self) -> Path:
        return self.staging / f"{self.name}.mcap"

    def serialize(self, topic: str, msg: Any):
        """CDR bytes of `msg` for `topic` (no I/O)."""
        return self.typestore.serialize_cdr(msg, self._msgtypes[topic])

    def write_serialized(self, topic: str, stamp_ns: int, data) -> None:
        self._writer.write(self._conns[topic], stamp_ns, data)

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        self.write_serialized(topic, stamp_ns, self.serialize(topic, msg))

    def finalize(self, custom_data: dict[str, str]) -> Path:
        """Close (footer, fsync), rename into episodes/ atomically, fsync the directory. Returns the final path."""
        for k, v in custom_data.items():
            self._writer.set_custom_data(k, v)
        self._writer.close()  # writes the footer, then _DiskFile.close(): flush + fsync
        self.closed = True
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        if self.final_path.exists():
            raise FileExistsError(f"{self.final_path} exists already; not overwriting a finished episode")
        os.replace(self.partial_path, self.final_path)
        # From here on the episode is saved (the file is complete and fsynced): nothing below may fail it.
        if self.fsync:
            try:
                fsync_dir(self.final_path.parent)
            except OSError as exc:
                LOG.warning("fsync of %s failed (%s): the rename may not survive a power loss",
                            self.final_path.parent, exc)
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.final_path

    def abort(self) -> None:
        """Close without finishing and delete the partial file (never raises)."""
        try:
            self._writer.abort()
        except Exception:
            pass
        self.closed = True
        shutil.rmtree(self.staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- directory
@dataclass
class ReconcileReport:
    removed_partials: list[str] = field(default_factory=list)
    added_to_index: list[str] = field(default_factory=list)
    dropped_from_index: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    torn_lines: int = 0
    rebuilt: bool = False

    def summary(self) -> str:
        parts = []
        if self.removed_partials:
            parts.append(f"discarded {len(self.removed_partials)} unfinished episode(s) "
                         f"{self.removed_partials} (recording was interrupted)")
        if self.added_to_index:
            parts.append(f"indexed {len(self.added_to_index)} episode file(s) missing from the index")
        if self.dropped_from_index:
            parts.append(f"dropped {len(self.dropped_from_index)} index line(s) without a file")
        if self.torn_lines:
            parts.append(f"dropped {self.torn_lines} unreadable index line(s)")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable episode file(s): {self.unreadable}")
        return "; ".join(parts) or "index consistent"


def read_index(root: Path) -> tuple[list[dict], int]:
    """(entries, number of unparsable lines) of <root>/index.jsonl (missing file -> ([], 0))."""
    path = Path(root) / INDEX
    entries, bad = [], 0
    if not path.exists():
        return entries, 0
    with open(path, "rb") as f:
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
                if not isinstance(e, dict) or "name" not in e:
                    raise ValueError("no name")
                entries.append(e)
            except (ValueError, UnicodeDecodeError):
                bad += 1
    return entries, bad


def episode_files(root: Path) -> dict[str, Path]:
    """name -> path of every finished episode file, sorted by name."""
    d = Path(root) / EPISODES
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.mcap")) if p.is_file()}


def append_index(root: Path, entry: dict, fsync: bool = True) -> None:
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    with open(Path(root) / INDEX, "ab") as f:
        _disk_write(f, line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def write_index(root: Path, entries: list[dict], fsync: bool = True) -> None:
    """Atomically replace the index with `entries`."""
    root = Path(root)
    tmp = root / (INDEX + ".tmp")
    with open(tmp, "wb") as f:
        for e in entries:
            _disk_write(f, (json.dumps(e, sort_keys=True) + "\n").encode())
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, root / INDEX)
    if fsync:
        fsync_dir(root)


def index_entry(meta: dict, path: Path) -> dict:
    e = dict(meta)
    e["file"] = f"{EPISODES}/{path.name}"
    e["bytes"] = path.stat().st_size
    return e


def reconcile(root: Path, fsync: bool = True) -> tuple[list[dict], ReconcileReport]:
    """Make the index agree with the files (files are the truth); remove leftovers of interrupted episodes.

    Returns the index entries (one per episode file, in name order) and what was changed.
    """
    from teleop.dataset import read_metadata  # lazy: dataset imports storage

    root = Path(root)
    rep = ReconcileReport()
    partial = root / PARTIAL
    if partial.is_dir():
        for p in sorted(partial.iterdir()):
            rep.removed_partials.append(p.name)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    pass
    tmp = root / (INDEX + ".tmp")
    if tmp.exists():
        tmp.unlink()
    files = episode_files(root)
    entries, rep.torn_lines = read_index(root)
    by_name: dict[str, dict] = {}
    for e in entries:
        by_name[e["name"]] = e  # a later line for the same name wins
    duplicates = len(entries) != len(by_name)
    ok = (not rep.torn_lines and not duplicates and set(by_name) == set(files)
          and all(by_name[n].get("bytes") == files[n].stat().st_size for n in files))
    if ok:
        return [by_name[n] for n in files], rep
    out = []
    for name, path in files.items():
        e = by_name.get(name)
        if e is not None and e.get("bytes") == path.stat().st_size:
            out.append(e)
            continue
        try:
            meta = read_metadata(path)
            out.append(index_entry(meta, path))
        except Exception as exc:  # keep user data; validate will report it
            LOG.warning("episode file %s is unreadable: %s", path, exc)
            rep.unreadable.append(name)
            out.append({"name": name, "file": f"{EPISODES}/{path.name}", "bytes": path.stat().st_size,
                        "error": f"unreadable: {exc}"})
        if e is None:
            rep.added_to_index.append(name)
    rep.dropped_from_index = sorted(set(by_name) - set(files))
    rep.rebuilt = True
    write_index(root, out, fsync=fsync)
    return out, rep


class DirectoryLock:
    """Exclusive flock on <dir>/.lock: one recorder per dataset directory (released by the OS on any exit)."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            except OSError:
                holder = "?"
            os.close(fd)
            raise RuntimeError(f"another recorder (pid {holder or '?'}) is using {self.path.parent}; "
                               "stop it first (one recorder per dataset directory)") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:  # informational only (e.g. a full disk)
            pass
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
