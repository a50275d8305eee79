"""`pdsim check` without the simulator: the check-file schema, judging a summary, JUnit/markdown, baselines."""

import os
import textwrap
import xml.etree.ElementTree as ET

import pytest
from needs import TRACES

from planner import check as chk
from planner.check import evaluate, load_check, update_baseline, write_check_file
from planner.check_report import junit_xml, markdown
from planner.cli import app, run_app
from profiler.errors import InputError
from simulator.deployment import parse_deployment
from traces import load_trace

CHECK = """\
# guards the 8B chat config
name: chat-8b   # shown in CI
seed: 3
deployment:
  model: llama-3.1-8b
  gpu: h200-sxm
  workers: {replicas: 2, tp: 1}
workload: {requests: 200, isl: 1000, osl: 200, rate: 8}
slo:
  ttft_ms: 300   # product target
  tpot_ms: 20
  percentile: 90
  attainment: 0.9
baseline:
  tolerance: 0.05
  metrics:
    ttft_ms.p90: 100.0   # keep me
    tok_s_per_gpu: {value: 1000.0, tolerance: 0.02}
"""


def fake_summary(ttft=100.0, tpot=10.0, attainment=0.98, tok_s_per_gpu=1000.0, failed=0, requests=200):
    def lat(v):
        return {"mean": 0.8 * v, "p50": 0.7 * v, "p90": v, "p99": 1.5 * v}

    return {"requests": requests, "completed": requests - failed, "failed": failed, "gpus": 2,
            "ttft_ms": lat(ttft), "tpot_ms": lat(tpot), "itl_ms": lat(tpot), "e2e_ms": lat(2000.0),
            "slo_attainment": attainment, "slo_met": attainment >= 0.9, "throughput_tok_s": 2 * tok_s_per_gpu,
            "tok_s_per_gpu": tok_s_per_gpu, "tok_s_per_user": 1000 / tpot}


def write(tmp_path, text=CHECK, name="chat.check.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


# ---- the schema --------------------------------------------------------------------------------
def test_a_check_file_parses_into_deployment_workload_slo_and_baseline(tmp_path):
    spec = load_check(write(tmp_path))
    assert spec.name == "chat-8b" and spec.seed == 3
    assert spec.deployment.topology == "agg" and spec.deployment.workers.replicas == 2
    assert spec.workload == {"requests": 200, "isl": 1000, "osl": 200, "rate": 8.0}
    assert spec.slo.targets_ms == {"ttft_ms": 300.0, "tpot_ms": 20.0}
    assert (spec.slo.percentile, spec.slo.attainment) == (90, 0.9)
    assert spec.baseline["ttft_ms.p90"] == chk.Expected(100.0, 0.05)
    assert spec.baseline["tok_s_per_gpu"] == chk.Expected(1000.0, 0.02)


def test_deployment_and_trace_paths_resolve_against_the_check_file_then_the_repo(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "deployments").mkdir()
    (tmp_path / "deployments" / "d.yaml").write_text("model: llama-3.1-70b\nprefill: {replicas: 1, tp: 4}\n"
                                                     "decode: {replicas: 1, tp: 4}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    (tmp_path / "configs").mkdir()
    p = write(tmp_path / "configs", """\
        deployment: ../deployments/d.yaml     # relative to this file
        workload: {trace: data/t.csv, max_requests: 50}   # relative to the repo root
        slo: {ttft_ms: 500}
        """)
    spec = load_check(p)
    assert spec.deployment.topology == "disagg" and spec.deployment.decode.tp == 4
    assert spec.workload == {"trace": tmp_path / "data" / "t.csv", "max_requests": 50}
    assert spec.name == "chat" and spec.baseline == {}


def test_a_missing_trace_names_the_field_and_every_place_looked(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    p = write(tmp_path, """\
        deployment: {model: llama-3.1-8b}
        workload: {trace: ../data/traces/nope.csv}
        slo: {ttft_ms: 500}
        """)
    with pytest.raises(InputError) as e:
        load_check(p)
    msg = str(e.value)
    assert f"{p}:2: workload.trace" in msg and "file not found: ../data/traces/nope.csv" in msg
    assert str((tmp_path / "../data/traces/nope.csv").resolve()) in msg


@pytest.mark.parametrize("text, field, what", [
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\n", ":", "'slo'"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: -1}\nslo: {ttft_ms: 1}\n",
     ":2: workload.rate", "must be positive"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5}\nslo: {ttft_ms: 1}\n",
     ":2: workload", "exactly one of 'rate'"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo:\n  ttft_ms: 1\n"
     "  percentile: 95\n", ":5: slo.percentile", "one of 50, 90, 99"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo:\n  ttft_ms: x\n",
     ":4: slo.ttft_ms", "must be a number"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {percentile: 90}\n",
     ":3: slo", "names no target"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 9}\n"
     "baseline:\n  metrics:\n    ttft_ms.p95: 3\n", ":6: baseline.metrics.ttft_ms.p95", "unknown metric"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 9}\n"
     "baseline:\n  metrics:\n    ttft_ms.p90: {tolerance: 0.1}\n", ":6: baseline.metrics.ttft_ms.p90", "'value'"),
    ("deployment: {model: llama-3.1-8b, workers: {replicas: 0}}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\n"
     "slo: {ttft_ms: 9}\n", ":1: deployment.workers.replicas", "must be positive"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 9}\n"
     "slos: {}\n", ":", "unknown field 'slos'"),
    ("deployment: {model: llama-3.1-8b}\nworkload: [1, 2]\nslo: {ttft_ms: 9}\n", ":2: workload", "must be a mapping"),
    ("deployment: deployments/absent.yaml\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 9}\n",
     ":1: deployment", "file not found: deployments/absent.yaml"),
    ("deployment: {model: llama-3.1-8b\nworkload: {}\n", ":", "line 2: not valid YAML"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 9}\n"
     "calibration: 3\n", ":4: calibration", "must be a path"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 9}\n"
     "calibration: c.yaml\n", ":4: calibration", "file not found: c.yaml"),
    ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 9}\n"
     "profile: h200-sxm\ncalibration: chat.check.yaml\n", ":5: calibration", "not both"),
])
def test_malformed_check_files_name_the_file_line_and_field(tmp_path, text, field, what):
    p = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_check(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}{field}"), msg
    assert what in msg, msg


def test_folders_yield_their_check_files_sorted_and_other_yaml_is_left_alone(tmp_path):
    (tmp_path / "b.check.yaml").write_text("")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.check.yml").write_text("")
    (tmp_path / "deployment.yaml").write_text("")
    assert chk.find_checks([tmp_path]) == [tmp_path / "b.check.yaml", tmp_path / "sub" / "a.check.yml"]
    assert chk.find_checks([tmp_path / "deployment.yaml"]) == [tmp_path / "deployment.yaml"]  # named: a check
    with pytest.raises(InputError, match="x: no such file or folder"):
        chk.find_checks([tmp_path / "x"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no check files \(\*\.check\.yaml\)"):
        chk.find_checks([tmp_path / "empty"])


# ---- judging -----------------------------------------------------------------------------------
def test_a_summary_within_targets_and_baseline_passes(tmp_path):
    spec = load_check(write(tmp_path))
    assert evaluate(spec, fake_summary(ttft=103.0, tok_s_per_gpu=990.0)) == ([], [])


def test_a_missed_slo_names_the_target_its_percentile_and_the_miss(tmp_path):
    spec = load_check(write(tmp_path))
    reasons, _ = evaluate(spec, fake_summary(ttft=100.0, tpot=26.0, attainment=0.5))
    assert reasons[0] == "p90 TPOT 26.0 ms > 20 ms target (+30%)"
    assert reasons[1] == "SLO attainment 50.0% < 90% required (TTFT <= 300 ms and TPOT <= 20 ms)"
    assert "tok_s_per_user" not in " ".join(reasons)  # not pinned by this baseline


def test_a_move_beyond_tolerance_fails_either_way_unless_the_bound_is_one_sided(tmp_path):
    spec = load_check(write(tmp_path))
    reasons, notes = evaluate(spec, fake_summary(ttft=120.0, tok_s_per_gpu=1100.0))
    assert reasons == ["p90 TTFT regressed 20.0% vs baseline (100 -> 120, tolerance 5%)",
                       "tok_s_per_gpu improved 10.0% vs baseline (1000 -> 1100, tolerance 2%), beyond a two-sided "
                       "bound: if the model is meant to predict this, --update-baseline"] and notes == []
    with_bound = lambda b: CHECK.replace("  tolerance: 0.05\n", f"  tolerance: 0.05\n  bound: {b}\n")  # noqa: E731
    one_sided = load_check(write(tmp_path, with_bound("one-sided")))
    reasons, notes = evaluate(one_sided, fake_summary(ttft=80.0, tok_s_per_gpu=970.0))
    assert reasons == ["tok_s_per_gpu regressed 3.0% vs baseline (1000 -> 970, tolerance 2%)"]
    assert notes and notes[0].startswith("p90 TTFT improved 20.0%")
    with pytest.raises(InputError, match="baseline.bound: must be two-sided or one-sided"):
        load_check(write(tmp_path, with_bound("sideways")))


def test_failed_requests_and_empty_results_fail(tmp_path):
    spec = load_check(write(tmp_path))
    nan = float("nan")
    reasons, _ = evaluate(spec, fake_summary(failed=3))
    assert reasons == ["3 of 200 requests did not complete"]
    reasons, _ = evaluate(spec, fake_summary(ttft=nan, tpot=nan, attainment=0.0, tok_s_per_gpu=0.0))
    assert "p90 TTFT target 300 ms: no value (no request completed)" in reasons
    assert "ttft_ms.p90: baseline 100 but the simulation gave no value" in reasons


# ---- reports -----------------------------------------------------------------------------------
def results(tmp_path):
    spec = load_check(write(tmp_path))
    ok = chk.judge(spec, fake_summary(), 1.25)
    bad = chk.judge(spec, fake_summary(tpot=30.0), 0.5)
    bad.name = "chat-8b <doubled>"
    err = chk.CheckResult("x.check.yaml", "x", "error", ["x.check.yaml: missing field 'slo'"])
    return [ok, bad, err]


def test_junit_xml_has_one_testsuite_and_a_testcase_per_check_with_failure_and_error(tmp_path):
    path = tmp_path / "junit.xml"
    junit_xml(results(tmp_path)).write(path, encoding="utf-8", xml_declaration=True)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    (suite,) = root.findall("testsuite")
    assert [suite.get(k) for k in ("tests", "failures", "errors", "skipped")] == ["3", "1", "1", "0"]
    assert float(suite.get("time")) == pytest.approx(1.75)
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["chat-8b", "chat-8b <doubled>", "x"]
    assert all(c.get("classname") == "pdsim.check" and float(c.get("time")) >= 0 for c in cases)
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    failure = cases[1].find("failure")
    assert failure.get("message") == "p90 TPOT 30.0 ms > 20 ms target (+50%)" and failure.get("type") == "CheckFailure"
    assert cases[2].find("error").get("message") == "x.check.yaml: missing field 'slo'"
    assert cases[0].find("system-out").text.splitlines()[:2] == [str(tmp_path / "chat.check.yaml"), "agg 2x TP1"]
    # xunit2 (Jenkins junit-10.xsd) attributes only
    assert all(set(c.attrib) <= {"name", "classname", "time", "assertions", "status"} for c in cases)
    # the JUnit schema allows only these children of a testcase, each at most once
    for c in cases:
        assert {e.tag for e in c} <= {"skipped", "error", "failure", "system-out", "system-err"}
        assert len({e.tag for e in c}) == len(list(c))


def test_markdown_is_a_table_row_per_check_with_results_and_reasons(tmp_path):
    md = markdown(results(tmp_path))
    lines = md.splitlines()
    assert lines[0] == "### pdsim check: 3 checks: 1 passed, 1 failed, 1 errors"
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3 and all(line.count(" | ") == 7 for line in table[2:])
    assert table[2].startswith("| chat-8b | ✅ PASS | agg 2x TP1 | p90 100.0 | p90 10.0 | 98.0% | 1000 |")
    assert "❌ FAIL" in table[3] and "p90 TPOT 30.0 ms > 20 ms target" in table[3]
    assert "⚠️ ERROR" in table[4] and "missing field 'slo'" in table[4]


# ---- baselines ---------------------------------------------------------------------------------
def test_update_baseline_rewrites_values_and_keeps_comments_order_and_tolerances(tmp_path):
    p = write(tmp_path)
    os.chmod(p, 0o640)
    update_baseline(p, fake_summary(ttft=123.456789, tok_s_per_gpu=876.54321))
    text = p.read_text()
    assert text == CHECK.replace("100.0   # keep me", "123.457 # keep me").replace(
        "{value: 1000.0, tolerance: 0.02}", "{value: 876.543, tolerance: 0.02}")
    assert oct(os.stat(p).st_mode & 0o777) == "0o640"
    assert [f.name for f in tmp_path.iterdir()] == [p.name]  # no temp file left behind
    assert evaluate(load_check(p), fake_summary(ttft=123.456789, tok_s_per_gpu=876.54321)) == ([], [])


def test_update_baseline_adds_a_baseline_at_the_slo_percentile_when_there_is_none(tmp_path):
    p = write(tmp_path, CHECK.split("baseline:")[0].replace("percentile: 90", "percentile: 99"))
    update_baseline(p, fake_summary())
    spec = load_check(p)
    assert list(spec.baseline) == chk.default_baseline_metrics(99)
    assert spec.baseline["ttft_ms.p99"] == chk.Expected(150.0, chk.DEFAULT_TOLERANCE)
    assert p.read_text().startswith("# guards the 8B chat config\nname: chat-8b   # shown in CI\n")


def test_update_baseline_is_atomic_a_failed_write_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    p = write(tmp_path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(chk.os, "replace", boom)
    with pytest.raises(OSError):
        update_baseline(p, fake_summary(ttft=500.0))
    assert p.read_text() == CHECK and [f.name for f in tmp_path.iterdir()] == [p.name]


def test_write_check_file_writes_a_valid_check_with_the_summary_as_baseline(tmp_path):
    dep = parse_deployment({"model": "llama-3.1-70b", "dtype": "fp8", "prefill": {"replicas": 2, "tp": 2},
                            "decode": {"replicas": 1, "tp": 4}})
    p = write_check_file(tmp_path / "out" / "plan.check.yaml", dep,
                         {"requests": 300, "isl": 4000, "osl": 500, "rate": 2.0},
                         {"ttft_ms": 300, "tpot_ms": 20, "percentile": 90, "attainment": 0.9},
                         summary=fake_summary(), seed=7, comment="written by pdsim plan")
    assert p.read_text().startswith("# written by pdsim plan\n")
    spec = load_check(p)
    assert spec.deployment == dep and spec.seed == 7 and spec.workload["rate"] == 2.0
    assert spec.baseline["tpot_ms.p90"].value == 10.0
    with pytest.raises(InputError, match="slo.percentile"):
        write_check_file(tmp_path / "bad.check.yaml", dep, {"requests": 1, "isl": 1, "osl": 1, "rate": 1},
                         {"ttft_ms": 1, "percentile": 42})
    assert not (tmp_path / "bad.check.yaml").exists()


# ---- the command -------------------------------------------------------------------------------
def test_cli_exit_codes_junit_markdown_and_update_baseline(tmp_path, monkeypatch, capsys):
    good, slow = write(tmp_path, name="a.check.yaml"), write(tmp_path, name="b.check.yaml")
    fake = {"a": fake_summary(), "b": fake_summary(tpot=25.0)}
    monkeypatch.setattr(chk, "simulate_check", lambda spec: fake[spec.path.name[0]])
    assert run_app(app, ["check", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS  chat-8b (agg 2x TP1): p90 TTFT 100.0 ms, p90 TPOT 10.0 ms, attainment 98.0%")
    junit, md = tmp_path / "j.xml", tmp_path / "s.md"
    assert run_app(app, ["check", str(tmp_path), "--junit", str(junit), "--markdown", str(md)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  chat-8b" in out and "      p90 TPOT 25.0 ms > 20 ms target (+25%)" in out
    assert out.rstrip().endswith("2 checks: 1 passed, 1 failed, 0 errors")
    assert ET.parse(junit).getroot().find("testsuite").get("failures") == "1"
    assert "❌ FAIL" in md.read_text()
    (tmp_path / "c.check.yaml").write_text("workload: {}\n")
    assert run_app(app, ["check", str(tmp_path)]) == 2
    assert f"ERROR c\n      {tmp_path / 'c.check.yaml'}: missing field 'deployment'" in capsys.readouterr().out
    assert run_app(app, ["check", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err
    # a regression fails until the baseline is updated; the SLO miss of b stays a failure
    fake["a"] = fake_summary(ttft=200.0)
    assert run_app(app, ["check", str(good)]) == 1
    assert run_app(app, ["check", str(good), str(slow), "--update-baseline"]) == 1
    out = capsys.readouterr().out
    assert f"updated baseline: {good}" in out and "PASS  chat-8b" in out and "p90 TPOT 25.0 ms > 20 ms" in out
    assert "ttft_ms.p90: 200.0   # keep me" in good.read_text()
    assert run_app(app, ["check", str(good)]) == 0


# ---- workloads ---------------------------------------------------------------------------------
def test_a_closed_loop_workload_runs_its_clients_and_leaves_out_the_warmup(tmp_path):
    text = CHECK.replace("rate: 8}", "concurrency: 4, warmup_requests: 20}")
    w = chk.build_workload(load_check(write(tmp_path, text)))
    assert (w.concurrency, w.warmup_requests, len(w)) == (4, 20, 200) and w.closed_loop


def test_synthetic_workloads_are_seeded_and_take_length_distributions(tmp_path):
    p = write(tmp_path, CHECK.replace("isl: 1000", "isl: 'normal:1000,100'"))
    spec = load_check(p)
    a, b = chk.build_workload(spec), chk.build_workload(spec)
    assert len(a) == 200 and a.requests.equals(b.requests)
    assert a.requests["isl"].std() > 0 and (a.requests["osl"] == 200).all()
    with pytest.raises(InputError, match=r":8: workload.isl: unknown length distribution 'gauss'"):
        load_check(write(tmp_path, CHECK.replace("isl: 1000", "isl: 'gauss:1,2'")))


AZURE = TRACES / "AzureLLMInferenceTrace_conv.csv"


def test_a_trace_workload_is_windowed_cut_and_sped_up(tmp_path):
    p = write(tmp_path, f"""\
        deployment: {{model: llama-3.1-8b}}
        workload: {{trace: {AZURE}, start_s: 60, max_requests: 100, speedup: 2}}
        slo: {{ttft_ms: 500}}
        """)
    w = chk.build_workload(load_check(p))
    full = load_trace(AZURE)
    first = full.requests[full.requests["arrival_s"] >= 60].head(100)
    assert len(w) == 100 and w.requests["isl"].tolist() == first["isl"].tolist()
    assert w.requests["arrival_s"].to_numpy() == pytest.approx((first["arrival_s"].to_numpy() - 60) / 2)
    p.write_text(p.read_text().replace("start_s: 60", "start_s: 99999"))
    with pytest.raises(InputError, match=rf"^{p}: workload: .*no requests in \[99999, inf\)"):
        chk.build_workload(load_check(p))


def test_a_profile_is_a_folder_beside_the_check_or_a_bundled_name_and_a_missing_one_names_the_field(tmp_path):
    (tmp_path / "profiles" / "h200").mkdir(parents=True)
    spec = load_check(write(tmp_path, CHECK + "profile: profiles/h200\n"))
    assert spec.profile == str(tmp_path / "profiles" / "h200") and spec.calibration is None
    (tmp_path / "mine").mkdir()
    assert load_check(write(tmp_path, CHECK + "profile: mine\n")).profile == str(tmp_path / "mine")
    spec = load_check(write(tmp_path, CHECK + "profile: no-such-gpu\n"))
    assert spec.profile == "no-such-gpu"
    r = chk.run_check(spec.path)
    assert r.status == "error" and r.reasons[0].startswith(f"{spec.path}: profile: no profile directory 'no-such-gpu'")
