"""Search quality on a space small enough to enumerate: how close `plan`'s recommendation comes to the best
unit found by simulating every unit, and what share of the simulations it needed.

    .venv/bin/python bench/plan_quality.py [--seeds 5] [--trials 6]

The space: Llama-3.1-8B on up to 4 x H200, ISL 2000 / OSL 250, p90 TTFT 400 ms / TPOT 20 ms; TP 1, 2 or 4,
two batch budgets and two max_seqs per pool. Exhaustive: every unit's goodput by the same bisection the
search uses. The search: the screen, then Optuna TPE (one run per sampler seed), then the confirmation.
Quality = the exhaustive score of the unit the plan recommends / the exhaustive best. Targets: >= 98 %
of the best with <= 20 % of the exhaustive simulations.
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

REQUEST = PlanRequest(model="llama-3.1-8b", isl=2000, osl=250, ttft_ms=400, tpot_ms=20, gpus=4)


def pieces(trials: int):
    space, screen, ev = build(replace(REQUEST, trials=trials))
    small = replace(space, tp_choices=(1, 2, 4), agg_batch_tokens=(1024, 4096, 16384), prefill_batch_tokens=(8192,),
                    max_seqs=(64, 256))
    screen.space = small
    fresh = Evaluator(small, screen, ev.slo, ev.isl, ev.osl, ev.load, ev.seed, ev.profile, efficiency=ev.efficiency,
                      perf_db=ev.perf_db)
    return small, screen, fresh


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=6)
    args = ap.parse_args()

    small, screen, ev = pieces(args.trials)
    units = enumerate_units(small)
    t0 = time.perf_counter()
    exhaustive = {unit_key(u): ev.evaluate(u, screen.estimate(u)) for u in units}
    ex_wall = time.perf_counter() - t0
    ex_sims = sum(e.sims for e in exhaustive.values())
    best_key = max(exhaustive, key=lambda k: exhaustive[k].score)
    best = exhaustive[best_key].score
    print(f"space: {len(units)} units; exhaustive: {ex_sims} simulations in {ex_wall:.1f} s; best {best_key} "
          f"at {best:,.0f} tok/s/GPU")
    qualities, shares = [], []
    for seed in range(args.seeds):
        small, screen, ev = pieces(args.trials)
        search = Search(small, screen, ev, REQUEST.objective, args.trials, REQUEST.seed)
        study = search.study(None, f"quality-{seed}", sampler_seed=seed)
        t0 = time.perf_counter()
        search.run(study)
        plan = finish(replace(REQUEST, trials=args.trials), search, study, t0)
        key = plan.recommendation.key
        q = exhaustive[key].score / best
        search_sims = sum(e.sims for e in search.evaluations.values())
        share = plan.sims / ex_sims
        qualities.append(q)
        shares.append(share)
        print(f"seed {seed}: recommends {key} -> {q:.1%} of the exhaustive best; {len(search.evaluations)} units, "
              f"{search_sims} search + {plan.sims - search_sims} confirmation simulations = {share:.1%} of "
              f"exhaustive; {plan.wall_s:.1f} s")
    print(f"quality: mean {statistics.mean(qualities):.1%}, worst {min(qualities):.1%} (target >= 98 %)")
    print(f"simulations: mean {statistics.mean(shares):.1%}, most {max(shares):.1%} of exhaustive (target <= 20 %)")


if __name__ == "__main__":
    main()
