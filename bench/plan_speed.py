"""How long `plan` takes, end to end, on this machine: the README's command as a user runs it.

    .venv/bin/python bench/plan_speed.py [--runs 1] [-- extra plan flags]

Prints the wall seconds of the whole command (process start to exit, report written), the CPU seconds it
used (the rest is other processes on a shared machine), the analytic screen's time over the whole space,
how many units were simulated and how many simulations that took. Target: under 60 s wall on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = ["--model", "llama-3.1-8b", "--isl", "4000", "--osl", "500", "--ttft", "300", "--tpot", "20"]


def screen_seconds() -> tuple[float, int]:
    from planner.plan import PlanRequest, build
    from planner.space import enumerate_units

    t0 = time.perf_counter()
    space, screen, _ = build(PlanRequest(model="llama-3.1-8b", isl=4000, osl=500, ttft_ms=300, tpot_ms=20))
    units = enumerate_units(space)
    for u in units:
        screen.estimate(u)
    return time.perf_counter() - t0, len(units)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("extra", nargs="*", help="more plan flags, after --")
    args = ap.parse_args()
    plan = str(Path(sys.executable).parent / "plan")
    s, n = screen_seconds()
    print(f"screen: {n} units that fit, estimated in {s:.3f} s")
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            r = subprocess.run([plan, *COMMAND, *args.extra, "--quiet", "--out", out], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            if r.returncode not in (0, 3):
                sys.exit(r.stderr)
            p = json.loads((Path(out) / "plan.json").read_text())
            run_wall_s = json.loads((Path(out) / "run.json").read_text())["wall_s"]
            rec = p["recommendation"]
            print(f"run {i + 1}: plan {' '.join(COMMAND + args.extra)}")
            print(f"  wall {wall:.1f} s   cpu {cpu:.1f} s   exit {r.returncode}")
            print(f"  simulated units {len(p['evaluated'])}   simulations {p['simulations']}   "
                  f"rejected before simulation {len(p['infeasible'])}   search+confirm {run_wall_s:.1f} s")
            if rec:
                print(f"  recommendation: {rec['description']} ({rec['gpus']} GPUs) at {rec['rate_rps']:.3g} req/s, "
                      f"{rec['tok_s_per_gpu']:,.0f} tok/s/GPU, met={rec['met']}")


if __name__ == "__main__":
    main()
