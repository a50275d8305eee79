"""Why the recommendation, in plain words, each from a whole-deployment run: what it serves, how the other
topology fares at the same load within the same budget (a tie when the simulations cannot tell them apart),
idle GPUs, what a step smaller misses, what binds or limits, and the headroom against pdsim's own error."""

from __future__ import annotations

import numpy as np

from planner import decide
from planner.evaluate import misses
from planner.recommend import same_load
from planner.search import unit_gpus
from profiler.calibration import fidelity_error


def _p(summary: dict, metric: str, slo) -> float | None:
    return (summary.get(metric) or {}).get(slo.stat)


def _at(values: np.ndarray, slo) -> float:
    """The statistic the targets bind (a percentile, or the mean) of the finite values."""
    v = values[np.isfinite(values)]
    if not len(v):
        return float("nan")
    return float(v.mean()) if slo.stat == "mean" else float(np.percentile(v, slo.percentile))


def measured_requests(result):
    """The requests a run's metrics count (closed-loop warm-up left out), or None without a run."""
    if result is None:
        return None
    r = result.requests
    return r[r["measured"]] if "measured" in r else r


def _gpus(n: int) -> str:
    return f"{n} GPU{'s' if n != 1 else ''}"


def headline(rec, slo) -> str:
    d = rec.deployment
    verdict = "meets" if rec.met else f"MISSES ({misses(rec.summary, slo)})"
    served = f": {rec.tok_s_per_gpu:,.0f} tok/s/GPU, the whole deployment at that load" if rec.met else ""
    return (f"{d.describe()} ({_gpus(d.gpus)}) {verdict} {slo.stat} TTFT {slo.ttft_ms:g} ms and TPOT "
            f"{slo.tpot_ms:g} ms at {rec.rate_rps:.3g} req/s{served}")


def headroom_words(run: decide.Run, slo) -> str:
    t, p = run.ratios(slo.ttft_ms, slo.tpot_ms)
    return f"TTFT {1 - t:.0%} and TPOT {1 - p:.0%} below the targets"


def versus_other(rec, other, slo, fixed: bool) -> list[str]:
    """The other topology at the same load, within the same budget."""
    if other is None:
        return []
    pct = slo.percentile
    a, b = rec.run(pct), other.run(pct)
    od = other.deployment
    if not other.met:
        return [f"the best {od.topology} tried within the budget, {od.describe()} ({_gpus(od.gpus)}), misses at the "
                f"same load ({rec.rate_rps:.3g} req/s): {misses(other.summary, slo)}; it does not serve this load"]
    if decide.tied(a, b, fixed):
        why = "it is simpler" if a.complexity < b.complexity and a.load(slo.ttft_ms, slo.tpot_ms) >= b.load(
            slo.ttft_ms, slo.tpot_ms) else "it runs further from the targets"
        return [f"{a.topology} and {b.topology} are a tie: at {rec.rate_rps:.3g} req/s on {_gpus(od.gpus)} both meet "
                f"the targets (within the simulation's {decide.NOISE:.0%} noise); {rec.deployment.describe()} is "
                f"chosen because {why}: {headroom_words(a, slo)}, against {headroom_words(b, slo)} for "
                f"{od.describe()}"]
    if fixed:
        return [f"{od.describe()} also meets the targets at the same load but needs {_gpus(od.gpus)} against "
                f"{rec.deployment.gpus}"]
    return [f"{od.describe()} ({_gpus(od.gpus)}) also meets the targets at the same load, at "
            f"{b.per_gpu:,.0f} tok/s/GPU against {a.per_gpu:,.0f}"]


def ties_within(plan, slo, fixed: bool) -> list[str]:
    """Other deployments of the recommendation's topology that serve as much: why this one."""
    rec = plan.recommendation
    pct = slo.percentile
    a = rec.run(pct)
    same = [c for c in same_load(plan.confirmed, rec, fixed) if c is not rec and c.role == "finalist" and c.met
            and c.deployment.topology == rec.deployment.topology and decide.tied(a, c.run(pct), fixed)]
    if not same:
        return []
    alt = ", ".join(f"{c.key or c.deployment.describe()} ({headroom_words(c.run(pct), slo)})" for c in same)
    return [f"{len(same) + 1} deployments serve this load equally ({alt}); the tie-break ("
            f"{', then '.join(decide.tie_break(fixed)[1:])}) picks {rec.key or rec.deployment.describe()}: "
            f"{headroom_words(a, slo)}"]


def budget(plan, fixed: bool) -> list[str]:
    """Idle GPUs, and why."""
    rec, req = plan.recommendation, plan.request
    idle = req.gpus - rec.deployment.gpus
    if idle <= 0:
        return []
    if fixed:
        return [f"{rec.deployment.gpus} of the {req.gpus} GPUs carry the load; the other {idle} are not needed"]
    per_unit = next((unit_gpus(r["unit"]) for r in plan.rows if r["key"] == rec.key), rec.deployment.gpus)
    words = [f"{idle} of the {req.gpus} GPUs stay idle: the unit uses {_gpus(per_unit)}, so whole copies fill "
             f"{rec.deployment.gpus}"]
    fits = [r for r in plan.rows if r["feasible"] and r["score"] > 0 and unit_gpus(r["unit"]) <= idle]
    if fits:
        r = max(fits, key=lambda r: r["score"])
        g = unit_gpus(r["unit"])
        copies = idle // g
        words.append(f"the {idle} idle GPUs could run {copies} x {r['key']} beside it, adding about "
                     f"{r['score'] * g * copies:,.0f} tok/s (its unit's simulated goodput)")
    else:
        words.append(f"no unit the search simulated fits in the {idle} left")
    return ["; ".join(words)]


def smaller_steps(plan, slo) -> list[str]:
    """A fixed load: each deployment one step smaller, and what it misses."""
    if not plan.smaller:
        return []
    parts = [f"{what} ({c.deployment.describe()}, {_gpus(c.deployment.gpus)}) misses: {misses(c.summary, slo)}"
             for what, c in plan.smaller if not c.met]
    return [f"it is the smallest that carries the load: {'; '.join(parts)}"] if parts else []


def limit(rec, slo, fixed: bool) -> str:
    """The binding target (within decide.NEAR of its limit), else what the simulation shows limiting."""
    run = rec.run(slo.percentile)
    near = decide.binding(run, slo.ttft_ms, slo.tpot_ms)
    if near:
        name = near[0] if len(near) == 1 or run.ratios(slo.ttft_ms, slo.tpot_ms)[0] >= run.ratios(
            slo.ttft_ms, slo.tpot_ms)[1] else near[1]
        got, target = (_p(rec.summary, "ttft_ms", slo), slo.ttft_ms) if name == "TTFT" else (
            _p(rec.summary, "tpot_ms", slo), slo.tpot_ms)
        return (f"at {rec.rate_rps:.3g} req/s the binding target is {name}: {slo.stat} {got:.1f} ms of "
                f"{target:g} ms")
    seen = []
    s = rec.summary
    if s.get("preemptions"):
        seen.append(f"KV capacity ({s['preemptions']} preemptions)")
    w = rec.result.workers if rec.result is not None else None
    if w is not None and len(w):
        for name, pool in rec.deployment.pools.items():
            rows = w[w["pool"] == name] if "pool" in w else w
            if len(rows) and int(rows["batch_size"].max()) >= pool.max_seqs:
                seen.append(f"max_seqs ({pool.max_seqs}) of the {name} pool")
    r = measured_requests(rec.result)
    if r is not None and "prefill_start_s" in r:
        wait = float(np.nanmean((r["prefill_start_s"] - r["arrival_s"]).to_numpy(dtype=float)))
        ttft = float(np.nanmean(r["ttft_s"].to_numpy(dtype=float)))
        if ttft > 0 and wait > 0.5 * ttft:
            seen.append(f"queueing before prefill ({wait * 1e3:.0f} of a mean {ttft * 1e3:.0f} ms TTFT)")
    if seen:
        what = "what limits it: " + ", ".join(seen)
    elif fixed:
        what = "the GPU count sizes it: the load needs no more, and a step smaller misses"
    elif rec.above is not None:
        what = f"at {rec.above[0]:.3g} req/s it misses ({rec.above[1]})"
    else:
        what = "no higher rate was simulated"
    return f"neither target binds at {rec.rate_rps:.3g} req/s ({headroom_words(run, slo)}); {what}"


def margin(plan, slo) -> str | None:
    """Headroom smaller than pdsim's own median error for the engine: say so, and name a safer deployment."""
    rec = plan.recommendation
    err = fidelity_error(rec.deployment.engine)
    if not err or not rec.met:
        return None
    t, p = rec.run(slo.percentile).ratios(slo.ttft_ms, slo.tpot_ms)
    thin = [(name, 1 - x, err[key]) for name, x, key in (("TTFT", t, "ttft_median_ape"), ("TPOT", p, "tpot_median_ape"))
            if key in err and (1 - x) * 100 < err[key]]
    if not thin:
        return None
    name, room, e = thin[0]
    safer = [c for c in plan.confirmed if c is not rec and c.met and c.deployment.gpus <= rec.deployment.gpus and all(
        (1 - x) * 100 >= err.get(k, 0) for x, k in zip(c.run(slo.percentile).ratios(slo.ttft_ms, slo.tpot_ms),
                                                      ("ttft_median_ape", "tpot_median_ape"), strict=True))]
    alt = max(safer, key=lambda c: (c.rate_rps, -c.deployment.gpus), default=None)
    instead = (f", or take {alt.key or alt.deployment.describe()} at {alt.rate_rps:.3g} req/s "
               f"({_gpus(alt.deployment.gpus)}): {headroom_words(alt.run(slo.percentile), slo)}"
               if alt is not None else "")
    return (f"{name} headroom {room:.0%} is smaller than pdsim's {e:.0f}% median {name} error on measured "
            f"{rec.deployment.engine} rows (bench/fidelity.py): validate on hardware before relying on it{instead}")


def interference(confirmed, slo, screen) -> str | None:
    """Agg: TPOT measured against one decode-only step at the pool's mean batch (what prefill chunks add)."""
    dep = confirmed.deployment
    if dep.topology != "agg" or confirmed.result is None:
        return None
    w = confirmed.result.workers
    busy = w[w["batch_size"] > 0] if len(w) else w
    if not len(busy):
        return None
    batch = max(1, int(round(float(busy["batch_size"].mean()))))
    ctx = int(screen.isl + screen.osl / 2)
    step_ms = float(screen.cost_model(dep.workers.tp).decode_steps_s(batch, batch * ctx, 1)[0]) * 1e3
    tpot = _p(confirmed.summary, "tpot_ms", slo)
    if tpot is None or tpot <= step_ms * 1.05:
        return None
    verdict = "above" if tpot > slo.tpot_ms else "within"
    return (f"prefill interference in {dep.describe()}: prompt chunks share iterations with decoding, "
            f"so {slo.stat} TPOT is {tpot:.1f} ms ({verdict} the {slo.tpot_ms:g} ms target) where "
            f"a decode-only step at its mean batch of {batch} takes {step_ms:.1f} ms")


def kv_transfer(confirmed, slo) -> str | None:
    if confirmed.deployment.topology != "disagg" or confirmed.result is None:
        return None
    r = measured_requests(confirmed.result)
    if "transfer_end_s" not in r or "transfer_start_s" not in r:
        return None
    t = (r["transfer_end_s"] - r["transfer_start_s"]).to_numpy(dtype=float) * 1e3
    if not np.isfinite(t).any():
        return None
    ttft = _p(confirmed.summary, "ttft_ms", slo) or float("nan")
    return (f"KV transfer adds {np.nanmean(t):.1f} ms ({slo.stat} {_at(t, slo):.1f} ms) to TTFT "
            f"in {confirmed.deployment.describe()}, of a {slo.stat} TTFT of {ttft:.0f} ms")


def queueing(confirmed, slo) -> str | None:
    if confirmed.result is None:
        return None
    r = measured_requests(confirmed.result)
    if "prefill_start_s" not in r:
        return None
    wait = (r["prefill_start_s"] - r["arrival_s"]).to_numpy(dtype=float) * 1e3
    if not np.isfinite(wait).any():
        return None
    q = _at(wait, slo)
    return (f"queueing before prefill in {confirmed.deployment.describe()}: mean {np.nanmean(wait):.1f} ms, "
            f"{slo.stat} {q:.1f} ms")


def reasons(plan, search, other_closest: dict | None) -> list[str]:
    """Plain reasons, each from a measured quantity."""
    rec, other, slo = plan.recommendation, plan.runner_up, search.evaluator.slo
    fixed = search.evaluator.load.fixed
    out = [headline(rec, slo)]
    out += ties_within(plan, slo, fixed)
    out += versus_other(rec, other, slo, fixed)
    if other is None and other_closest is not None:
        out.append(f"no {other_closest['unit']['topology']} deployment meets the targets at any load tried; "
                   f"the closest ({other_closest['key']}) {other_closest['constraint'] or 'misses'}")
    out += smaller_steps(plan, slo)
    out += budget(plan, fixed)
    for conf in (rec, other if other is not None and other.met else None):
        if conf is None:
            continue
        for why in (interference(conf, slo, search.screen), kv_transfer(conf, slo)):
            if why:
                out.append(why)
    q = queueing(rec, slo)
    if q:
        out.append(q)
    out.append(limit(rec, slo, fixed))
    m = margin(plan, slo)
    if m:
        out.append(m)
    return out
