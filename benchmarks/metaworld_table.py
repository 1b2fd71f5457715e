"""The paper's Table I (MetaWorld) from our `irevla iterate` runs, with the paper's numbers beside ours.

    python benchmarks/metaworld_table.py --sft runs/mw_sft --ppo runs/mw_ppo --irevla runs/mw_irevla \
        --out docs/results/metaworld_table1.md

Each run is read from its evaluation records (<run>/eval/<label>/episodes.json): the SFT row is the stage-0 model's
evaluation ("sft") of whichever run has it, PPO-Replay and iRe-VLA rows the last evaluation of their runs (after the
whole curriculum). Columns: the expert tasks, each RL task, the unseen tasks; every cell the success rate with its
Wilson 95 % interval and number of episodes. A run that is missing or unfinished leaves its row out ("not run").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RL_TASKS = ["mw_button_press_new", "mw_drawer_open_new", "mw_door_open_new", "mw_window_open_new",
            "mw_window_close_new"]
HEADER = ["original 25", "button-press-new", "drawer-open-new", "door-open-new", "window-open-new",
          "window-close-new", "unseen 10"]
PAPER = {"SFT": [0.83, 0.56, 0.48, 0.40, 0.32, 0.28, 0.51],
         "PPO-Replay": [0.69, 0.80, 0.24, 0.32, 0.04, 0.36, 0.39],
         "iRe-VLA": [0.83, 1.00, 0.84, 0.84, 0.80, 0.96, 0.80]}


def _current(key: dict) -> bool:
    """Was this evaluation run on the tasks as the task files define them now? (An evaluation of an earlier
    variation of a "-new" task must not fill today's column.)"""
    from sim_twin.tasks.registry import TaskRegistry
    if not isinstance(key, dict) or "task_definitions" not in key:
        return False
    try:
        return TaskRegistry.load(extra_files=["metaworld"]).fingerprint(key["tasks"]) == key["task_definitions"]
    except Exception:  # a task that no longer exists
        return False


def _evals(run: Path) -> list[str]:
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").is_file() else {}
    labels = []
    for k, v in state.items():
        if not k.startswith("eval:") or not (run / "eval" / k[5:] / "episodes.json").is_file():
            continue
        if _current(v.get("key") if isinstance(v, dict) else None):
            labels.append(k[len("eval:"):])
        else:
            print(f"{run}: eval/{k[5:]} was run on other task definitions (or records none): left out",
                  file=sys.stderr)
    return labels


def _episodes(run: Path, label: str) -> list[dict]:
    return json.loads((run / "eval" / label / "episodes.json").read_text())


def _cell(eps: list[dict]) -> str:
    from policy.evaluate import wilson_interval
    if not eps:
        return "-"
    k, n = sum(bool(e["success"]) for e in eps), len(eps)
    lo, hi = wilson_interval(k, n)
    return f"{k / n:.2f} [{lo:.2f}, {hi:.2f}] ({n})"


def row(eps: list[dict]) -> list[str]:
    return ([_cell([e for e in eps if e["category"] == "expert"])]
            + [_cell([e for e in eps if e["task"] == t]) for t in RL_TASKS]
            + [_cell([e for e in eps if e["category"] == "unseen"])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sft", type=Path, help="run whose 'sft' evaluation is the SFT row (default: any run's)")
    ap.add_argument("--ppo", type=Path, help="irevla iterate --variant ppo_replay run")
    ap.add_argument("--irevla", type=Path, help="irevla iterate --variant irevla run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "metaworld_table1.md")
    args = ap.parse_args(argv)
    ours: dict[str, tuple[list[str], str]] = {}
    for name, run, pick in (("SFT", args.sft, "sft"), ("PPO-Replay", args.ppo, "last"),
                            ("iRe-VLA", args.irevla, "last")):
        candidates = [run] if run else []
        if name == "SFT" and not run:
            candidates = [r for r in (args.irevla, args.ppo) if r]
        for r in candidates:
            labels = _evals(r) if r.is_dir() else []
            if pick == "sft" and "sft" in labels:
                ours[name] = (row(_episodes(r, "sft")), f"{r} (eval/sft)")
                break
            after = [lab for lab in labels if lab.startswith("after_")]
            if pick == "last" and after:
                ours[name] = (row(_episodes(r, after[-1])), f"{r} (eval/{after[-1]})")
                break
    lines = ["# MetaWorld Table I: the paper and our loop", "",
             "Each cell: success rate [Wilson 95 % interval] (episodes). Paper rows as published (no episode counts).",
             "", "| | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for name in ("SFT", "PPO-Replay", "iRe-VLA"):
        lines.append(f"| {name} (paper) | " + " | ".join(f"{v:.2f}" for v in PAPER[name]) + " |")
        cells = ours.get(name, (["not run"] * len(HEADER), ""))[0]
        lines.append(f"| {name} (ours) | " + " | ".join(cells) + " |")
    lines += ["", "Sources:"] + [f"- {name}: {src}" for name, (_, src) in ours.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = ""
    if args.out.is_file():  # the notes written under the table (from its first "## " heading on) stay
        old = args.out.read_text()
        kept = old[old.index("\n## "):] if "\n## " in old else ""
    args.out.write_text("\n".join(lines) + "\n" + kept)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
