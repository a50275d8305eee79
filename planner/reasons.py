"""Why the winner won, in plain words, from what the simulations measured: goodput per GPU, the target the
runner-up misses at the winner's load, prefill interference, KV transfer time and queueing."""

from __future__ import annotations

import numpy as np

from planner.evaluate import TIE, misses


def _p(summary: dict, metric: str, slo) -> float | None:
    return (summary.get(metric) or {}).get(f"p{slo.percentile:g}")


def _pct(values: np.ndarray, q: float) -> float:
    v = values[np.isfinite(values)]
    return float(np.percentile(v, q)) if len(v) else float("nan")


def interference(confirmed, slo, search) -> str | None:
    """Agg: TPOT measured against one decode-only step at the pool's mean batch (what prefill chunks add)."""
    dep = confirmed.deployment
    if dep.topology != "agg" or confirmed.result is None:
        return None
    w = confirmed.result.workers
    busy = w[w["batch_size"] > 0] if len(w) else w
    if not len(busy):
        return None
    batch = max(1, int(round(float(busy["batch_size"].mean()))))
    ctx = int(search.screen.isl + search.screen.osl / 2)
    step_ms = float(search.screen.cost_model(dep.workers.tp).decode_steps_s(batch, batch * ctx, 1)[0]) * 1e3
    tpot = _p(confirmed.summary, "tpot_ms", slo)
    if tpot is None or tpot <= step_ms * 1.05:
        return None
    verdict = "above" if tpot > slo.tpot_ms else "within"
    return (f"prefill interference in {dep.describe()}: prompt chunks share iterations with decoding, "
            f"so p{slo.percentile:g} TPOT is {tpot:.1f} ms ({verdict} the {slo.tpot_ms:g} ms target) where "
            f"a decode-only step at its mean batch of {batch} takes {step_ms:.1f} ms")


def kv_transfer(confirmed, slo) -> str | None:
    if confirmed.deployment.topology != "disagg" or confirmed.result is None:
        return None
    r = confirmed.result.requests
    if "transfer_end_s" not in r or "transfer_start_s" not in r:
        return None
    t = (r["transfer_end_s"] - r["transfer_start_s"]).to_numpy(dtype=float) * 1e3
    if not np.isfinite(t).any():
        return None
    ttft = _p(confirmed.summary, "ttft_ms", slo) or float("nan")
    return (f"KV transfer adds {np.nanmean(t):.1f} ms (p{slo.percentile:g} {_pct(t, slo.percentile):.1f} ms) to TTFT "
            f"in {confirmed.deployment.describe()}, of a p{slo.percentile:g} TTFT of {ttft:.0f} ms")


def queueing(confirmed, slo) -> str | None:
    if confirmed.result is None:
        return None
    r = confirmed.result.requests
    if "prefill_start_s" not in r:
        return None
    wait = (r["prefill_start_s"] - r["arrival_s"]).to_numpy(dtype=float) * 1e3
    if not np.isfinite(wait).any():
        return None
    q = _pct(wait, slo.percentile)
    return (f"queueing before prefill in {confirmed.deployment.describe()}: mean {np.nanmean(wait):.1f} ms, "
            f"p{slo.percentile:g} {q:.1f} ms")


def binding(confirmed, slo) -> str:
    """Which target is nearest its limit at the recommended load."""
    s = confirmed.summary
    ttft, tpot = _p(s, "ttft_ms", slo), _p(s, "tpot_ms", slo)
    if ttft is None or tpot is None:
        return ""
    a, b = ttft / slo.ttft_ms, tpot / slo.tpot_ms
    name, got, target = ("TTFT", ttft, slo.ttft_ms) if a >= b else ("TPOT", tpot, slo.tpot_ms)
    return (f"at {confirmed.rate_rps:.3g} req/s the binding target is {name}: p{slo.percentile:g} {got:.1f} ms of "
            f"{target:g} ms")


def reasons(rec, runner, winner_row: dict, other_row: dict | None, other_closest: dict | None, slo,
            search) -> list[str]:
    """Plain reasons, each from a measured quantity."""
    out = []
    d = rec.deployment
    gpus = f"{d.gpus} GPU{'s' if d.gpus > 1 else ''}"
    out.append(f"{d.describe()} ({gpus}) {'meets' if rec.probe.met else 'MISSES'} p{slo.percentile:g} TTFT "
               f"{slo.ttft_ms:g} ms and TPOT {slo.tpot_ms:g} ms at {rec.rate_rps:.3g} req/s"
               + ("" if rec.probe.met else f" ({misses(rec.summary, slo)})"))
    if other_row is not None:
        ratio = winner_row["score"] / other_row["score"] if other_row["score"] > 0 else float("inf")
        out.append(f"its unit scores {winner_row['score']:,.0f} tok/s/GPU against {other_row['score']:,.0f} for the "
                   f"best {other_row['unit']['topology']} ({other_row['key']}): {ratio:.2f}x")
        if ratio < 1 and runner is not None and not search.evaluator.load.fixed:
            out.append(f"that is a tie (within {TIE:.0%}), and "
                       f"{d.describe()} puts {d.gpus} GPUs to work where whole copies of the "
                       f"{other_row['unit']['topology']} unit use {runner.deployment.gpus}, so it serves more in "
                       "total")
    elif other_closest is not None:
        out.append(f"no {other_closest['unit']['topology']} deployment meets the targets at any load tried; "
                   f"the closest ({other_closest['key']}) {other_closest['constraint'] or 'misses'}")
    if runner is not None:
        m = misses(runner.summary, slo)
        verdict = f"misses: {m}" if m else "also meets the targets"
        out.append(f"at the same load ({rec.rate_rps:.3g} req/s) {runner.deployment.describe()} "
                   f"({runner.deployment.gpus} GPUs) {verdict}")
    for conf in (rec, runner):
        if conf is None:
            continue
        for why in (interference(conf, slo, search), kv_transfer(conf, slo)):
            if why:
                out.append(why)
    q = queueing(rec, slo)
    if q:
        out.append(q)
    b = binding(rec, slo)
    if b:
        out.append(b)
    return out
