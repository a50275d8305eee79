"""A report's request table shows the requests furthest from the targets, not all of them: a long run stays a
page one can open, and every request goes to the CSV beside the report."""

from __future__ import annotations

import pandas as pd

from planner.cli import app, run_app
from reports.requests import SHOWN, request_table, worst_first
from simulator import SLO


def test_the_table_shows_the_worst_requests_first_and_links_every_request(tmp_path):
    d = tmp_path / "d.yaml"
    d.write_text("model: llama-3.1-8b\ngpu: h100-sxm\nworkers: {tp: 1, max_seqs: 16}\n")
    out = tmp_path / "r.html"
    assert run_app(app, ["simulate", "--deployment", str(d), "--rate", "30", "--isl", "500", "--osl", "100",
                         "--requests", "600", "--report", str(out)]) == 0
    html = out.read_text()
    csv = pd.read_csv(tmp_path / "r-requests.csv")
    assert len(csv) == 600 and "ttft_s" in csv.columns
    assert html.count("<tr>") == 1 + SHOWN and 'href="r-requests.csv"' in html and f"{SHOWN} shown" in html
    slowest = csv.sort_values("e2e_s", ascending=False).head(3)["e2e_s"]
    for e2e in slowest:
        assert f"<td class=\"\">{e2e * 1e3:.1f}</td>" in html  # the slowest are in the table


def test_failed_requests_come_first_then_the_furthest_from_the_targets():
    df = pd.DataFrame({"request_id": [0, 1, 2, 3], "ttft_s": [0.1, 0.9, 0.2, float("nan")],
                       "tpot_s": [0.05, 0.01, 0.02, float("nan")], "e2e_s": [1.0, 2.0, 3.0, float("nan")],
                       "outcome": ["ok", "ok", "ok", "failed"]})
    order = worst_first(df, SLO(ttft_ms=300, tpot_ms=20))["request_id"].tolist()
    assert order == [3, 1, 0, 2]  # failed; TTFT 3x its target; TPOT 2.5x; TPOT 1x
    assert worst_first(df)["request_id"].tolist() == [3, 2, 1, 0]  # without targets: by E2E
    assert request_table(df, shown=2).count("<tr>") == 3
