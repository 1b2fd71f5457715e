"""benchmarks/main_job_runs.py: the table and the issue's checks from several main-job runs (pure parts; the runs
themselves are `irevla demo`, tested in test_iterate / test_cli)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("main_job_runs", ROOT / "benchmarks" / "main_job_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _episodes(rates: dict, n: int = 20) -> list[dict]:
    cats = {"pick_red_block": "expert", "pick_green_can": "rl", "press_blue_button": "unseen"}
    return [{"task": t, "category": cats[t], "seed": s, "success": s < round(r * n), "steps": 10}
            for t, r in rates.items() for s in range(n)]


def test_table_means_runs_pools_episodes_and_checks_the_issue_goals(tmp_path, monkeypatch):
    bench = _bench()
    sft = _episodes({"pick_red_block": 1.0, "pick_green_can": 0.4, "press_blue_button": 0.5})
    runs = [_episodes({"pick_red_block": 1.0, "pick_green_can": g, "press_blue_button": 0.5}) for g in (0.8, 0.9, 0.7)]
    for k, eps in enumerate(runs):
        d = tmp_path / f"seed{k}"
        (d / "eval" / "after_pick_green_can").mkdir(parents=True)
        (d / "eval" / "after_pick_green_can" / "episodes.json").write_text(json.dumps(eps))
        (d / "results.md").write_text("done")
        (d / "state.json").write_text("{}")
    (tmp_path / "seed0" / "eval" / "sft").mkdir()
    (tmp_path / "seed0" / "eval" / "sft" / "episodes.json").write_text(json.dumps(sft))
    monkeypatch.setattr(bench.subprocess, "call", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reran")))
    assert bench.main(["--seeds", "0", "1", "2", "--out", str(tmp_path)]) == 0  # finished runs are read back
    md = (tmp_path / "main_job_runs.md").read_text()
    assert "| rl | 0.40 [0.22, 0.61] (20) | 0.80 | 0.90 | 0.70 | 0.80 ± 0.25 | 0.80 [0.68, 0.88] (60) |" in md
    assert "| RL task gain >= 0.3 | yes | 0.40 -> 0.80 |" in md
    assert "| expert drop <= 0.03 | yes | 1.00 -> 1.00 |" in md and "| unseen >= SFT | yes | 0.50 -> 0.50 |" in md
    # one run short of the goal: the check says no
    runs[1] = _episodes({"pick_red_block": 0.95, "pick_green_can": 0.6, "press_blue_button": 0.4})
    (tmp_path / "seed1" / "eval" / "after_pick_green_can" / "episodes.json").write_text(json.dumps(runs[1]))
    bench.main(["--seeds", "0", "1", "2", "--out", str(tmp_path)])
    md = (tmp_path / "main_job_runs.md").read_text()
    assert "| RL task gain >= 0.3 | no | 0.40 -> 0.70 |" in md and "| expert drop <= 0.03 | yes | 1.00 -> 0.98 |" in md
    assert "| unseen >= SFT | no |" in md


def _load(name: str):
    import sys
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finished_run(d: Path, eps: list[dict], sft: list[dict] | None = None) -> None:
    (d / "eval" / "after_pick_green_can").mkdir(parents=True)
    (d / "eval" / "after_pick_green_can" / "episodes.json").write_text(json.dumps(eps))
    (d / "results.md").write_text("done")
    if sft is not None:
        (d / "eval" / "sft").mkdir()
        (d / "eval" / "sft" / "episodes.json").write_text(json.dumps(sft))


def test_baselines_run_each_variant_and_seed_once_and_table_them(tmp_path, monkeypatch):
    """benchmarks/baselines.py: one `irevla iterate` per variant and seed, the first evaluating the starting model,
    the others skipping it; finished runs read back, --reuse'd ones never run; one row per variant."""
    bench = _load("baselines")
    sft = _episodes({"pick_red_block": 1.0, "pick_green_can": 0.4, "press_blue_button": 0.5})
    green = {("freeze", 0): 0.5, ("freeze", 1): 0.6, ("ppo_replay", 0): 0.3, ("ppo_replay", 1): 0.4}
    calls = []

    def fake_call(cmd, **_):  # stands in for `irevla iterate`: writes what a finished run leaves
        variant, seed = cmd[cmd.index("--variant") + 1], int(cmd[cmd.index("--seed") + 1])
        calls.append((variant, seed, "--skip-stage0-eval" in cmd))
        out = Path(cmd[cmd.index("--out") + 1])
        _finished_run(out, _episodes({"pick_red_block": 0.95, "pick_green_can": green[variant, seed],
                                      "press_blue_button": 0.5}), None if "--skip-stage0-eval" in cmd else sft)
        return 0

    monkeypatch.setattr(bench.subprocess, "call", fake_call)
    main_job = tmp_path / "main_job_runs"
    for s, g in ((0, 0.7), (1, 0.8)):
        _finished_run(main_job / f"seed{s}", _episodes({"pick_red_block": 1.0, "pick_green_can": g,
                                                        "press_blue_button": 0.55}))
    out = tmp_path / "base"
    argv = ["--seeds", "0", "1", "--out", str(out), "--reuse", f"irevla={main_job}"]
    assert bench.main(argv) == 0
    assert calls == [("freeze", 0, False), ("freeze", 1, True), ("ppo_replay", 0, True), ("ppo_replay", 1, True)]
    md = (out / "baselines.md").read_text()
    row = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| 0.75 ± 0.64 (0.70 / 0.80); pooled 0.75 [0.60, 0.86] (40) |" in row["| iRe-VLA (seeds 0, 1)"]
    assert "| 0.55 ± 0.64 (0.50 / 0.60); pooled " in row["| iRe-VLA-freeze (seeds 0, 1)"]
    assert row["| SFT (starting model)"].startswith("| SFT (starting model) | 1.00 [0.84, 1.00] (20) | 0.40 [0.22, 0.61]")
    calls.clear()
    assert bench.main(argv) == 0 and calls == []  # all finished: read back, nothing reruns
    import pytest
    with pytest.raises(SystemExit, match="no finished run"):
        bench.main(["--seeds", "0", "2", "--out", str(out), "--reuse", f"irevla={main_job}"])


def test_both_ways_table_reports_the_ros_actors_control_timing(tmp_path):
    spec = importlib.util.spec_from_file_location("rl_both_ways", ROOT / "benchmarks" / "rl_both_ways.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    log = tmp_path / "episodes.jsonl"
    assert mod.control_timing(log) == "-"  # no actor log: nothing to report
    rows = [{"episode": 1, "success": False, "steps": 100},  # an actor from before the timing was recorded
            {"episode": 2, "success": True, "steps": 40, "obs_age_ms": 70.0, "step_ms": 200.0, "sim_slips": 3},
            {"episode": 3, "success": False, "steps": 100, "obs_age_ms": 90.0, "step_ms": 210.0, "sim_slips": 5}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert mod.control_timing(log) == "80 ms / 205 ms / 8"
