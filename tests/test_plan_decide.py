"""The choice `plan` makes, on constructed candidate sets: never a dominated pick, ties called ties and broken
by the stated order, a comparison row that misses shows no throughput, idle GPUs and binding targets said
only when true (planner/decide.py, planner/reasons.py, planner/terminal.py)."""

from __future__ import annotations

from types import SimpleNamespace

from planner import decide
from planner.decide import Run, choose, dominates, order, tied
from planner.evaluate import Probe
from planner.recommend import Confirmed
from planner.terminal import latencies
from simulator import SLO
from simulator.deployment import parse_deployment

TTFT, TPOT = 1000.0, 50.0


def run(name, gpus=8, tok_s=1000.0, ttft=300.0, tpot=30.0, met=True, topology="agg", replicas=1) -> Run:
    return Run(name, topology, gpus, replicas, tok_s if met else 0.0, met, ttft, tpot)


def test_a_deployment_that_serves_the_same_load_faster_on_the_same_gpus_is_picked():
    # the reproduction: agg 2x TP4 and agg 1x TP8, both 8 GPUs at the trace's load; TP8 is faster on both
    tp4 = run("agg 2x TP4", ttft=309, tpot=29.2, replicas=2)
    tp8 = run("agg 1x TP8", ttft=227, tpot=25.1)
    assert dominates(tp8, tp4) and not dominates(tp4, tp8)
    assert choose([tp4, tp8], TTFT, TPOT, fixed_load=True) is tp8
    assert choose([tp8, tp4], TTFT, TPOT, fixed_load=True) is tp8


def test_the_pick_is_never_dominated_on_random_candidate_sets():
    import random

    rng = random.Random(0)
    for _ in range(300):
        runs = [run(f"d{i}", gpus=rng.choice([4, 6, 8]), tok_s=rng.choice([900.0, 1000.0, 1050.0]),
                    ttft=rng.uniform(100, 1200), tpot=rng.uniform(10, 60), met=rng.random() < 0.8,
                    topology=rng.choice(["agg", "disagg"]), replicas=rng.randint(1, 4)) for i in range(6)]
        for fixed in (True, False):
            pick = choose(runs, TTFT, TPOT, fixed)
            assert not any(dominates(r, pick) for r in runs), (fixed, pick, runs)


def test_with_a_fixed_load_fewer_gpus_win_then_headroom_then_the_simpler():
    big = run("agg 2x TP8", gpus=16, ttft=100, tpot=10, replicas=2)
    small = run("agg 1x TP8", gpus=8, ttft=800, tpot=45)
    assert order([big, small], TTFT, TPOT, True)[0] is small
    same_a = run("disagg", topology="disagg", replicas=2, ttft=500, tpot=20)  # worst ratio 0.5
    same_b = run("agg", ttft=500, tpot=20)  # same latency, simpler
    assert order([same_a, same_b], TTFT, TPOT, True)[0] is same_b
    roomy = run("disagg roomy", topology="disagg", replicas=2, ttft=200, tpot=10)
    assert order([same_b, roomy], TTFT, TPOT, True)[0] is roomy  # headroom before simplicity


def test_finding_the_highest_rate_throughputs_within_the_noise_tie_and_more_in_total_wins():
    a = run("agg 8 GPUs", gpus=8, tok_s=8 * 1600.0)
    b = run("disagg 6 GPUs", gpus=6, tok_s=6 * 1650.0, topology="disagg")  # 3 % more per GPU: a tie
    assert tied(a, b, fixed_load=False)
    assert order([b, a], TTFT, TPOT, False)[0] is a  # serves more in total
    c = run("disagg 6 GPUs, much faster per GPU", gpus=6, tok_s=6 * 2000.0, topology="disagg")
    assert not tied(a, c, fixed_load=False) and order([a, c], TTFT, TPOT, False)[0] is c
    assert not tied(a, run("misses", met=False), fixed_load=False)


def test_a_target_binds_only_within_ten_percent_of_its_limit():
    assert decide.binding(run("x", ttft=300, tpot=29.1), TTFT, TPOT) == []  # 42 % headroom binds nothing
    assert decide.binding(run("x", ttft=300, tpot=46), TTFT, TPOT) == ["TPOT"]
    assert decide.binding(run("x", ttft=950, tpot=46), TTFT, TPOT) == ["TTFT", "TPOT"]


def confirmed(dep_yaml: dict, met: bool, rate=5.0, ttft=400.0, tpot=30.0) -> Confirmed:
    summary = {"ttft_ms": {"p50": ttft / 2, "p90": ttft, "p99": ttft * 1.2}, "tpot_ms": {"p50": tpot, "p90": tpot,
               "p99": tpot}, "e2e_ms": {"p50": 1, "p90": 2, "p99": 3}, "slo_attainment": 0.95 if met else 0.2,
               "tok_s_per_gpu": 100.0, "tok_s_per_user": 30.0}
    return Confirmed(parse_deployment(dep_yaml), rate, Probe(rate, 100, met, summary, 0.0), None)


def test_a_comparison_row_that_misses_shows_no_throughput_or_cost():
    dep = {"model": "llama-3.1-70b", "gpu": "h100-sxm", "topology": "disagg", "prefill": {"replicas": 2, "tp": 4},
           "decode": {"replicas": 1, "tp": 4}}
    miss = confirmed(dep, met=False, ttft=85000)
    text = "\n".join(latencies(miss))
    assert "does NOT serve" in text and "tokens/s/GPU" not in text and "cost" not in text
    d = miss.to_dict()
    assert "tok_s_per_gpu" not in d and "usd_per_million_tokens" not in d and d["met"] is False
    ok = confirmed(dep, met=True)
    assert "tokens/s/GPU" in "\n".join(latencies(ok)) and "tok_s_per_gpu" in ok.to_dict()


def test_reasons_call_a_tie_a_tie_and_name_idle_gpus():
    from planner import reasons as rs

    slo = SLO(ttft_ms=TTFT, tpot_ms=TPOT, percentile=90)
    agg = confirmed({"model": "llama-3.1-8b", "workers": {"replicas": 8, "tp": 1}}, True, ttft=250, tpot=18)
    dis = confirmed({"model": "llama-3.1-8b", "prefill": {"replicas": 2, "tp": 2}, "decode": {"replicas": 4, "tp": 1}},
                    True, ttft=210, tpot=45)
    words = rs.versus_other(agg, dis, slo, fixed=False)[0]
    assert "are a tie" in words and "runs further from the targets" in words
    missing = confirmed(dis.deployment.to_dict(), False, ttft=85000)
    words = rs.versus_other(agg, missing, slo, fixed=False)[0]
    assert "misses at the same load" in words and "does not serve this load" in words and "tok/s" not in words
    six = confirmed({"model": "qwen3-32b", "prefill": {"replicas": 2, "tp": 1}, "decode": {"replicas": 1, "tp": 4}},
                    True)
    six.key = "disagg 2p-tp1 mbt8192 + 1d-tp4 seqs256"
    unit = {"key": six.key, "feasible": True, "score": 500.0,
            "unit": {"prefill": {"replicas": 2, "tp": 1}, "decode": {"replicas": 1, "tp": 4}}}
    agg_tp1 = {"key": "agg tp1 mbt2048 seqs64", "feasible": True, "score": 450.0,
               "unit": {"workers": {"replicas": 1, "tp": 1}}}
    plan = SimpleNamespace(recommendation=six, request=SimpleNamespace(gpus=8), rows=[unit, agg_tp1])
    words = rs.budget(plan, fixed=False)[0]
    assert words.startswith("2 of the 8 GPUs stay idle") and "2 x agg tp1 mbt2048 seqs64" in words
    assert rs.budget(plan, fixed=True)[0] == "6 of the 8 GPUs carry the load; the other 2 are not needed"


def test_a_unit_that_differs_only_in_an_unreached_max_seqs_is_not_simulated_again():
    from planner.search import same_behaviour

    unit = parse_deployment({"model": "llama-3.1-8b", "workers": {"tp": 1, "max_batch_tokens": 2048,
                                                                 "max_seqs": 64}})
    other = parse_deployment({"model": "llama-3.1-8b", "workers": {"tp": 1, "max_batch_tokens": 2048,
                                                                  "max_seqs": 256}})
    attrs = {"unit": unit.to_dict(), "peak_seqs": {"workers": 40}}
    assert same_behaviour(attrs, other)
    assert not same_behaviour({**attrs, "peak_seqs": {"workers": 64}}, other)  # it bound at 64
    bigger_batch = parse_deployment({"model": "llama-3.1-8b", "workers": {"tp": 1, "max_batch_tokens": 4096,
                                                                         "max_seqs": 256}})
    assert not same_behaviour(attrs, bigger_batch)


def test_with_a_fixed_load_the_pick_is_minimal_and_each_step_smaller_misses(tmp_path):
    import json

    from planner.cli import app, run_app

    code = run_app(app, ["plan", "--model", "llama-3.1-8b", "--isl", "2000", "--osl", "200", "--ttft", "400",
                         "--tpot", "20", "--gpus", "4", "--rate", "14", "--objective", "min-gpus", "--trials", "4",
                         "--quiet", "--out", str(tmp_path)])
    assert code == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    rec = plan["recommendation"]
    assert rec["met"] and rec["basis"] == "whole deployment at the stated load"
    smaller = plan["one_step_smaller"]
    assert smaller and all(s["gpus"] < rec["gpus"] and not s["met"] for s in smaller)
    assert any("it is the smallest that carries the load" in r for r in plan["reasons"])
    assert sum(plan["trials_by_topology"].values()) == len(plan["evaluated"])
    # one throughput per deployment: the reasons quote the recommendation's own figure
    assert f"{rec['tok_s_per_gpu']:,.0f} tok/s/GPU" in plan["reasons"][0]
