"""Issue 6's targets: `pdsim validate` on a 2-minute Azure-conversation slice (rescaled by the rate rule),
tiny model, agg and disagg, paced and raw; prints live vs simulated TTFT/TPOT per percentile and the
error against the targets (paced: 5 % p50/p90, 10 % p99; raw: 15 % p50/p90 or the repeat spread).

    .venv/bin/python bench/validate.py [--duration 120] [--repeats 3] [--modes paced,raw]
                                       [--topologies agg,disagg] [--out bench-validate]

Replays data/traces' Azure conversation trace (or --trace). Each run writes its validate.json/html under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from planner.validate import (
    DEFAULT_CACHE,
    ValidateOptions,
    error_split_text,
    error_table,
    slowdown_text,
    spread_text,
    validate,
)
from reports.validate import co_activity_rows
from simulator.deployment import parse_deployment
from traces.loader import load_trace

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
DEPLOYMENTS = {
    "agg": {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "agg", "workers": {"replicas": 1}},
    "disagg": {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "disagg", "prefill": {"replicas": 1},
               "decode": {"replicas": 1}},
}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--repeats", type=int, default=3, help="Live repeats in raw mode (paced: 1).")
    ap.add_argument("--modes", default="paced,raw")
    ap.add_argument("--topologies", default="agg,disagg")
    ap.add_argument("--out", default="bench-validate")
    ap.add_argument("--profile-cache", default=str(DEFAULT_CACHE))
    args = ap.parse_args()
    if not Path(args.trace).exists():
        sys.exit(f"no trace at {args.trace} (pass --trace)")
    workload = load_trace(args.trace)
    summary = []
    for topology in args.topologies.split(","):
        dep = parse_deployment(DEPLOYMENTS[topology], where=f"bench {topology}")
        for mode in args.modes.split(","):
            paced = mode == "paced"
            opts = ValidateOptions(out_dir=Path(args.out) / f"{topology}-{mode}", duration_s=args.duration,
                                   repeats=1 if paced else args.repeats, paced=paced,
                                   profile_cache=Path(args.profile_cache))
            started = time.perf_counter()
            doc = validate(dep, workload, opts, log=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
            wall = time.perf_counter() - started
            print(f"\n== {topology} {mode}: {doc['workload']['requests']} requests at "
                  f"{doc['workload']['rate_rps']:.3g} req/s, {doc['repeats']} repeat(s)"
                  + (f", pace x{doc['pace_scale']:g}" if paced else "")
                  + f", runtime overhead {doc['ttft_overhead_ms']:.1f} ms per request (in the simulation too)"
                  + f", {wall:.0f} s wall")
            print(error_table(doc))
            live = doc["utilization"]["live"][0]
            print("live busy share: " + ", ".join(f"{w} {s['busy_share']:.0%}" for w, s in live.items())
                  + (" | paced steps overrunning their pace: "
                     + ", ".join(f"{w} {s.get('overrun_share', 0):.1%}" for w, s in live.items()) if paced else ""))
            print("step compute / profile (median): " + ", ".join(
                f"{w} {s['compute_over_profile']:.2f}x = CPU time {s['cpu_over_profile']:.2f}x * wall/CPU "
                f"{s['wall_over_cpu']:.2f}x (CPU time / profile: prefill steps "
                f"{s.get('cpu_over_profile_prefill_steps', float('nan')):.2f}x, decode steps "
                f"{s.get('cpu_over_profile_decode_steps', float('nan')):.2f}x)"
                for w, s in live.items() if "compute_over_profile" in s))
            if not paced:
                costs, where = doc["raw_step_costs"], doc["costs_measured_in"]
                over = ((doc["rehearsal"] if where == "rehearsal" else doc["measured_slowdown"]) or {}).get(
                    "overhead") or {}
                pools = slowdown_text(costs.get("pool_slowdown"), costs.get("pool_decode_slowdown"))
                print(f"simulated step = profile x slowdown ({pools or costs['compute_slowdown']}) + "
                      f"{costs['iteration_overhead_ms']:.3f} ms + {costs['per_seq_overhead_ms']:.4f} ms/seq"
                      + (f", KV hand-off {costs['kv_handoff_ms']:.2f} ms" if topology == "disagg" else "")
                      + f", measured in the {where} (of which the worker's own CPU "
                      f"{over.get('cpu_iteration_s', 0) * 1e3:.3f} ms + {over.get('cpu_per_seq_s', 0) * 1e3:.4f} "
                      f"ms/seq; up to {over.get('max_seqs', 0)} seqs)")
                if costs.get("pool_spread"):
                    print("each simulated step's slowdown drawn around its size's, p10-p90: "
                          f"{spread_text(costs['pool_spread'])}; {doc['repeats']} simulated repeat(s), the median")
                print("the replays' own steps: " + "; ".join(", ".join(
                    f"{w} {s['overhead_ms']:.3f} ms + {s['per_seq_overhead_ms']:.4f} ms/seq (own CPU "
                    f"{s['own_overhead_ms']:.3f} + {s['own_per_seq_overhead_ms']:.4f}/seq; up to {s['max_seqs']} "
                    f"seqs), "
                    f"wall/CPU {s['wall_over_cpu']:.3f}, busy {s['busy_share']:.0%}"
                    for w, s in rep.items() if "overhead_ms" in s) for rep in doc["utilization"]["live"]))
                print("the replays' own slowdown by size: " + " | ".join(slowdown_text(
                    *({w: s["slowdown_by_size"][k] for w, s in rep.items() if s.get("slowdown_by_size")}
                      for k in ("prompt_steps", "decode_steps"))) for rep in doc["utilization"]["live"]))
                co = [f"{c['worker']} {c['steps']} steps {fmt(c['idle'])} / {fmt(c['busy'])} "
                      f"({c['n_idle']} / {c['n_busy']} steps)" for c in co_activity_rows(doc)]
                if co:
                    print("the replays' steps over their size's mean, the other workers idle / busy: "
                          + "; ".join(co))
            if split := error_split_text(doc):
                print(split)
            diff = doc["per_request"]
            print("per request, live - sim (median): " + ", ".join(
                f"{m.upper()} {diff[f'{m}_live_minus_sim_ms']['p50']:+.1f} ms" for m in ("ttft", "tpot")
                if diff.get(f"{m}_live_minus_sim_ms")))
            cells = [c for m in ("ttft_ms", "tpot_ms") for c in doc["metrics"][m].values() if "within_target" in c]
            summary.append((topology, mode, sum(c["within_target"] for c in cells), len(cells)))
            sys.stdout.flush()
    print("\nwithin target (TTFT and TPOT percentiles):")
    for topology, mode, ok, n in summary:
        print(f"  {topology:<7}{mode:<6}{ok}/{n}")
    (Path(args.out) / "summary.json").write_text(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
