"""`plan --compare aiconfigurator`: AIConfigurator's own answer, run in process, and its picks simulated by pdsim
at its concurrency and its rate; refused in one line without the extra or for a question it cannot answer."""

from __future__ import annotations

import builtins
import json

import pandas as pd
import pytest
from needs import needs_aic

from planner.cli import app, run_app
from planner.plan import PlanRequest
from planner.second_opinion import pick_of
from simulator import simulate
from simulator.deployment import parse_deployment
from traces.synthetic import synthetic_workload

ISSUE = ["--model", "qwen3-32b", "--gpu", "h200-sxm", "--gpus", "8", "--isl", "4000", "--osl", "500", "--ttft", "300",
         "--tpot", "10"]  # issue 35's question


POOL = {"tp": 4, "pp": 1, "dp": 1, "moe_tp": 1, "moe_ep": 1, "workers": 1, "gemm": "bfloat16"}


def one_error_line(capsys) -> str:
    out = capsys.readouterr()
    err = out.err.strip().splitlines()
    assert len(err) == 1 and not out.out.strip(), (out.out, out.err)  # refused before any search or banner
    return err[0]


def test_without_the_extra_compare_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_aic(name, *a, **k):
        if name.startswith("aiconfigurator"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_aic)
    code = run_app(app, ["plan", *ISSUE, "--compare", "aiconfigurator", "--out", str(tmp_path / "p"), "--quiet"])
    line = one_error_line(capsys)
    assert code == 2 and "AIConfigurator is not installed: pip install 'pdsim[aic]'" in line


@pytest.mark.parametrize("extra, says", [
    (["--compare", "vidur"], "must be aiconfigurator, got 'vidur'"),
])
def test_an_unknown_tool_is_refused_in_one_line(extra, says, tmp_path, capsys):
    assert run_app(app, ["plan", *ISSUE, *extra, "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert says in one_error_line(capsys)


@needs_aic
def test_a_trace_or_a_checkpoint_it_lacks_is_refused_in_one_line(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,isl,osl\n0,100,10\n1,100,10\n")
    base = ["plan", "--model", "qwen3-32b", "--gpu", "h200-sxm", "--ttft", "300", "--tpot", "10", "--quiet",
            "--compare", "aiconfigurator", "--out", str(tmp_path / "p")]
    assert run_app(app, [*base, "--trace", str(trace)]) == 2
    assert "give --isl and --osl, not --trace" in one_error_line(capsys)
    assert run_app(app, [*base, "--isl", "1000", "--osl", "100", "--dtype", "fp4"]) == 2
    assert "no fp4 checkpoint of qwen3-32b (it has: Qwen/Qwen3-32B (bf16), Qwen/Qwen3-32B-FP8 (fp8)" in one_error_line(
        capsys)


def test_a_pick_is_the_configuration_copied_over_the_budget():
    """AIConfigurator's agg row is one replica; its tokens/s/gpu_cluster copies it over the budget: so do the
    deployment, the clients and the rate pdsim simulates."""
    req = PlanRequest(model="qwen3-32b", gpu="h200-sxm", gpus=8, isl=4000, osl=500, ttft_ms=300, tpot_ms=10)
    agg = pd.Series({"concurrency": 9, "request_rate": 1.766, "bs": 9, "ttft": 250.9, "tpot": 9.7, "tp": 4, "pp": 1,
                     "dp": 1, "moe_tp": 1, "moe_ep": 1, "gemm": "bfloat16", "num_total_gpus": 4,
                     "tokens/s/gpu_cluster": 220.4, "tokens/s/user": 103.0, "request_latency": 5095.2})
    pick = pick_of(agg, "agg", False, "Qwen/Qwen3-32B", req)
    w = pick.case.deployment.workers
    assert (w.replicas, w.tp, w.max_seqs, pick.clients, pick.rate_rps) == (2, 4, 9, 18, pytest.approx(3.532))
    disagg = pd.Series({"concurrency": 24, "request_rate": 4.431, "ttft": 251.4, "tpot": 9.99, "num_total_gpus": 8,
                        "tokens/s/gpu_cluster": 276.9, "tokens/s/user": 100.1, "request_latency": 5235.4,
                        **{f"({s}){k}": v for s in "pd" for k, v in POOL.items()},
                        "(p)bs": 1, "(d)bs": 24})
    pick = pick_of(disagg, "disagg", True, "Qwen/Qwen3-32B", req)
    dep = pick.case.deployment
    assert dep.describe() == "disagg prefill 1x TP4 + decode 1x TP4" and dep.decode.max_seqs == 24
    assert not dep.prefill.chunked_prefill and pick.clients == 24 and pick.claims["batch"] == 24


@needs_aic
def test_the_issue_question_prints_both_answers_and_simulates_aiconfigurators_picks(tmp_path, capsys):
    out = tmp_path / "p"
    code = run_app(app, ["plan", *ISSUE, "--compare", "aiconfigurator", "--trials", "3", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Recommendation:" in text and "AIConfigurator's answer (aiconfigurator 0.12.0" in text
    assert "disagg (its choice): disagg prefill 1x TP4 + decode 1x TP4, 8 GPUs" in text
    assert "276.9 tok/s/GPU at 24 clients = 4.43 req/s" in text and "pdsim, 4.43 req/s Poisson" in text
    assert "pdsim's answer:" in text
    compare = json.loads((out / "plan.json").read_text())["compare"]
    picks = {p["topology"]: p for p in compare["picks"]}
    assert set(picks) == {"agg", "disagg"} and picks["disagg"]["chosen"]
    assert picks["agg"]["claims"]["tok_s_per_gpu"] == pytest.approx(255.224)
    d = picks["disagg"]
    for load in ("closed_loop", "poisson"):
        assert set(d[load]["misses"]) == {"mean", "p90"} and d[load]["why"]
        assert d[load]["tpot_ms"]["mean"] > 0 and d[load]["ttft_ms"]["p90"] > 0
    assert d["poisson"]["rate_rps"] == pytest.approx(4.431)
    # the closed loop is the same run as simulating that deployment with 24 clients (first round as warm-up)
    dep = parse_deployment(d["deployment"])
    wl = synthetic_workload(requests=192, isl=4000, osl=500, concurrency=24, seed=0, warmup_requests=24)
    again = simulate(dep, wl, seed=0).summary()
    assert again["tpot_ms"]["mean"] == pytest.approx(d["closed_loop"]["tpot_ms"]["mean"], rel=1e-9)
    assert again["ttft_ms"]["mean"] == pytest.approx(d["closed_loop"]["ttft_ms"]["mean"], rel=1e-9)
    assert "AIConfigurator&#x27;s answer, simulated" in (out / "report.html").read_text() or \
        "AIConfigurator's answer, simulated" in (out / "report.html").read_text()
