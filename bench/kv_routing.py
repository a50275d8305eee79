"""KV-aware routing, stale KV events and KV tiers on the Mooncake conversation trace (issue 8's targets).

The trace's requests share 3 s ticks; they are spread over their tick (seeded). Deployment: Llama-3.1-8B fp8
on H200, disaggregated, 4 prefill replicas (TP1) and 2 decode replicas (TP2). Prints, per case, the prefix
hit rate (share of prompt tokens served from cache), p50/p90 TTFT, stale routes and tier traffic:

1. round robin (three tick-spreading seeds: their spread is the noise) and least loaded vs kv_aware;
2. kv_aware with the KV-event delay raised from 0 to 300 s (printed first: how long after a prefix was last
   used the next request reuses it; a delay shorter than that hardly matters);
3. the same trace with every hash block made unique (no shared prefixes): cache on vs off, RR vs kv_aware;
4. a small HBM (gpu_memory_utilization 0.15) with and without a 256 GB host tier.

    .venv/bin/python bench/kv_routing.py [--requests N] [--trace FILE]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from simulator import simulate
from simulator.deployment import parse_deployment
from traces import load_trace
from traces.transforms import head, spread_ticks

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "conversation_trace.jsonl"
DEPLOYMENT = {
    "model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg",
    "prefill": {"replicas": 4, "tp": 1, "max_batch_tokens": 8192},
    "decode": {"replicas": 2, "tp": 2, "max_seqs": 256},
    "kv_link": {"bandwidth_gb_s": 50, "latency_us": 10},
}
DELAYS_S = (0.0, 1, 5, 30, 60, 120, 300)


def run(label: str, workload, **settings) -> dict:
    dep = parse_deployment({**DEPLOYMENT, **settings})
    t0 = time.perf_counter()
    res = simulate(dep, workload)
    wall = time.perf_counter() - t0
    s = res.summary()
    kv = s.get("kv", {})
    tiers = "  ".join(f"{name}: {t['hits']} hits, {t['offloaded_bytes'] / 1e9:.0f} GB out, "
                      f"{t['recalled_bytes'] / 1e9:.0f} GB back" for name, t in kv.get("tiers", {}).items())
    print(f"{label:<34} hit {s['prefix_hit_rate']:6.3f}  TTFT p50 {s['ttft_ms']['p50']:7.0f} ms  "
          f"p90 {s['ttft_ms']['p90']:7.0f} ms  stale {kv.get('stale_routes', 0):5d}  "
          f"saved {kv.get('prefill_tokens_saved', 0) / 1e6:6.1f} Mtok  ({wall:.1f} s) {tiers}", flush=True)
    return s


def unique_hashes(workload):
    """The same requests with every hash block its own: nothing shared."""
    df = workload.requests.copy()
    start = np.concatenate([[0], np.cumsum(df["hash_ids"].map(len).to_numpy())[:-1]])
    df["hash_ids"] = [list(range(s, s + len(h))) for s, h in zip(start, df["hash_ids"], strict=True)]
    return workload.with_requests(df)


def reuse_gaps_s(workload, qs=(5, 25, 50)) -> list[float]:
    """Seconds from a prefix's last use to the next request that reuses it (two or more hash blocks deep)."""
    last: dict[int, float] = {}
    gaps = []
    for a, isl, ids in zip(workload.requests["arrival_s"], workload.requests["isl"], workload.requests["hash_ids"],
                           strict=True):
        m = 0
        for k in ids[:isl // workload.hash_block_tokens]:
            if k not in last:
                break
            m += 1
        if m >= 2:
            gaps.append(a - last[ids[m - 1]])
        last.update(dict.fromkeys(ids, a))
    return [float(g) for g in np.percentile(gaps, qs)] if gaps else [float("nan")] * len(qs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--requests", type=int, default=None, help="only the first N requests (default: all)")
    args = ap.parse_args()
    if not args.trace.exists():
        raise SystemExit(f"trace not found: {args.trace}")
    raw = load_trace(args.trace)
    spread = [spread_ticks(raw, seed=seed) for seed in (0, 1, 2)]
    if args.requests:
        spread = [head(w, args.requests) for w in spread]
    wl = spread[0]
    print(f"{len(wl)} requests over {wl.duration_s:.0f} s ({wl.rate:.2f} req/s), "
          f"mean ISL {wl.requests['isl'].mean():.0f}"
          f"; {DEPLOYMENT['prefill']['replicas']} prefill x TP1 + {DEPLOYMENT['decode']['replicas']} decode x TP2\n")

    print("1. round robin vs kv_aware (events without delay)")
    rr = [run(f"round_robin (tick seed {i})", w, router="round_robin") for i, w in enumerate(spread)]
    ll = run("least_loaded", wl, router="least_loaded")
    kv = run("kv_aware", wl, router="kv_aware")
    rr_hit = [s["prefix_hit_rate"] for s in rr]
    noise = (max(rr_hit) - min(rr_hit)) / 2
    print(f"-> kv_aware hit rate {kv['prefix_hit_rate']:.3f} vs round robin {rr_hit[0]:.3f} "
          f"(seeds {min(rr_hit):.3f}-{max(rr_hit):.3f}); p90 TTFT {kv['ttft_ms']['p90']:.0f} vs "
          f"{rr[0]['ttft_ms']['p90']:.0f} ms (least loaded: hit {ll['prefix_hit_rate']:.3f}, "
          f"p90 {ll['ttft_ms']['p90']:.0f} ms)\n")

    print(f"2. KV-event delay (prefix reuse gap p5/p25/p50: {' / '.join(f'{g:.0f}' for g in reuse_gaps_s(wl))} s)")
    hits = [run(f"kv_aware, events {d:g} s late", wl, router="kv_aware", kv_event_delay_s=float(d))["prefix_hit_rate"]
            for d in DELAYS_S]
    worst = min(hits) - rr_hit[0]
    print(f"-> hit rate {' > '.join(f'{h:.3f}' for h in hits)}; lowest minus round robin's: {worst:+.3f} "
          f"(round robin's seed noise +-{noise:.3f})\n")

    print("3. no shared prefixes (every hash block unique)")
    uniq = unique_hashes(wl)
    on = run("round_robin, cache on", uniq, router="round_robin")
    off = run("round_robin, cache off", uniq, router="round_robin", prefix_cache=False)
    run("kv_aware, cache on", uniq, router="kv_aware")
    same = all(on[k] == off[k] for k in ("ttft_ms", "tpot_ms", "e2e_ms", "throughput_tok_s"))
    print(f"-> cache on vs off: hit {on['prefix_hit_rate']:.3f} vs {off['prefix_hit_rate']:.3f}; latencies and "
          f"throughput {'identical' if same else 'DIFFERENT'}\n")

    print("4. small HBM (gpu_memory_utilization 0.15), with and without a host tier")
    small = {"router": "kv_aware", "gpu_memory_utilization": 0.15}
    hbm = run("kv_aware, HBM only", wl, **small)
    host = run("kv_aware, + host 256 GB @ 50 GB/s", wl, **small, kv_tiers={"host": {"capacity_gb": 256}})
    slow = run("kv_aware, + host 256 GB @ 2 GB/s", wl, **small,
               kv_tiers={"host": {"capacity_gb": 256, "bandwidth_gb_s": 2}})
    print(f"-> host tier hit rate {host['prefix_hit_rate']:.3f} vs {hbm['prefix_hit_rate']:.3f} HBM only; p50 TTFT "
          f"{host['ttft_ms']['p50']:.0f} ms at 50 GB/s, {slow['ttft_ms']['p50']:.0f} ms at 2 GB/s (the recall time)")


if __name__ == "__main__":
    main()
