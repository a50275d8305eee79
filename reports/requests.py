"""A searchable table of the requests furthest from the targets (timestamps, latencies, workers, outcome,
retries, fault), filtered as you type, with every request in a CSV beside the report. Used by the plan report
and `pdsim simulate --report`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from reports.html import esc, figure, page, paragraph, pool_timeseries, section, waterfall

COLUMNS = [("request_id", "id"), ("arrival_s", "arrival s"), ("isl", "ISL"), ("osl", "OSL"),
           ("prefill_worker", "prefill on"), ("decode_worker", "decode on"), ("ttft_s", "TTFT ms"),
           ("tpot_s", "TPOT ms"), ("e2e_s", "E2E ms"), ("preemptions", "preempted"), ("outcome", "outcome"),
           ("retries", "retries"), ("fault", "fault"), ("fail_reason", "fail reason")]
MS = {"ttft_s", "tpot_s", "e2e_s"}
SCRIPT = """<script>
function pdsimFilter(input) {
  const words = input.value.toLowerCase().split(/\\s+/).filter(Boolean);
  let shown = 0;
  for (const row of document.getElementById(input.dataset.table).tBodies[0].rows) {
    const text = row.textContent.toLowerCase();
    const keep = words.every(w => text.includes(w));
    row.style.display = keep ? "" : "none";
    shown += keep;
  }
  document.getElementById(input.dataset.table + "-count").textContent = shown + " shown";
}
</script>"""


def _cell(key: str, v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if key in MS:
        return f"{v * 1e3:.1f}"
    if key == "arrival_s":
        return f"{v:.3f}"
    return esc(v)


SHOWN = 200  # rows a report shows; every request goes to the CSV beside it


def worst_first(requests: pd.DataFrame, slo=None) -> pd.DataFrame:
    """Failed requests first, then by how far each is from the targets (the worse of TTFT and TPOT over its
    target), or by E2E without targets."""
    failed = (requests["outcome"] == "failed").to_numpy() if "outcome" in requests else False
    if slo is not None:
        key = np.fmax(requests["ttft_s"].to_numpy() * 1e3 / slo.ttft_ms,
                      requests["tpot_s"].to_numpy() * 1e3 / slo.tpot_ms)
    else:
        key = requests["e2e_s"].to_numpy()
    order = np.lexsort((-np.nan_to_num(key, nan=-np.inf), ~np.asarray(failed, bool)))
    return requests.iloc[order]


def write_requests_csv(requests: pd.DataFrame, path: str | Path) -> Path:
    """Every request, as the table's columns (latencies in seconds)."""
    cols = [k for k, _ in COLUMNS if k in requests.columns]
    requests[cols].to_csv(path, index=False)
    return Path(path)


def request_table(requests: pd.DataFrame, table_id: str = "requests", slo=None, csv: str | None = None,
                  shown: int = SHOWN) -> str:
    """The ``shown`` requests furthest from the targets (worst_first) with a search box: every word typed must
    appear in a row; ``csv``: the file beside the report that holds every request."""
    df = worst_first(requests, slo).head(shown)
    cols = [(k, h) for k, h in COLUMNS if k in df.columns]
    head = "".join(f"<th>{esc(h)}</th>" for _, h in cols)
    data = [df[k].tolist() for k, _ in cols]
    body = "".join("<tr>" + "".join(f'<td class="{"text" if k in ("outcome", "fault", "fail_reason") else ""}">'
                                    f"{_cell(k, col[i])}</td>" for (k, _), col in zip(cols, data, strict=True))
                   + "</tr>" for i in range(len(df)))
    by = "failed first, then furthest from the targets" if slo is not None else "failed first, then slowest E2E"
    note = f" ({by}, of {len(requests):,}" + (f"; every request in <a href=\"{esc(csv)}\">{esc(csv)}</a>)"
                                             if csv else ")")
    box = (f'<p><input type="search" placeholder="filter: e.g. retried_ok, decode on 3, died" size="50" '
           f'data-table="{table_id}" oninput="pdsimFilter(this)"> <span id="{table_id}-count" class="note">'
           f"{len(df):,} shown</span><span class=\"note\">{note}</span></p>")
    return (SCRIPT + box + f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def scaling_figure(result) -> go.Figure:
    """Replicas of each pool over time (every scaling action), the autoscaler's observed request rate and, with an
    SLO, the share of requests arriving in each interval that met it."""
    from plotly.subplots import make_subplots  # noqa: PLC0415

    ops = result.extra["ops"]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.06,
                        specs=[[{"secondary_y": True}], [{}]])
    for pool, n0 in ops["replicas_at_start"].items():
        acts = [a for a in ops["scaling"] if a["pool"] == pool]
        x = [0.0, *(a["time_s"] for a in acts), result.end_s]
        y = [n0, *(a["replicas"] for a in acts), acts[-1]["replicas"] if acts else n0]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", line_shape="hv", name=f"{pool} replicas",
                                 text=["start", *(a["action"] for a in acts), "end"]), row=1, col=1)
    decisions = (ops.get("autoscale") or {}).get("decisions") or []
    if decisions:
        fig.add_trace(go.Scatter(x=[d["time_s"] for d in decisions], y=[d["rate"] for d in decisions],
                                 name="observed req/s", line={"dash": "dot"}), row=1, col=1, secondary_y=True)
    slo = result.slo
    if slo is not None:
        from simulator.autoscale import attainment_over_time  # noqa: PLC0415

        bucket = decisions[0]["time_s"] if decisions else max(result.end_s / 20, 1.0)
        over = attainment_over_time(result.requests, slo.ttft_ms, slo.tpot_ms, bucket)
        fig.add_trace(go.Bar(x=over["start_s"] + bucket / 2, y=over["attainment"], name="SLO attainment (share)",
                             width=bucket * 0.9), row=2, col=1)
    fig.update_layout(title="Scaling over time", template="plotly_white", margin={"t": 50, "b": 40})
    fig.update_yaxes(title_text="replicas", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="req/s", row=1, col=1, secondary_y=True)
    fig.update_yaxes(title_text="attainment", range=[0, 1.05], row=2, col=1)
    fig.update_xaxes(title_text="time (s)", row=2, col=1)
    return fig


def write_simulation_report(result, summary_lines: str, path: str | Path, title: str = "pdsim simulate") -> Path:
    """report.html of one simulation: the summary, a request waterfall, pools over time, scaling (when it
    scaled), every request."""
    sections = [section("Summary", f"<pre>{esc(summary_lines)}</pre>"),
                section("Request waterfall (a sample)", figure(waterfall(result.requests), "waterfall")),
                section("Pools over time", figure(pool_timeseries(result.workers), "pools"))]
    if (result.extra.get("ops") or {}).get("scaling"):
        sections.append(section("Scaling", figure(scaling_figure(result), "scaling")))
    csv = write_requests_csv(result.requests, Path(path).with_name(Path(path).stem + "-requests.csv"))
    sections.append(section("Requests", request_table(result.requests, slo=result.slo, csv=csv.name),
                            paragraph("Times in seconds from the start; latencies in milliseconds.", "note")))
    return page(title, sections, result.deployment).write(path)
