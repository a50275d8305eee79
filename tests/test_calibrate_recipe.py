"""bench/calibrate.py, the recipe h100_fit.json is rebuilt by: its fast path recovers known factors from rows pdsim
generated itself (the analytic stage over many rows, then the simulator stage over a few), and the file records
the recipe and the code revision that made it, on the repository's own data."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from argparse import Namespace
from dataclasses import replace

import numpy as np
import pytest
from needs import REPO, SILICON

from planner.benchmark_rows import DENSE_MODELS, load_benchmark
from profiler.calibration import FIT_FILE
from profiler.roofline import ENGINE_EFFICIENCY

spec = importlib.util.spec_from_file_location("bench_calibrate", REPO / "bench" / "calibrate.py")
cal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cal)

GPU = "h100-sxm"
# a vLLM whose GEMMs, HBM reads and fixed costs differ from the defaults the fit starts at
TRUE = replace(ENGINE_EFFICIENCY["vllm"], gemm_compute=0.55, gemm_memory=0.78, iteration_overhead_s=4.0e-3,
               ttft_overhead_s=0.05)
NAMES = ("gemm_compute", "gemm_memory", "iteration_overhead_s", "ttft_overhead_s")


def engine_cases(engine: str) -> list:
    """24 of the engine's dense fixed-length agg rows of up to 32 clients, evenly spread: above that, the steady
    state's regimes (a full KV cache, a queue) put kinks in the landscape where the least squares can stop short
    of the truth even on rows it generated itself."""
    every = cal.agg_cases(load_benchmark(SILICON), GPU)
    mine = [c for c in every if c.engine == engine and c.model in DENSE_MODELS and c.range_ratio >= 1
            and c.concurrency <= 32]
    return [mine[i] for i in np.linspace(0, len(mine) - 1, 24).round().astype(int)]


@pytest.fixture(scope="module")
def cases() -> list:
    return engine_cases("vllm")


@pytest.mark.parametrize("engine", ["vllm", "sglang", "trtllm"])
def test_the_fit_recovers_known_factors_from_rows_pdsim_generated(engine):
    start = ENGINE_EFFICIENCY[engine]
    true = replace(start, **{n: getattr(TRUE, n) for n in NAMES})
    rows = engine_cases(engine)
    measured = cal.predict(rows, true, GPU)  # the analytic closed loop's TTFT and TPOT at the true factors
    args = Namespace(gpu=GPU, sim_rows=0, sim_steps=0, jobs=1)
    eff, before, after, _ = cal.fit_two_ways(rows, measured, start, NAMES, args)
    for name in NAMES:
        assert getattr(eff, name) == pytest.approx(getattr(true, name), rel=0.02), name
    errors = cal.error_report(before, after, measured)
    assert errors["before_ttft_median_ape"] > 5 and errors["ttft_median_ape"] < 0.5 and errors["tpot_median_ape"] < 0.5


def test_the_simulator_stage_moves_the_fit_towards_rows_the_simulator_generated(cases):
    """Rows simulated at TRUE, the analytic stage's answer as the start: a few least-squares steps of the
    simulator stage close most of what the analytic model misses."""
    sub = cases[::6]
    measured = cal.simulated(sub, TRUE, jobs=1)
    off = replace(TRUE, gemm_memory=0.65, ttft_overhead_s=0.08)
    names = ("gemm_memory", "ttft_overhead_s")
    eff = cal.fit_engine(sub, measured, off, GPU, jobs=1, max_nfev=4, names=names)
    err = {n: abs(np.log(getattr(eff, n) / getattr(TRUE, n))) for n in names}
    was = {n: abs(np.log(getattr(off, n) / getattr(TRUE, n))) for n in names}
    assert all(err[n] < 0.5 * was[n] for n in names), (err, was)


def test_the_fit_file_records_the_recipe_that_rebuilds_it():
    fit = json.loads(FIT_FILE.read_text())
    recipe = fit["recipe"]
    assert recipe == cal.recipe(Namespace(data=str(cal.DATA), gpu=GPU, engines="", sim_rows=cal.SIM_ROWS,
                                          sim_steps=cal.SIM_STEPS))
    assert recipe["command"] == "bench/calibrate.py" and recipe["data"] == "data/calibration/silicon_h100_sxm.csv"
    assert recipe["data_sha256"] == hashlib.sha256(SILICON.read_bytes()).hexdigest()
    assert len(fit["code_revision"]) == 40 and not fit["code_revision"].endswith("dirty") and fit["created"]
    assert set(fit["engines"]) == {"sglang", "trtllm", "vllm"}
    assert not any("seconds" in k for e in fit["fit_error"].values() for k in e)  # nothing that differs run to run
