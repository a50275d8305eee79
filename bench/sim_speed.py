"""Simulator speed: the whole Azure conversation trace (19,366 requests) through an 8-GPU disaggregated
Llama-3.1-8B deployment on H200 (prefill 4x TP1, decode 2x TP2). Prints wall seconds, simulated requests
per wall second and iterations per wall second. Target: under 5 s on one core.

    .venv/bin/python bench/sim_speed.py [--trace FILE] [--no-fast-forward] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from pathlib import Path

from simulator import simulate, summary_table
from simulator.deployment import parse_deployment
from traces import load_trace

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv"
DEPLOYMENT = {
    "model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg",
    "prefill": {"replicas": 4, "tp": 1, "max_batch_tokens": 8192},
    "decode": {"replicas": 2, "tp": 2, "max_seqs": 256},
    "kv_link": {"bandwidth_gb_s": 50, "latency_us": 10},
    "router": "least_loaded",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--no-fast-forward", action="store_true", help="one SimPy event per iteration (debug path)")
    ap.add_argument("--profile", action="store_true", help="print the cProfile top 25 by cumulative time")
    args = ap.parse_args()
    if not args.trace.exists():
        raise SystemExit(f"trace not found: {args.trace}")
    workload = load_trace(args.trace)
    dep = parse_deployment(DEPLOYMENT)
    prof = cProfile.Profile() if args.profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if prof:
        prof.enable()
    result = simulate(dep, workload, fast_forward=not args.no_fast_forward)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(summary_table(result.summary()))
    print(f"\n{len(workload)} requests, {result.end_s:.0f} simulated s, {result.iterations} iterations "
          f"({'fast-forward' if not args.no_fast_forward else 'one event per iteration'})")
    print(f"wall {wall:.2f} s | {len(workload) / wall:,.0f} simulated requests/s | "
          f"{result.iterations / wall:,.0f} iterations/s | cpu {cpu:.2f} s (wall exceeds it when the core is shared)")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
