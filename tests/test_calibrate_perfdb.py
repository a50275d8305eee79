"""AIConfigurator's database as a cost source: its measured tables drive the CostModel when the extra is
installed; without it the flag says how to install it."""

import builtins

import numpy as np
import pandas as pd
import pytest
from needs import needs_aic

from planner.cli import app, run_app
from profiler import perfdb
from profiler.costmodel import Batch
from profiler.errors import InputError
from profiler.gpus import resolve_gpu
from profiler.models import resolve_model

M8, H100 = resolve_model("llama-3.1-8b"), resolve_gpu("h100-sxm")


def test_without_the_extra_the_flag_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_aic(name, *a, **k):
        if name.startswith("aiconfigurator_core"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_aic)
    with pytest.raises(InputError, match=r"pip install 'pdsim\[aic\]'"):
        perfdb.PerfDBCostModel(M8, H100)
    dep = tmp_path / "d.yaml"
    dep.write_text("model: llama-3.1-8b\ngpu: h100-sxm\nworkers: {tp: 1}\n")
    code = run_app(app, ["simulate", "--deployment", str(dep), "--concurrency", "2", "--isl", "64", "--osl", "8",
                         "--requests", "4", "--perf-db", "aiconfigurator"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pdsim[aic]" in err[0]


def test_unknown_perf_db_source_is_an_input_error():
    with pytest.raises(InputError, match="unknown source 'vidur'"):
        perfdb.parse_perf_db("vidur", "vllm")
    assert perfdb.parse_perf_db("aiconfigurator", "vllm") == "vllm"
    assert perfdb.parse_perf_db("aiconfigurator:sglang", "vllm") == "sglang"


@needs_aic
def test_a_measured_gemm_is_returned_as_measured():
    cm = perfdb.PerfDBCostModel(M8, H100, tp=1, dtype="bf16", backend="vllm")
    table = pd.read_parquet(cm.sources[0])
    n, k = 6144, 4096  # Llama-3.1-8B QKV at TP1: (32 + 2 x 8) heads x 128, hidden 4096
    rows = table[(table.gemm_dtype == "bfloat16") & (table.n == n) & (table.k == k)]
    assert not rows.empty
    best = rows.groupby("m").latency.min()
    for m in best.index[::7]:
        assert cm._gemm_s(m, n, k) == pytest.approx(best[m] * 1e-3, rel=1e-9)


@needs_aic
def test_tables_give_the_physics_of_an_iteration():
    cm = perfdb.PerfDBCostModel(M8, H100, tp=1, dtype="fp8", backend="vllm")
    dec = [cm.iteration_s(Batch.of(decode_ctx=[2048] * b)) for b in (1, 16, 128)]
    assert dec[0] < dec[1] < dec[2] and dec[2] < 20 * dec[0]  # decode: weight-bound, batches amortise
    assert cm.iteration_s(Batch.of(decode_ctx=[16384] * 64)) > cm.iteration_s(Batch.of(decode_ctx=[1024] * 64))
    pf = [cm.iteration_s(Batch.of(prefill=[(n, 0)])) for n in (1024, 8192)]
    assert pf[1] > 6 * pf[0]  # prefill: compute-bound and attention grows with the square
    tp2 = perfdb.PerfDBCostModel(M8, H100, tp=2, dtype="fp8", backend="vllm")
    assert tp2.iteration_s(Batch.of(prefill=[(8192, 0)])) < pf[1]
    steps = cm.decode_steps_s(8, 8 * 1000, 50)
    assert steps.shape == (50,) and np.all(np.diff(steps) >= 0)
    assert steps[0] == pytest.approx(cm.iteration_s(Batch.of(decode_ctx=[1000] * 8)), rel=1e-6)


@needs_aic
def test_moe_layers_come_from_the_moe_table():
    m = resolve_model("qwen3-235b-a22b")
    cm = perfdb.PerfDBCostModel(m, H100, tp=8, dtype="fp8", backend="vllm")
    t = pd.read_parquet(next(p for p in cm.sources if p.name == "moe_perf.parquet"))
    rows = t[(t.hidden_size == 4096) & (t.inter_size == 1536) & (t.topk == 8) & (t.num_experts == 128)
             & (t.moe_tp_size * t.moe_ep_size == 8) & t.moe_dtype.isin(["fp8", "fp8_block"])]
    by_tp = rows[(rows.moe_tp_size == 8) & (rows.moe_ep_size == 1)]  # experts split by TP when measured so
    rows = by_tp if not by_tp.empty else rows[(rows.moe_tp_size == 1) & (rows.moe_ep_size == 8)]
    rows = rows[rows.distribution == "balanced"] if (rows.distribution == "balanced").any() else rows
    want = rows.groupby("num_tokens").latency.min()
    assert not want.empty and cm._moe.equals(want)
    dense_twin = perfdb.PerfDBCostModel(resolve_model("qwen3-32b"), H100, tp=8, dtype="fp8", backend="vllm")
    one = Batch.of(decode_ctx=[1024])
    assert cm.iteration_s(one) > dense_twin.iteration_s(one)  # 94 MoE layers read more weights than 64 dense
    assert cm.iteration_s(Batch.of(decode_ctx=[1024] * 64)) > cm.iteration_s(one)


@needs_aic
def test_models_and_gpus_without_tables_are_refused_clearly():
    with pytest.raises(InputError, match="uses MLA, whose tables are not wired"):
        perfdb.PerfDBCostModel(resolve_model("deepseek-v3"), H100)
    with pytest.raises(InputError, match="no tables for GPU 'cpu'"):
        perfdb.PerfDBCostModel(M8, resolve_gpu("cpu"))
    with pytest.raises(InputError, match="no gemm table .* for nosuch"):
        perfdb.PerfDBCostModel(M8, H100, backend="nosuch")


@needs_aic
def test_plan_screens_and_simulates_on_the_tables():
    from planner.plan import PlanRequest, build

    req = PlanRequest(model="llama-3.1-8b", ttft_ms=500, tpot_ms=30, isl=1000, osl=100, gpu="h100-sxm", gpus=2,
                      perf_db="aiconfigurator")
    _, screen, evaluator = build(req)
    assert isinstance(screen.cost_model(1), perfdb.PerfDBCostModel) and evaluator.perf_db == "aiconfigurator"
    with pytest.raises(InputError, match="give one cost source"):
        PlanRequest(model="llama-3.1-8b", ttft_ms=500, tpot_ms=30, isl=1000, osl=100, perf_db="aiconfigurator",
                    calibration="c.yaml").validate()
