"""`plan --engine`: the deployment is planned for the engine the user runs, with its scheduler (SGLang
prefill-first, TRT-LLM whole prompts), memory share and fitted factors; `--engine all` compares them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml

from planner.cli import app, run_app
from planner.plan import PlanRequest, build
from planner.space import agg_unit
from simulator import simulate

ASK = dict(model="llama-3.1-8b", isl=2000, osl=200, ttft_ms=500, tpot_ms=30, gpu="h100-sxm")


def test_each_engine_plans_with_its_own_scheduler_and_memory_share():
    units = {}
    for engine in ("vllm", "sglang", "trtllm"):
        space, _, _ = build(PlanRequest(**ASK, engine=engine))
        units[engine] = agg_unit(space, 1, 8192, 256)
    assert units["vllm"].engine == "vllm" and units["vllm"].gpu_memory_utilization == 0.90
    assert units["sglang"].workers.prefill_first and units["sglang"].gpu_memory_utilization < 0.90
    assert not units["trtllm"].workers.chunked_prefill and not units["vllm"].workers.prefill_first


def test_prefill_first_scheduling_trades_tpot_for_ttft_as_sglangs_design_implies():
    space, _, ev = build(PlanRequest(**ASK, engine="sglang"))
    unit = agg_unit(space, 1, 8192, 256)
    wl = ev.workload(rate=8.0, requests=600)
    first = simulate(unit, wl).summary()
    decode_first = simulate(replace(unit, workers=replace(unit.workers, prefill_first=False)), wl).summary()
    assert first["ttft_ms"]["p90"] < decode_first["ttft_ms"]["p90"]  # prompts do not wait behind decodes
    assert first["tpot_ms"]["p50"] > decode_first["tpot_ms"]["p50"]  # decodes wait behind prompts


def test_plan_engine_says_which_and_writes_it_into_the_deployment(tmp_path, capsys):
    args = ["plan", "--model", "llama-3.1-8b", "--isl", "2000", "--osl", "200", "--ttft", "500", "--tpot", "30",
            "--gpus", "2", "--trials", "2", "--quiet", "--topology", "agg"]
    assert run_app(app, [*args, "--engine", "sglang", "--out", str(tmp_path / "one")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split(";")[0].endswith("with sglang")
    dep = yaml.safe_load((tmp_path / "one" / "deployment.yaml").read_text())
    assert dep["engine"] == "sglang" and dep["workers"]["prefill_first"] is True
    assert json.loads((tmp_path / "one" / "plan.json").read_text())["request"]["engine"] == "sglang"
    assert run_app(app, [*args, "--engine", "all", "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert out.count("\nRecommendation: ") == 3 and "Engines compared" in out
    assert "Best engine for this question: " in out
    assert {p.name for p in (tmp_path / "all").iterdir()} == {"vllm", "sglang", "trtllm"}
    assert run_app(app, [*args, "--engine", "tgi", "--out", str(tmp_path / "x")]) == 2
    assert "--engine" in capsys.readouterr().err


def test_mean_targets_with_clients_reproduce_simulate_concurrency_means(tmp_path, capsys):
    """The question asked AIConfigurator's way (mean targets, N closed-loop clients) gives the means that
    `pdsim simulate --concurrency N` gives for the same deployment and requests."""
    n = 8
    assert run_app(app, ["plan", "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "500",
                         "--tpot", "30", "--percentile", "mean", "--concurrency", str(n), "--gpus", "2", "--trials",
                         "2", "--quiet", "--out", str(tmp_path / "plan")]) == 0
    out = capsys.readouterr().out
    assert "targets: mean TTFT <= 500 ms, mean TPOT <= 30 ms, the means" in out and "load: 8 clients" in out
    rec = json.loads((tmp_path / "plan" / "plan.json").read_text())["recommendation"]
    requests = rec["requests"]  # the plan's closed loop: max(150, 8 x clients) requests, a tenth of them warm-up
    assert run_app(app, ["simulate", "--deployment", str(tmp_path / "plan" / "deployment.yaml"), "--concurrency",
                         str(n), "--isl", "1000", "--osl", "100", "--requests", str(requests), "--warmup",
                         str(requests // 10), "--json", str(tmp_path / "sim.json")]) == 0
    sim = json.loads((tmp_path / "sim.json").read_text())
    for metric in ("ttft_ms", "tpot_ms"):
        assert rec["summary"][metric]["mean"] == pytest.approx(sim[metric]["mean"], rel=1e-9)
    assert rec["summary"]["ttft_ms"]["mean"] <= 500 and rec["summary"]["tpot_ms"]["mean"] <= 30
