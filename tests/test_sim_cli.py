"""`pdsim simulate`: the summary on the terminal, the JSON on disk, one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli import app, run_app

DISAGG = """model: llama-3.1-8b
gpu: h200-sxm
dtype: fp8
topology: disagg
prefill: {replicas: 2, tp: 1, max_batch_tokens: 8192}
decode:  {replicas: 1, tp: 2, max_seqs: 256}
kv_link: {bandwidth_gb_s: 50, latency_us: 10}
router: least_loaded
"""


@pytest.fixture
def dep_file(tmp_path: Path) -> Path:
    p = tmp_path / "dep.yaml"
    p.write_text(DISAGG)
    return p


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    code = run_app(app, ["simulate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_rate_run_prints_the_table_and_writes_the_json(capsys, dep_file, tmp_path):
    js = tmp_path / "s.json"
    code, out, err = simulate(capsys, "--deployment", str(dep_file), "--rate", "5", "--isl", "1000", "--osl", "100",
                              "--requests", "60", "--ttft", "500", "--tpot", "50", "--json", str(js))
    assert code == 0, err
    assert "disagg prefill 2x TP1 + decode 1x TP2" in out and "TTFT" in out and "SLO p90" in out
    s = json.loads(js.read_text())
    assert s["requests"] == s["completed"] == 60 and s["gpus"] == 4
    assert s["slo_met"] is True and 0 < s["ttft_ms"]["p50"] < 500
    # same flags, same bytes
    js2 = tmp_path / "s2.json"
    simulate(capsys, "--deployment", str(dep_file), "--rate", "5", "--isl", "1000", "--osl", "100",
             "--requests", "60", "--ttft", "500", "--tpot", "50", "--json", str(js2))
    assert js.read_bytes() == js2.read_bytes()


def test_concurrency_run_with_warmup(capsys, dep_file, tmp_path):
    js = tmp_path / "c.json"
    code, out, err = simulate(capsys, "--deployment", str(dep_file), "--concurrency", "4", "--isl", "500",
                              "--osl", "50", "--requests", "20", "--warmup", "4", "--json", str(js))
    assert code == 0, err
    s = json.loads(js.read_text())
    assert s["requests"] == 20 and s["measured"] == 16 and s["slo_attainment"] is None


def test_trace_run(capsys, dep_file, tmp_path):
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     + "".join(f"2023-11-16 18:15:{10 + i:02d}.000,{300 + 10 * i},{20 + i}\n" for i in range(12)))
    js = tmp_path / "t.json"
    code, out, err = simulate(capsys, "--deployment", str(dep_file), "--trace", str(trace), "--requests", "10",
                              "--json", str(js))
    assert code == 0, err
    assert json.loads(js.read_text())["requests"] == 10


@pytest.mark.parametrize("args, message", [
    (["--rate", "-2", "--isl", "100", "--osl", "10"], "--rate must be > 0"),
    (["--isl", "100", "--osl", "10"], "exactly one of --trace"),
    (["--rate", "2"], "need --isl and --osl"),
    (["--rate", "2", "--isl", "100", "--osl", "10", "--ttft", "100"], "both --ttft and --tpot"),
])
def test_bad_flags_exit_2_with_one_line(capsys, dep_file, args, message):
    code, out, err = simulate(capsys, "--deployment", str(dep_file), *args)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("yaml_text, message", [
    (DISAGG.replace("llama-3.1-8b", "llama-9000"), "unknown model 'llama-9000'"),
    (DISAGG.replace("model: llama-3.1-8b\n", ""), "missing field 'model'"),
    ("model: llama-3.1-70b\ngpu: l40s\ndtype: bf16\nworkers: {tp: 1}\n", "does not fit on l40s at TP=1"),
])
def test_bad_deployment_exits_2_with_one_line(capsys, tmp_path, yaml_text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    code, out, err = simulate(capsys, "--deployment", str(p), "--rate", "1", "--isl", "100", "--osl", "10",
                              "--requests", "5")
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_trace_that_does_not_parse_exits_2(capsys, dep_file, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:10.000,abc,5\n")
    code, out, err = simulate(capsys, "--deployment", str(dep_file), "--trace", str(bad))
    assert code == 2
    assert "bad.csv" in err and err.count("\n") == 1 and "Traceback" not in err
