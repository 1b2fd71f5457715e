"""`irevla train-classifier`: a success classifier (reward source `classifier`) from marked episodes.

    irevla train-classifier --checkpoint policy/default_model --data data/expert runs/rl/actor/harvest \\
        --task pick_eggplant --out runs/success_pick_eggplant.msgpack

Positives: the last `--last-frames` frames of each successful episode (the state the operator called a success);
negatives: every earlier frame, and every frame of failed episodes (recorded with stop_failure / `f`). The frames go
through the same frozen VLA encoder the RL actor uses, so the classifier reads exactly the latents it will judge
(rl_actor `reward:=classifier classifier:=OUT`). Prints the held-out (by episode) accuracy on its last line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

import numpy as np


def labelled_latents(roots, encoder, task: Optional[str], last_frames: int, batch: int = 32, log=print):
    """(latents [M, N, d], labels [M], episode ids [M]) of every frame of the datasets' episodes of `task`."""
    from teleop.dataset import EpisodeDataset
    lats, labels, ids = [], [], []
    for root in roots:
        ds = EpisodeDataset(root, include_failed=True, tasks=[task] if task else None)
        for k in range(ds.num_episodes):
            ep = ds.episode(k)
            n = len(ep["action"])
            frames = [{c: np.asarray(ep["images"][c][t]) for c in encoder.cameras} for t in range(n)]
            for i in range(0, n, batch):
                part = frames[i:i + batch]
                lats.append(encoder.encode_batch(part, [ep["instruction"]] * len(part)).astype(np.float16))
            y = np.zeros(n, np.int32)
            if ep["meta"].get("success"):
                y[max(0, n - last_frames):] = 1
            labels.append(y)
            ids.append(np.full(n, len(ids), np.int64))
        log(f"{root}: {ds.num_episodes} episode(s) of task {task or 'any'}")
    if not labels:
        raise ValueError(f"no episodes of task {task or 'any'} in {list(roots)}")
    return np.concatenate(lats), np.concatenate(labels), np.concatenate(ids)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="irevla train-classifier", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="the VLA whose frozen encoder makes the latents")
    ap.add_argument("--data", nargs="+", required=True, help="datasets in the expert-set format (with failures)")
    ap.add_argument("--task", default=None, help="only this task's episodes (default: all)")
    ap.add_argument("--out", required=True, help="where the classifier is saved (.msgpack)")
    ap.add_argument("--last-frames", type=int, default=3, help="frames at the end of a success counted as success")
    ap.add_argument("--config", default=None, help="YAML with a `classifier:` section (ClassifierConfig)")
    args = ap.parse_args(argv)
    if args.last_frames < 1:
        ap.error("--last-frames must be >= 1")
    from policy.model import load_vla
    from rl_agent.env import LatentEncoder
    from rl_agent.reward_classifier import ClassifierConfig, SuccessClassifier
    encoder = LatentEncoder(load_vla(args.checkpoint), torch_threads=1)
    try:
        lat, y, ids = labelled_latents(args.data, encoder, args.task, args.last_frames)
    except ValueError as exc:
        print(f"irevla train-classifier: {exc}", file=sys.stderr)
        return 2
    if y.min() == y.max():
        print(f"irevla train-classifier: all {len(y)} frames have label {int(y[0])}: mark successes and failures "
              "first", file=sys.stderr)
        return 2
    cfg = ClassifierConfig.from_yaml(args.config, "classifier") if args.config else ClassifierConfig()
    clf = SuccessClassifier(latent_dim=lat.shape[-1], config=cfg)
    report = clf.fit(lat.astype(np.float32), y, episode_ids=ids)
    path = clf.save(args.out)
    print(f"{int(y.sum())} success frames, {int((y == 0).sum())} others, {len(np.unique(ids))} episodes -> {path}")
    print(f"held-out accuracy {report.get('val_accuracy', float('nan')):.3f} "
          f"(balanced {report.get('val_balanced_accuracy', float('nan')):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
