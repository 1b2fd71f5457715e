"""The paper's comparison at main-job scale in one command: iRe-VLA, iRe-VLA-freeze and PPO-Replay, several seeds
each, against SFT (the starting model), with the same demos, expert replay, RL budget and evaluation. Issue 12,
point 4.

    python benchmarks/baselines.py --seeds 0 1 2 --out runs/baselines [--variants irevla freeze ppo_replay]
        [--reuse irevla=runs/main_job_runs]

Each run is `irevla iterate --config config/baselines.yaml --variant V --seed K --out <out>/<V>/seed<K>`, one after
another (RL budgets are wall-clock: runs side by side would starve each other). A finished run is read back, an
unfinished one resumed. The starting model is evaluated once, by the first run (`--skip-stage0-eval` for the rest);
the evaluation seeds are the same in every run. `--reuse V=DIR` takes variant V's runs from DIR/seed<K> instead
(the main job is iRe-VLA with these settings: `benchmarks/main_job_runs.py` leaves them there). Writes
<out>/baselines.md and .json: per variant and category, each seed's rate, the mean over seeds with a Student-t
interval and the pooled episodes with a Wilson interval.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.main_job_runs import after_episodes, rates  # noqa: E402

VARIANTS = ("irevla", "freeze", "ppo_replay")
LABELS = {"sft": "SFT (starting model)", "irevla": "iRe-VLA", "freeze": "iRe-VLA-freeze", "ppo_replay": "PPO-Replay"}


def run_variant(variant: str, seed: int, config: str, out: Path, skip_stage0_eval: bool) -> float:
    """One `irevla iterate` run; returns its wall-clock minutes (0 when it was already finished)."""
    if (out / "results.md").exists() and after_episodes(out):
        return 0.0
    exe = Path(sys.executable).parent / "irevla"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "robot_server.cli"]),
           "iterate", "--config", config, "--variant", variant, "--seed", str(seed), "--out", str(out)]
    if skip_stage0_eval:
        cmd.append("--skip-stage0-eval")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(out.parent / f"seed{seed}.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[1:])} failed (exit {rc}); see {out.parent / f'seed{seed}.log'}")
    return (time.perf_counter() - t0) / 60.0


def find_sft(run_dirs: list[Path]):
    """The starting model's episodes, from whichever run evaluated it."""
    for d in run_dirs:
        p = d / "eval" / "sft" / "episodes.json"
        if p.exists():
            return json.loads(p.read_text())
    return None


def category_table(sft: list[dict], after: dict[str, list[list[dict]]], seeds: list[int]) -> list[str]:
    """One row per variant: each category's per-seed rates, mean over seeds (95 % t), pooled [95 % Wilson]."""
    from policy.evaluate import mean_t_interval, wilson_interval
    cats = list(rates(sft, "category"))
    lines = ["| variant | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]

    def cells(runs: list[list[dict]]) -> str:
        per_run = [rates(r, "category") for r in runs]
        out = []
        for c in cats:
            per = [r[c][0] / r[c][1] for r in per_run]
            k, n = sum(r[c][0] for r in per_run), sum(r[c][1] for r in per_run)
            lo, hi = wilson_interval(k, n)
            mean = f"{mean_t_interval(per)} ({' / '.join(f'{p:.2f}' for p in per)}); pooled " if len(per) > 1 else ""
            out.append(f"{mean}{k / n:.2f} [{lo:.2f}, {hi:.2f}] ({n})")
        return " | ".join(out)

    lines.append(f"| {LABELS['sft']} | {cells([sft])} |")
    for variant, runs in after.items():
        lines.append(f"| {LABELS[variant]} (seeds {', '.join(map(str, seeds))}) | {cells(runs)} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--config", default="config/baselines.yaml")
    ap.add_argument("--out", default="runs/baselines")
    ap.add_argument("--reuse", action="append", default=[], metavar="VARIANT=DIR",
                    help="take VARIANT's runs from DIR/seed<K> (e.g. irevla=runs/main_job_runs)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    reuse = {}
    for item in args.reuse:
        variant, sep, where = item.partition("=")
        if not sep or variant not in args.variants:
            ap.error(f"--reuse wants VARIANT=DIR with VARIANT in {args.variants}, got {item!r}")
        reuse[variant] = Path(where)
    dirs = {v: [(reuse.get(v) or out / v) / f"seed{s}" for s in args.seeds] for v in args.variants}
    minutes: dict[str, dict[int, float]] = {}
    for v in args.variants:
        for seed, d in zip(args.seeds, dirs[v]):
            if v in reuse:
                if not after_episodes(d):
                    raise SystemExit(f"--reuse {v}: {d} holds no finished run")
                continue
            have_sft = find_sft([x for ds in dirs.values() for x in ds]) is not None
            minutes.setdefault(v, {})[seed] = m = run_variant(v, seed, args.config, d, skip_stage0_eval=have_sft)
            print(f"{v} seed {seed}: {m:.1f} min", flush=True)
    sft = find_sft([x for ds in dirs.values() for x in ds])
    if sft is None:
        raise SystemExit("no run evaluated the starting model (eval/sft/episodes.json)")
    after = {v: [after_episodes(d) for d in dirs[v]] for v in args.variants}
    (out / "baselines.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps({"seeds": args.seeds, "minutes": minutes, "sft": sft,
                                                    "after": after, "reused": {k: str(p) for k, p in reuse.items()}}))
    cmd = (f"python benchmarks/baselines.py --seeds {' '.join(map(str, args.seeds))} --variants "
           f"{' '.join(args.variants)} --config {args.config} --out {args.out}"
           + "".join(f" --reuse {k}={p}" for k, p in reuse.items()))
    lines = [f"# Baselines, {len(args.seeds)} seeds each (seeds {args.seeds})", "", f"`{cmd}`", "",
             "minutes per run: " + "; ".join(f"{v} " + ", ".join(f"{m:.1f}" for m in ms.values())
                                             for v, ms in minutes.items()) + " (0: read back)", ""]
    lines += ["Each cell: the mean over seeds (95 % t) (each seed's rate); the pooled episodes [95 % Wilson] "
              "(episodes).", ""] + category_table(sft, after, args.seeds)
    (out / "baselines.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
