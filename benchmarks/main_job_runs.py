"""The main job (`irevla demo`) run several times with different seeds, one table: issue 12's check that one iteration
teaches the RL pick while the expert and unseen categories hold, as a mean over runs rather than one run.

    python benchmarks/main_job_runs.py --seeds 0 1 2 --out runs/main_job_runs

Each run is `irevla demo --seed K --out <out>/seed<K>` (resumable: a finished run is read back), one after another.
The evaluation seeds are the same in every run (config/main_job.yaml), so the starting model's evaluation is done
once, by the first run (`--skip-stage0-eval` for the others). Writes <out>/main_job_runs.md and .json: per category
and per task, the SFT rate, each run's rate after one iteration, the mean over runs with a Student-t interval, and
the pooled episodes with a Wilson interval; then the issue's three checks.
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

CHECKS = {"rl_gain": 0.3, "expert_drop": 0.03}  # issue 12: RL task +0.3 or more; expert -0.03 at most; unseen >= SFT


def run_main_job(seed: int, out: Path, first: bool) -> float:
    """One `irevla demo` run; returns its wall-clock minutes (0 when it was already finished)."""
    if (out / "results.md").exists() and (out / "state.json").exists() and after_episodes(out):
        return 0.0
    exe = Path(sys.executable).parent / "irevla"
    cmd = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "robot_server.cli"]),
           "demo", "--seed", str(seed), "--out", str(out)]
    if not first:
        cmd.append("--skip-stage0-eval")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"seed{seed}.log", "a") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"irevla demo --seed {seed} failed (exit {rc}); see {out.parent / f'seed{seed}.log'}")
    return (time.perf_counter() - t0) / 60.0


def after_episodes(run: Path):
    found = sorted((run / "eval").glob("after_*/episodes.json"))
    return json.loads(found[-1].read_text()) if found else None


def rates(episodes: list[dict], key: str) -> dict[str, tuple[int, int]]:
    """{task or category: (successes, episodes)}, in first-seen order."""
    out: dict[str, list[int]] = {}
    for e in episodes:
        count = out.setdefault(e[key], [0, 0])
        count[0] += int(e["success"])
        count[1] += 1
    return {name: (k, n) for name, (k, n) in out.items()}


def table(key: str, sft: dict, after: list[dict], seeds: list[int]) -> list[str]:
    from policy.evaluate import mean_t_interval, wilson_interval
    names = list(sft)
    lines = [f"| {key} | SFT (default model) | " + " | ".join(f"seed {s}" for s in seeds) +
             " | mean over runs (95 % t) | pooled runs [95 % Wilson] (episodes) |",
             "|---|---|" + "---|" * len(seeds) + "---|---|"]
    for name in names:
        k0, n0 = sft[name]
        lo0, hi0 = wilson_interval(k0, n0)
        per = [a[name][0] / a[name][1] for a in after]
        ks, ns = sum(a[name][0] for a in after), sum(a[name][1] for a in after)
        lo, hi = wilson_interval(ks, ns)
        lines.append(f"| {name} | {k0 / n0:.2f} [{lo0:.2f}, {hi0:.2f}] ({n0}) | " +
                     " | ".join(f"{p:.2f}" for p in per) + f" | {mean_t_interval(per)} | {ks / ns:.2f} [{lo:.2f}, {hi:.2f}] ({ns}) |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/main_job_runs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    minutes = {}
    for i, seed in enumerate(args.seeds):
        minutes[seed] = run_main_job(seed, out / f"seed{seed}", first=i == 0)
        print(f"seed {seed}: {minutes[seed]:.1f} min", flush=True)
    first = out / f"seed{args.seeds[0]}"
    sft_eps = json.loads((first / "eval" / "sft" / "episodes.json").read_text())
    after_eps = [after_episodes(out / f"seed{s}") for s in args.seeds]
    result = {"seeds": args.seeds, "minutes": minutes, "sft": sft_eps, "after": after_eps}
    (out / "main_job_runs.json").write_text(json.dumps(result))
    lines = [f"# The main job, {len(args.seeds)} runs (seeds {args.seeds})", "",
             f"`python benchmarks/main_job_runs.py --seeds {' '.join(map(str, args.seeds))} --out {args.out}`; "
             "minutes per run: " + ", ".join(f"{m:.1f}" for m in minutes.values()) + " (0: read back)", ""]
    for key in ("category", "task"):
        lines += table(key, rates(sft_eps, key), [rates(a, key) for a in after_eps], args.seeds) + [""]
    cat_sft = rates(sft_eps, "category")
    cat_after = [rates(a, "category") for a in after_eps]

    def mean_after(c):
        return sum(a[c][0] / a[c][1] for a in cat_after) / len(cat_after)

    def sft_rate(c):
        return cat_sft[c][0] / cat_sft[c][1]

    checks = [("RL task gain >= 0.3", mean_after("rl") - sft_rate("rl") >= CHECKS["rl_gain"],
               f"{sft_rate('rl'):.2f} -> {mean_after('rl'):.2f}"),
              ("RL task >= 0.8", mean_after("rl") >= 0.8, f"{mean_after('rl'):.2f}"),
              ("expert drop <= 0.03", sft_rate("expert") - mean_after("expert") <= CHECKS["expert_drop"],
               f"{sft_rate('expert'):.2f} -> {mean_after('expert'):.2f}"),
              ("unseen >= SFT", mean_after("unseen") >= sft_rate("unseen"),
               f"{sft_rate('unseen'):.2f} -> {mean_after('unseen'):.2f}")]
    lines += ["| check (mean over runs) | met | numbers |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if ok else 'no'} | {txt} |" for name, ok, txt in checks]
    (out / "main_job_runs.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
