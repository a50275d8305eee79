"""`plan --router kv_aware`: search the KV-aware router's weights on the recommended deployment.

The unit search does not depend on the weights (a unit is one replica, or one prefill/decode group, where
routing has little to choose), so they are tuned once the whole deployment is known: the recommendation is
simulated under its load with each overlap:load ratio of ``GRID`` and the best kept: SLO met first, then
attainment, then p90 TTFT, then the prefix hit rate. The cost function is simulator/kv_events.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from planner.recommend import Confirmed, run_whole
from simulator.kv import kv_settings, with_router

if TYPE_CHECKING:
    from planner.evaluate import Evaluator

# (overlap, load) weights: from chasing the cache to balancing the load
GRID = ((1.0, 0.0), (4.0, 1.0), (2.0, 1.0), (1.0, 1.0), (1.0, 2.0), (1.0, 4.0), (0.0, 1.0))


def rank(summary: dict, met: bool) -> tuple:
    """Bigger is better."""
    p90 = (summary.get("ttft_ms") or {}).get("p90")
    return (met, summary.get("slo_attainment") or 0.0, -(p90 if p90 is not None else float("inf")),
            summary.get("prefix_hit_rate") or 0.0)


def tune_router_weights(ev: Evaluator, rec: Confirmed, e2e_s: float) -> tuple[Confirmed, list[dict], int]:
    """The recommendation with its best weights, one row per weights tried, and the simulations run."""
    s = kv_settings(rec.deployment)
    current = (s.overlap_weight, s.load_weight)
    rows = [{"overlap": current[0], "load": current[1], "met": rec.probe.met,
             "slo_attainment": rec.probe.summary.get("slo_attainment"),
             "ttft_p90_ms": (rec.probe.summary.get("ttft_ms") or {}).get("p90"),
             "prefix_hit_rate": rec.probe.summary.get("prefix_hit_rate")}]
    best, best_rank = rec, rank(rec.probe.summary, rec.probe.met)
    sims = 0
    for weights in GRID:
        if weights == current:
            continue
        dep = with_router(rec.deployment, weights=weights)
        probe, result = run_whole(ev, dep, rec.rate_rps, e2e_s)
        sims += 1
        rows.append({"overlap": weights[0], "load": weights[1], "met": probe.met,
                     "slo_attainment": probe.summary.get("slo_attainment"),
                     "ttft_p90_ms": (probe.summary.get("ttft_ms") or {}).get("p90"),
                     "prefix_hit_rate": probe.summary.get("prefix_hit_rate")})
        r = rank(probe.summary, probe.met)
        if r > best_rank:
            best, best_rank = Confirmed(dep, probe.rate_rps, probe, result, role=rec.role), r
    best.key = rec.key
    s = kv_settings(best.deployment)  # written out, so that deployment.yaml says which weights were chosen
    best.deployment = with_router(best.deployment, weights=(s.overlap_weight, s.load_weight))
    return best, rows, sims


def weights_reason(rows: list[dict], best: Confirmed) -> str:
    """One line for the plan's reasons."""
    s = kv_settings(best.deployment)
    chosen = next(r for r in rows if (r["overlap"], r["load"]) == (s.overlap_weight, s.load_weight))
    p90s = [r["ttft_p90_ms"] for r in rows if r["ttft_p90_ms"] is not None]
    span = f" (the weights tried give {min(p90s):.0f}-{max(p90s):.0f} ms)" if p90s else ""
    return (f"kv_aware router weights overlap {s.overlap_weight:g} : load {s.load_weight:g}, best of {len(rows)} "
            f"tried on the recommended deployment: prefix hit rate {chosen['prefix_hit_rate'] or 0:.1%}, p90 TTFT "
            f"{chosen['ttft_p90_ms'] or 0:.0f} ms{span}")
