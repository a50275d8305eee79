"""report.html of a plan: the Pareto front with the SLO region, latency CDFs against the targets, pool
time series, a request waterfall and the candidates, all from the plan's simulations."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go

from reports.html import (
    TOPOLOGY_COLORS,
    bullets,
    cdf,
    figure,
    kv_timeseries,
    page,
    paragraph,
    pool_timeseries,
    section,
    table,
    waterfall,
)
from simulator.metrics import stat_of


def pareto_figure(p) -> go.Figure:
    """tokens/s/GPU against tokens/s/user of every simulated unit at its operating point, by topology."""
    req = p.request
    fig = go.Figure()
    min_user = 1000.0 / req.tpot_ms  # tokens/s/user the TPOT target asks for at least
    xs = [r["summary"].get("tok_s_per_user") or 0.0 for r in p.rows]
    xmax = max([min_user * 1.5, *xs]) * 1.1
    fig.add_vrect(x0=min_user, x1=xmax, fillcolor="#2ca02c", opacity=0.08, line_width=0,
                  annotation_text=f"TPOT <= {req.tpot_ms:g} ms", annotation_position="top left")
    for topo in ("agg", "disagg"):
        for feasible in (True, False):
            rows = [r for r in p.rows if r["unit"]["topology"] == topo and r["feasible"] == feasible]
            if not rows:
                continue
            fig.add_trace(go.Scatter(
                x=[r["summary"].get("tok_s_per_user") or 0.0 for r in rows], y=[r["score"] for r in rows],
                mode="markers", name=f"{topo}{'' if feasible else ' (misses targets)'}",
                marker={"color": TOPOLOGY_COLORS[topo], "size": 9, "symbol": "circle" if feasible else "x",
                        "opacity": 1.0 if feasible else 0.5},
                text=[f"{r['key']}<br>{r['rate_rps']:.3g} req/s per unit" + (f"<br>{r['constraint']}"
                                                                            if r["constraint"] else "")
                      for r in rows], hovertemplate="%{text}<br>%{x:.1f} tok/s/user, %{y:,.0f} tok/s/GPU"))
    if p.pareto:
        fig.add_trace(go.Scatter(x=[f["tok_s_per_user"] for f in p.pareto], y=[f["tok_s_per_gpu"] for f in p.pareto],
                                 mode="lines", name="Pareto front", line={"color": "#444", "dash": "dot"}))
    whole = [c for c in p.confirmed if c.met]
    if whole:  # the deployments simulated whole: the recommendation's star sits on one of these
        fig.add_trace(go.Scatter(
            x=[c.summary.get("tok_s_per_user") or 0.0 for c in whole], y=[c.tok_s_per_gpu for c in whole],
            mode="markers", name="whole deployments at the stated load",
            marker={"color": "#000", "size": 11, "symbol": "diamond-open"},
            text=[f"{c.deployment.describe()} ({c.role})<br>{c.rate_rps:.3g} req/s" for c in whole],
            hovertemplate="%{text}<br>%{x:.1f} tok/s/user, %{y:,.0f} tok/s/GPU"))
    if p.recommendation is not None:
        s = p.recommendation.summary
        fig.add_trace(go.Scatter(x=[s.get("tok_s_per_user") or 0.0], y=[p.recommendation.tok_s_per_gpu],
                                 mode="markers", name=f"recommended: {p.recommendation.deployment.describe()}",
                                 marker={"symbol": "star", "size": 20, "color": "#ffbf00",
                                         "line": {"color": "#000", "width": 1}}))
    fig.update_layout(title="Throughput per GPU against speed per user (each point a simulated unit at its goodput)",
                      xaxis_title="tokens/s/user (1 / mean TPOT)", yaxis_title="tokens/s/GPU",
                      xaxis_range=[0, xmax], template="plotly_white", margin={"t": 60, "b": 40})
    return fig


def _latency_rows(p) -> list[dict]:
    rows = []
    for label, c in (("recommended", p.recommendation), ("best other topology", p.runner_up)):
        if c is None:
            continue
        s = c.summary
        row = {"": label, "deployment": c.deployment.describe(), "GPUs": c.deployment.gpus, "req/s": c.rate_rps}
        for m in ("ttft_ms", "tpot_ms", "e2e_ms"):
            for q in ("p50", "p90", "p99"):
                row[f"{m[:-3].upper()} {q}"] = (s.get(m) or {}).get(q)
        row["attainment %"] = None if s.get("slo_attainment") is None else 100 * s["slo_attainment"]
        row["tok/s/GPU"] = c.tok_s_per_gpu
        row["tok/s/user"] = s.get("tok_s_per_user")
        rows.append(row)
    return rows


def candidates_rows(p, top: int = 15) -> list[dict]:
    q = f"p{p.request.percentile}"
    out = []
    for r in p.rows[:top]:
        s = r["summary"]
        out.append({"unit": r["key"], "GPUs/unit": sum(v["replicas"] * v["tp"] for k, v in r["unit"].items()
                                                        if k in ("workers", "prefill", "decode")),
                    "feasible": "yes" if r["feasible"] else "no", "tok/s/GPU": r["score"],
                    "req/s/unit": r["rate_rps"], f"TTFT {q}": (s.get("ttft_ms") or {}).get(q),
                    f"TPOT {q}": (s.get("tpot_ms") or {}).get(q), "screen tok/s/GPU": (r.get("screen") or {}).get(
                        "tok_s_per_gpu"), "sims": r["sims"], "misses": r["constraint"]})
    return out


def second_opinion_rows(compare: dict) -> list[dict]:
    """`--compare aiconfigurator`: per pick, what AIConfigurator claims and what pdsim simulates at its two loads."""
    rows = []
    for pick in compare["picks"]:
        if "skipped" in pick:
            continue
        name = f"{pick['description']}{' (its choice)' if pick['chosen'] else ''}"
        c = pick["claims"]
        rows.append({"AIConfigurator pick": name, "load": f"{pick['clients']} clients = {pick['rate_rps']:.3g} req/s",
                     "source": "AIConfigurator claims", "TTFT mean": c["ttft_ms"], "TPOT mean": c["tpot_ms"],
                     "tok/s/GPU": c["tok_s_per_gpu"], "targets": "its own verdict"})
        for load, what in (("closed_loop", f"{pick['clients']} clients"), ("poisson", f"{pick['rate_rps']:.3g} req/s "
                                                                                        "Poisson")):
            sim = pick[load]
            rows.append({"AIConfigurator pick": name, "load": what, "source": "pdsim simulates",
                         "TTFT mean": sim["ttft_ms"]["mean"], "TPOT mean": sim["tpot_ms"]["mean"],
                         "TTFT p90": sim["ttft_ms"]["p90"], "TPOT p90": sim["tpot_ms"]["p90"],
                         "tok/s/GPU": sim["tok_s_per_gpu"],
                         "targets": "; ".join(f"{st}: " + (", ".join(m) if m else "hold")
                                              for st, m in sim["misses"].items())})
    return rows


def write_plan_report(p, path: str | Path) -> Path:
    req = p.request
    slo_text = (f"{stat_of(req.percentile)} TTFT <= {req.ttft_ms:g} ms, TPOT <= {req.tpot_ms:g} ms, "
                f"{req.attainment:.0%} attainment")
    shape = f"ISL {req.isl} / OSL {req.osl}" if req.trace is None else f"trace {req.trace}"
    subtitle = f"{req.model} ({req.dtype}) on up to {req.gpus} x {req.gpu}; {shape}; {slo_text}"
    sections = []
    if p.recommendation is not None:
        rec = p.recommendation
        verdict = ('<span class="good">meets the targets</span>' if rec.probe.met
                   else '<span class="bad">misses the targets</span>')
        sections.append(section("Recommendation",
                                f"<p><b>{rec.deployment.describe()}</b>, {rec.deployment.gpus} GPUs, {verdict} at "
                                f"{rec.rate_rps:.3g} req/s (simulated as a whole, {rec.probe.requests} requests).</p>",
                                table(_latency_rows(p), highlight=0), bullets(p.reasons)))
    else:
        sections.append(section("No deployment meets the targets",
                                table([{"deployment": c["description"], "misses": c["misses"]} for c in p.closest]),
                                bullets(p.reasons)))
    if p.compare is not None:
        why = [f"{pick['description']}, {load.replace('_', ' ')}: {w}" for pick in p.compare["picks"]
               if "skipped" not in pick for load in ("closed_loop", "poisson") for w in pick[load]["why"]]
        sections.append(section(f"AIConfigurator's answer, simulated ({p.compare['tool']}, {p.compare['backend']})",
                                paragraph("Its picks at the loads it states for them: its concurrency as closed-loop "
                                          "clients and its request rate as Poisson arrivals. It assumes no queueing "
                                          "and targets means.", "note"),
                                table(second_opinion_rows(p.compare)),
                                bullets(why or [p.compare["none"]])))
    sections.append(section("Pareto front", figure(pareto_figure(p), "pareto")))
    if p.recommendation is not None and p.recommendation.result is not None:
        res = {"recommended": p.recommendation.result}
        if p.runner_up is not None and p.runner_up.result is not None:
            res[p.runner_up.deployment.describe()] = p.runner_up.result
        ok = {k: r.requests[r.requests["measured"] & (r.requests["outcome"] != "failed")] for k, r in res.items()}
        ttft = cdf({k: (d["ttft_s"] * 1e3).tolist() for k, d in ok.items()}, "TTFT (ms)",
                   {f"target {req.ttft_ms:g} ms": req.ttft_ms}, "TTFT")
        tpot = cdf({k: (d["tpot_s"] * 1e3).tolist() for k, d in ok.items()}, "TPOT (ms)",
                   {f"target {req.tpot_ms:g} ms": req.tpot_ms}, "TPOT")
        sections.append(section("Latency distributions", figure(ttft, "ttft-cdf", 380), figure(tpot, "tpot-cdf", 380)))
        r = p.recommendation.result
        sections.append(section("Pools over time (recommended deployment)",
                                figure(pool_timeseries(r.workers), "pools")))
        if r.extra.get("kv") is not None:  # prefix caching acted (the requests carry hash chains)
            sections.append(section("Prefix cache and KV tiers over time (recommended deployment)",
                                    figure(kv_timeseries(r.extra["kv"]), "kv")))
        sections.append(section("Request waterfall (a sample of the recommended deployment's requests)",
                                figure(waterfall(r.requests, seed=req.seed), "waterfall")))
        from reports.requests import request_table, write_requests_csv  # noqa: PLC0415

        csv = write_requests_csv(r.requests, Path(path).with_name("requests.csv"))
        sections.append(section("Requests of the recommended deployment",
                                request_table(r.requests, slo=r.slo, csv=csv.name)))
    sections.append(section("Candidates (best first)", table(candidates_rows(p), formats={"req/s/unit": ".3g"}),
                            paragraph(f"{len(p.rows)} units simulated ({p.sims} simulations); "
                                      f"{len(p.infeasible)} rejected without simulation "
                                      "(memory, GPU budget, or the screen's estimate).", "note")))
    return page("pdsim plan", sections, subtitle).write(path)
