"""Does the model find the object the instruction names? Its object readout, asked by name, on held-out scenes.

    python benchmarks/probe_binding.py [--checkpoint policy/default_model] [--resets 10]

For each pick task, resets the twin on the probe's own seeds, encodes the two cameras with an instruction naming each
object of the scene in turn ("pick up the green block" in a red-block scene too), and reads the model's object
readout (a towers backbone with `object_readout`). Printed per task: how often the readout is nearest the named object
(chance: 1 in 3) and its median distance to it, separately for the task's own object and for a distractor named
instead. Expert scenes always hold the same three objects per task, so only the distractor rows show whether the
latents follow the words rather than the scene's composition; the unseen and RL tasks show whether new objects are
grounded at all. The last line sums up the expert picks.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MUJOCO_GL", "egl")

EXPERT_PICKS = ("pick_red_block", "pick_green_block", "pick_blue_block", "pick_yellow_block")
OTHER_PICKS = ("pick_purple_block", "pick_banana", "pick_tomato", "pick_white_cup", "pick_eggplant", "pick_carrot")


def probe_task(vla, task: str, resets: int, seed0: int, name_distractors: bool) -> dict:
    import torch
    from policy.towers import OBJECT_CENTER, OBJECT_SCALE
    from robot_server.gym_env import TwinEnv
    from sim_twin import seeds
    env = TwinEnv(task=task, cameras=tuple(vla.cfg.cameras), image_size=vla.image_size)
    rows = {"task object": [], "distractor": []}
    try:
        for i in range(resets):
            raw, info = env.reset(seed=seeds.seed("probe", seed0 + i))
            spec, objects = env.twin.task, env.twin.registry.objects
            names = list(spec.objects) + (list(spec.distractors) if name_distractors else [])
            pos = {o: env.twin.object_pos(o)[:2] for o in list(spec.objects) + list(spec.distractors)}
            images = np.stack([raw["images"][c] for c in vla.cfg.cameras])[None]
            for o in names:
                text = info["instruction"] if o == spec.objects[0] else f"pick up the {objects[o].nouns[0]}"
                with torch.inference_mode():
                    guess = vla.vlm.object_position(vla.encode(images, [text]))[0, :2].float().numpy()
                guess = guess * OBJECT_SCALE + np.asarray(OBJECT_CENTER[:2])
                dist = {k: float(np.linalg.norm(guess - v)) for k, v in pos.items()}
                rows["task object" if o == spec.objects[0] else "distractor"].append(
                    (min(dist, key=dist.get) == o, dist[o]))
    finally:
        env.close()
    return {k: (sum(h for h, _ in v), len(v), float(np.median([d for _, d in v]))) for k, v in rows.items() if v}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default="policy/default_model")
    ap.add_argument("--resets", type=int, default=10, help="scenes per task")
    ap.add_argument("--seed", type=int, default=500000, help="first index in the probe's seed block")
    args = ap.parse_args(argv)
    import torch
    from policy.model import load_vla
    torch.set_num_threads(1)
    vla = load_vla(args.checkpoint).eval()
    if not getattr(getattr(vla.vlm, "config", None), "object_readout", False):
        print(f"{args.checkpoint}: no object readout (backbone.towers.object_readout: false)", file=sys.stderr)
        return 2
    total = {"task object": [0, 0], "distractor": [0, 0]}
    for task in EXPERT_PICKS + OTHER_PICKS:
        res = probe_task(vla, task, args.resets, args.seed, name_distractors=task in EXPERT_PICKS)
        for kind, (hits, n, med) in res.items():
            print(f"{task:18s} {kind} named: readout nearest it {hits}/{n}, median error {100 * med:.1f} cm")
            if task in EXPERT_PICKS:
                total[kind][0] += hits
                total[kind][1] += n
    print("expert picks: readout nearest the named object " + "; ".join(
        f"{k} named {h}/{n}" for k, (h, n) in total.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
