"""Success and language gates of the default model, on evaluation seeds never used in training.

    python benchmarks/gate_default_model.py [--checkpoint policy/default_model] [--seeds 0-19] [--workers 2]
        [--out docs/results/default_model]

1. success: `irevla evaluate` on every expert task, the unseen pick objects and the RL-category picks, template
   phrasings, the given seeds (evaluation seeds are offset by 5e7: collection uses < 2e7). Goals: expert picks >= 0.7,
   places >= 0.5, press_button and open_drawer >= 0.9, route_cable >= 0.5, unseen pick objects >= 0.3 on average;
   the RL picks (eggplant, carrot) are reported (the next step wants one between 0.1 and 0.5).
2. language: the expert tasks again on the same seeds with tests/data/new_phrasings.yaml (phrasings never seen in
   training); goal: expert success within 0.1 of the template phrasings.
The last line prints both verdicts; the exit status is 0 only when both pass.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MUJOCO_GL", "egl")

PICKS = ["pick_red_block", "pick_green_block", "pick_blue_block", "pick_yellow_block"]
PLACES = ["place_red_block_on_plate", "place_green_block_on_plate", "place_blue_block_in_bin",
          "place_yellow_block_in_bin"]
EXPERT = PICKS + PLACES + ["press_button", "open_drawer", "route_cable"]
UNSEEN_PICKS = ["pick_purple_block", "pick_banana", "pick_tomato", "pick_white_cup"]
RL_PICKS = ["pick_eggplant", "pick_carrot"]
GOALS = [("expert picks", PICKS, 0.7), ("expert places", PLACES, 0.5), ("press_button", ["press_button"], 0.9),
         ("open_drawer", ["open_drawer"], 0.9), ("route_cable", ["route_cable"], 0.5),
         ("unseen pick objects", UNSEEN_PICKS, 0.3)]


def rate(report, tasks: list[str]) -> tuple[float, int]:
    eps = [e for e in report.episodes if e["task"] in tasks]
    return float(np.mean([e["success"] for e in eps])), len(eps)


def main(argv=None) -> int:
    from policy.evaluate import EvalConfig, evaluate, markdown_table, parse_seeds, wilson_interval
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "policy" / "default_model"))
    ap.add_argument("--seeds", default="0-19")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--phrasings", default=str(ROOT / "tests" / "data" / "new_phrasings.yaml"))
    ap.add_argument("--out", default=None, help="write the reports here (default: a temp dir)")
    ap.add_argument("--skip-language", action="store_true")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    out = Path(args.out) if args.out else None
    base = evaluate(args.checkpoint, EvalConfig(tasks=EXPERT + UNSEEN_PICKS + RL_PICKS, seeds=seeds,
                                                workers=args.workers, videos=1),
                    out / "templates" if out else None, label="template phrasings")
    print(markdown_table([base], "task"))
    verdicts = []
    for name, tasks, goal in GOALS:
        r, n = rate(base, tasks)
        lo, hi = wilson_interval(int(round(r * n)), n)
        ok = r >= goal
        verdicts.append(ok)
        print(f"{name}: {r:.2f} [{lo:.2f}, {hi:.2f}] over {n} episodes (goal >= {goal}): {'PASS' if ok else 'FAIL'}")
    for t in RL_PICKS:
        r, n = rate(base, [t])
        print(f"{t} (rl category, reported): {r:.2f} over {n} episodes")
    success_ok = all(verdicts)
    lang_ok, lang_line = True, "language: skipped"
    if not args.skip_language:
        new = evaluate(args.checkpoint, EvalConfig(tasks=EXPERT, seeds=seeds, workers=args.workers, videos=0,
                                                   task_files=[args.phrasings]),
                       out / "new_phrasings" if out else None, label="new phrasings")
        print(markdown_table([base, new], "task"))
        r_t, n = rate(base, EXPERT)
        r_n, _ = rate(new, EXPERT)
        lang_ok = r_n >= r_t - 0.1
        lang_line = (f"language: expert tasks {r_n:.2f} with new phrasings vs {r_t:.2f} with the templates "
                     f"({n} episodes each; goal: within 0.1): {'PASS' if lang_ok else 'FAIL'}")
        print(lang_line)
        if out:
            (out / "gates.json").write_text(json.dumps({"template_expert": r_t, "new_phrasing_expert": r_n}))
    print(f"gates ({len(seeds)} seeds per task, {args.checkpoint}): success {'PASS' if success_ok else 'FAIL'}; "
          + lang_line)
    return 0 if success_ok and lang_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
