"""Stage 2 alone, as the main job runs it (config/main_job.yaml iterate.stage2 and stage2_rl_share), on an expert
replay set + harvested RL sets, from a checkpoint: to compare stage-2 settings on one RL session's harvest.

    python benchmarks/stage2_on_harvest.py --expert runs/demo/expert --harvest runs/rl/harvest \
        --out runs/stage2_probe [--steps 400] [--rl-share 0.25 | --rl-share none] [--grasp-labels] [--seed K]

Then evaluate <out>/final with `irevla evaluate`. docs/results/rl_pick_stage1.md has the measured rows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    from rl_agent.jobs.iterate import IterateConfig, stage2
    from rl_agent.jobs.main_job import MainJobConfig, default_model_dir
    from teleop.config import load_yaml
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="start (default: the embedded default model)")
    ap.add_argument("--expert", required=True, help="expert replay set (e.g. a main-job run's expert/)")
    ap.add_argument("--harvest", nargs="+", required=True, help="harvested RL sets (<session>/harvest)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, help="stage-2 steps (default: the main job's)")
    ap.add_argument("--rl-share", help="the harvest's share of a batch, or 'none': every task the same share")
    ap.add_argument("--grasp-labels", action="store_true",
                    help="label the harvest's grasps first (iterate's stage2_grasp_labels: true); labels already in "
                         "the harvest's object_labels.jsonl are read either way")
    ap.add_argument("--seed", type=int, default=0, help="stage 2's seed (a main-job run's --seed)")
    args = ap.parse_args(argv)
    it: IterateConfig = load_yaml(MainJobConfig, REPO / "config" / "main_job.yaml").iterate
    if args.steps:
        it.stage2 = {**it.stage2, "steps": args.steps}
    if args.rl_share is not None:
        it.stage2_rl_share = None if args.rl_share == "none" else float(args.rl_share)
    it.stage2_grasp_labels = args.grasp_labels
    it.seed = args.seed
    out = Path(args.out)
    ckpt = args.checkpoint or str(default_model_dir())
    # stage2() writes under <run>/tasks/<task>/stage2; here the run directory is --out and the "task" is "probe"
    final = stage2(it, out, ckpt, Path(args.expert), list(args.harvest), "probe")
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
