"""What `pdsim check` prints and writes: terminal lines, JUnit XML for CI, a markdown table for a PR comment."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from planner.check import CheckResult, metric_value


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None or v != v else format(v, spec)


def headline(r: CheckResult) -> str:
    """The figures of a run at the check's percentile: latencies, attainment, throughput per GPU."""
    if not r.summary:
        return ""
    p = f"p{r.percentile}"
    s = r.summary
    return (f"{p} TTFT {_fmt(metric_value(s, f'ttft_ms.{p}'))} ms, "
            f"{p} TPOT {_fmt(metric_value(s, f'tpot_ms.{p}'))} ms, "
            f"attainment {_fmt(metric_value(s, 'slo_attainment'), '.1%')}, "
            f"{_fmt(metric_value(s, 'tok_s_per_gpu'), '.0f')} tok/s/GPU")


def format_result(r: CheckResult) -> str:
    """``PASS name (deployment): figures`` then one indented line per reason and note."""
    head = f"{r.status.upper():5} {r.name}"
    if r.deployment:
        head += f" ({r.deployment})"
    if r.summary:
        head += f": {headline(r)}"
    if r.status != "error":
        head += f"  [{r.wall_s:.1f}s]"
    lines = [head] + [f"      {x}" for x in r.reasons] + [f"      note: {x}" for x in r.notes]
    return "\n".join(lines)


def totals(results: list[CheckResult]) -> str:
    n = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "error")}
    return f"{len(results)} checks: {n['pass']} passed, {n['fail']} failed, {n['error']} errors"


def junit_xml(results: list[CheckResult], suite: str = "pdsim check") -> ET.ElementTree:
    """One testsuite, one testcase per check; a failed check has <failure>, a bad check file <error>."""
    root = ET.Element("testsuites")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)),
                       failures=str(sum(r.status == "fail" for r in results)),
                       errors=str(sum(r.status == "error" for r in results)), skipped="0",
                       time=f"{sum(r.wall_s for r in results):.3f}")
    for r in results:
        # no `file` attribute: the xunit2 schema (Jenkins junit-10.xsd) has none; the path leads system-out
        tc = ET.SubElement(ts, "testcase", classname="pdsim.check", name=r.name, time=f"{r.wall_s:.3f}")
        if r.status != "pass":
            tag, kind = ("failure", "CheckFailure") if r.status == "fail" else ("error", "InputError")
            el = ET.SubElement(tc, tag, message="; ".join(r.reasons), type=kind)
            el.text = "\n".join(r.reasons)
        out = [r.path, r.deployment, headline(r), *(f"note: {x}" for x in r.notes)]
        ET.SubElement(tc, "system-out").text = "\n".join(filter(None, out))
    root.set("tests", ts.get("tests"))
    root.set("failures", ts.get("failures"))
    root.set("errors", ts.get("errors"))
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(results: list[CheckResult], path: str | Path) -> None:
    junit_xml(results).write(path, encoding="utf-8", xml_declaration=True)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown(results: list[CheckResult]) -> str:
    """A summary table for a pull-request comment, then the reasons of what failed."""
    icon = {"pass": "✅ PASS", "fail": "❌ FAIL", "error": "⚠️ ERROR"}
    rows = ["| check | result | deployment | TTFT (ms) | TPOT (ms) | attainment | tok/s/GPU | reason |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        p, s = f"p{r.percentile}", r.summary
        rows.append("| " + " | ".join(_cell(x) for x in [
            r.name, icon[r.status], r.deployment or "-",
            f"{p} {_fmt(metric_value(s, f'ttft_ms.{p}'))}" if s else "-",
            f"{p} {_fmt(metric_value(s, f'tpot_ms.{p}'))}" if s else "-",
            _fmt(metric_value(s, "slo_attainment"), ".1%") if s else "-",
            _fmt(metric_value(s, "tok_s_per_gpu"), ".0f") if s else "-",
            "; ".join(r.reasons) or "-"]) + " |")
    return f"### pdsim check: {totals(results)}\n\n" + "\n".join(rows) + "\n"
