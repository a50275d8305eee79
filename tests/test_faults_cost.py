"""Cost in the planner: `pdsim plan --objective cost` and $ per million tokens in every plan."""

from __future__ import annotations

import json

import pytest

from planner.cli import app, run_app

SMALL = ["plan", "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "400", "--tpot", "25",
         "--gpus", "2", "--trials", "3", "--quiet"]


def test_plan_minimises_cost_and_prices_the_recommendation(tmp_path, capsys):
    assert run_app(app, [*SMALL, "--objective", "cost", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "per million output tokens" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    rec = plan["recommendation"]
    assert plan["request"]["objective"] == "cost" and rec["met"]
    # h200-sxm lists at $3.5 per GPU-hour: $/Mtok = GPUs x price / (tokens/s x 3600) x 1e6
    want = rec["gpus"] * 3.5 / (rec["tok_s_per_gpu"] * rec["gpus"] * 3600) * 1e6
    assert rec["usd_per_million_tokens"] == pytest.approx(want)
    assert rec["summary"]["cost"]["usd_per_gpu_hour"] == 3.5
    # with one GPU type the cheapest token is the one served with the fewest GPU-seconds: no whole deployment the
    # plan simulated that meets the targets costs less per token than the recommendation, beyond the noise
    others = [c["usd_per_million_tokens"] for c in plan["confirmed"] if c["met"]]
    assert others and rec["usd_per_million_tokens"] <= min(others) * (1 + 0.10)
