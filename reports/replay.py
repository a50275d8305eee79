"""The replay report: predicted vs measured TTFT and TPOT of every benchmark row, and the error tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.html import bullets, figure, page, paragraph, section, table

ENGINE_COLORS = {"trtllm": "#76b900", "vllm": "#1f77b4", "sglang": "#d62728"}


def scatter(rows: pd.DataFrame, metric: str) -> go.Figure:
    """Predicted vs measured (log-log), one colour per engine, with y = x and ±25 % lines."""
    done = rows[rows["skip_reason"] == ""]
    meas, pred = f"silicon_{metric}_ms", f"pred_{metric}_ms"
    fig = go.Figure()
    for engine, g in done.groupby("backend"):
        hover = [f"{m} {mo} isl {i} osl {o} | meas {a:,.1f} pred {b:,.1f}"
                 for m, mo, i, o, a, b in zip(g["pdsim_model"], g["mode"], g["isl"], g["osl"], g[meas], g[pred],
                                               strict=True)]
        fig.add_trace(go.Scatter(x=g[meas], y=g[pred], mode="markers", name=str(engine), text=hover,
                                 hoverinfo="text", marker={"size": 6, "opacity": 0.7,
                                                           "color": ENGINE_COLORS.get(str(engine))}))
    if len(done):
        lo = float(np.nanmin(done[[meas, pred]].to_numpy())) * 0.8
        hi = float(np.nanmax(done[[meas, pred]].to_numpy())) * 1.25
        for k, dash in ((1.0, "solid"), (1.25, "dot"), (0.75, "dot")):
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo * k, hi * k], mode="lines", showlegend=k == 1.0,
                                     name="y = x (dotted: ±25 %)", line={"color": "#888", "dash": dash, "width": 1}))
    name = metric.upper()
    fig.update_layout(title=f"{name}: predicted vs measured (ms)", xaxis={"type": "log", "title": f"measured {name}"},
                      yaxis={"type": "log", "title": f"predicted {name}"}, height=520)
    return fig


def _error_rows(summary: dict) -> list[dict]:
    rows = [{"group": "overall", **summary["overall"]}]
    for key in ("per_model", "per_engine", "per_mode", "per_gpu", "per_client"):
        rows += [{"group": f"{key[4:]}: {k}", **v} for k, v in summary.get(key, {}).items()]
    return rows


def write_replay_report(rows: pd.DataFrame, summary: dict, path: str | Path, source: str = "") -> Path:
    cols = [("group", "group"), ("rows", "rows"), ("ttft_median_ape", "TTFT median APE %"),
            ("ttft_p90_ape", "TTFT p90 APE %"), ("tpot_median_ape", "TPOT median APE %"),
            ("tpot_p90_ape", "TPOT p90 APE %")]
    skipped = [f"{n} rows: {why}" for why, n in summary["skip_reasons"].items()] or ["none"]
    sections = [
        section("Error", paragraph(f"{summary['predicted']} of {summary['rows']} rows predicted; APE = |predicted "
                                   "- measured| / measured of the mean over the measured window."),
                table(_error_rows(summary), cols, formats={"rows": ",d"})),
        section("TTFT", figure(scatter(rows, "ttft"))),
        section("TPOT", figure(scatter(rows, "tpot"))),
        section("Skipped rows", bullets(skipped)),
    ]
    if assumed := summary.get("assumptions"):
        sections.append(section("Predicted on assumptions", bullets([f"{n} rows: {what}" for what, n in
                                                                     assumed.items()])))
    return page("pdsim replay-benchmark", sections, subtitle=source).write(path)
