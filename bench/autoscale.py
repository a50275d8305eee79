"""Autoscaling replay on a diurnal load: GPU-hours and SLO attainment of each autoscaling policy against
static deployments — the smallest static one that meets the SLO, and the best static one that costs what
the autoscaler did. Llama-3.1-8B fp8 on H200, disaggregated, TP1 pools, least-loaded routing.

    .venv/bin/python bench/autoscale.py [--duration 900] [--mean-rate 30] [--policies rate,trend,load]
"""

from __future__ import annotations

import argparse
import time

from simulator import SLO, simulate
from simulator.autoscale import attainment_over_time
from simulator.deployment import parse_deployment
from traces.diurnal import diurnal_workload


def deployment(prefill: int, decode: int, autoscale: dict | None = None):
    d = {"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg",
         "prefill": {"replicas": prefill}, "decode": {"replicas": decode}, "router": "least_loaded"}
    if autoscale:
        d["autoscale"] = autoscale
    return parse_deployment(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=900.0, help="seconds: one compressed day")
    ap.add_argument("--mean-rate", type=float, default=30.0,
                    help="req/s averaged over the day (its peak, 1.6 x, is more than 1 prefill + 1 decode hold)")
    ap.add_argument("--peak-to-trough", type=float, default=4.0)
    ap.add_argument("--isl", type=int, default=2000)
    ap.add_argument("--osl", type=int, default=200)
    ap.add_argument("--ttft", type=float, default=500.0, help="ms, p90")
    ap.add_argument("--tpot", type=float, default=20.0, help="ms, p90")
    ap.add_argument("--interval", type=float, default=30.0, help="autoscaler interval, s")
    ap.add_argument("--startup", type=float, default=30.0, help="a new replica's start-up (model load), s")
    ap.add_argument("--policies", default="rate,trend,load")
    ap.add_argument("--max-gpus", type=int, default=5, help="largest static deployment tried")
    args = ap.parse_args()
    slo = SLO(args.ttft, args.tpot)
    wl = diurnal_workload(duration_s=args.duration, mean_rate=args.mean_rate, isl=args.isl, osl=args.osl,
                          peak_to_trough=args.peak_to_trough, seed=0)
    print(wl.source)
    print(f"SLO p90 TTFT <= {args.ttft:g} ms, TPOT <= {args.tpot:g} ms, attainment >= {slo.attainment:.0%}\n")
    print(f"{'deployment':<34}{'GPU-h':>8}{'attain':>9}{'p90 TTFT':>10}{'p90 TPOT':>10}{'actions':>9}{'wall s':>8}")
    rows = {}

    def run(name, dep):
        t0 = time.perf_counter()
        r = simulate(dep, wl, slo=slo)
        s = r.summary()
        acts = s.get("scaling", {}).get("actions", 0)
        rows[name] = (r, s)
        print(f"{name:<34}{s['cost']['gpu_hours']:>8.3f}{s['slo_attainment'] * 100:>8.1f}%"
              f"{s['ttft_ms']['p90']:>10.0f}{s['tpot_ms']['p90']:>10.1f}{acts:>9}{time.perf_counter() - t0:>8.1f}")
        return s

    static: dict[int, tuple[str, dict]] = {}  # GPUs -> the best static split
    for gpus in range(2, args.max_gpus + 1):
        for p in range(1, gpus):
            name = f"static {p} prefill + {gpus - p} decode"
            s = run(name, deployment(p, gpus - p))
            if gpus not in static or s["slo_attainment"] > static[gpus][1]["slo_attainment"]:
                static[gpus] = (name, s)
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        auto = {"policy": policy, "ttft_ms": args.ttft, "tpot_ms": args.tpot, "interval_s": args.interval,
                "startup_s": args.startup, "gpu_budget": args.max_gpus}
        run(f"autoscale {policy}", deployment(1, 1, auto))

    meets = [g for g, (_, s) in sorted(static.items()) if s["slo_attainment"] >= slo.attainment]
    print()
    if meets:
        name, s = static[meets[0]]
        print(f"smallest static deployment meeting the SLO: {name}: {s['cost']['gpu_hours']:.3f} GPU-h, "
              f"attainment {s['slo_attainment']:.2%}")
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        r, s = rows[f"autoscale {policy}"]
        gh = s["cost"]["gpu_hours"]
        line = f"autoscale {policy}: {gh:.3f} GPU-h, attainment {s['slo_attainment']:.2%}"
        if meets:
            saved = 1 - gh / static[meets[0]][1]["cost"]["gpu_hours"]
            line += f"; {saved:.1%} fewer GPU-hours than the smallest SLO-meeting static"
        cheaper = [(name, x) for name, (_, x) in rows.items()
                   if name.startswith("static") and x["cost"]["gpu_hours"] <= gh]
        if cheaper:
            name, x = max(cheaper, key=lambda c: c[1]["slo_attainment"])
            line += f"; best static costing no more ({name}, {x['cost']['gpu_hours']:.3f} GPU-h): " \
                    f"{x['slo_attainment']:.2%}"
        print(line)
    best = max((p.strip() for p in args.policies.split(",") if p.strip()),
               key=lambda p: rows[f"autoscale {p}"][1]["slo_attainment"])
    r, _ = rows[f"autoscale {best}"]
    ref_name = static[meets[0]][0] if meets else "-"
    print(f"\nSLO attainment over the day, by arrival time ({best} autoscaler vs {ref_name})")
    over = attainment_over_time(r.requests, args.ttft, args.tpot, args.duration / 10)
    ref = attainment_over_time(rows[static[meets[0]][0]][0].requests, args.ttft, args.tpot, args.duration / 10) \
        if meets else over
    replicas = {d["time_s"]: (d.get("replicas_prefill"), d.get("replicas_decode"))
                for d in r.extra["ops"]["autoscale"]["decisions"]}
    for (_, a), (_, b) in zip(over.iterrows(), ref.iterrows(), strict=False):
        t = a.start_s
        rep = [v for k, v in replicas.items() if k <= t + args.duration / 10]
        p, d = rep[-1] if rep else (1, 1)
        print(f"  {t:>6.0f} s  {a.requests:>6.0f} requests  autoscaler {a.attainment:>7.2%} ({p}P+{d}D at the end)"
              f"  static {b.attainment:>7.2%}")


if __name__ == "__main__":
    main()
