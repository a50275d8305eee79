"""`pdsim trace info`: a table or JSON for a good file, one line and exit code 2 for a bad one."""

import json

from planner.cli import app, run_app
from traces.samples import sample_path


def test_trace_info_prints_a_table(capsys):
    assert run_app(app, ["trace", "info", str(sample_path("burstgpt.csv"))]) == 0
    out = capsys.readouterr().out
    assert "format      burstgpt" in out and "requests    188" in out
    assert "dropped     12 (12 failed requests with 0 output tokens)" in out
    assert "burstiness" in out and "p99" in out and out.count("\n") > 8


def test_trace_info_json_matches_trace_info(capsys):
    path = sample_path("mooncake.jsonl")
    assert run_app(app, ["trace", "info", str(path), "--json", "--spread-ticks", "--seed", "3"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "mooncake" and info["requests"] == 150 and info["concurrency"] is None
    assert set(info["isl"]) == {"mean", "p50", "p90", "p99", "max"} and info["hash_blocks"] > info["unique_hash_blocks"]
    assert "ticks spread" in info["source"]


def test_trace_info_lengths_file_with_rate_and_format(capsys):
    args = ["trace", "info", str(sample_path("vidur.csv")), "--format", "lengths", "--rate", "4", "--arrival",
            "constant", "--json"]
    assert run_app(app, args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "lengths" and info["rate"] == 4.0 and info["burstiness"] == 0.0


def test_bad_trace_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n1,x,1\n")
    assert run_app(app, ["trace", "info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == f"pdsim: error: {bad}, line 3: num_prefill_tokens 'x' is not a number\n"
    assert run_app(app, ["trace", "info", str(sample_path("lengths.csv"))]) == 2
    assert "pass a rate (--rate REQ_PER_S)" in capsys.readouterr().err
    assert run_app(app, ["trace", "info", str(bad), "--format", "nope"]) == 2
    assert "unknown trace format 'nope'" in capsys.readouterr().err
