"""Latent cache: LRU byte budget, hit/miss accounting, crash-safe disk store, encode-once, key change per VLM."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.config import VLAConfig
from policy.latent_cache import LatentCache, LatentStore, encode_cached, observation_key
from policy.model import build_vla

TINY_YAML = Path(__file__).resolve().parents[1] / "config" / "policy_tiny.yaml"
INSTR = "press the button"


@pytest.fixture(scope="module", autouse=True)
def _tiny_cache(tiny_model_env):
    yield


def lat(seed: int, shape=(4, 8)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_memory_lru_respects_the_byte_budget_and_counts():
    one = lat(0).astype(np.float16).nbytes  # 64 bytes
    cache = LatentCache(memory_bytes=3 * one)
    for i in range(3):
        cache.put("v1", f"k{i}", lat(i))
    assert cache.memory_used == 3 * one and len(cache) == 3
    assert cache.get("v1", "k0") is not None  # k0 becomes the most recently used
    cache.put("v1", "k3", lat(3))  # evicts k1, the least recently used
    assert cache.stats.evictions == 1 and cache.memory_used <= 3 * one
    assert cache.get("v1", "k1") is None
    for k in ("k0", "k2", "k3"):
        np.testing.assert_array_equal(cache.get("v1", k), lat(int(k[1])).astype(np.float16))
    assert cache.get("v2", "k0") is None  # another VLM version is another key
    assert (cache.stats.hits, cache.stats.misses, cache.stats.disk_hits) == (4, 2, 0)
    with pytest.raises(ValueError):
        cache.put("v1", "bad", np.array([np.nan], np.float32))


def test_disk_store_persists_and_survives_a_torn_write(tmp_path):
    cache = LatentCache(memory_bytes=0, directory=tmp_path)  # nothing in memory: every hit is from disk
    cache.put_many("vlmA", ["a", "b", "c"], [lat(1), lat(2), lat(3, (2, 3, 5))])
    cache.close()
    path = tmp_path / "vlmA.latents"
    size = path.stat().st_size
    with open(path, "ab") as f:  # a writer killed mid-record
        f.write(b"LTC1\x05\x00\x02" + b"\x00" * 9)
    cache = LatentCache(memory_bytes=0, directory=tmp_path)
    np.testing.assert_array_equal(cache.get("vlmA", "c"), lat(3, (2, 3, 5)).astype(np.float16))
    assert path.stat().st_size == size  # the torn tail was cut off
    cache.put("vlmA", "d", lat(4))
    # Corrupt the payload of the last record: its CRC no longer matches, so it is dropped (and only it).
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\xff\xff\xff")
    cache.close()
    reopened = LatentCache(memory_bytes=1 << 20, directory=tmp_path)
    assert reopened.get("vlmA", "d") is None
    for k, s in (("a", 1), ("b", 2)):
        np.testing.assert_array_equal(reopened.get("vlmA", k), lat(s).astype(np.float16))
    assert reopened.stats.disk_hits == 2 and reopened.stats.misses == 1
    assert reopened.get("vlmA", "a") is not None and reopened.stats.disk_hits == 2  # now from memory


def test_two_writers_on_one_file_see_each_other(tmp_path):
    a = LatentStore(tmp_path / "v.latents")
    b = LatentStore(tmp_path / "v.latents")
    a.put_many([("x", lat(1).astype(np.float16))])
    b.put_many([("y", lat(2).astype(np.float16))])  # appends after a's record, not over it
    a.refresh()
    np.testing.assert_array_equal(a.get("y"), lat(2).astype(np.float16))
    assert len(LatentStore(tmp_path / "v.latents")) == 2


def test_encode_cached_encodes_each_frame_once_and_rekeys_on_a_new_vlm(tmp_path):
    cfg = VLAConfig.from_yaml(TINY_YAML, "vla")  # backbone_training: full
    vla = build_vla(cfg)
    vla.eval()
    s = cfg.backbone.tiny.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, len(cfg.cameras), s, s, 3), dtype=np.uint8)
    ids = [f"ep0:{i}" for i in range(5)]
    calls = []
    real_encode = vla.encode

    def counting_encode(imgs, instr):
        calls.append(len(imgs))
        return real_encode(imgs, instr)

    vla.encode = counting_encode
    cache = LatentCache(directory=tmp_path)
    first = encode_cached(vla, cache, ids[:3], images[:3], INSTR, batch_size=2)
    assert calls == [2, 1] and cache.stats.misses == 3 and cache.stats.hits == 0
    with torch.no_grad():
        fresh = real_encode(images[:3], INSTR)
    torch.testing.assert_close(first, fresh, atol=2e-2, rtol=1e-2)  # stored as float16
    loaded_pixels = []
    both = encode_cached(vla, cache, ids, lambda idx: loaded_pixels.append(idx) or images[idx], INSTR)
    assert calls == [2, 1, 2] and loaded_pixels == [[3, 4]]  # only the misses were loaded and encoded
    assert cache.stats.hits == 3 and cache.stats.misses == 5
    assert torch.equal(both[:3], first)  # a hit returns exactly what the miss returned
    # The same frame under another instruction is another latent.
    encode_cached(vla, cache, ids[:1], images[:1], "open the drawer")
    assert calls[-1] == 1 and cache.contains(vla.vlm_id(), observation_key(ids[0], "open the drawer"))

    vid = vla.vlm_id()
    with torch.no_grad():  # a stage-1 style change: only the head moves -> same key, all hits
        for p in vla.head.parameters():
            p.add_(0.1)
    assert vla.vlm_id() == vid
    n = len(calls)
    encode_cached(vla, cache, ids, images, INSTR)
    assert len(calls) == n
    with torch.no_grad():  # a stage-2 style change of the VLM -> a new key, everything is encoded again
        vla.vlm.language_projection.bias.add_(0.01)
    assert vla.vlm_id() != vid
    encode_cached(vla, cache, ids, images, INSTR)
    assert calls[n:] == [5]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{vid}.latents", f"{vla.vlm_id()}.latents"])
    # A new process (a fresh cache on the same directory) finds the latents on disk without encoding.
    cache.close()
    again = LatentCache(directory=tmp_path)
    out = encode_cached(vla, again, ids, images, INSTR)
    assert len(calls) == n + 1 and again.stats.disk_hits == 5 and out.shape == (5,) + tuple(first.shape[1:])
    with pytest.raises(ValueError):
        encode_cached(vla, again, ids, images, [INSTR] * 4)
