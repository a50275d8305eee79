"""pdsim beside AIConfigurator on a handful of questions (dense and MoE, agg- and disagg-leaning): AIConfigurator's
choice and what it claims, pdsim's simulation of that choice at its concurrency (closed loop, mean targets) and at
its rate (Poisson arrivals, p90 targets), and pdsim's own recommendation. One line per question.

    .venv/bin/python bench/vs_aiconfigurator.py [--trials 12] [--questions 0,1,2,3,4] [--jobs 2]

Needs the aic extra (pip install -e '.[aic]').
"""

from __future__ import annotations

import argparse
import time

from planner.parallel import default_jobs
from planner.plan import PlanRequest, plan
from planner.second_opinion import check, second_opinion

QUESTIONS = [
    # issue 35's: AIConfigurator 0.12 picks disagg 1p TP4 + 1d TP4 at 276.9 tok/s/GPU
    dict(model="qwen3-32b", gpu="h200-sxm", isl=4000, osl=500, ttft_ms=300, tpot_ms=10, engine="vllm"),
    dict(model="llama-3.1-70b", gpu="h200-sxm", isl=2000, osl=200, ttft_ms=1000, tpot_ms=40, engine="trtllm"),
    dict(model="llama-3.1-8b", gpu="h100-sxm", isl=1000, osl=1000, ttft_ms=200, tpot_ms=10, engine="sglang"),
    dict(model="qwen3-235b-a22b", dtype="fp8", gpu="h200-sxm", isl=4000, osl=1000, ttft_ms=1500, tpot_ms=40,
         engine="trtllm"),
    dict(model="gpt-oss-120b", gpu="h200-sxm", isl=2000, osl=1000, ttft_ms=500, tpot_ms=15, engine="vllm"),
]


def verdict(sim: dict, stat: str) -> str:
    t, p = sim["ttft_ms"][stat], sim["tpot_ms"][stat]
    return f"{stat} {t:,.0f}/{p:.1f} ms {'holds' if not sim['misses'][stat] else 'MISS'}"


def line(q: dict, p, compare: dict, wall_s: float) -> str:
    name = f"{q['model']} {q.get('dtype', '')} 8x{q['gpu']} {q['isl']}/{q['osl']} {q['engine']}".replace("  ", " ")
    chosen = next((c for c in compare["picks"] if c["chosen"]), None)
    if chosen is None or "skipped" in chosen:
        aic = f"AIC: {compare['none'] or (chosen or {}).get('skipped', 'nothing')}"
    else:
        c = chosen["claims"]
        aic = (f"AIC: {chosen['description']} {c['tok_s_per_gpu']:.0f} tok/s/GPU (mean {c['ttft_ms']:.0f}/"
               f"{c['tpot_ms']:.1f} ms at {chosen['clients']} clients) | pdsim at {chosen['clients']} clients "
               f"{chosen['closed_loop']['tok_s_per_gpu']:.0f} tok/s/GPU, {verdict(chosen['closed_loop'], 'mean')} | "
               f"at {chosen['rate_rps']:.3g} req/s Poisson {verdict(chosen['poisson'], 'p90')}")
    rec = p.recommendation
    mine = (f"pdsim: {rec.deployment.describe()} {rec.tok_s_per_gpu:.0f} tok/s/GPU at {rec.rate_rps:.3g} req/s (p90)"
            if rec is not None and rec.met else "pdsim: nothing meets p90 targets")
    return f"{name} | {aic} | {mine} | {wall_s:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--questions", default=",".join(str(i) for i in range(len(QUESTIONS))))
    ap.add_argument("--jobs", type=int, default=default_jobs())
    args = ap.parse_args()
    for i in (int(x) for x in args.questions.split(",")):
        q = QUESTIONS[i]
        req = PlanRequest(gpus=8, trials=args.trials, **q)
        t0 = time.perf_counter()
        path = check(req, "aiconfigurator")
        p = plan(req, jobs=args.jobs)
        compare = second_opinion(req, path, args.jobs)
        print(line(q, p, compare, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
