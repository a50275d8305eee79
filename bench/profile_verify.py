"""Profile the tiny model (--quick) and verify it against whole-model passes, a few times over.

    .venv/bin/python bench/profile_verify.py [--rounds 3] [--clock wall|cpu] [--model tiny]

Prints, per round, how long the quick profile took and the median / worst relative error of the per-op
composition against whole prefill batches and decode steps; then the spread over rounds. Timings on a
shared CPU drift; ``--clock cpu`` counts only this thread's CPU time, which other processes cannot inflate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clock", default="wall", choices=("wall", "cpu"))
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--full", action="store_true", help="the full grid instead of --quick")
    args = ap.parse_args()

    from profiler.measure import profile_model
    from profiler.models import resolve_model
    from profiler.profile import load_profile
    from profiler.verify import format_result, verify_profile

    spec = resolve_model(args.model)
    medians, worsts, p10s = [], [], []
    print(f"{args.model}, {'full' if args.full else 'quick'} grid, {args.clock} clock, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            profile_model(spec, quick=not args.full, clock=args.clock).save(d)
            took = time.perf_counter() - t0
            r = verify_profile(load_profile(d))
        medians.append(r.median_abs_err)
        worsts.append(r.worst_abs_err)
        p10s.append(r.median_abs_err_p10)
        if i == args.rounds - 1:
            print(format_result(r))
        print(f"round {i + 1}: profile {took:.1f}s; median |error| {r.median_abs_err * 100:.1f}%, "
              f"worst {r.worst_abs_err * 100:.1f}%, vs p10 {r.median_abs_err_p10 * 100:.1f}% "
              f"(load average {os.getloadavg()[0]:.2f})", flush=True)
    print(f"over {args.rounds} rounds: median |error| {np.median(medians) * 100:.1f}% "
          f"(range {min(medians) * 100:.1f}-{max(medians) * 100:.1f}%), worst {max(worsts) * 100:.1f}%; "
          f"against each step's p10 {np.median(p10s) * 100:.1f}%")


if __name__ == "__main__":
    main()
