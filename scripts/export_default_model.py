"""Export a trained checkpoint as the embedded default model: no trainer state, and metadata that records the
recipe (commands, seeds, data counts, tower versions) rather than this machine's paths.

    python scripts/export_default_model.py SRC DST --recipe CMD [CMD ...] --data EXPERT_DIR [CLUTTER_DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--recipe", nargs="+", required=True, help="the commands that produced it, in order")
    ap.add_argument("--data", nargs="+", required=True,
                    help="the expert set it was trained on, then any clutter set (counted, not named)")
    args = ap.parse_args(argv)
    from teleop.dataset import selected_entries
    src, dst = Path(args.src), Path(args.dst)
    entries = selected_entries(args.data[0])
    sets = {}
    for d in args.data[1:]:
        extra = selected_entries(d)
        sets[Path(d).name] = {"episodes": len(extra), "steps": int(sum(e.get("n_steps", 0) for e in extra)),
                              "clutter_per_scene": max(((e.get("extra") or {}).get("clutter") or 0) for e in extra),
                              "seeds": "collection seed 2000000 + 100000 * task index + attempt"}
    meta = json.loads((src / "meta.json").read_text())
    towers = src / "backbone" / "towers.json"
    meta["recipe"] = {
        "script": "scripts/train_default_model.sh",
        "commands": args.recipe,
        "expert_set": {"episodes": len(entries), "steps": int(sum(e.get("n_steps", 0) for e in entries)),
                       "per_task": dict(sorted(Counter(e["task"] for e in entries).items())),
                       "seeds": "collection seed 0 + 100000 * task index + attempt"},
        "other_sets": sets,
        "train_seed": meta.get("train_config", {}).get("seed"),
        "towers": json.loads(towers.read_text()) if towers.is_file() else None,
    }
    # Machine paths go: where the data and the fresh backbone happened to live says nothing to a new user.
    meta.pop("datasets", None)
    meta["backbone_source"] = "backbone/"
    tmp = dst.with_name(dst.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
    print(f"exported {src} -> {dst}: {len(entries)} expert episodes, recipe of {len(args.recipe)} commands")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
