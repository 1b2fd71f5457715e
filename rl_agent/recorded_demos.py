"""Demos from recorded episodes: successful teleop (or scripted) episodes of the expert-set format become SACfD demo
chunks, each step's frames encoded once through the same frozen VLA the actor uses.

On a real cell the demo buffer then starts from what the operator recorded with `teleop_collection`, instead of
(or before) the zero-shot VLA's attempts, which each need a person to reset the scene. The chunks are kept in
out/recorded_demos, so a restarted actor sends the same ones without encoding again.

Transitions: observation t = (latents of the frames at t, the policy state at t), the recorded (contract) action t,
next observation t+1; the last step's next observation is its own (terminal), with reward 1 and done.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from rl_agent import transport as tp


def recorded_demo_chunks(root, encoder, task: Optional[str] = None, max_episodes: int = 20,
                         prepare: Callable[[dict], dict] = lambda o: o, batch: int = 32, log=print) -> list[dict]:
    """Up to `max_episodes` successful episodes of `task` (all tasks when None) from the dataset at `root`."""
    from policy.config import POLICY_STATE_DIM, POLICY_STATE_NAMES
    from teleop.dataset import EpisodeDataset
    ds = EpisodeDataset(root, tasks=[task] if task else None)
    if ds.num_episodes == 0:
        raise ValueError(f"{root}: no successful episodes of task {task or 'any'} to use as demos")
    chunks = []
    for k in range(min(ds.num_episodes, int(max_episodes))):
        ep = ds.episode(k)
        names = ep["meta"].get("state_names") or []
        if tuple(names[-POLICY_STATE_DIM:]) != POLICY_STATE_NAMES:
            raise ValueError(f"{root}/{ep['name']}: state columns end in {names[-POLICY_STATE_DIM:]}, expected "
                             f"{list(POLICY_STATE_NAMES)}")
        missing = [c for c in encoder.cameras if c not in ep["images"]]
        if missing:
            raise ValueError(f"{root}/{ep['name']}: no camera {missing}; the policy reads {list(encoder.cameras)}")
        n = len(ep["action"])
        if n < 2:
            continue
        frames = [{c: np.asarray(ep["images"][c][t]) for c in encoder.cameras} for t in range(n)]
        latents = np.concatenate([encoder.encode_batch(frames[i:i + batch], [ep["instruction"]] * len(frames[i:i + batch]))
                                  for i in range(0, n, batch)])
        state = np.asarray(ep["state"], np.float32)[:, -POLICY_STATE_DIM:]
        obs = [prepare({"latents": latents[t], "state": state[t]}) for t in range(n)]
        actions = np.clip(np.asarray(ep["action"], np.float32), -1.0, 1.0)
        builder = tp.ChunkBuilder(10_000)
        builder.start(obs[0])
        for t in range(n):
            last = t == n - 1
            builder.add(actions[t], 1.0 if last else 0.0, obs[t] if last else obs[t + 1], last)
        chunks.append(builder.flush())
    log(f"actor: {len(chunks)} recorded demo episode(s) from {root} (task {task or 'any'}), "
        f"{sum(len(c['actions']) for c in chunks)} transitions")
    return chunks


def send_recorded_demos(root, encoder, out: Path, task: Optional[str], max_episodes: int, prepare, send,
                        log=print) -> int:
    """Encode once (cached in out/recorded_demos), then send every chunk as demos. Returns how many."""
    store = Path(out) / "recorded_demos"
    files = sorted(store.glob("chunk_*.npz"))
    if not files:
        store.mkdir(parents=True, exist_ok=True)
        for i, chunk in enumerate(recorded_demo_chunks(root, encoder, task, max_episodes, prepare, log=log)):
            tmp = store / f".chunk_{i + 1:06d}.npz.tmp"
            tmp.write_bytes(tp.encode_chunk(chunk))
            tmp.rename(store / f"chunk_{i + 1:06d}.npz")
        files = sorted(store.glob("chunk_*.npz"))
    for f in files:
        chunk, _ = tp.decode_chunk(f.read_bytes())
        send(tp.KIND_DEMOS, chunk)
    return len(files)
