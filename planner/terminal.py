"""What `plan` prints: the question, the recommendation with its latencies, the other topology, the reasons."""

from __future__ import annotations

from dataclasses import replace

from planner.plan import Plan, PlanRequest
from planner.recommend import Confirmed
from profiler.gpus import resolve_gpu
from profiler.models import published_dtype
from simulator.metrics import stat_of


def _f(x, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def load_words(req: PlanRequest) -> str:
    return (f"trace {req.trace}" if req.trace else f"{req.rate:g} req/s Poisson" if req.rate
            else f"{req.concurrency} clients" if req.concurrency else "highest rate that meets the targets")


def header(req: PlanRequest) -> str:
    load = load_words(req)
    shape = f"isl {req.isl} / osl {req.osl}, " if req.trace is None else ""
    gpu = resolve_gpu(req.gpu)
    published = published_dtype(req.model)
    dtype = f"{req.dtype}, as published" if req.dtype == published else f"{req.dtype}; published in {published}"
    if gpu.weight_only(req.dtype):
        dtype += f"; weight-only at the bf16 rate: {gpu.name} has no {req.dtype} tensor cores"
    return (f"plan: {req.model} ({dtype}) on up to {req.gpus} x {req.gpu} with {req.engine}; {shape}load: {load}\n"
            f"targets: {stat_of(req.percentile)} TTFT <= {req.ttft_ms:g} ms, {stat_of(req.percentile)} TPOT <= "
            f"{req.tpot_ms:g} ms, " + ("the means, as AIConfigurator's targets" if req.percentile == "mean" else
                                      f"{req.attainment:.0%} of requests") + f"; objective {req.objective}")


def pools(c: Confirmed) -> list[str]:
    out = []
    for name, p in c.deployment.pools.items():
        out.append(f"  {name:<8} {p.replicas} x TP{p.tp}  max_batch_tokens {p.max_batch_tokens}  "
                   f"max_seqs {p.max_seqs}  chunked prefill {'on' if p.chunked_prefill else 'off'} "
                   f"(chunk {p.prefill_chunk_tokens})")
    if c.deployment.topology == "disagg":
        k = c.deployment.kv_link
        out.append(f"  kv link  {k.bandwidth_gb_s:g} GB/s, {k.latency_us:g} us ({k.placement})")
    return out


def latencies(c: Confirmed) -> list[str]:
    s = c.summary
    lines = [f"  {'ms':<6}{'mean':>9}{'p50':>9}{'p90':>9}{'p99':>9}"]
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        m = s.get(key) or {}
        lines.append(f"  {key[:-3].upper():<6}" + "".join(f"{_f(m.get(p)):>9}" for p in ("mean", "p50", "p90", "p99")))
    att = s.get("slo_attainment")
    att = _f(None if att is None else att * 100, '.1f')
    if not c.met:  # it does not serve the load: no throughput or cost as if it did
        lines.append(f"  SLO attainment {att} %   does NOT serve {c.rate_rps:.3g} req/s ({c.probe.requests} simulated "
                     "requests)")
        return lines
    lines.append(f"  SLO attainment {att} %   tokens/s/GPU {_f(c.tok_s_per_gpu, ',.0f')}   tokens/s/user "
                 f"{_f(s.get('tok_s_per_user'), '.1f')}   at {c.rate_rps:.3g} req/s ({c.probe.requests} simulated "
                 "requests, whole deployment)")
    usd = c.usd_per_million_tokens
    if usd is not None:
        lines.append(f"  cost ${usd:.3f} per million output tokens ({c.deployment.gpus} x {c.deployment.gpu})")
    return lines


def render(p: Plan) -> str:
    lines = []
    if p.recommendation is None:
        lines.append("NO DEPLOYMENT MEETS THE TARGETS within the budget. Closest:")
        for c in p.closest:
            lines.append(f"  {c['description']}: {c['misses']}")
    else:
        rec = p.recommendation
        verdict = "" if rec.probe.met else "  (NOT confirmed: the whole deployment misses the targets)"
        lines.append(f"Recommendation: {rec.deployment.describe()}, {rec.deployment.gpus} GPUs{verdict}")
        lines += pools(rec) + latencies(rec)
        if p.runner_up is not None:
            r = p.runner_up
            verdict = "same load" if r.met else "same load, MISSES the targets"
            lines.append(f"Best {r.deployment.topology}: {r.deployment.describe()}, {r.deployment.gpus} GPUs, "
                         f"{verdict}")
            lines += latencies(r)
    lines.append("Why:")
    lines += [f"  - {why}" for why in p.reasons]
    per = ", ".join(f"{t} {n}" for t, n in p.trials.items())
    lines.append(f"searched {len(p.rows)} simulated units ({per}; {p.sims} simulations, {len(p.confirmed)} of them "
                 f"whole deployments), {len(p.infeasible)} rejected without simulating, in {p.wall_s:.1f} s; "
                 f"study {p.study}")
    return "\n".join(lines)


def engines_compared(plans: list[Plan]) -> str:
    """`--engine all`: each engine's recommendation in a line, and which wins by the plan's own order."""
    from planner import decide  # noqa: PLC0415

    req = plans[0].request
    fixed, pct = req.fixed_load, req.percentile
    lines = ["Engines compared (each planned with its own scheduler, memory share and fitted factors):"]
    runs = {}
    for p in plans:
        rec = p.recommendation
        if rec is None or not rec.met:
            lines.append(f"  {p.request.engine:<7} no deployment meets the targets")
            continue
        run = rec.run(pct)
        runs[p.request.engine] = (run, rec)
        lines.append(f"  {p.request.engine:<7} {rec.deployment.describe()}, {rec.deployment.gpus} GPUs: "
                     f"{rec.tok_s_per_gpu:,.0f} tok/s/GPU at {rec.rate_rps:.3g} req/s, {stat_of(pct)} TTFT "
                     f"{run.ttft_ms:.0f} ms, TPOT {run.tpot_ms:.1f} ms")
    if not runs:
        return "\n".join(lines)
    ranked = decide.order([replace(r, name=e) for e, (r, _) in runs.items()], req.ttft_ms, req.tpot_ms, fixed)
    best = ranked[0]
    why = "it alone meets the targets" if len(ranked) == 1 else ""
    if len(ranked) > 1:
        second = ranked[1]
        if decide.tied(best, second, fixed):
            why = (f"a tie with {second.name} within the simulation's noise, broken by "
                   f"{decide.tie_break(fixed)[1]} ({best.load(req.ttft_ms, req.tpot_ms):.0%} of the targets against "
                   f"{second.load(req.ttft_ms, req.tpot_ms):.0%})")
        elif fixed:
            why = f"{best.gpus} GPUs against {second.gpus} for {second.name}"
        else:
            why = f"{best.per_gpu:,.0f} tok/s/GPU against {second.per_gpu:,.0f} for {second.name}"
    lines.append(f"Best engine for this question: {best.name}: {why}")
    return "\n".join(lines)


def second_opinion(p: Plan) -> str:
    """`--compare aiconfigurator`: what AIConfigurator recommends and claims, what pdsim simulates of its picks
    at its concurrency (closed loop) and its rate (Poisson), and pdsim's own answer to set beside it."""
    c, req = p.compare, p.request
    lines = [f"AIConfigurator's answer ({c['tool']}, {c['model_path']} on {req.gpus} x {c['system']}, "
             f"{c['backend']}; it assumes no queueing and targets means), its picks simulated by pdsim:"]
    if not c["picks"]:
        lines.append(f"  it recommends nothing: {c['none']}")
    for pick in c["picks"]:
        claims = pick["claims"]
        head = f"  {pick['topology']}{' (its choice)' if pick['chosen'] else ''}: "
        if "skipped" in pick:
            lines.append(head + f"not simulated: {pick['skipped']}")
            continue
        lines.append(head + f"{pick['description']}, {pick['gpus']} GPUs"
                     + (f" (assumed: {pick['assumed']})" if pick["assumed"] else ""))
        lines.append(f"    {'it claims':<26} mean TTFT {claims['ttft_ms']:7.1f} ms   TPOT "
                     f"{claims['tpot_ms']:6.2f} ms   {claims['tok_s_per_gpu']:7.1f} tok/s/GPU at "
                     f"{pick['clients']} clients = "
                     f"{pick['rate_rps']:.3g} req/s")
        if pick["decode_step_ms"] is not None:
            lines.append(f"    {'':<26} pdsim's cost model: a decode step of {claims['batch']:g} sequences takes "
                         f"{pick['decode_step_ms']:.2f} ms (before any queueing or prompt)")
        for load, what in (("closed_loop", f"{pick['clients']} clients"),
                           ("poisson", f"{pick['rate_rps']:.3g} req/s Poisson")):
            s = pick[load]
            t, o = s["ttft_ms"], s["tpot_ms"]
            verdicts = "; ".join(f"{st} targets " + ("hold" if not s["misses"][st] else
                                                       "MISS (" + ", ".join(s["misses"][st]) + ")")
                                 for st in ("mean", "p90"))
            lines.append(f"    {'pdsim, ' + what:<26} mean TTFT {_f(t['mean']):>7} ms   TPOT "
                         f"{_f(o['mean'], '.2f'):>6} ms   {s['tok_s_per_gpu']:7.1f} tok/s/GPU; "
                         f"p90 TTFT {_f(t['p90'])} ms, TPOT "
                         f"{_f(o['p90'], '.2f')} ms")
            lines.append(f"    {'':<26} {verdicts}")
            lines += [f"    {'':<26} - {why}" for why in s["why"]]
    rec = p.recommendation
    if rec is not None and rec.met:
        lines.append(f"  pdsim's answer: {rec.deployment.describe()}, {rec.deployment.gpus} GPUs, "
                     f"{rec.tok_s_per_gpu:,.1f} tok/s/GPU at {rec.rate_rps:.3g} req/s "
                     f"({stat_of(req.percentile)} targets, load: {load_words(req)})")
    return "\n".join(lines)
