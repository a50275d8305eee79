"""A searchable per-request table: one row per request (timestamps, latencies, workers, outcome, retries,
fault), filtered as you type. Used by the plan report and `pdsim simulate --report`."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

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


def request_table(requests: pd.DataFrame, table_id: str = "requests", limit: int = 5000) -> str:
    """The table (the first ``limit`` requests) with a search box: every word typed must appear in a row."""
    df = requests.head(limit)
    cols = [(k, h) for k, h in COLUMNS if k in df.columns]
    head = "".join(f"<th>{esc(h)}</th>" for _, h in cols)
    data = [df[k].tolist() for k, _ in cols]
    body = "".join("<tr>" + "".join(f'<td class="{"text" if k in ("outcome", "fault", "fail_reason") else ""}">'
                                    f"{_cell(k, col[i])}</td>" for (k, _), col in zip(cols, data, strict=True))
                   + "</tr>" for i in range(len(df)))
    note = "" if len(requests) <= limit else f" (the first {limit:,} of {len(requests):,})"
    box = (f'<p><input type="search" placeholder="filter: e.g. retried_ok, decode on 3, died" size="50" '
           f'data-table="{table_id}" oninput="pdsimFilter(this)"> <span id="{table_id}-count" class="note">'
           f"{len(df):,} shown{note}</span></p>")
    return (SCRIPT + box + f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def write_simulation_report(result, summary_lines: str, path: str | Path, title: str = "pdsim simulate") -> Path:
    """report.html of one simulation: the summary, a request waterfall, pools over time, every request."""
    sections = [section("Summary", f"<pre>{esc(summary_lines)}</pre>"),
                section("Request waterfall (a sample)", figure(waterfall(result.requests), "waterfall")),
                section("Pools over time", figure(pool_timeseries(result.workers), "pools")),
                section("Requests", request_table(result.requests),
                        paragraph("Times in seconds from the start; latencies in milliseconds.", "note"))]
    return page(title, sections, result.deployment).write(path)
