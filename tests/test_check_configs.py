"""`pdsim check` on the repo's own configs/, simulated for real: they pass today, and fail with the missed
target named when the load doubles or the decode pool halves."""

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from planner import check as chk
from planner.cli import app, run_app

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
AGG_8B = CONFIGS / "llama-3.1-8b-agg.check.yaml"
DISAGG_70B = CONFIGS / "llama-3.1-70b-disagg.check.yaml"
AZURE = CONFIGS / "azure-conv-70b-agg.check.yaml"


def variant(tmp_path, config: Path, change) -> Path:
    """A copy of ``config`` in tmp_path with ``change(data)`` applied; its relative paths made absolute."""
    yaml = YAML()
    data = yaml.load(config.read_text())
    if isinstance(data["deployment"], str):
        data["deployment"] = str(config.parent / data["deployment"])
    if "trace" in data["workload"]:
        data["workload"]["trace"] = str(chk.load_check(config).workload["trace"])
    change(data)
    out = tmp_path / config.name
    with out.open("w") as f:
        yaml.dump(data, f)
    return out


def halve_decode(data):
    dep = YAML().load((CONFIGS / "deployments" / "llama-3.1-70b-disagg.yaml").read_text())
    dep["decode"]["replicas"] //= 2
    data["deployment"] = dep


def double(key):
    def change(data):
        data["workload"][key] = data["workload"].get(key, 1) * 2

    return change


def test_the_repo_configs_pass_as_ci_runs_them(capsys):
    paths = chk.find_checks([CONFIGS])
    assert {AGG_8B, DISAGG_70B, AZURE} <= set(paths)
    hint = "\nIf your change is meant to move these numbers: .venv/bin/pdsim check configs/ --update-baseline"
    assert run_app(app, ["check", *map(str, paths)]) == 0, capsys.readouterr().out + hint
    out = capsys.readouterr().out
    assert out.count("PASS  ") == len(paths) and "FAIL" not in out


@pytest.mark.parametrize("config, change, missed", [
    (AGG_8B, double("rate"), r"p90 TPOT \d+\.\d ms > 20 ms target"),
    (DISAGG_70B, double("rate"), r"p90 TPOT \d+\.\d ms > 20 ms target"),
    (DISAGG_70B, halve_decode, r"p90 TPOT \d+\.\d ms > 20 ms target"),
    (AZURE, double("speedup"), r"p90 TPOT \d+\.\d ms > 30 ms target"),
], ids=["8b-agg-rate-x2", "70b-disagg-rate-x2", "70b-disagg-decode-halved", "azure-trace-speedup-x2"])
def test_a_passing_config_fails_when_its_rate_doubles_or_its_decode_pool_halves(tmp_path, config, change, missed):
    assert chk.run_check(config).status == "pass"
    r = chk.run_check(variant(tmp_path, config, change))
    assert r.status == "fail"
    assert any(re.fullmatch(rf"{missed} \(\+\d+%\)", x) for x in r.reasons), r.reasons
    assert any(x.startswith("SLO attainment ") and "< 90% required" in x for x in r.reasons), r.reasons


def test_a_failing_run_is_a_junit_failure_naming_the_target(tmp_path):
    slow = variant(tmp_path, DISAGG_70B, halve_decode)
    junit = tmp_path / "junit.xml"
    assert run_app(app, ["check", str(AGG_8B), str(slow), "--junit", str(junit)]) == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    ok, bad = suite.findall("testcase")
    assert ok.find("failure") is None and ok.find("system-out").text.startswith(f"{AGG_8B}\nagg 2x TP1\n")
    assert re.search(r"p90 TPOT \d+\.\d ms > 20 ms target", bad.find("failure").get("message"))


def test_runs_are_deterministic_and_jobs_give_the_serial_results(tmp_path):
    paths = [AGG_8B, DISAGG_70B, variant(tmp_path, DISAGG_70B, halve_decode)]
    serial = chk.run_checks(paths)
    again = chk.run_checks(paths)
    parallel = chk.run_checks(paths, jobs=2)
    strip = lambda rs: [(r.name, r.status, r.reasons, r.notes, r.summary) for r in rs]  # noqa: E731 (no wall time)
    assert strip(serial) == strip(again) == strip(parallel)
    assert [r.status for r in parallel] == ["pass", "pass", "fail"]


def test_a_baseline_catches_a_regression_inside_the_slo(tmp_path):
    # 10 % more load still meets the SLOs, but queueing moves p90 TTFT past the baseline's 10 % tolerance
    r = chk.run_check(variant(tmp_path, DISAGG_70B, lambda d: d["workload"].update(rate=4.4)))
    assert r.status == "fail"
    assert not any("target" in x for x in r.reasons)
    assert any(re.fullmatch(r"p90 TTFT regressed \d+\.\d% vs baseline \(.*, tolerance 10%\)", x) for x in r.reasons)


def test_a_trace_that_is_absent_is_a_clear_error(tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    (repo / "configs" / AZURE.name).write_text(AZURE.read_text())
    assert run_app(app, ["check", str(repo / "configs")]) == 2
    out = capsys.readouterr().out
    assert f"{repo / 'configs' / AZURE.name}:11: workload.trace: file not found: " \
           "../data/traces/AzureLLMInferenceTrace_conv.csv" in out
    assert str(repo / "data" / "traces" / "AzureLLMInferenceTrace_conv.csv") in out


def test_a_calibration_file_sets_the_costs_and_one_fitted_on_another_gpu_is_refused(tmp_path):
    from dataclasses import replace

    from planner import calibrate as cb
    from profiler.roofline import engine_efficiency

    default = engine_efficiency("vllm")
    slower = replace(default, iteration_overhead_s=2 * default.iteration_overhead_s)  # twice the per-step cost
    cb.save_calibration(cb.Calibration("llama-3.1-8b", "h200-sxm", "vllm", "fp8", slower), tmp_path / "ok.yaml")
    cb.save_calibration(cb.Calibration("llama-3.1-8b", "h100-sxm", "vllm", "fp8", slower), tmp_path / "h100.yaml")
    p = variant(tmp_path, AGG_8B, lambda d: d.update(calibration="ok.yaml"))  # relative to the check file
    base, calibrated = chk.run_check(AGG_8B), chk.run_check(p)
    assert calibrated.summary["tpot_ms"]["p90"] > base.summary["tpot_ms"]["p90"] + 1.0
    p.write_text(p.read_text().replace("calibration: ok.yaml", "calibration: h100.yaml"))
    r = chk.run_check(p)
    assert r.status == "error" and r.reasons[0].startswith(f"{p}: calibration: ")
    assert "fitted for llama-3.1-8b on h100-sxm" in r.reasons[0]


def test_a_model_turned_optimistic_fails_the_repo_configs(monkeypatch):
    """Two-sided baselines: every efficiency 1.3x (shares of peak up, fixed costs down) predicts faster
    deployments than the configs were pinned at, and that fails as a regression does."""
    from dataclasses import fields, replace

    import profiler.factory as factory
    from profiler.roofline import engine_efficiency

    def optimistic(engine: str):
        eff = engine_efficiency(engine)
        return replace(eff, **{f.name: (min(1.0, getattr(eff, f.name) * 1.3) if not f.name.endswith("_s")
                                        else getattr(eff, f.name) / 1.3)
                               for f in fields(eff) if f.name != "ttft_wait_prefills"})

    monkeypatch.setattr(factory, "engine_efficiency", optimistic)
    results = chk.run_checks([AGG_8B, DISAGG_70B])
    assert [r.status for r in results] == ["fail", "fail"]
    assert all(any("beyond a two-sided bound" in x for x in r.reasons) for r in results), [r.reasons for r in results]
