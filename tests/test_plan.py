"""`plan`: the search space, the screen, goodput by simulation, the command and its files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from planner.cli import app, run_app
from planner.evaluate import Load
from planner.plan import PlanRequest, build
from planner.space import Space, agg_unit, disagg_unit, enumerate_units, infeasible_reason, scale, unit_key
from profiler.gpus import resolve_gpu
from profiler.memory import memory_fit
from profiler.models import resolve_model
from simulator import SLO, simulate
from simulator.deployment import load_deployment
from traces.synthetic import synthetic_workload

SMALL = ["--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "400", "--tpot", "25", "--gpus", "2",
         "--trials", "4", "--quiet"]


def space(model="llama-3.1-8b", gpus=8, need=4500) -> Space:
    return Space(resolve_model(model), resolve_gpu("h200-sxm"), model, "h200-sxm", gpus, min_kv_tokens=need)


# ---- space and screen -------------------------------------------------------------------------------
def test_space_holds_only_units_that_fit_in_memory_and_budget():
    s = space("llama-3.1-70b", gpus=8)
    units = enumerate_units(s)
    assert units, "70B fits at TP>=2 on H200"
    for u in units:
        assert u.gpus <= 8
        for pool in u.pools.values():
            fit = memory_fit(s.model, s.gpu, pool.tp, "bf16", "bf16", pool.max_batch_tokens)
            assert fit.kv_tokens >= 4500
    # 70B in bf16 (~141 GB of weights) cannot sit on one 141 GB GPU: no TP1 pool anywhere
    assert all(p.tp >= 2 for u in units for p in u.pools.values())
    why = infeasible_reason(s, agg_unit(s, 1, 2048, 64))
    assert why and "KV room" in why


def test_disagg_units_are_reduced_to_their_smallest_ratio_and_scale_back():
    s = space()
    u = disagg_unit(s, 1, 4, 8192, 2, 2, 128)
    assert (u.prefill.replicas, u.decode.replicas) == (2, 1)
    big = scale(u, 2)
    assert (big.prefill.replicas, big.decode.replicas, big.gpus) == (4, 2, 8)
    assert unit_key(u) == unit_key(disagg_unit(s, 1, 2, 8192, 2, 1, 128))


def test_screen_ranks_the_space_and_names_what_limits_each_unit():
    _, screen, _ = build(PlanRequest(model="llama-3.1-8b", isl=4000, osl=500, ttft_ms=300, tpot_ms=20))
    s = screen.space
    units = enumerate_units(s)
    est = [screen.estimate(u) for u in units]
    assert len(units) > 500 and all(e.goodput_rps >= 0 for e in est)
    good = [e for e in est if e.goodput_rps > 0]
    assert good and all(e.limit for e in good)
    assert all(e.ttft_s <= 0.3 and e.tpot_s <= 0.02 for e in good)
    # a TPOT target below one decode step at batch 1 leaves nothing
    _, tight, _ = build(PlanRequest(model="llama-3.1-8b", isl=4000, osl=500, ttft_ms=300, tpot_ms=1))
    assert all(tight.estimate(u).goodput_rps == 0 for u in units[:50])


# ---- goodput by simulation ----------------------------------------------------------------------------
def test_goodput_is_a_simulated_rate_that_meets_targets_and_a_bit_more_does_not():
    _, screen, ev = build(PlanRequest(model="llama-3.1-8b", isl=1000, osl=100, ttft_ms=400, tpot_ms=25, gpus=2))
    unit = agg_unit(screen.space, 1, 4096, 128)
    res = ev.goodput(unit, screen.estimate(unit))
    assert res.feasible and res.rate_rps > 0 and res.sims >= 2
    met = [p for p in res.probes if p.met]
    missed = [p for p in res.probes if not p.met]
    assert max(p.rate_rps for p in met) == pytest.approx(res.rate_rps)
    assert missed and min(p.rate_rps for p in missed) <= res.rate_rps * (1 + ev.tolerance) ** 2
    assert res.score == pytest.approx(res.rate_rps * 100 / unit.gpus)
    # the rate it reports really meets the targets when simulated afresh
    w = synthetic_workload(requests=300, isl=1000, osl=100, rate=res.rate_rps * 0.9, seed=0, warmup_requests=30)
    slo = SLO(400, 25)
    assert simulate(unit, w, slo=slo).summary(slo)["slo_met"]


def test_fixed_load_finds_the_fewest_copies():
    _, screen, ev = build(PlanRequest(model="llama-3.1-8b", isl=1000, osl=100, ttft_ms=400, tpot_ms=25, gpus=8,
                                      rate=40.0))
    unit = agg_unit(screen.space, 1, 4096, 128)
    res = ev.fewest_copies(unit, screen.estimate(unit))
    assert res.feasible and 1 <= res.copies <= 8
    by_copies = {round(40.0 / p.rate_rps): p.met for p in res.probes}
    assert by_copies[res.copies]
    if res.copies > 1:
        assert by_copies.get(res.copies - 1) is False, "one copy fewer must have been tried and missed"


# ---- the command ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    check = out / "guard.check.yaml"
    code = run_app(app, ["plan", *SMALL, "--out", str(out), "--emit-check", str(check)])
    return code, out, check


def test_plan_writes_json_deployment_and_report(small_plan):
    code, out, _ = small_plan
    assert code == 0
    plan = json.loads((out / "plan.json").read_text())
    assert plan["met"] and plan["recommendation"]["met"]
    assert plan["evaluated"]
    assert all({"key", "feasible", "score", "summary", "sims"} <= set(r) for r in plan["evaluated"])
    assert plan["simulations"] >= len(plan["evaluated"])
    assert plan["reasons"] and plan["pareto"]
    rec = plan["recommendation"]
    assert rec["gpus"] <= 2 and rec["summary"]["ttft_ms"]["p90"] <= 400 and rec["summary"]["tpot_ms"]["p90"] <= 25
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=" not in html and len(html) > 3_000_000  # plotly.js inline


def test_deployment_yaml_resimulates_to_the_same_verdict(small_plan):
    _, out, _ = small_plan
    dep = load_deployment(out / "deployment.yaml")
    plan = json.loads((out / "plan.json").read_text())
    rate = plan["recommendation"]["rate_rps"]
    w = synthetic_workload(requests=400, isl=1000, osl=100, rate=rate * 0.95, seed=1, warmup_requests=40)
    slo = SLO(400, 25)
    s = simulate(dep, w, slo=slo).summary(slo)
    assert s["gpus"] == plan["recommendation"]["gpus"]
    assert s["ttft_ms"]["p90"] <= 400 * 1.1 and s["tpot_ms"]["p90"] <= 25 * 1.1


def test_emitted_check_passes(small_plan, capsys):
    _, _, check = small_plan
    code = run_app(app, ["check", str(check)])
    assert code == 0, capsys.readouterr().out + check.read_text()


def test_unwritable_out_fails_before_searching(capsys):
    code = run_app(app, ["plan", *SMALL, "--out", "/dev/null/x"])
    text = capsys.readouterr()
    assert code == 2 and text.err.startswith("pdsim: error:") and "/dev/null/x" in text.err
    assert "Recommendation" not in text.out


def test_impossible_targets_exit_3_with_closest_and_misses(tmp_path, capsys):
    code = run_app(app, ["plan", "--model", "llama-3.1-8b", "--isl", "4000", "--osl", "100", "--ttft", "5",
                         "--tpot", "25", "--gpus", "2", "--trials", "3", "--quiet", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3
    assert "NO DEPLOYMENT MEETS THE TARGETS" in out and "TTFT" in out and "> 5 ms" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["met"] is False and plan["closest"] and plan["recommendation"] is None
    assert not (tmp_path / "deployment.yaml").exists()


@pytest.mark.parametrize("args, words", [
    (["--model", "nope", "--isl", "1", "--osl", "1", "--ttft", "1", "--tpot", "1"], "unknown model"),
    (["--model", "llama-3.1-8b", "--osl", "1", "--ttft", "1", "--tpot", "1"], "--isl"),
    (["--model", "llama-3.1-8b", "--isl", "1", "--osl", "1", "--ttft", "-3", "--tpot", "1"], "--ttft"),
    (["--model", "llama-3.1-8b", "--isl", "1", "--osl", "1", "--ttft", "1", "--tpot", "1", "--objective", "min-gpus"],
     "needs a load"),
    (["--model", "llama-3.1-8b", "--isl", "1", "--osl", "1", "--ttft", "1", "--tpot", "1", "--rate", "1",
      "--concurrency", "2"], "at most one"),
    (["--model", "llama-3.1-70b", "--isl", "1000", "--osl", "100", "--ttft", "100", "--tpot", "20", "--gpus", "1"],
     "does not fit"),
    (["--model", "llama-3.1-8b", "--isl", "1", "--osl", "1", "--ttft", "1", "--tpot", "1", "--storage",
      "nosuch://x"], "--storage"),
])
def test_bad_input_is_one_line_exit_2(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = run_app(app, ["plan", *args, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("pdsim: error:") and words in err and "Traceback" not in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # a refused plan leaves no empty output folder behind


def test_plan_path_never_imports_torch(tmp_path):
    args = [*SMALL[:-3], "--trials", "2", "--quiet", "--out", str(tmp_path)]
    code = ("import sys; from planner.cli import app, run_app; "
            f"c = run_app(app, ['plan', {', '.join(repr(a) for a in args)}]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(c)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for words in ("Recommendation:", "TTFT", "TPOT", "E2E", "tokens/s/GPU", "Why:", "wrote"):
        assert words in r.stdout


def test_plan_json_lists_constraints_of_rejected_trials(small_plan):
    _, out, _ = small_plan
    plan = json.loads((out / "plan.json").read_text())
    for row in plan["infeasible"]:
        assert row["constraint"]
    dep = yaml.safe_load((out / "deployment.yaml").read_text())
    assert dep["model"] == "llama-3.1-8b" and dep["topology"] in ("agg", "disagg")


def test_same_seed_same_plan(small_plan, tmp_path):
    _, first, _ = small_plan
    assert run_app(app, ["plan", *SMALL, "--out", str(tmp_path)]) == 0
    ja, jb = (json.loads((d / "plan.json").read_text()) for d in (first, tmp_path))
    assert ja["recommendation"] == jb["recommendation"]
    assert [(r["key"], r["score"]) for r in ja["evaluated"]] == [(r["key"], r["score"]) for r in jb["evaluated"]]


def test_load_helper_describes_itself():
    assert "goodput" in Load().describe() and "3 req/s" in Load(rate=3).describe()


def test_pareto_front_keeps_only_undominated_units():
    from planner.plan import pareto_front

    def row(key, per_gpu, per_user, feasible=True):
        return {"key": key, "feasible": feasible, "score": per_gpu, "unit": {"topology": "agg"},
                "summary": {"tok_s_per_user": per_user}}

    rows = [row("a", 100, 10), row("b", 80, 20), row("c", 70, 15), row("d", 60, 30), row("e", 200, 50, False)]
    assert [f["key"] for f in pareto_front(rows)] == ["a", "b", "d"]  # c is beaten by b; e misses the targets


def test_two_objectives_run_nsga2(tmp_path):
    assert run_app(app, ["plan", *SMALL[:-3], "--trials", "3", "--quiet", "--objective", "pareto", "--out",
                         str(tmp_path)]) == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["request"]["objective"] == "pareto" and plan["recommendation"]["met"]
    front = plan["pareto"]
    for f in front:
        assert not any(g["tok_s_per_gpu"] > f["tok_s_per_gpu"] and g["tok_s_per_user"] > f["tok_s_per_user"]
                       for g in front)


def test_the_header_says_when_the_weights_run_weight_only():
    from planner.terminal import header

    base = dict(model="llama-3.1-8b", isl=512, osl=128, ttft_ms=500, tpot_ms=50)
    assert "weight-only" in header(PlanRequest(**base, gpu="a100", dtype="fp8")).splitlines()[0]
    assert "weight-only" not in header(PlanRequest(**base, gpu="h100", dtype="fp8"))
    space, _, _ = build(PlanRequest(**base, gpu="a100", dtype="fp8"))  # planned, not refused
    assert space.dtype == "fp8" and enumerate_units(space)
