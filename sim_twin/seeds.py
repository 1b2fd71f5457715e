"""Disjoint scene-seed ranges for every kind of twin episode, so that no evaluation ever replays a training scene.

A twin reset with seed s draws the scene (object poses, phrasing) from s alone, whatever the task's history. Each
kind of episode owns one block of seeds; `seed(kind, index)` maps an index inside the block to the seed and refuses
an index that would leave it (a configuration that would overlap another kind is an error, not a silent reuse).

    collection     irevla collect / expert sets: first_seed + 100000 * task index + attempt
    session_demos  stage-1 demos (VLA and scripted) and the session's own held-out evaluation
    online_rl      stage-1 online episodes: session seed * 1e6 + episode
    ppo            PPO-Replay rollouts: seed * 1e6 + episode
    evaluation     irevla evaluate (and iterate's evaluations)
    probe          benchmarks/probe_latents.py
"""
from __future__ import annotations

BLOCKS: dict[str, tuple[int, int]] = {
    "collection": (0, 20_000_000),
    "session_demos": (20_000_000, 30_000_000),
    "evaluation": (50_000_000, 60_000_000),
    "probe": (60_000_000, 70_000_000),
    "online_rl": (100_000_000, 200_000_000),
    "ppo": (200_000_000, 300_000_000),
}


class SeedRangeError(ValueError):
    """A seed index outside its kind's block: it would replay scenes of another kind of episode."""


def seed(kind: str, index: int) -> int:
    try:
        lo, hi = BLOCKS[kind]
    except KeyError:
        raise SeedRangeError(f"unknown seed kind {kind!r}; known: {sorted(BLOCKS)}") from None
    index = int(index)
    if not 0 <= index < hi - lo:
        raise SeedRangeError(f"{kind} seed index {index} is outside [0, {hi - lo}): it would overlap the seeds of "
                             f"another kind of episode (sim_twin/seeds.py)")
    return lo + index


def kind_of(s: int) -> str:
    for kind, (lo, hi) in BLOCKS.items():
        if lo <= s < hi:
            return kind
    return "unassigned"


def _check_disjoint() -> None:
    spans = sorted(BLOCKS.values())
    for (lo1, hi1), (lo2, hi2) in zip(spans, spans[1:]):
        if hi1 > lo2:
            raise AssertionError(f"seed blocks overlap: [{lo1}, {hi1}) and [{lo2}, {hi2})")


_check_disjoint()
