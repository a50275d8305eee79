"""Which way the planner leans, on physics the simulator measures: long prompts with short outputs under
tight latency targets want disaggregation (prefill stalls decode in an aggregated batch); short requests on
few GPUs want aggregation (a dedicated prefill pool idles); more traffic never needs fewer GPUs."""

from __future__ import annotations

import json

import pytest

from planner.cli import app, run_app
from planner.decide import NOISE


def recommend(tmp_path, *args: str, trials: int = 6) -> dict:
    code = run_app(app, ["plan", "--model", "llama-3.1-8b", *args, "--trials", str(trials), "--quiet", "--out",
                         str(tmp_path)])
    assert code == 0
    return json.loads((tmp_path / "plan.json").read_text())


def best_by_topology(plan: dict) -> dict[str, float]:
    best: dict[str, float] = {"agg": 0.0, "disagg": 0.0}
    for row in plan["evaluated"]:
        if row["feasible"]:
            t = row["unit"]["topology"]
            best[t] = max(best[t], row["score"])
    return best


@pytest.mark.slow
def test_long_prompts_short_outputs_tight_targets_favour_disagg(tmp_path):
    plan = recommend(tmp_path, "--isl", "8000", "--osl", "100", "--ttft", "300", "--tpot", "10", "--gpus", "4")
    assert plan["recommendation"]["deployment"]["topology"] == "disagg"
    best = best_by_topology(plan)
    assert best["disagg"] > (1 + NOISE) * best["agg"], best  # beyond the run-to-run noise of a unit's goodput


@pytest.mark.slow
def test_short_prompts_short_outputs_favour_agg(tmp_path):
    # 12 trials: the best agg unit (small batch limits) is one six trials can miss
    plan = recommend(tmp_path, "--isl", "200", "--osl", "100", "--ttft", "300", "--tpot", "12", "--gpus", "2",
                     trials=12)
    assert plan["recommendation"]["deployment"]["topology"] == "agg"
    best = best_by_topology(plan)
    assert best["agg"] > best["disagg"], best
    other = plan["runner_up"]  # the best disagg, on the same GPUs at the agg's load, does not carry it
    assert other["deployment"]["topology"] == "disagg" and other["gpus"] <= plan["recommendation"]["gpus"]
    assert not other["met"] and "tok_s_per_gpu" not in other


@pytest.mark.slow
def test_raising_the_rate_never_lowers_min_gpus(tmp_path):
    gpus = []
    for rate in (5, 30, 80):
        plan = recommend(tmp_path / f"r{rate}", "--isl", "500", "--osl", "100", "--ttft", "300", "--tpot", "25",
                         "--gpus", "8", "--objective", "min-gpus", "--rate", str(rate), trials=5)
        assert plan["recommendation"]["met"]
        gpus.append(plan["recommendation"]["gpus"])
    assert gpus == sorted(gpus), gpus
    assert gpus[-1] > gpus[0], gpus
