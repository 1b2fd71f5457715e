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
