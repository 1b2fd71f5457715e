"""Latent cache: each camera frame goes through the VLM once per VLM version.

Keys are (vlm_id, observation key). `vlm_id` is `VLA.vlm_id()`: it changes whenever the weights that produce the
latents change (stage 0 / stage 2 training, another checkpoint), and not when only the action head changes
(stage 1), so a stage-1 learner keeps its cache while a stage-2 checkpoint starts a fresh one. The observation key
names one frame under one instruction: `observation_key(obs_id, instruction)` with obs_id e.g.
f"{episode_file_hash}:{step}" for recorded data (`policy.data.PolicyData.obs_ids`) or a frame counter for live
frames.

Two levels:
- memory: an LRU of float16 arrays under a byte budget;
- disk (optional): one append-only file per vlm_id, `<directory>/<vlm_id>.latents`. Each record carries its key,
  shape and a CRC32, and is appended with a single write under an exclusive file lock, so a crash (or a writer in
  another process) can at worst leave a torn last record, which the next open detects by its length/CRC and cuts off.

    cache = LatentCache(memory_bytes=256 << 20, directory="runs/latents")
    latents = encode_cached(vla, cache, obs_ids, images, instructions)   # encodes only the misses, in batches

Values come back as they are stored (float16 -> float32), whether they were a hit or a miss, so the result does not
depend on what happened to be cached.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

PathLike = Union[str, Path]

_MAGIC = b"LTC1"
# magic, key length, ndim, payload bytes, crc32(key + shape + payload)
_HEADER = struct.Struct("<4sHBQI")
_MAX_NDIM = 8


def observation_key(obs_id: str, instruction: str) -> str:
    """The cache key of one frame under one instruction (latents depend on both)."""
    digest = hashlib.blake2b(" ".join(instruction.split()).encode(), digest_size=6).hexdigest()
    return f"{obs_id}#{digest}"


@dataclass
class CacheStats:
    hits: int = 0  # memory + disk hits
    disk_hits: int = 0
    misses: int = 0
    puts: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


class LatentStore:
    """One append-only record file of float16 latents keyed by strings (one file per vlm_id)."""

    def __init__(self, path: PathLike, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._index: dict[str, tuple[int, tuple[int, ...]]] = {}  # key -> (payload offset, shape)
        self._scanned = 0
        self._lock = threading.Lock()
        with self._locked():
            self._scan(repair=True)

    # ---------------------------------------------------------------- internals
    def _locked(self):
        store = self

        class _Lock:
            def __enter__(self):
                store._lock.acquire()
                fcntl.flock(store._fd, fcntl.LOCK_EX)

            def __exit__(self, *exc):
                fcntl.flock(store._fd, fcntl.LOCK_UN)
                store._lock.release()
        return _Lock()

    def _scan(self, repair: bool) -> None:
        """Index the records from the last scanned offset; a torn or corrupt tail is cut off (under the lock)."""
        size = os.fstat(self._fd).st_size
        off = self._scanned
        while off < size:
            head = os.pread(self._fd, _HEADER.size, off)
            if len(head) < _HEADER.size:
                break
            magic, klen, ndim, nbytes, crc = _HEADER.unpack(head)
            rec_len = _HEADER.size + klen + 4 * ndim + nbytes
            if magic != _MAGIC or ndim > _MAX_NDIM or off + rec_len > size:
                break
            body = os.pread(self._fd, rec_len - _HEADER.size, off + _HEADER.size)
            if zlib.crc32(body) != crc:
                break
            key = body[:klen].decode()
            shape = struct.unpack(f"<{ndim}I", body[klen:klen + 4 * ndim])
            self._index[key] = (off + _HEADER.size + klen + 4 * ndim, tuple(shape))
            off += rec_len
        if off < size and repair:
            os.ftruncate(self._fd, off)  # drop a torn write left by a crash
        self._scanned = off

    # ---------------------------------------------------------------- API
    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def refresh(self) -> None:
        """Pick up records appended by other processes since the last look."""
        with self._locked():
            self._scan(repair=True)

    def get(self, key: str) -> Optional[np.ndarray]:
        loc = self._index.get(key)
        if loc is None:
            return None
        off, shape = loc
        n = int(np.prod(shape)) * 2
        return np.frombuffer(os.pread(self._fd, n, off), dtype=np.float16).reshape(shape)

    def put_many(self, items: Sequence[tuple[str, np.ndarray]]) -> None:
        chunks = []
        for key, value in items:
            arr = np.ascontiguousarray(value, dtype=np.float16)
            kb = key.encode()
            body = kb + struct.pack(f"<{arr.ndim}I", *arr.shape) + arr.tobytes()
            chunks.append((key, arr.shape, len(kb), arr.ndim,
                           _HEADER.pack(_MAGIC, len(kb), arr.ndim, arr.nbytes, zlib.crc32(body)) + body))
        if not chunks:
            return
        with self._locked():
            self._scan(repair=True)  # others may have appended: write after their records
            off = os.fstat(self._fd).st_size
            blob = b"".join(c[-1] for c in chunks)
            written = os.pwrite(self._fd, blob, off)  # one write: a crash leaves at most one torn tail
            if written != len(blob):
                os.ftruncate(self._fd, off)
                raise OSError(f"{self.path}: short write ({written} of {len(blob)} bytes)")
            if self.fsync:
                os.fsync(self._fd)
            for key, shape, klen, ndim, rec in chunks:
                self._index[key] = (off + _HEADER.size + klen + 4 * ndim, tuple(shape))
                off += len(rec)
            self._scanned = off

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class LatentCache:
    """(vlm_id, key) -> float16 latent array: an in-memory LRU under a byte budget over optional disk stores."""

    def __init__(self, memory_bytes: int = 256 << 20, directory: Optional[PathLike] = None, fsync: bool = False):
        if memory_bytes < 0:
            raise ValueError("memory_bytes must be >= 0")
        self.memory_bytes = int(memory_bytes)
        self.directory = Path(directory) if directory is not None else None
        self.fsync = fsync
        self.stats = CacheStats()
        self._mem: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
        self._mem_used = 0
        self._stores: dict[str, LatentStore] = {}
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- helpers
    @property
    def memory_used(self) -> int:
        return self._mem_used

    def __len__(self) -> int:
        return len(self._mem)

    def store(self, vlm_id: str) -> Optional[LatentStore]:
        """The disk store of one VLM version (None without a directory)."""
        if self.directory is None:
            return None
        if not vlm_id or any(c in vlm_id for c in "/\\\0") or vlm_id in (".", ".."):
            raise ValueError(f"vlm_id {vlm_id!r} cannot name a cache file")
        with self._lock:
            s = self._stores.get(vlm_id)
            if s is None:
                s = self._stores[vlm_id] = LatentStore(self.directory / f"{vlm_id}.latents", fsync=self.fsync)
            return s

    def _remember(self, k: tuple[str, str], arr: np.ndarray) -> None:
        if arr.nbytes > self.memory_bytes:
            return
        old = self._mem.pop(k, None)
        if old is not None:
            self._mem_used -= old.nbytes
        self._mem[k] = arr
        self._mem_used += arr.nbytes
        while self._mem_used > self.memory_bytes:
            _, ev = self._mem.popitem(last=False)
            self._mem_used -= ev.nbytes
            self.stats.evictions += 1

    # ---------------------------------------------------------------- API
    def get(self, vlm_id: str, key: str) -> Optional[np.ndarray]:
        """The stored float16 latent, or None (counted as a miss)."""
        with self._lock:
            k = (vlm_id, key)
            arr = self._mem.get(k)
            if arr is not None:
                self._mem.move_to_end(k)
                self.stats.hits += 1
                return arr
            s = self.store(vlm_id)
            if s is not None:
                arr = s.get(key)
                if arr is not None:
                    self.stats.hits += 1
                    self.stats.disk_hits += 1
                    self._remember(k, arr)
                    return arr
            self.stats.misses += 1
            return None

    def put(self, vlm_id: str, key: str, latent) -> np.ndarray:
        return self.put_many(vlm_id, [key], [latent])[0]

    def put_many(self, vlm_id: str, keys: Sequence[str], latents) -> list[np.ndarray]:
        """Store latents (torch or numpy, any float dtype) as float16; returns the stored arrays."""
        arrs = []
        for lat in latents:
            if hasattr(lat, "detach"):
                lat = lat.detach().float().cpu().numpy()
            arr = np.asarray(lat, dtype=np.float16)
            if not np.all(np.isfinite(arr)):
                raise ValueError("refusing to cache a non-finite latent (float16 overflow or NaN)")
            arr.setflags(write=False)
            arrs.append(arr)
        if len(arrs) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(arrs)} latents")
        with self._lock:
            s = self.store(vlm_id)
            if s is not None:
                s.put_many([(k, a) for k, a in zip(keys, arrs) if k not in s])
            for k, a in zip(keys, arrs):
                self._remember((vlm_id, k), a)
            self.stats.puts += len(arrs)
        return arrs

    def contains(self, vlm_id: str, key: str) -> bool:
        with self._lock:
            if (vlm_id, key) in self._mem:
                return True
            s = self.store(vlm_id)
            return s is not None and key in s

    def drop_memory(self, keep_vlm_id: Optional[str] = None) -> None:
        """Forget in-memory entries (all, or all but one VLM version's): after a checkpoint swap."""
        with self._lock:
            for k in [k for k in self._mem if k[0] != keep_vlm_id]:
                self._mem_used -= self._mem.pop(k).nbytes

    def close(self) -> None:
        with self._lock:
            for s in self._stores.values():
                s.close()
            self._stores.clear()


def encode_cached(vla, cache: LatentCache, obs_ids: Sequence[str],
                  images: Union[np.ndarray, Callable[[list[int]], np.ndarray]],
                  instructions: Union[str, Sequence[str]], batch_size: int = 32,
                  vlm_id: Optional[str] = None):
    """Latents [B, N, d] (float32 torch, on the VLA's device) of B observations; only cache misses are encoded.

    images: uint8 [B, cameras, H, W, 3] (anything `vla.encode` takes, indexable by a list of positions), or a
    callable mapping the positions of the misses to their images (so hits never load pixels).
    vlm_id: `vla.vlm_id()` computed once by the caller (it hashes the trained weights); default: computed here.
    """
    import torch

    n = len(obs_ids)
    if isinstance(instructions, str):
        instructions = [instructions] * n
    if len(instructions) != n:
        raise ValueError(f"{n} observation ids but {len(instructions)} instructions")
    vid = vlm_id or vla.vlm_id()
    keys = [observation_key(o, s) for o, s in zip(obs_ids, instructions)]
    found: list[Optional[np.ndarray]] = [cache.get(vid, k) for k in keys]
    misses = [i for i, a in enumerate(found) if a is None]
    for start in range(0, len(misses), batch_size):
        idx = misses[start:start + batch_size]
        imgs = images(idx) if callable(images) else images[idx]
        was_training = vla.training
        vla.eval()
        try:
            with torch.no_grad():
                lat = vla.encode(imgs, [instructions[i] for i in idx])
        finally:
            vla.train(was_training)
        for i, arr in zip(idx, cache.put_many(vid, [keys[i] for i in idx], lat)):
            found[i] = arr
    device = vla.pixel_mean.device
    return torch.from_numpy(np.stack(found)).to(device=device, dtype=torch.float32)
