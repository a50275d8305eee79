"""Decision quality on spaces small enough to enumerate: for six questions, how close `plan`'s recommendation
comes to the best deployment found by simulating every unit, what share of those simulations it needed, and
whether anything the plan simulated dominates its pick.

    .venv/bin/python bench/plan_quality.py [--seeds 3] [--trials 5] [--questions 0,1,2,3,4,5] [--jobs 2]

Each space: TP from the question, three agg batch budgets, one prefill budget and two max_seqs per pool.
Exhaustive: every unit by the same evaluation the search uses (goodput bisection, or the fewest copies that
carry a fixed load). Quality: highest rate found -- the exhaustive score of the unit the plan recommends over
the exhaustive best; fixed load -- the fewest GPUs whose whole deployment carries the load (the exhaustive
units of that size simulated whole, as the plan confirms its pick) over the GPUs the plan recommends. The
plan's simulations include its whole-deployment runs. Dominated: another deployment simulated at the same
load meets the targets with no more GPUs and lower TTFT and TPOT (planner/decide.py). Targets: quality >= 98 %,
simulations <= 20 % of exhaustive, no dominated pick.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

from planner import decide
from planner.evaluate import Evaluator
from planner.plan import PlanRequest, build, finish
from planner.recommend import run_whole, same_load, unit_run
from planner.search import Search
from planner.space import enumerate_units, unit_key

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "AzureLLMInferenceTrace_code.csv"


@dataclass(frozen=True)
class Question:
    name: str
    req: PlanRequest
    tps: tuple[int, ...] = (1, 2, 4)


QUESTIONS = [
    Question("README example (8B, 4000/500)", PlanRequest(model="llama-3.1-8b", isl=4000, osl=500, ttft_ms=300,
                                                          tpot_ms=20, gpus=4)),
    Question("long prompt, tight TTFT (8B, 8000/100)", PlanRequest(model="llama-3.1-8b", isl=8000, osl=100,
                                                                   ttft_ms=300, tpot_ms=10, gpus=4)),
    Question("long output (8B, 500/2000)", PlanRequest(model="llama-3.1-8b", isl=500, osl=2000, ttft_ms=500,
                                                       tpot_ms=15, gpus=4)),
    Question("fixed rate, min-gpus (8B, 8 req/s)", PlanRequest(model="llama-3.1-8b", isl=2000, osl=250, ttft_ms=400,
                                                               tpot_ms=20, gpus=8, rate=8.0, objective="min-gpus")),
    Question("trace, min-gpus (8B, Azure code hour)", PlanRequest(model="llama-3.1-8b", trace=str(TRACE),
                                                                  ttft_ms=1000, tpot_ms=50, gpus=4,
                                                                  objective="min-gpus")),
    Question("70B, multi-GPU TP (2000/300)", PlanRequest(model="llama-3.1-70b", isl=2000, osl=300, ttft_ms=1000,
                                                         tpot_ms=40, gpus=8), tps=(2, 4, 8)),
]


def pieces(q: Question):
    space, screen, ev = build(q.req)
    small = replace(space, tp_choices=q.tps, agg_batch_tokens=(1024, 4096, 16384), prefill_batch_tokens=(8192,),
                    max_seqs=(64, 256))
    screen.space = small
    fresh = Evaluator(small, screen, ev.slo, ev.isl, ev.osl, ev.load, ev.seed, ev.profile, efficiency=ev.efficiency,
                      perf_db=ev.perf_db)
    return small, screen, fresh


def dominated(plan) -> int:
    """Runs at the recommendation's load (whole deployments; with a fixed load every unit row too) that
    dominate it."""
    rec, pct = plan.recommendation, plan.request.percentile
    fixed = plan.request.fixed_load
    pick = rec.run(pct)
    runs = [c.run(pct) for c in same_load(plan.confirmed, rec, fixed) if c is not rec]
    if fixed:  # unit rows: each copy carried its share of the same load
        space, _, _ = build(plan.request)
        runs += [unit_run(r, space, True, pct) for r in plan.rows if r["feasible"] and r["key"] != rec.key]
    return sum(decide.dominates(r, pick) for r in runs)


def question(q: Question, seeds: int, jobs: int) -> tuple[list[float], list[float], int]:
    small, screen, ev = pieces(q)
    fixed = ev.load.fixed
    units = enumerate_units(small)
    t0 = time.perf_counter()
    exhaustive = {unit_key(u): ev.evaluate(u, screen.estimate(u)) for u in units}
    ex_sims = sum(e.sims for e in exhaustive.values())
    ok = [e for e in exhaustive.values() if e.feasible]
    if fixed:  # the fewest GPUs whose whole deployment (not only a unit's share) carries the load
        best_key = None
        for gpus in sorted({e.gpus for e in ok}):
            for e in sorted((e for e in ok if e.gpus == gpus), key=lambda e: e.key):
                ex_sims += 1
                if run_whole(ev, e.deployment, 0.0, 1.0)[0].met:
                    best_key = e.key
                    break
            if best_key is not None:
                break
        best = exhaustive[best_key].gpus
        what = f"{best} GPUs (whole deployment confirmed)"
    else:
        best_key = max(ok, key=lambda e: e.score).key
        best = exhaustive[best_key].score
        what = f"{best:,.0f} tok/s/GPU"
    print(f"{q.name}: {len(units)} units; exhaustive {ex_sims} simulations in {time.perf_counter() - t0:.0f} s; "
          f"best {best_key} at {what}")
    qualities, shares, bad = [], [], 0
    for seed in range(seeds):
        small, screen, ev = pieces(q)
        search = Search(small, screen, ev, q.req.objective, q.req.trials, q.req.seed)
        study = search.study(None, f"quality-{seed}", sampler_seed=seed)
        t0 = time.perf_counter()
        search.run(study, jobs=jobs)
        plan = finish(q.req, search, study, t0, jobs)
        rec = plan.recommendation
        if fixed:
            quality = best / rec.deployment.gpus if rec.met else 0.0
        else:
            quality = exhaustive[rec.key].score / best if rec.key in exhaustive and rec.met else 0.0
        n_bad = dominated(plan)
        bad += n_bad
        qualities.append(quality)
        shares.append(plan.sims / ex_sims)
        print(f"  seed {seed}: {rec.key or rec.deployment.describe()} ({rec.deployment.gpus} GPUs) -> {quality:.1%} "
              f"of the best; {plan.sims} simulations = {plan.sims / ex_sims:.1%} of exhaustive; dominated by "
              f"{n_bad}; {plan.wall_s:.0f} s")
    return qualities, shares, bad


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--questions", default=",".join(str(i) for i in range(len(QUESTIONS))))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for i in (int(s) for s in args.questions.split(",")):
        q = QUESTIONS[i]
        qs, sh, bad = question(replace(q, req=replace(q.req, trials=args.trials)), args.seeds, args.jobs)
        rows.append((q.name, qs, sh, bad))
    print(f"\n{'question':44s} {'quality worst':>13s} {'sims mean':>9s} {'sims most':>9s} {'dominated':>9s}")
    for name, qs, sh, bad in rows:
        print(f"{name:44s} {min(qs):13.1%} {statistics.mean(sh):9.1%} {max(sh):9.1%} {bad:9d}")
    allq = [x for r in rows for x in r[1]]
    alls = [x for r in rows for x in r[2]]
    print(f"quality: mean {statistics.mean(allq):.1%}, worst {min(allq):.1%} (target >= 98 %); simulations: mean "
          f"{statistics.mean(alls):.1%}, most {max(alls):.1%} of exhaustive (target <= 20 %); dominated picks: "
          f"{sum(r[3] for r in rows)} (target 0)")


if __name__ == "__main__":
    main()
