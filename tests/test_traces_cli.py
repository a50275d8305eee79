"""`pdsim trace info`: a table or JSON for a good file, one line and exit code 2 for a bad one."""

import json
import warnings

import pytest

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


def test_trace_info_on_timestamps_near_the_float_limit_is_clean_and_exact(tmp_path, capsys):
    """Gaps of ~1e308 s: squaring them overflowed inside np.std and printed a RuntimeWarning on a successful run."""
    path = tmp_path / "far.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\n1e300,10,5\n1.7e308,10,5\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a warning would print a stray stderr line
        assert run_app(app, ["trace", "info", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    gaps = [1e300, 1.7e308 - 1e300]
    mean = sum(gaps) / 2
    assert err == "" and json.loads(out)["burstiness"] == pytest.approx(abs(gaps[1] - gaps[0]) / 2 / mean)


def test_trace_with_subnormal_gaps_rescales_to_the_asked_rate(tmp_path, capsys):
    """Arrivals 5e-324 s apart have an infinite rate; rescaling to 1 req/s said 'speedup ... got 0.0'."""
    path = tmp_path / "dense.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0,10,5\n5e-324,10,5\n1e-323,10,5\n")
    assert run_app(app, ["trace", "info", str(path), "--rate", "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rate"] == pytest.approx(1.0) and info["duration_s"] == pytest.approx(2.0)
