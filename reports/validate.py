"""The validate report: live vs simulated TTFT, TPOT, ITL and E2E (error table, overlaid CDFs) and a
per-request scatter of simulated vs live TTFT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.html import cdf, figure, page, paragraph, section, table

NAMES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "itl_ms": "ITL", "e2e_ms": "E2E"}


def pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def error_rows(doc: dict) -> list[dict]:
    """A row per metric and percentile; raw runs add the error of the simulation on the replays' own costs."""
    rows = []
    check = (doc.get("sim_on_replay_costs") or {}).get("metrics", {})
    for metric, cells in doc["metrics"].items():
        for p, c in cells.items():
            ok = c.get("within_target")
            rows.append({"metric": NAMES[metric], "percentile": p, "live": c["live"], "sim": c["sim"],
                         "error": pct(c["rel_error"]), "spread": pct(c["repeat_spread"]),
                         "target": pct(c.get("target")),
                         "verdict": "" if ok is None else ("within" if ok else "MISSED"),
                         "own_costs_error": pct(check.get(metric, {}).get(p, {}).get("rel_error"))})
    return rows


def co_activity_rows(doc: dict) -> list[dict]:
    """Per replay, worker and kind of step: the live steps' slowdown over their size's mean with the other
    workers idle and busy (raw runs with more than one worker; validate.json's ``co_activity``)."""
    out = []
    for i, rep in enumerate(doc["utilization"]["live"]):
        for worker, stats in rep.items():
            for kind, c in (stats.get("co_activity") or {}).items():
                out.append({"repeat": i + 1, "worker": worker, "steps": kind.split("_")[0],
                            "idle": c["others_idle"], "busy": c["others_busy"], "n_idle": c["steps_idle"],
                            "n_busy": c["steps_busy"]})
    return out


def ttft_scatter(rows: pd.DataFrame) -> go.Figure:
    """Simulated vs live TTFT of every request (one colour per repeat), with y = x."""
    fig = go.Figure()
    ok = rows[rows["outcome"] == "ok"]
    for rep, g in ok.groupby("repeat"):
        hover = [f"#{i} isl {a} osl {b}" for i, a, b in zip(g["request_id"], g["isl"], g["osl"], strict=True)]
        fig.add_trace(go.Scatter(x=g["live_ttft_s"] * 1e3, y=g["sim_ttft_s"] * 1e3, mode="markers", text=hover,
                                 name=f"repeat {rep + 1}", marker={"size": 6, "opacity": 0.7}))
    if len(ok):
        v = ok[["live_ttft_s", "sim_ttft_s"]].to_numpy(dtype=float) * 1e3
        lo, hi = float(np.nanmin(v)) * 0.9, float(np.nanmax(v)) * 1.1
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                                 line={"color": "#888", "width": 1}))
    fig.update_layout(title="TTFT per request: simulated vs live (ms)", xaxis={"type": "log", "title": "live TTFT"},
                      yaxis={"type": "log", "title": "simulated TTFT"}, template="plotly_white", height=520)
    return fig


def write_validate_report(doc: dict, rows: pd.DataFrame, replays: list, sim, path: str | Path) -> Path:
    """``validate.html``: the error table, overlaid live/simulated CDFs per metric, the TTFT scatter."""
    s = sim.requests[sim.requests["outcome"] == "ok"]
    _, sim_gap, sim_w = sim.itl
    # the simulator keeps ITL as weighted gaps; expand by weight (tokens) for a CDF comparable with the live gaps
    sim_itl = np.repeat(sim_gap, np.maximum(np.rint(sim_w), 1).astype(np.int64)) if len(sim_gap) else sim_gap
    live = replays[0].requests[replays[0].requests["outcome"] == "ok"]
    series = {
        "ttft_ms": (live["ttft_s"], s["ttft_s"]), "tpot_ms": (live["tpot_s"], s["tpot_s"]),
        "itl_ms": (replays[0].itl_s, sim_itl), "e2e_ms": (live["e2e_s"], s["e2e_s"]),
    }
    wl = doc["workload"]
    mode = doc["mode"] + (f" (pace x{doc['pace_scale']:g})" if doc["mode"] == "paced" else "")
    sub = (f"{doc['deployment']['model']} {doc['deployment']['topology']}, {mode}, {wl['requests']} requests at "
           f"{wl['rate_rps']:.3g} req/s from {wl['source']}, {doc['repeats']} live repeat(s)")
    cols = [("metric", "metric"), ("percentile", "pct"), ("live", "live ms"), ("sim", "sim ms"),
            ("error", "error %"), ("spread", "repeat spread %"), ("target", "target ±%"), ("verdict", "verdict")]
    note = ""
    if doc.get("sim_on_replay_costs"):
        cols.append(("own_costs_error", "error on the replays' own costs %"))
        note = (" The last column simulates again on the costs measured in the replays themselves, not in the "
                "rehearsals: the error left when the costs are measured exactly (the simulator's), a diagnosis, "
                "not a prediction.")
    sections = [
        section("Error", paragraph("error = (simulated - live) / live; live is the median over repeats, spread "
                                   "is (max - min) / median of the repeats. CDFs show the first repeat." + note),
                table(error_rows(doc), cols, formats={"error": "+.1f", "spread": ".1f", "target": ".0f",
                                                      "own_costs_error": "+.1f"})),
        *[section(NAMES[m], figure(cdf({"live": np.asarray(a, float) * 1e3, "simulated": np.asarray(b, float) * 1e3},
                                       f"{NAMES[m]} (ms)", title=f"{NAMES[m]}: live vs simulated")))
          for m, (a, b) in series.items()],
        section("TTFT per request", figure(ttft_scatter(rows))),
    ]
    if co := co_activity_rows(doc):
        sections.append(section("Workers sharing the machine", paragraph(
            "Each live step's model forward over the mean of its size's steps, the median for the steps during "
            "which the other workers computed less than a quarter of the time (idle) and more than three quarters "
            "(busy). The simulation takes each size's mean over both, so a worker slowed by the others' work "
            "widens the live distributions beyond the simulated ones."),
            table(co, [("repeat", "repeat"), ("worker", "worker"), ("steps", "steps"), ("idle", "others idle"),
                       ("busy", "others busy"), ("n_idle", "steps idle"), ("n_busy", "steps busy")],
                  formats={"idle": ".2f", "busy": ".2f", "n_idle": ",.0f", "n_busy": ",.0f", "repeat": ".0f"})))
    return page("pdsim validate", sections, subtitle=sub).write(path)
