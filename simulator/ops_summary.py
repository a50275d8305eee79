"""What every run's summary says of its operations: outcomes, availability, failures by reason and cost; with
faults or scaling, their record too; and the same as terminal lines."""

from __future__ import annotations

from simulator.stats import finite, stats_ms


def ops_summary(result) -> dict:
    """Summary keys every run has: ``outcomes``, ``availability``, ``fail_reasons`` (failed requests by reason)
    and ``cost``; with faults or scaling also
    ``faults`` (incidents, retries, wasted GPU-seconds, extra latency) and ``scaling``."""
    df = result.requests
    counts = df["outcome"].value_counts()
    outcomes = {k: int(counts.get(k, 0)) for k in ("ok", "retried_ok", "failed")}
    n = len(df)
    ops = result.extra.get("ops")
    ok = df[df["outcome"] != "failed"]
    tokens = float(ok["osl"].sum())
    if ops is not None:
        gpu_hours = ops["gpu_hours"]
    else:
        m = ok[ok["measured"]]
        start = float(df.loc[df["measured"], "arrival_s"].min()) if len(m) else 0.0
        window_s = float(m["last_token_s"].max()) - start if len(m) else 0.0
        gpu_hours, tokens = result.gpus * max(window_s, 0.0) / 3600.0, float(m["osl"].sum())
    price = result.extra.get("usd_per_gpu_hour")
    usd = None if price is None else price * gpu_hours
    failed = df.loc[df["outcome"] == "failed", "fail_reason"]
    served = outcomes["ok"] + outcomes["retried_ok"]
    s: dict = {"outcomes": outcomes, "availability": finite(served / n) if n else None,
               "fail_reasons": {str(k): int(v) for k, v in failed.value_counts().items()},
               "cost": {"usd_per_gpu_hour": price, "gpu_hours": finite(gpu_hours), "usd": None if usd is None else
                        finite(usd), "usd_per_million_tokens": finite(usd / tokens * 1e6) if usd and tokens else None}}
    if ops is not None:
        hit = df["retries"] > 0
        extra_s = df.loc[hit, "fault_extra_s"].to_numpy() if "fault_extra_s" in df else []
        everyone_s = df["fault_extra_s"].to_numpy() if "fault_extra_s" in df else []  # queues behind retries too
        s["faults"] = {"incidents": len(ops["incidents"]), "requests_hit": int(hit.sum()), "retries": ops["retries"],
                       "wasted_gpu_s": finite(ops["wasted_gpu_s"]),
                       "extra_latency_ms": stats_ms(extra_s) if len(extra_s) else None,
                       "extra_latency_all_ms": stats_ms(everyone_s) if len(everyone_s) else None}
        s["scaling"] = {"actions": len(ops["scaling"]), "gpu_hours": finite(ops["gpu_hours"])}
        if "autoscale" in ops:
            s["autoscale"] = ops["autoscale"]
    return s


def ops_table(summary: dict) -> str:
    """Outcomes, cost and (with faults or scaling) their record, as terminal lines."""
    o, c = summary["outcomes"], summary["cost"]
    avail = summary["availability"]
    lines = [f"outcomes ok {o['ok']}  retried_ok {o['retried_ok']}  failed {o['failed']}  availability "
             f"{'-' if avail is None else f'{avail * 100:.2f}%'}"]
    lines += [f"  failed x{k}: {why}" for why, k in summary["fail_reasons"].items()]
    if c["usd_per_gpu_hour"] is not None:
        per_m = c["usd_per_million_tokens"]
        lines.append(f"cost ${c['usd_per_gpu_hour']:g}/GPU-hour x {c['gpu_hours']:.3f} GPU-hours = ${c['usd']:.2f}"
                     f"  ->  {'-' if per_m is None else f'${per_m:.3f}'} per million output tokens")
    f = summary.get("faults")
    if f and (f["incidents"] or f["requests_hit"]):
        ex = f["extra_latency_ms"]
        lines.append(f"faults {f['incidents']} incidents, {f['requests_hit']} requests hit, {f['retries']} retries, "
                     f"{f['wasted_gpu_s']:.2f} GPU-s thrown away"
                     + (f", their extra E2E p50 {ex['p50']:.1f} ms p99 {ex['p99']:.1f} ms" if ex else ""))
        if f.get("extra_latency_all_ms"):
            a = f["extra_latency_all_ms"]
            lines.append(f"  every request's E2E against the same run without faults: mean {a['mean']:+.1f} ms, "
                         f"p99 {a['p99']:+.1f} ms")
    sc = summary.get("scaling")
    if sc and sc["actions"]:
        lines.append(f"scaling {sc['actions']} actions, {sc['gpu_hours']:.3f} GPU-hours")
    auto = summary.get("autoscale")
    if auto and auto["decisions"]:
        d = auto["decisions"]
        every = max(1, len(d) // 12)
        lines.append(f"autoscale {auto['policy']} every {auto['interval_s']:g} s (every {every}th decision shown):")
        lines.append(f"  {'time s':>8}{'req/s':>8}{'p90 TTFT':>10}{'p90 TPOT':>10}  replicas")
        for x in d[::every]:
            reps = " ".join(f"{k[9:]} {v}" for k, v in x.items() if k.startswith("replicas_"))
            t, p = x["ttft_p90_ms"], x["tpot_p90_ms"]
            lines.append(f"  {x['time_s']:>8.0f}{x['rate']:>8.2f}{'-' if t is None else f'{t:.0f}':>10}"
                         f"{'-' if p is None else f'{p:.1f}':>10}  {reps}")
    return "\n".join(lines)
