"""Search quality on spaces small enough to enumerate: how close `plan`'s recommendation comes to the best
unit found by simulating every unit, and what share of the simulations it needed.

    .venv/bin/python bench/plan_quality.py [--seeds 3] [--trials 5] [--shapes 0,1,2]

The space: Llama-3.1-8B on up to 4 x H200; TP 1, 2 or 4, three agg batch
budgets, one prefill budget and two max_seqs per pool, under three request shapes (balanced, long prompts
with tight targets, short requests). Exhaustive: every unit's goodput by the same bisection the search
uses. The search: the screen, then Optuna TPE (one run per sampler seed), then the confirmation of the
whole deployment. Quality = the exhaustive score of the unit the plan recommends / the exhaustive best;
the search's simulations include its confirmation runs. Targets: >= 98 % of the best with <= 20 % of the
exhaustive simulations. At this budget (5 of 38 units) the units simulated are the screen's best of each
topology, which the study is seeded with; TPE's own proposals start after them (see --trials 8).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

from planner.evaluate import Evaluator
from planner.plan import PlanRequest, build, finish
from planner.search import Search
from planner.space import enumerate_units, unit_key

SHAPES = [
    PlanRequest(model="llama-3.1-8b", isl=2000, osl=250, ttft_ms=400, tpot_ms=20, gpus=4),
    PlanRequest(model="llama-3.1-8b", isl=8000, osl=100, ttft_ms=300, tpot_ms=10, gpus=4),
    PlanRequest(model="llama-3.1-8b", isl=200, osl=100, ttft_ms=300, tpot_ms=12, gpus=4),
]


def pieces(req: PlanRequest):
    space, screen, ev = build(req)
    small = replace(space, tp_choices=(1, 2, 4), agg_batch_tokens=(1024, 4096, 16384), prefill_batch_tokens=(8192,),
                    max_seqs=(64, 256))
    screen.space = small
    fresh = Evaluator(small, screen, ev.slo, ev.isl, ev.osl, ev.load, ev.seed, ev.profile, efficiency=ev.efficiency,
                      perf_db=ev.perf_db)
    return small, screen, fresh


def shape(req: PlanRequest, seeds: int) -> tuple[list[float], list[float]]:
    small, screen, ev = pieces(req)
    units = enumerate_units(small)
    t0 = time.perf_counter()
    exhaustive = {unit_key(u): ev.evaluate(u, screen.estimate(u)) for u in units}
    ex_sims = sum(e.sims for e in exhaustive.values())
    best_key = max(exhaustive, key=lambda k: exhaustive[k].score)
    best = exhaustive[best_key].score
    print(f"isl {req.isl} / osl {req.osl}, TTFT {req.ttft_ms:g} ms, TPOT {req.tpot_ms:g} ms, {req.gpus} GPUs: "
          f"{len(units)} units; exhaustive {ex_sims} simulations in {time.perf_counter() - t0:.1f} s; best "
          f"{best_key} at {best:,.0f} tok/s/GPU")
    qualities, shares = [], []
    for seed in range(seeds):
        small, screen, ev = pieces(req)
        search = Search(small, screen, ev, req.objective, req.trials, req.seed)
        study = search.study(None, f"quality-{seed}", sampler_seed=seed)
        t0 = time.perf_counter()
        search.run(study)
        plan = finish(req, search, study, t0)
        key = plan.recommendation.key
        q = exhaustive[key].score / best if best > 0 else float("nan")
        search_sims = sum(e.sims for e in search.evaluations.values())
        share = plan.sims / ex_sims
        qualities.append(q)
        shares.append(share)
        print(f"  seed {seed}: recommends {key} -> {q:.1%} of the best; {len(search.evaluations)} units, "
              f"{search_sims} search + {plan.sims - search_sims} confirmation simulations = {share:.1%} of "
              f"exhaustive; {plan.wall_s:.1f} s")
    return qualities, shares


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--shapes", default=",".join(str(i) for i in range(len(SHAPES))))
    args = ap.parse_args()
    qualities, shares = [], []
    for i in (int(s) for s in args.shapes.split(",")):
        q, s = shape(replace(SHAPES[i], trials=args.trials), args.seeds)
        qualities += q
        shares += s
    print(f"quality: mean {statistics.mean(qualities):.1%}, worst {min(qualities):.1%} (target >= 98 %)")
    print(f"simulations: mean {statistics.mean(shares):.1%}, most {max(shares):.1%} of exhaustive (target <= 20 %)")


if __name__ == "__main__":
    main()
