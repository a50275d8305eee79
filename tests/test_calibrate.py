"""Calibration: measurements read from aiperf and silicon files; fitting recovers known factors; a
calibration refuses any GPU or model but its own."""

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from needs import SILICON

from planner import calibrate as cb
from planner.cli import app, run_app
from profiler.errors import InputError
from profiler.roofline import Efficiency
from simulator.deployment import parse_deployment

DEP = parse_deployment({"model": "llama-3.1-8b", "gpu": "h100-sxm", "dtype": "bf16", "engine": "vllm",
                        "topology": "agg", "workers": {"replicas": 1, "tp": 1, "max_seqs": 128}})
TRUE = Efficiency(gemm_compute=0.55, gemm_memory=0.70, attn_compute=0.40, attn_memory=0.60,
                  iteration_overhead_s=3.5e-3, ttft_overhead_s=0.04)


def write_aiperf_run(folder: Path, isl: int, osl: int, concurrency: int, ttft_s: float, tpot_s: float,
                     records: bool = True) -> None:
    """An aiperf artifact folder as aiperf 0.14 writes it (the fields pdsim reads)."""
    folder.mkdir(parents=True)
    agg = {"schema_version": "1.5", "input_config": {"loadgen": {"concurrency": concurrency}},
           "time_to_first_token": {"unit": "ms", "avg": ttft_s * 1e3},
           "inter_token_latency": {"unit": "ms", "avg": tpot_s * 1e3},
           "input_sequence_length": {"unit": "tokens", "avg": isl},
           "output_sequence_length": {"unit": "tokens", "avg": osl}, "request_count": {"unit": "requests", "avg": 8}}
    (folder / "profile_export_aiperf.json").write_text(json.dumps(agg))
    if not records:
        return
    lines = []
    for i in range(8):
        start = 10**18 + i * 10**9
        lat = ttft_s + (osl - 1) * tpot_s
        lines.append(json.dumps({
            "metadata": {"session_num": i, "request_start_ns": start, "request_end_ns": start + int(lat * 1e9),
                         "benchmark_phase": "profiling", "was_cancelled": False},
            "metrics": {"input_sequence_length": {"value": isl, "unit": "tokens"},
                        "output_sequence_length": {"value": osl, "unit": "tokens"},
                        "time_to_first_token": {"value": ttft_s * 1e3, "unit": "ms"},
                        "inter_token_latency": {"value": tpot_s * 1e3, "unit": "ms"}},
            "error": None}))
    lines.append(json.dumps({"metadata": {"benchmark_phase": "profiling"}, "metrics": {},
                             "error": {"code": 500, "type": "ServerError", "message": "boom"}}))
    (folder / "profile_export.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    """aiperf runs whose latencies a known cost model (TRUE) produced."""
    root = tmp_path_factory.mktemp("measured")
    for isl in (256, 2048, 8192):
        for osl in (128, 1024):
            for c in (1, 8, 64):
                p = {"topology": "agg", "tp": 1, "replicas": 1}
                ttft, tpot = cb.closed_loop_estimate(DEP, cb.cost_models(cb.point_deployment(DEP, p), TRUE),
                                                     isl, osl, c)
                write_aiperf_run(root / f"i{isl}-o{osl}" / f"c{c}", isl, osl, c, ttft, tpot, records=c != 8)
    return root


def test_aiperf_runs_are_read_from_records_or_the_aggregate(measured):
    points, skipped = cb.read_measured(measured, DEP)
    assert len(points) == 18 and not skipped
    assert sorted(points.concurrency.unique()) == [1, 8, 64]
    assert (points.requests[points.concurrency != 8] == 8).all()  # the failed record is left out
    assert points.ttft_s.gt(0).all() and points.tpot_s.lt(points.ttft_s).any()


@pytest.fixture(scope="module")
def fitted(measured) -> cb.Calibration:
    # start from the class defaults: the factors not fitted then equal TRUE's, as they must for recovery
    return cb.calibrate(measured, DEP, start=Efficiency())[0]


def test_fitting_measurements_of_a_known_cost_model_recovers_its_factors(fitted):
    cal = fitted
    for name in cb.FIT_DEFAULT:
        assert getattr(cal.efficiency, name) == pytest.approx(getattr(TRUE, name), rel=0.03), name
    assert cal.error_after["ttft_mape_pct"] < 0.5 and cal.error_after["tpot_mape_pct"] < 0.5
    assert cal.error_before["ttft_mape_pct"] > 5 * cal.error_after["ttft_mape_pct"]
    assert (cal.model, cal.gpu, cal.engine, cal.dtype, cal.points) == ("llama-3.1-8b", "h100-sxm", "vllm", "bf16", 18)


def test_calibration_file_round_trips_and_applies_to_its_own_deployment(fitted, tmp_path):
    cal = fitted
    path = cb.save_calibration(cal, tmp_path / "calib.yaml")
    again = cb.load_calibration(path)
    assert again.efficiency == cal.efficiency and again.error_after == cal.error_after
    assert cb.efficiency_for(DEP.with_pool("workers", tp=2, replicas=3), path) == cal.efficiency


@pytest.mark.parametrize("change, differs", [({"gpu": "h200-sxm"}, "gpu differs"),
                                             ({"model": "llama-3.1-70b"}, "model differs"),
                                             ({"gpu": "b200", "model": "qwen3-32b"}, "model and gpu differ\\.")])
def test_a_calibration_for_one_gpu_or_model_is_refused_for_another(change, differs, tmp_path):
    cal = cb.Calibration("llama-3.1-8b", "h100-sxm", "vllm", "bf16", TRUE)
    path = cb.save_calibration(cal, tmp_path / "c.yaml")
    with pytest.raises(InputError, match=f"fitted for llama-3.1-8b on h100-sxm .*{differs}.*never carries over"):
        cb.efficiency_for(replace(DEP, **change), path)


def test_cli_calibrate_writes_the_file_and_refuses_a_foreign_calibration(measured, tmp_path, capsys):
    dep = tmp_path / "dep.yaml"
    dep.write_text(DEP.to_yaml())
    out = tmp_path / "calib.yaml"
    table = tmp_path / "points.csv"
    assert run_app(app, ["calibrate", "--measured", str(measured), "--deployment", str(dep), "--out", str(out),
                         "--points", str(table)]) == 0
    text = capsys.readouterr().out
    assert "TTFT" in text and "before" in text and "after" in text and str(out) in text
    assert cb.load_calibration(out).points == 18
    rows = pd.read_csv(table)
    assert len(rows) == 18 and {"ttft_s", "pred_ttft_before_s", "pred_tpot_after_s"} <= set(rows.columns)
    other = tmp_path / "h200.yaml"
    other.write_text(replace(DEP, gpu="h200-sxm").to_yaml())
    assert run_app(app, ["emit", "--deployment", str(other), "--target", "vllm", "--out", str(tmp_path / "e"),
                         "--calibration", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpu differs" in err[0] and err[0].startswith("pdsim: error:")


def test_too_few_points_for_the_factors_is_refused(measured):
    runs = sorted(measured.rglob("profile_export_aiperf.json"))[:3]
    with pytest.raises(InputError, match="3 measured points cannot pin 6 factors"):
        cb.calibrate(runs[0].parent.parent, DEP)
    cal, _, _ = cb.calibrate(runs[0].parent.parent, DEP, names=("gemm_memory", "iteration_overhead_s"))
    assert cal.fitted == ("gemm_memory", "iteration_overhead_s") and cal.points == 3


@pytest.mark.parametrize("field, value, says", [
    ("input_config", {"endpoint": {"model_names": ["meta-llama/Llama-3.1-70B-Instruct"]}}, "measured meta-llama"),
    ("telemetry_data", {"endpoints": {"x": {"gpus": {"gpu_0": {"gpu_name": "NVIDIA H200"}}}}}, "says NVIDIA H200"),
])
def test_runs_that_measured_another_model_or_gpu_are_refused(tmp_path, field, value, says):
    write_aiperf_run(tmp_path / "run", 512, 64, 4, 0.1, 0.01)
    agg_path = tmp_path / "run" / "profile_export_aiperf.json"
    agg = json.loads(agg_path.read_text())
    agg[field] = value | ({"loadgen": {"concurrency": 4}} if field == "input_config" else {})
    agg_path.write_text(json.dumps(agg))
    with pytest.raises(InputError, match=says):
        cb.read_measured(tmp_path, DEP)


def test_bad_measurement_folders_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        cb.read_measured(tmp_path / "nope", DEP)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "profile_export.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="line 1: not JSON"):
        cb.read_measured(tmp_path, DEP)
    with pytest.raises(InputError, match="line 2: not valid YAML"):
        cb.load_calibration(tmp_path / "run" / "profile_export.jsonl")
    (tmp_path / "dep.yaml").write_text(DEP.to_yaml())
    with pytest.raises(InputError, match="not a pdsim calibration file"):
        cb.load_calibration(tmp_path / "dep.yaml")


def test_silicon_rows_of_the_deployment_are_used_and_the_fit_reduces_error():
    dep = parse_deployment({"model": "llama-3.1-70b", "gpu": "h100-sxm", "dtype": "fp8", "engine": "vllm",
                            "topology": "agg", "workers": {"tp": 4}})
    cal, table, skipped = cb.calibrate(SILICON, dep)
    assert cal.points == 45 and skipped == {"other model/GPU/engine/dtype": 872}
    assert set(table.tp) == {2, 4, 8}  # each row keeps its own parallelism
    before, after = (sum(e.values()) for e in (cal.error_before, cal.error_after))
    assert after < before


def test_plan_searches_with_the_calibration_and_refuses_a_foreign_one(fitted, tmp_path, capsys):
    from planner.plan import PlanRequest, build

    path = cb.save_calibration(fitted, tmp_path / "calib.yaml")
    req = PlanRequest(model="llama-3.1-8b", ttft_ms=500, tpot_ms=30, isl=1000, osl=100, gpu="h100-sxm", gpus=2,
                      calibration=str(path))
    _, screen, evaluator = build(req)
    assert screen.cost_model(1).eff == fitted.efficiency and evaluator.efficiency == fitted.efficiency
    code = run_app(app, ["plan", "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "500",
                         "--tpot", "30", "--gpu", "h200-sxm", "--calibration", str(path), "--quiet",
                         "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "gpu differs" in err[0]


def test_every_factor_in_seconds_or_prefills_has_its_own_bounds():
    """A fitted factor that is not a share of a peak must not get the shares' bounds (0.02-1.0): a per-layer or
    per-all-reduce cost of 20 ms or more would be a fit that cannot reach the physics."""
    from dataclasses import fields

    for f in fields(Efficiency):
        if f.name.endswith("_s") or f.name == "ttft_wait_prefills":
            lo, hi = cb.BOUNDS[f.name]
            assert 0 < lo < hi
    assert cb.BOUNDS["layer_overhead_s"][1] < 1e-3 and cb.BOUNDS["allreduce_latency_s"][1] < 1e-3
