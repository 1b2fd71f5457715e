"""Stage 1 both ways: the same RL session in-process (`irevla rl-session`) and over ROS 2 (the rl_session graph),
several seeds each, one table. Issue 13's check that the two paths learn alike.

    python benchmarks/rl_both_ways.py --seeds 0 1 2 --out runs/both_ways [--task press_green_button] [--minutes 7]

Settings: config/main_job.yaml's session (iterate.session over config/rl_session.yaml): the same demos (count,
source, VLA attempts), SAC settings, episode length and budget in minutes. Each run is resumable (a finished one is
read back); runs go one after another (the ROS graph needs the machine's cores to keep 10 Hz). Writes
<out>/both_ways.md and both_ways.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def session_dict(task: str, minutes: float, seed: int, episodes: int = 0, settings: tuple = ()) -> dict:
    """The main job's session settings (config/rl_session.yaml under main_job.yaml's iterate: session:)."""
    import yaml

    from rl_agent.session_config import merge_sections, session_section
    job = yaml.safe_load((REPO / "config" / "main_job.yaml").read_text())["iterate"]["session"]
    base = merge_sections(session_section(REPO / "config" / "rl_session.yaml"), job)
    base.update(task=task, minutes=minutes, seed=seed)
    if episodes:
        base["max_episodes"] = episodes
    from rl_agent.jobs.session_cli import apply_setting
    for item in settings:  # --set sac.bc_weight=0 ...: as irevla rl-session --set
        apply_setting(base, item)
    return base


def run_one(way: str, task: str, minutes: float, seed: int, ckpt: str, out: Path, episodes: int = 0,
            settings: tuple = ()) -> dict:
    from rl_agent.session_config import SessionConfig
    base = session_dict(task, minutes, seed, episodes, settings)
    cfg = SessionConfig.from_dict(base)
    if way == "in-process":
        from rl_agent.jobs.session import run_session
        s = run_session(cfg, ckpt, out)
        demos = s.get("demos") or {}
        return {"episodes": s["episodes"], "env_steps": s["env_steps"], "updates": s["updates"],
                "success_last20": s["success_last20"], "successes": round((s["train_success_rate"] or 0) * s["episodes"]),
                "demos": f"{demos.get('vla', 0)} VLA + {demos.get('expert', 0)} scripted",
                "control": "none: exact 100 ms steps"}
    from rl_agent.jobs.ros_stage1 import run_ros_session
    s = run_ros_session(ckpt, cfg, out, timeout_s=60.0 * minutes + 900.0)
    log = (out / "graph.log").read_text(errors="replace")
    demo_line = next((ln for ln in log.splitlines() if "actor: " in ln and " demos (" in ln), "")
    return {"episodes": s["episodes"], "env_steps": s["env_steps"], "updates": s["updates"],
            "success_last20": s["success_last20"], "successes": s["successes"],
            "demos": demo_line.split("actor: ", 1)[-1] if demo_line else "?",
            "control": control_timing(out / "actor" / "episodes.jsonl")}


def control_timing(episodes_jsonl: Path) -> str:
    """The ROS actor's control timing over its RL episodes (RosLatentEnv.episode_timing): mean observation age at
    each action, mean step period, the twin's real-time slips in all. "-" for runs that did not record it."""
    import numpy as np
    recs = [json.loads(ln) for ln in episodes_jsonl.read_text().splitlines() if ln.strip()] \
        if episodes_jsonl.exists() else []
    ages = [r["obs_age_ms"] for r in recs if r.get("obs_age_ms") is not None]
    steps = [r["step_ms"] for r in recs if r.get("step_ms") is not None]
    if not ages:
        return "-"
    slips = sum(int(r.get("sim_slips") or 0) for r in recs)
    return f"{np.mean(ages):.0f} ms / {np.mean(steps):.0f} ms / {slips}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--task", default="press_green_button")
    ap.add_argument("--minutes", type=float, default=7.0, help="RL budget per session (wall clock)")
    ap.add_argument("--episodes", type=int, default=0, help="RL episodes per session (0: the minutes decide); the "
                    "same number both ways compares learning per episode, not per wall-clock minute")
    ap.add_argument("--checkpoint", default=str(REPO / "policy" / "default_model"))
    ap.add_argument("--out", default="runs/both_ways")
    ap.add_argument("--ways", nargs="+", choices=("in-process", "ros2"), default=["in-process", "ros2"])
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="a session setting for both ways, e.g. --set sac.bc_weight=0 (as irevla rl-session --set)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results: dict = {}
    for seed in args.seeds:
        for way in args.ways:
            r = run_one(way, args.task, args.minutes, seed, args.checkpoint, out / f"{way}_seed{seed}", args.episodes,
                        tuple(args.set))
            results.setdefault(way, {})[seed] = r
            print(f"{way} seed {seed}: {r}", flush=True)
    (out / "both_ways.json").write_text(json.dumps(results, indent=1))
    budget = f"{args.episodes} RL episodes (at most {args.minutes:g} min)" if args.episodes else f"{args.minutes:g} min"
    lines = [f"# Stage 1 both ways: {args.task}, {budget} per session, seeds {args.seeds}", "",
             f"`python benchmarks/rl_both_ways.py --seeds {' '.join(map(str, args.seeds))} --task {args.task} "
             f"--minutes {args.minutes:g} --episodes {args.episodes} --out {args.out}`", "",
             "| way | seed | demos | episodes | env steps | updates | successes | success, last 20 episodes | "
             "observation age / step period / twin slips |",
             "|---|---|---|---|---|---|---|---|---|"]
    for way, per_seed in results.items():
        for seed, r in per_seed.items():
            last = "-" if r["success_last20"] is None else f"{r['success_last20']:.2f}"
            lines.append(f"| {way} | {seed} | {r['demos']} | {r['episodes']} | {r['env_steps']} | {r['updates']} | "
                         f"{r['successes']}/{r['episodes']} | {last} | {r.get('control', '-')} |")
    from policy.evaluate import mean_t_interval
    lines += ["", "| way | success over the last 20 episodes, mean ± 95 % t-interval over seeds |", "|---|---|"]
    for way, per_seed in results.items():
        lines.append(f"| {way} | {mean_t_interval([r['success_last20'] or 0.0 for r in per_seed.values()])} |")
    lines += ["", "| way | successes over all RL episodes, pooled [95 % Wilson] |", "|---|---|"]
    from policy.evaluate import wilson_interval
    pooled = {way: (sum(r["successes"] for r in per_seed.values()), sum(r["episodes"] for r in per_seed.values()))
              for way, per_seed in results.items()}
    for way, (k, n) in pooled.items():
        lo, hi = wilson_interval(k, n)
        lines.append(f"| {way} | {k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}] |")
    if len(pooled) == 2:
        from scipy.stats import fisher_exact
        (k1, n1), (k2, n2) = pooled.values()
        p_value = fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue
        lines += ["", f"Fisher's exact test, pooled successes of the two ways: p = {p_value:.3g} "
                      f"({'a difference beyond noise' if p_value < 0.05 else 'within noise'} at 0.05)."]
    (out / "both_ways.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
