"""report.html of a plan: self-contained, opens offline in a headless browser with no console errors, and
every figure renders."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from needs import require

from planner.plan import PlanRequest, plan, write_outputs
from reports.html import page, section, table

FIGURES = ("pareto", "ttft-cdf", "tpot-cdf", "pools", "waterfall")


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    require(exe is not None, "chromium", "the Debian package `chromium`; .ci/run installs it")
    return exe


def drawn(dom: str, fig: str) -> bool:
    """Plotly has drawn into div ``fig``: the div (up to the script after it) holds its svg."""
    start = dom.find(f'<div id="{fig}"')
    if start < 0:
        return False
    end = dom.find("<script", start)
    return 'class="main-svg"' in dom[start:end if end > 0 else None]


def render(path) -> tuple[str, str]:
    """The DOM after scripts ran, and the browser's log (console messages appear as CONSOLE lines)."""
    r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--v=0", "--virtual-time-budget=20000", "--dump-dom", path.resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    p = plan(PlanRequest(model="llama-3.1-8b", isl=1000, osl=100, ttft_ms=400, tpot_ms=25, gpus=2, trials=4))
    write_outputs(p, out)
    return out / "report.html", p


def test_report_is_self_contained(report):
    path, _ = report
    html = path.read_text()
    assert "<script src=" not in html and "<link " not in html  # nothing fetched: opens offline
    for fig in FIGURES:
        assert f'id="{fig}"' in html


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_console_errors(report):
    path, p = report
    dom, log = render(path)
    console = [ln for ln in log.splitlines() if "CONSOLE" in ln]
    assert not console, console
    for fig in FIGURES:
        assert drawn(dom, fig), f"figure {fig} did not render"
    assert p.recommendation.deployment.describe() in dom
    assert "Candidates" in dom and "<table>" in dom


def test_broken_page_is_caught_by_the_same_check(tmp_path):
    """The check above can fail: a page whose script throws shows a CONSOLE line and no figure."""
    path = page("broken", [section("x", '<div id="pareto"></div><script>Plotly.newPlot("pareto", null.x);</script>',
                                   table([{"a": 1}]))]).write(tmp_path / "broken.html")
    dom, log = render(path)
    assert any("CONSOLE" in ln and "Uncaught" in ln for ln in log.splitlines())
    assert not drawn(dom, "pareto")
