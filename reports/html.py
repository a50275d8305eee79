"""Self-contained HTML pages of plotly figures and tables: plotly.js is embedded once, so a page opens
offline. Every pdsim report (plan, validate, replay, check) is built from these pieces:

    page("Title", [section("Heading", figure(fig), table(rows, columns)), ...]).write("report.html")
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

TOPOLOGY_COLORS = {"agg": "#1f77b4", "disagg": "#d62728"}
POOL_COLORS = {"workers": "#1f77b4", "prefill": "#ff7f0e", "decode": "#2ca02c"}
PHASE_COLORS = {"queue": "#c7c7c7", "prefill": "#ff7f0e", "transfer": "#9467bd", "decode": "#2ca02c"}

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #222; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.subtitle { color: #555; margin-top: 0; } .note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; } th { background: #f4f4f4; }
td.text, th.text { text-align: left; } tr.highlight td { background: #fff6d5; font-weight: 600; }
ul.reasons li { margin: 4px 0; } .bad { color: #b00020; font-weight: 600; } .good { color: #1b7f3b; font-weight: 600; }
"""


def esc(x) -> str:
    return html.escape(str(x))


def figure(fig: go.Figure, div_id: str | None = None, height: int | None = None) -> str:
    """A figure as a div that draws itself with the page's embedded plotly.js."""
    if height:
        fig.update_layout(height=height)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def fmt(v, spec: str = ",.1f") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, int) and not isinstance(v, bool):
        return format(v, ",d")
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] | None = None, highlight: int | None = None,
          formats: dict[str, str] | None = None) -> str:
    """An HTML table of ``rows`` (dicts); ``columns`` are (key, heading) pairs; row ``highlight`` is marked."""
    if not rows:
        return '<p class="note">(none)</p>'
    columns = columns or [(k, k) for k in rows[0]]
    formats = formats or {}
    head = "".join(f'<th class="{"text" if isinstance(rows[0].get(k), str) else ""}">{esc(h)}</th>'
                   for k, h in columns)
    body = []
    for i, r in enumerate(rows):
        cells = "".join(f'<td class="{"text" if isinstance(r.get(k), str) else ""}">'
                        f"{esc(fmt(r.get(k), formats.get(k, ',.1f')))}</td>" for k, _ in columns)
        body.append(f'<tr class="{"highlight" if i == highlight else ""}">{cells}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def bullets(items: Sequence[str], cls: str = "reasons") -> str:
    return f'<ul class="{cls}">' + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def paragraph(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{''.join(parts)}</section>"


@dataclass
class Page:
    title: str
    sections: list[str] = field(default_factory=list)
    subtitle: str = ""

    def render(self) -> str:
        from plotly.offline import get_plotlyjs  # noqa: PLC0415 (4 MB of javascript, only when writing)

        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{esc(self.title)}</title><style>{CSS}</style>"
                f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
                f"<h1>{esc(self.title)}</h1><p class=\"subtitle\">{esc(self.subtitle)}</p>"
                + "".join(self.sections) + "</body></html>\n")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


def page(title: str, sections: Sequence[str], subtitle: str = "") -> Page:
    return Page(title, list(sections), subtitle)


# ---- figures several reports draw -----------------------------------------------------------------
def cdf(series: dict[str, Sequence[float]], x_title: str, targets: dict[str, float] | None = None,
        title: str = "") -> go.Figure:
    """Empirical CDFs, one line per named series, with vertical target lines."""
    import numpy as np  # noqa: PLC0415

    fig = go.Figure()
    for name, values in series.items():
        v = np.sort(np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float))
        if not len(v):
            continue
        fig.add_trace(go.Scatter(x=v, y=np.arange(1, len(v) + 1) / len(v), mode="lines", name=name))
    for name, x in (targets or {}).items():
        fig.add_vline(x=x, line_dash="dash", line_color="#b00020", annotation_text=name,
                      annotation_position="top left")
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title="share of requests", yaxis_range=[0, 1.02],
                      margin={"t": 50, "b": 40}, template="plotly_white")
    return fig


def waterfall(requests, n: int = 40, seed: int = 0, title: str = "") -> go.Figure:
    """Horizontal bars per request: queue, prefill, KV transfer, decode (a sample of ``n`` requests)."""
    import numpy as np  # noqa: PLC0415

    df = requests
    if len(df) > n:
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), n, replace=False))]
    phases = [("queue", "arrival_s", "prefill_start_s"), ("prefill", "prefill_start_s", "prefill_end_s"),
              ("transfer", "transfer_start_s", "transfer_end_s"), ("decode", "first_token_s", "last_token_s")]
    fig = go.Figure()
    labels = [f"#{int(i)}" for i in df["request_id"]]
    for name, a, b in phases:
        if a not in df or b not in df:
            continue
        start = df[a].to_numpy(dtype=float)
        dur = (df[b] - df[a]).to_numpy(dtype=float)
        ok = np.isfinite(dur) & (dur > 0)
        if not ok.any():
            continue
        fig.add_trace(go.Bar(y=np.array(labels)[ok], x=dur[ok], base=start[ok], orientation="h", name=name,
                             marker_color=PHASE_COLORS[name]))
    fig.update_layout(barmode="overlay", title=title, xaxis_title="time (s)", yaxis_title="request",
                      yaxis={"autorange": "reversed", "type": "category", "categoryorder": "array",
                             "categoryarray": labels}, template="plotly_white",
                      height=max(300, 14 * len(df) + 120), margin={"t": 50, "b": 40})
    return fig


def pool_timeseries(workers, title: str = "", bins: int = 200) -> go.Figure:
    """Queue length, batch size and KV blocks used per pool over time (summed over a pool's replicas)."""
    import numpy as np  # noqa: PLC0415
    import pandas as pd  # noqa: PLC0415
    from plotly.subplots import make_subplots  # noqa: PLC0415

    rows = [("queue_len", "queued"), ("batch_size", "batch size"), ("kv_blocks_used", "KV blocks used")]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, subplot_titles=[r[1] for r in rows], vertical_spacing=0.07)
    if len(workers):
        end = float(workers["time_s"].max()) or 1.0
        grid = np.linspace(0.0, end, bins)
        for pool, w in workers.groupby("pool"):
            total = {}
            for _, one in w.groupby("worker"):
                one = one.sort_values("time_s")
                # each series is piecewise constant from each sample to the next
                idx = np.searchsorted(one["time_s"].to_numpy(), grid, side="right") - 1
                for key, _ in rows:
                    vals = one[key].to_numpy(dtype=float)
                    v = np.where(idx >= 0, vals[np.clip(idx, 0, len(vals) - 1)], 0.0)
                    total[key] = total.get(key, 0.0) + v
            frame = pd.DataFrame({"time_s": grid, **total})
            for r, (key, _) in enumerate(rows, start=1):
                fig.add_trace(go.Scatter(x=frame["time_s"], y=frame[key], mode="lines", name=str(pool),
                                         legendgroup=str(pool), showlegend=r == 1, line_shape="hv",
                                         line_color=POOL_COLORS.get(str(pool))), row=r, col=1)
    fig.update_layout(title=title, height=620, template="plotly_white", margin={"t": 60, "b": 40})
    fig.update_xaxes(title_text="time (s)", row=3, col=1)
    return fig


def kv_timeseries(kv: dict, title: str = "", bins: int = 60) -> go.Figure:
    """Prefix cache over time (``SimResult.extra['kv']``): the share of prompt tokens served from cache, overall
    and per prefill worker, and each KV tier's offload and recall traffic (GB per bin)."""
    import numpy as np  # noqa: PLC0415
    from plotly.subplots import make_subplots  # noqa: PLC0415

    req = kv["requests"].dropna(subset=["prefill_start_s"])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=["prefix hit rate (share of prompt tokens from cache)", "KV tier traffic (GB)"])
    traffic = kv["tier_traffic"]
    end = max(float(req["prefill_start_s"].max()) if len(req) else 0.0,
              float(traffic["time_s"].max()) if len(traffic) else 0.0) or 1.0
    edges = np.linspace(0.0, end * (1 + 1e-9), bins + 1)
    mid = (edges[:-1] + edges[1:]) / 2

    def rate(d):
        i = np.digitize(d["prefill_start_s"].to_numpy(), edges) - 1
        hit = np.bincount(i, d["cached_tokens"].to_numpy(float), bins)
        isl = np.bincount(i, d["isl"].to_numpy(float), bins)
        return np.where(isl > 0, hit / np.maximum(isl, 1), np.nan)

    fig.add_trace(go.Scatter(x=mid, y=rate(req), mode="lines+markers", name="all workers", line_color="#222"),
                  row=1, col=1)
    for w, d in req.groupby("prefill_worker"):
        fig.add_trace(go.Scatter(x=mid, y=rate(d), mode="lines", name=f"worker {w}", opacity=0.5), row=1, col=1)
    for (name, what), f in traffic.groupby(["tier", "what"], sort=False):
        gb = np.bincount(np.digitize(f["time_s"].to_numpy(), edges) - 1, f["bytes"].to_numpy(float) / 1e9, bins)
        fig.add_trace(go.Bar(x=mid, y=gb, name=f"{name} {what}"), row=2, col=1)
    fig.update_layout(title=title, height=560, template="plotly_white", margin={"t": 60, "b": 40}, barmode="group")
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    return fig
