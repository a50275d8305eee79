"""Run-to-run noise of a unit's goodput: the same unit searched by bisection under five seeds (arrivals drawn
anew). Throughputs closer than this spread are not told apart by the simulation (planner/decide.py NOISE).

    .venv/bin/python bench/plan_noise.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from planner.plan import PlanRequest, build
from planner.space import agg_unit, disagg_unit

REQ = PlanRequest(model="llama-3.1-8b", isl=4000, osl=500, ttft_ms=300, tpot_ms=20)  # the README example
UNITS = [lambda s: agg_unit(s, 1, 1024, 128), lambda s: agg_unit(s, 2, 2048, 256),
         lambda s: disagg_unit(s, 2, 1, 4096, 1, 2, 256)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    for make in UNITS:
        rates = []
        for seed in range(args.seeds):
            space, screen, ev = build(replace(REQ, seed=seed))
            unit = make(space)
            rates.append(ev.goodput(unit, screen.estimate(unit)).rate_rps)
        m = statistics.mean(rates)
        print(f"{unit.describe():40s} goodput {', '.join(f'{r:.2f}' for r in rates)} req/s: max-min "
              f"{(max(rates) - min(rates)) / m:.1%}, sd {statistics.stdev(rates) / m:.1%} of the mean")


if __name__ == "__main__":
    main()
