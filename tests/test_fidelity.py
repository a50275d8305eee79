"""Fidelity against measured serving results: benchmark rows -> deployments, memory fit of what ran,
the load effects, and the replay end to end (planner/replay.py, profiler/calibration/)."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from needs import SILICON, needs_aic

from planner.benchmark_rows import concurrency_of, kv_cache_dtype, load_benchmark, row_case, weight_dtype
from planner.cli import app, run_app
from planner.engines import engine_memory_utilization, trtllm_max_num_tokens
from planner.replay import format_summary, replay, simulate_case, write_replay
from profiler.calibration import FIT_FILE, fitted_factors
from profiler.errors import InputError
from profiler.gpus import resolve_gpu
from profiler.memory import activation_bytes, memory_fit
from profiler.models import CATALOG, canonical_model_name
from profiler.roofline import engine_efficiency


def agg_row(model="meta-llama/Llama-3.1-70B", backend="vllm", tp=4, isl=1024, osl=1024, c=16, **kw) -> pd.Series:
    row = {"id": "t", "silicon_data_source": "", "backend": backend, "model_path": model, "system": "h100_sxm",
           "precision": "fp8", "mode": "agg", "isl": isl, "osl": osl, "gemm_quant_mode": "fp8",
           "moe_quant_mode": "fp8", "batch_size": c, "tp_size": tp, "pp_size": 1, "attention_dp_size": np.nan,
           "moe_tp_size": np.nan, "moe_ep_size": np.nan, "silicon_ttft_ms": 100.0, "silicon_tpot_ms": 10.0}
    row.update(kw)
    return pd.Series(row)


@pytest.mark.parametrize("hf_id, key", [
    ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"), ("nvidia/Llama-3.1-8B-Instruct-FP8", "llama-3.1-8b"),
    ("meta-llama/Meta-Llama-3.1-70B-Instruct", "llama-3.1-70b"), ("meta-llama/Llama-3.1-70B", "llama-3.1-70b"),
    ("Qwen/Qwen3-32B", "qwen3-32b"), ("qwen/qwen3-32b-fp8", "qwen3-32b"),
    ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b"), ("Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", "qwen3-235b-a22b"),
    ("deepseek-ai/DeepSeek-R1", "deepseek-v3"), ("deepseek-ai/DeepSeek-V3-0324", "deepseek-v3"),
    ("nvidia/DeepSeek-R1-FP4", "deepseek-v3"), ("openai/gpt-oss-120b", "gpt-oss-120b"),
    ("MiniMaxAI/MiniMax-M2.5", "minimax-m2.5"), ("MiniMaxAI/MiniMax-M2", "minimax-m2.5"),
])
def test_benchmark_model_ids_map_to_the_catalog(hf_id, key):
    assert canonical_model_name(hf_id) == key


def test_every_model_in_the_measured_file_is_known():
    ids = pd.read_csv(SILICON)["model_path"].unique()
    assert {i: canonical_model_name(i) for i in ids if canonical_model_name(i) is None} == {}


@pytest.mark.parametrize("cols, dtype", [
    ({"precision": np.nan, "gemm_quant_mode": np.nan, "moe_quant_mode": np.nan}, "bf16"),
    ({"precision": "fp8", "gemm_quant_mode": "fp8_block"}, "fp8"),
    ({"precision": "fp4", "gemm_quant_mode": "nvfp4", "moe_quant_mode": "nvfp4"}, "fp4"),
    ({"precision": np.nan, "gemm_quant_mode": np.nan, "model_path": "nvidia/Llama-3.1-8B-Instruct-FP8"}, "fp8"),
])
def test_weight_format_comes_from_quant_columns_then_the_checkpoint_name(cols, dtype):
    assert weight_dtype(agg_row(**cols)) == dtype


@pytest.mark.parametrize("cols, kv", [
    ({"backend": "trtllm"}, "fp8"),  # TRT-LLM serves an fp8/fp4 checkpoint with an fp8 cache
    ({"backend": "trtllm", "precision": "fp4", "gemm_quant_mode": "nvfp4"}, "fp8"),
    ({"backend": "trtllm", "precision": np.nan, "gemm_quant_mode": np.nan, "moe_quant_mode": np.nan}, "bf16"),
    ({"backend": "vllm"}, "bf16"),  # vLLM and SGLang keep bf16 unless the checkpoint carries KV scales
    ({"backend": "sglang"}, "bf16"),
    ({"backend": "vllm", "model_path": "nvidia/Llama-3.1-8B-Instruct-FP8"}, "fp8"),
])
def test_kv_cache_format_follows_the_engine_and_the_checkpoint(cols, kv):
    assert kv_cache_dtype(agg_row(**cols)) == kv


def test_trtllm_fp8_rows_held_the_kv_their_clients_needed():
    """TRT-LLM's Qwen3-32B fp8 rows at TP1 measure TTFT flat at 1.6 s while 64 clients x 4,224 tokens and 128 x
    2,176 (270-278k tokens) run, and queue beyond ~295k: more than a bf16 cache of that GPU holds. The cache
    pdsim gives those rows holds every client that ran un-queued."""
    df = load_benchmark(SILICON)
    ran = df[(df.backend == "trtllm") & (df.model_path == "Qwen/Qwen3-32B") & (df.tp_size == 1)
             & (df.batch_size * (df.isl + df.osl) <= 278_528) & (df.batch_size * (df.isl + df.osl) >= 270_000)]
    assert len(ran) == 3 and ran.silicon_ttft_ms.max() < 1700
    m, g = CATALOG["qwen3-32b"], resolve_gpu("h100-sxm")
    for i, r in ran.iterrows():
        case = row_case(r, i)
        p = case.deployment.workers
        fit = memory_fit(m, g, 1, "fp8", case.deployment.kv_dtype, p.max_batch_tokens,
                         case.deployment.gpu_memory_utilization)
        assert fit.kv_tokens >= r.batch_size * (r.isl + r.osl), (i, fit.kv_tokens)
        bf16 = memory_fit(m, g, 1, "fp8", "bf16", p.max_batch_tokens, case.deployment.gpu_memory_utilization)
        assert bf16.kv_tokens < r.batch_size * (r.isl + r.osl)  # the run says the cache was not bf16


def test_rows_that_cannot_be_expressed_are_skipped_with_a_reason():
    # fp4 weights on a GPU without fp4 tensor cores ran weight-only (vLLM's MXFP4 kernels on Hopper): predicted
    fp4 = row_case(agg_row(model="openai/gpt-oss-120b", precision="fp4", gemm_quant_mode="nvfp4"), 0)
    assert not fp4.skipped and fp4.deployment.dtype == "fp4"
    assert "pipeline parallelism" in row_case(agg_row(pp_size=2), 1).skip_reason
    assert "unknown model" in row_case(agg_row(model="acme/Frob-7B"), 2).skip_reason
    assert "unknown engine" in row_case(agg_row(backend="tgi"), 3).skip_reason
    ok = row_case(agg_row(), 4)
    assert not ok.skipped and ok.deployment.workers.tp == 4 and ok.concurrency == 16


def test_agg_and_disagg_rows_become_their_deployments():
    agg = row_case(agg_row(backend="trtllm", tp=2, c=64), 0)
    assert agg.deployment.topology == "agg" and agg.deployment.workers.max_seqs == 64
    assert not agg.deployment.workers.chunked_prefill  # TRT-LLM runs whole prompts by default
    dis = agg_row(model="Qwen/Qwen3-32B", backend="vllm", mode="disagg", isl=4000, osl=1000, batch_size=np.nan,
                  tp_size=np.nan, prefill_batch_size=1, prefill_num_workers=8, prefill_tp_size=1,
                  decode_batch_size=224, decode_num_workers=2, decode_tp_size=4)
    case = row_case(dis, 0)
    d = case.deployment
    assert (d.prefill.replicas, d.prefill.tp, d.decode.replicas, d.decode.tp, d.decode.max_seqs) == (8, 1, 2, 4, 224)
    assert case.concurrency == 448  # no silicon_concurrency: the decode pool's seats
    dis["silicon_data_source"] = "db; silicon_concurrency=60; measured=x"
    assert concurrency_of(dis) == 60


def test_memory_fit_expresses_attention_dp_and_expert_parallelism():
    ds, h100 = CATALOG["deepseek-v3"], resolve_gpu("h100-sxm")
    # TRT-LLM prefill worker of the file: 16 GPUs, attention DP 16, experts spread over all 16
    dp = memory_fit(ds, h100, 1, "fp8", "fp8", 8192, attn_dp=16)
    assert dp.fits and dp.weights_bytes < h100.hbm_bytes * 0.75  # 17 GB replicated + 1/16 of experts
    assert not memory_fit(ds, h100, 1, "fp8", "fp8", 8192).fits  # the whole model on one GPU


def test_a_gpu_holds_the_activations_of_its_attention_dp_ranks_share_of_the_budget():
    ds, gb200 = CATALOG["deepseek-v3"], resolve_gpu("gb200")
    # SGLang's prefill worker of four GB200 at attention DP 4: 16,384 tokens a rank, 65,536 the worker's budget
    worker = memory_fit(ds, gb200, 1, "fp8", "fp8", 4 * 16384, 0.95, attn_dp=4)
    rank = memory_fit(ds, gb200, 1, "fp8", "fp8", 16384, 0.95)
    assert worker.fits and worker.activation_bytes == rank.activation_bytes
    assert memory_fit(ds, gb200, 1, "fp8", "fp8", 16384, 0.95, attn_dp=4).activation_bytes < rank.activation_bytes
    m = CATALOG["qwen3-32b"]  # without attention DP the budget is the GPU's own
    assert memory_fit(m, gb200, 2, "fp8", "fp8", 8192).activation_bytes == activation_bytes(m, 2, 8192)


def moe_row(tp=1, moe_tp=2, moe_ep=1, dp=np.nan, c=8, **kw) -> pd.Series:
    return agg_row(model="Qwen/Qwen3-235B-A22B-FP8", system="h200_sxm", tp=tp, c=c, isl=1000, osl=100,
                   moe_tp_size=moe_tp, moe_ep_size=moe_ep, attention_dp_size=dp, **kw)


def test_experts_over_more_gpus_than_tp_make_the_workers_tp_where_the_row_says_no_attention_dp():
    # vLLM's Qwen3-235B rows on H200: tp 1, moe_tp 2, no attention_dp_size (235 GB of fp8 weights: two GPUs)
    case = row_case(moe_row(), 0)
    w = case.deployment.workers
    assert not case.skip_reason and (w.tp, w.attention_dp) == (2, 1)
    assert case.concurrency == 8 and w.max_seqs == 8
    assert "TP 2 over the experts' GPUs (tp 1, moe_tp x moe_ep 2)" in case.assumed
    # ... they decode as the tp 2 rows do: the same deployment
    assert row_case(moe_row(tp=2), 0).deployment.workers == w
    assert row_case(moe_row(tp=2, moe_tp=4), 0).deployment.workers.tp == 4
    assert row_case(moe_row(tp=1, moe_tp=1, moe_ep=4), 0).deployment.workers.tp == 4
    said = row_case(moe_row(tp=2, moe_tp=2), 0)  # experts on the attention's GPUs: nothing unsaid
    assert said.assumed == ""
    given = row_case(moe_row(tp=1, moe_tp=4, dp=4, c=2), 0)  # attention_dp_size said: the rows' rule holds
    assert (given.deployment.workers.tp, given.deployment.workers.attention_dp, given.concurrency) == (4, 4, 8)
    dense = row_case(agg_row(tp=2, moe_tp_size=8, moe_ep_size=1), 0)  # a dense model has no experts
    assert dense.deployment.workers.tp == 2


def test_a_row_whose_parallelism_cannot_hold_the_weights_is_not_called_out_of_memory():
    # InferenceMAX's GB200 disagg records give every pool one GPU: DeepSeek-R1 needs several
    row = pd.Series({"id": "t", "silicon_data_source": "source_file=2026-04-06.csv; model=DeepSeek-R1; "
                     "silicon_concurrency=64", "backend": "sglang", "model_path": "deepseek-ai/DeepSeek-R1",
                     "system": "gb200", "precision": "fp8", "mode": "disagg", "isl": 1024, "osl": 1024,
                     "gemm_quant_mode": "fp8", "moe_quant_mode": "fp8_block",
                     **{f"{p}{k}": 1.0 for p in ("prefill_", "decode_")
                        for k in ("tp_size", "pp_size", "attention_dp_size", "moe_tp_size", "moe_ep_size")},
                     "silicon_ttft_ms": 880.0, "silicon_tpot_ms": 15.0})
    why = row_case(row, 0).skip_reason
    assert "cannot hold the weights" in why and "does not describe the deployment" in why
    assert "out of memory" not in why


def test_trtllm_kv_share_is_of_the_memory_weights_leave():
    m, g = CATALOG["qwen3-32b"], resolve_gpu("h100-sxm")
    u = engine_memory_utilization("trtllm", m, g, 1, "fp8", 8192)
    assert engine_memory_utilization("vllm", m, g, 1, "fp8", 8192) == 0.90 < u < 0.98
    # free_gpu_memory_fraction 0.90 of what weights, activations and the reserve leave, as a share of all HBM
    fit = memory_fit(m, g, 1, "fp8", "bf16", 8192, 1.0)
    used = fit.weights_bytes + fit.activation_bytes + fit.reserve_bytes
    assert u == pytest.approx((used + 0.90 * (g.hbm_bytes - used)) / g.hbm_bytes, rel=1e-12)
    small = engine_memory_utilization("trtllm", CATALOG["llama-3.1-8b"], g, 1, "fp8", 8192)
    assert small < u  # less left to weights: the same 0.9 of a larger free share is a smaller share of HBM


def test_no_configuration_that_ran_is_refused_as_out_of_memory():
    df = load_benchmark(SILICON)
    refused = []
    for i, (_, r) in enumerate(df.iterrows()):
        case = row_case(r, i)
        assert "out of memory" not in case.skip_reason, (i, case.skip_reason)
        m, g, dt = CATALOG[canonical_model_name(r.model_path)], resolve_gpu("h100-sxm"), weight_dtype(r)
        for pre in ([""] if r["mode"] == "agg" else ["prefill_", "decode_"]):
            tp = int(r[f"{pre}tp_size"])
            dp = int(r[f"{pre}attention_dp_size"]) if r[f"{pre}attention_dp_size"] > 1 else 1
            u = engine_memory_utilization(r.backend, m, g, tp, dt, 8192)
            fit = memory_fit(m, g, tp, dt, kv_cache_dtype(r), 8192, u, attn_dp=dp)
            if fit.kv_tokens < r.isl + r.osl:
                refused.append((i, r.model_path, pre, tp, dp, fit.kv_tokens))
    assert refused == []


@needs_aic
def test_no_configuration_that_ran_on_other_gpus_is_refused_as_out_of_memory():
    from profiler.perfdb import data_root

    df = load_benchmark(data_root().parent / "silicon_sample.csv")  # every GPU's rows (bench/fidelity --held-out)
    why = [row_case(r, i).skip_reason for i, (_, r) in enumerate(df.iterrows())]
    assert not [w for w in why if "out of memory" in w]
    # rows whose stated GPUs cannot hold the weights say so: InferenceMAX's GB200 disagg DeepSeek-R1 records
    impossible = [i for i, w in enumerate(why) if "cannot hold the weights" in w]
    assert impossible and set(df.iloc[impossible]["model_path"]) == {"deepseek-ai/DeepSeek-R1"}


def test_predicted_ttft_rises_with_concurrency_at_fixed_lengths():
    ttft = [simulate_case(row_case(agg_row(c=c), 0))[0] for c in (4, 16, 64)]
    assert ttft[0] < ttft[1] < ttft[2]


def test_predicted_tpot_falls_as_osl_grows_prefill_interference_amortised():
    tpot = [simulate_case(row_case(agg_row(model="Qwen/Qwen3-32B", tp=2, c=32, osl=osl), 0))[1]
            for osl in (128, 512, 1024)]
    assert tpot[0] > tpot[1] > tpot[2]


def test_the_measured_phase_opens_with_every_client_at_once():
    """aiperf drains its warm-up before measuring, so the measured phase opens with a burst of all clients whose
    prompts queue behind each other; its weight in the mean is one round of ``rounds``."""
    case = row_case(agg_row(c=64, isl=2048, osl=256), 0)
    burst, steady = simulate_case(case, rounds=1), simulate_case(case, rounds=10**9)
    assert burst[0] > 3 * steady[0]  # 64 prompts of 2048 tokens at once: most wait for many others' prefills
    for rounds in (2, 10):
        mixed = simulate_case(case, rounds=rounds)
        for m in (0, 1):
            assert mixed[m] == pytest.approx(burst[m] / rounds + steady[m] * (1 - 1 / rounds), rel=1e-6)
    one = row_case(agg_row(c=1), 0)  # one client: nothing queues, the burst is the steady state
    assert simulate_case(one, rounds=1)[0] == pytest.approx(simulate_case(one, rounds=10)[0], rel=1e-9)


def test_layer_overhead_is_paid_once_per_layer_per_iteration():
    from dataclasses import replace

    from profiler.costmodel import Batch
    from profiler.roofline import RooflineCostModel

    base = engine_efficiency("vllm")
    for model in ("llama-3.1-8b", "qwen3-32b"):
        cms = [RooflineCostModel(CATALOG[model], resolve_gpu("h100-sxm"), 2, "bf16", None,
                                 replace(base, layer_overhead_s=x)) for x in (0.0, 5e-5)]
        for b in (Batch.of(decode_ctx=[1000] * 8), Batch.of(prefill=[(512, 0)], decode_ctx=[300])):
            extra = cms[1].iteration_s(b) - cms[0].iteration_s(b)
            assert extra == pytest.approx(5e-5 * CATALOG[model].layers, rel=1e-9)
        np.testing.assert_allclose(cms[1].decode_steps_s(8, 8000, 3) - cms[0].decode_steps_s(8, 8000, 3),
                                   5e-5 * CATALOG[model].layers, rtol=1e-9)


def test_allreduce_latency_is_paid_per_call_under_tensor_parallelism_only():
    """Two all-reduces a layer, each paying the engine's per-call latency whatever its size: a decode step's
    small all-reduces cost it in full, a long prompt's the same absolute amount; one GPU has none."""
    from dataclasses import replace

    from profiler.costmodel import Batch
    from profiler.roofline import RooflineCostModel

    base = replace(engine_efficiency("vllm"), allreduce_latency_s=0.0)
    layers = CATALOG["llama-3.1-70b"].layers
    for tp, calls in ((1, 0), (2, 2 * layers), (8, 2 * layers)):
        cms = [RooflineCostModel(CATALOG["llama-3.1-70b"], resolve_gpu("h100-sxm"), tp, "fp8", None,
                                 replace(base, allreduce_latency_s=x)) for x in (0.0, 1e-5)]
        for b in (Batch.of(decode_ctx=[1000] * 8), Batch.of(prefill=[(4096, 0)], decode_ctx=[300])):
            assert cms[1].iteration_s(b) - cms[0].iteration_s(b) == pytest.approx(1e-5 * calls, abs=1e-12)
        np.testing.assert_allclose(cms[1].decode_steps_s(8, 8000, 3) - cms[0].decode_steps_s(8, 8000, 3),
                                   1e-5 * calls, atol=1e-12)


def test_experts_run_at_their_own_share_of_peak_and_dense_models_do_not_see_it():
    from profiler.costmodel import Batch
    from profiler.roofline import Efficiency, RooflineCostModel

    gpu = resolve_gpu("h100-sxm")

    def cm(model, **kw):
        return RooflineCostModel(CATALOG[model], gpu, 4, "fp8", "bf16", Efficiency(**kw))

    tokens = 8192.0  # a long prompt: the experts' GEMMs are compute-bound
    same = cm("qwen3-235b-a22b", gemm_compute=0.6)
    assert cm("qwen3-235b-a22b", gemm_compute=0.6, moe_compute=0.0)._moe_s(tokens, max) == same._moe_s(tokens, max)
    slow = cm("qwen3-235b-a22b", gemm_compute=0.6, moe_compute=0.2)
    assert slow._moe_s(tokens, max) == pytest.approx(3 * same._moe_s(tokens, max), rel=1e-12)
    assert slow._linear_s(tokens, slow._attn_w, slow._wb_attn, 1.0, max) == same._linear_s(
        tokens, same._attn_w, same._wb_attn, 1.0, max)  # attention projections keep gemm_compute
    b = Batch.of(prefill=[(4096, 0)], decode_ctx=[300] * 4)
    assert cm("llama-3.1-70b", moe_compute=0.2).iteration_s(b) == cm("llama-3.1-70b").iteration_s(b)


def test_fitted_factors_are_the_roofline_default():
    fit = json.loads(FIT_FILE.read_text())
    for engine, factors in fit["engines"].items():
        assert fitted_factors(engine) == factors
        eff = engine_efficiency(engine)
        assert all(getattr(eff, k) == pytest.approx(v) for k, v in factors.items())
        assert 0 < eff.gemm_compute <= 1 and 0 < eff.gemm_memory <= 1


def test_bad_benchmark_files_name_the_problem(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("model_path,backend\nx,vllm\n")
    with pytest.raises(InputError, match="missing columns"):
        load_benchmark(bad)
    rows = pd.DataFrame([agg_row(), agg_row()]).astype({"isl": object})
    rows.loc[1, "isl"] = "lots"
    rows.to_csv(bad, index=False)
    with pytest.raises(InputError, match="line 3: column 'isl'"):
        load_benchmark(bad)
    assert run_app(app, ["replay-benchmark", str(tmp_path / "none.csv")]) == 2


def test_replay_of_a_few_rows_end_to_end(tmp_path, capsys):
    rows = pd.DataFrame([agg_row(c=4), agg_row(c=32, isl=2048, osl=256),
                         agg_row(model="meta-llama/Llama-3.1-8B-Instruct", backend="trtllm", tp=1, c=8,
                                 precision=np.nan, gemm_quant_mode=np.nan, moe_quant_mode=np.nan),
                         agg_row(pp_size=2)])
    src = tmp_path / "rows.csv"
    rows.to_csv(src, index=False)
    assert run_app(app, ["replay-benchmark", str(src), "--out", str(tmp_path / "out")]) == 0
    out = pd.read_csv(tmp_path / "out" / "rows.csv", keep_default_na=False)
    assert list(out.columns[: len(rows.columns)]) == list(rows.columns)
    assert (out["skip_reason"][:3] == "").all() and "pipeline parallelism" in out["skip_reason"][3]
    pred = pd.to_numeric(out["pred_ttft_ms"][:3])
    assert (pred > 0).all() and (pd.to_numeric(out["pred_tpot_ms"][:3]) > 0).all()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["predicted"] == 3 and summary["skipped"] == 1
    assert set(summary["per_engine"]) == {"vllm", "trtllm"} and "ttft_median_ape" in summary["overall"]
    assert "plotly" in (tmp_path / "out" / "report.html").read_text()[:10_000_000]
    assert "TTFT med" in capsys.readouterr().out


def test_replay_of_measured_rows_lands_near_the_measurement():
    df = load_benchmark(SILICON)
    sample = df[(df["model_path"] == "meta-llama/Llama-3.1-70B") & (df["osl"] == 1024) & (df["isl"] == 1024)]
    result = replay(sample)
    o = result.summary["overall"]
    assert result.summary["predicted"] == len(sample) == 15
    assert o["tpot_median_ape"] < 25 and o["ttft_median_ape"] < 60


def test_prefill_first_engine_keeps_a_wave_in_lock_step():
    """SGLang runs waiting prompts before the decodes: a wave of N clients is wholly prefilled first, so the
    mean TTFT grows with N (about half the wave's prefill) and each TPOT carries the wait for the wave."""
    from dataclasses import replace

    from profiler.roofline import RooflineCostModel, engine_efficiency
    from simulator import simulate
    from simulator.deployment import Deployment, PoolSpec, parse_deployment
    from traces.synthetic import synthetic_workload

    # the scheduling alone (request terms zero): a frontend delay shifts when KV runs short in this tight cache
    eff = replace(engine_efficiency("sglang"), ttft_overhead_s=0.0, ttft_wait_prefills=0.0)
    cm = RooflineCostModel(CATALOG["qwen3-32b"], resolve_gpu("h100-sxm"), 4, "bf16", "bf16", eff)

    def run(prefill_first: bool, clients: int):
        dep = Deployment("qwen3-32b", gpu="h100-sxm", dtype="bf16", engine="sglang",
                         workers=PoolSpec(tp=4, max_seqs=clients, prefill_first=prefill_first))
        wl = synthetic_workload(requests=3 * clients, isl=2048, osl=64, concurrency=clients, warmup_requests=clients)
        r = simulate(dep, wl, cost_models={"workers": cm}).requests
        r = r[r["measured"]]
        return r["ttft_s"].mean(), r["tpot_s"].mean(), r["prefill_start_s"].min()

    ttft_16, tpot_16, _ = run(True, 16)
    ttft_64, tpot_64, _ = run(True, 64)
    mixed_ttft, _, _ = run(False, 64)
    assert ttft_64 > 3 * ttft_16 and ttft_64 > 2 * mixed_ttft
    assert tpot_64 > tpot_16
    assert parse_deployment({"model": "tiny", "workers": {"prefill_first": True}}).workers.prefill_first
    with pytest.raises(InputError, match="prefill_first: must be true or false"):
        parse_deployment({"model": "tiny", "workers": {"prefill_first": "yes"}})


def test_sglang_rows_run_prefill_first_and_in_lock_step():
    case = row_case(agg_row(model="Qwen/Qwen3-32B", backend="sglang", precision=np.nan, gemm_quant_mode=np.nan,
                            moe_quant_mode=np.nan, c=64, isl=1024, osl=128), 0)
    assert case.deployment.workers.prefill_first and case.dtype == "bf16"
    assert not row_case(agg_row(), 1).deployment.workers.prefill_first


def test_tensor_parallel_across_nodes_pays_the_rdma_all_reduce():
    from dataclasses import replace

    from profiler.costmodel import Batch
    from profiler.roofline import RooflineCostModel

    m, h100 = CATALOG["llama-3.1-70b"], resolve_gpu("h100-sxm")
    one_node = replace(h100, max_tp_per_node=16)  # a make-believe 16-GPU NVLink domain
    b = Batch.of(prefill=[(8192, 0)])
    two_nodes, nvlink = (RooflineCostModel(m, g, 16, "fp8").iteration_s(b) for g in (h100, one_node))
    assert two_nodes > 1.2 * nvlink  # each GPU's 1/8 share crosses a 50 GB/s NIC instead of 450 GB/s NVLink
    tp8 = [RooflineCostModel(m, g, 8, "fp8").iteration_s(b) for g in (h100, one_node)]
    assert tp8[0] == tp8[1]  # inside one node nothing changes


# ---- the request terms are the simulator's: every caller gets the same TTFT ---------------------------------
def _terms_setup(overhead_s: float, wait: float):
    from dataclasses import replace

    from profiler.roofline import RooflineCostModel
    from simulator.deployment import Deployment, PoolSpec

    eff = replace(engine_efficiency("vllm"), ttft_overhead_s=overhead_s, ttft_wait_prefills=wait)
    cm = RooflineCostModel(CATALOG["llama-3.1-8b"], resolve_gpu("h100-sxm"), 1, "bf16", "bf16", eff)
    return Deployment("llama-3.1-8b", gpu="h100-sxm", dtype="bf16", workers=PoolSpec(max_seqs=64)), cm


def test_a_request_reaches_its_worker_after_the_frontend_time():
    from profiler.costmodel import Batch
    from simulator import simulate
    from traces.synthetic import synthetic_workload

    dep, cm = _terms_setup(0.05, 0.0)
    r = simulate(dep, synthetic_workload(requests=3, isl=2000, osl=20, concurrency=1, seed=0),
                 cost_models={"workers": cm}).requests
    np.testing.assert_allclose(r["prefill_start_s"] - r["arrival_s"], 0.05, rtol=1e-12)
    np.testing.assert_allclose(r["ttft_s"], 0.05 + cm.iteration_s(Batch.of(prefill=[(2000, 0)])), rtol=1e-12)
    np.testing.assert_allclose(r["arrival_s"][1:], r["last_token_s"][:-1])  # the client waits for it too


def test_a_new_prompt_waits_its_prefills_behind_running_decodes_and_fast_forward_agrees():
    """admission_wait_prefills = 3: a prompt reaching a busy engine is admitted at the first step boundary after
    three times its own prefill run alone; an idle engine takes it at once; stepping and fast-forward agree."""
    from profiler.costmodel import Batch
    from simulator import simulate
    from traces.workload import Workload, make_requests

    wl = Workload(make_requests([0.0, 0.0, 0.3, 0.31, 0.7], [500, 500, 1000, 800, 300], [400, 300, 50, 60, 20]))
    dep, cm0 = _terms_setup(0.0, 0.0)
    ff = simulate(dep, wl, cost_models={"workers": cm0}, admission_wait_prefills=3.0)
    step = simulate(dep, wl, cost_models={"workers": cm0}, fast_forward=False, admission_wait_prefills=3.0)
    assert ff.iterations == step.iterations
    cols = ["prefill_start_s", "first_token_s", "last_token_s"]
    np.testing.assert_allclose(ff.requests[cols].to_numpy(), step.requests[cols].to_numpy(), rtol=1e-9, atol=1e-9)
    base = simulate(dep, wl, cost_models={"workers": cm0}).requests
    r = ff.requests
    assert (r["prefill_start_s"][:2] == 0).all()  # an idle engine takes prompts at once
    step_s = 1.1 * cm0.iteration_s(Batch.of(prefill=[(800, 0)], decode_ctx=[700, 600, 300]))  # a step, at most
    solo = np.array([cm0.iteration_s(Batch.of(prefill=[(n, 0)])) for n in (1000, 300)])
    wait, wait0 = (x["prefill_start_s"][[2, 4]] - x["arrival_s"][[2, 4]] for x in (r, base))
    assert (wait0 < step_s).all()  # without the term: the end of the step in flight
    assert (wait >= 3 * solo).all() and (wait < 3 * solo + step_s).all()  # with it: then the next step boundary
    with pytest.raises(InputError, match="admission_wait_prefills must be >= 0"):
        simulate(dep, wl, cost_models={"workers": cm0}, admission_wait_prefills=-1.0)


def test_a_benchmarks_admission_wait_never_reaches_a_trace():
    """ttft_wait_prefills is what fixed-length benchmark clients in step cost (fitted on them, applied by their
    replay): a trace's requests queue as they arrive, whatever the engine's fitted value."""
    from simulator import simulate
    from traces.synthetic import synthetic_workload

    dep, cm0 = _terms_setup(0.0, 0.0)
    _, cm = _terms_setup(0.0, 3.0)
    wl = synthetic_workload(requests=80, isl=1500, osl=100, rate=8.0, seed=4)
    a = simulate(dep, wl, cost_models={"workers": cm0}).requests
    b = simulate(dep, wl, cost_models={"workers": cm}).requests
    pd.testing.assert_frame_equal(a, b)
    waited = simulate(dep, wl, cost_models={"workers": cm0}, admission_wait_prefills=3.0).requests
    assert waited["ttft_s"].mean() > 1.5 * a["ttft_s"].mean()


def test_a_cost_model_without_request_terms_behaves_as_zero():
    from simulator import simulate
    from traces.synthetic import synthetic_workload

    class Bare:  # a measured profile's shape: no Efficiency
        def __init__(self, cm):
            self.iteration_s, self.decode_steps_s, self.transfer_s = cm.iteration_s, cm.decode_steps_s, cm.transfer_s

    dep, cm0 = _terms_setup(0.0, 0.0)
    wl = synthetic_workload(requests=60, isl=1500, osl=100, rate=6.0, seed=3)
    a = simulate(dep, wl, cost_models={"workers": cm0}).requests
    b = simulate(dep, wl, cost_models={"workers": Bare(cm0)}).requests
    pd.testing.assert_frame_equal(a, b)


def test_estimate_and_simulation_agree_on_the_request_terms():
    """The analytic closed loop (calibration, emit) holds the same frontend time and admission wait."""
    from planner.calibrate import closed_loop_estimate, open_loop_estimate
    from profiler.costmodel import Batch

    dep, cm0 = _terms_setup(0.0, 0.0)
    _, cm = _terms_setup(0.05, 4.0)
    t0, p0 = closed_loop_estimate(dep, {"workers": cm0}, 1000, 200, 16)
    t1, p1 = closed_loop_estimate(dep, {"workers": cm}, 1000, 200, 16)
    solo = cm.iteration_s(Batch.of(prefill=[(1000, 0)]))
    assert p1 == pytest.approx(p0, rel=1e-9) and t1 - t0 == pytest.approx(0.05 + 4 * solo, rel=1e-9)
    # open-loop arrivals (and clients of varied lengths) are not in step: the frontend time only
    _, frontend_only = _terms_setup(0.05, 0.0)
    assert open_loop_estimate(dep, {"workers": cm}, 1000, 200, 2.0) == open_loop_estimate(
        dep, {"workers": frontend_only}, 1000, 200, 2.0)
    t2, _ = closed_loop_estimate(dep, {"workers": cm}, 1000, 200, 16, in_step=False)
    assert t2 - t0 == pytest.approx(0.05, rel=1e-9)


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss-120b"])
def test_roofline_scalar_and_vector_paths_agree(model):
    """iteration_s runs on plain floats, decode_steps_s / mixed_steps_s on arrays: the same arithmetic."""
    from profiler.costmodel import Batch
    from profiler.roofline import RooflineCostModel

    for tp in (1, 8, 16):
        cm = RooflineCostModel(CATALOG[model], resolve_gpu("h100-sxm"), tp, "fp8", None, engine_efficiency("vllm"))
        steps = cm.decode_steps_s(7, 7 * 3000, 4)
        one = [cm.iteration_s(Batch.of(decode_ctx=[3000 + j] * 7)) for j in range(4)]
        np.testing.assert_allclose(steps, one, rtol=1e-12)
        mixed = cm.mixed_steps_s(np.array([0.0, 5.0]), 2000.0, np.array([512.0, 300.0]), np.array([100.0, 0.0]))
        one = [cm.iteration_s(Batch.of(prefill=[(512, 100)])),
               cm.iteration_s(Batch.of(prefill=[(300, 0)], decode_ctx=[2000] * 5))]
        np.testing.assert_allclose(mixed, one, rtol=1e-12)


def test_each_row_runs_on_the_gpu_its_system_column_names_unless_one_is_given():
    b300 = row_case(agg_row(system="b300_sxm"), 0)
    assert not b300.skipped and b300.deployment.gpu == "b300"
    assert row_case(agg_row(system="b300_sxm"), 1, "h200-sxm").deployment.gpu == "h200-sxm"  # --system overrides
    assert "unknown GPU system 'mi300x'" in row_case(agg_row(system="mi300x"), 2).skip_reason
    assert "pass --system" in row_case(agg_row(system=np.nan), 3).skip_reason


@pytest.mark.parametrize("system, name", [("h100_sxm", "h100-sxm"), ("B200_SXM", "b200"), ("gb200_sxm", "gb200"),
                                          ("b300_sxm", "b300"), ("gb300", "gb300"), ("h20_sxm", "h20"),
                                          ("h800_sxm", "h800"), ("h200_sxm", "h200-sxm")])
def test_benchmark_system_names_map_to_the_gpu_catalog(system, name):
    from profiler.gpus import canonical_gpu_name, resolve_gpu

    assert canonical_gpu_name(system) == name
    gpu = resolve_gpu(name)
    assert gpu.bf16_flops > 0 and gpu.hbm_bw_bytes_s > 0 and gpu.hbm_bytes > 0


def test_blackwell_ultra_has_more_fp4_and_memory_and_nvl72_keeps_tp_on_nvlink():
    from profiler.gpus import resolve_gpu

    b200, b300, gb200 = resolve_gpu("b200"), resolve_gpu("b300"), resolve_gpu("gb200")
    assert b300.fp4_flops > b200.fp4_flops and b300.hbm_bytes > b200.hbm_bytes
    assert b300.fp8_flops == b200.fp8_flops and b300.bf16_flops == b200.bf16_flops
    assert gb200.max_tp_per_node == 72 and b200.max_tp_per_node == 8


def test_sglang_sizes_its_chunk_and_memory_share_by_the_devices_memory():
    from planner.engines import sglang_memory_defaults

    h100, h200, b200 = resolve_gpu("h100-sxm"), resolve_gpu("h200-sxm"), resolve_gpu("b200")
    chunk, frac = sglang_memory_defaults(h100, 1)  # 512 + 8192 x 1.5 + 256 x 2 + 128 MiB reserved of 81920 MiB
    assert chunk == 8192 and frac == pytest.approx(1 - 13440 / 81920, abs=1e-3)
    assert sglang_memory_defaults(h100, 8)[1] < frac  # more parallelism, more reserved
    assert sglang_memory_defaults(b200, 8)[0] == 16384 and sglang_memory_defaults(h200, 8)[0] == 8192
    assert frac < sglang_memory_defaults(h200, 1)[1] < 1  # the same reserve of a larger memory
    assert sglang_memory_defaults(b200, 1)[1] < sglang_memory_defaults(h200, 1)[1]  # twice the chunk's activations
    row = agg_row(model="Qwen/Qwen3-32B", backend="sglang", tp=1, precision=np.nan, gemm_quant_mode=np.nan,
                  moe_quant_mode=np.nan)
    dep = row_case(row, 0).deployment
    assert dep.gpu_memory_utilization == pytest.approx(frac, abs=1e-3) and dep.workers.max_batch_tokens == 8192


def test_a_row_that_ran_where_the_default_memory_share_cannot_hold_one_request_gets_the_raised_share():
    from planner.benchmark_rows import RAISED_MEMORY_FRACTION

    # DeepSeek-R1 fp8 on 4 x B200 (168 GB of weights per GPU): SGLang's default share leaves no KV cache
    row = agg_row(model="deepseek-ai/DeepSeek-R1", backend="sglang", tp=4, system="b200_sxm", isl=8192, osl=1024,
                  c=8, gemm_quant_mode="fp8", moe_quant_mode="fp8_block")
    case = row_case(row, 0)
    assert not case.skipped and case.deployment.gpu_memory_utilization == RAISED_MEMORY_FRACTION
    assert "a memory share of 0.95, raised from the engine's default" in case.assumed  # said, as every assumption
    # ... on 4 x H200 the weights alone do not fit: no engine ran that, the row cannot be what it says
    assert "cannot hold the weights" in row_case(agg_row(**{**row.to_dict(), "system": "h200_sxm"}), 1).skip_reason


def test_gpu_memory_is_what_the_device_reports():
    from profiler.gpus import MiB

    assert resolve_gpu("h200-sxm").hbm_bytes == 143771 * MiB  # nvidia-smi; the datasheet says 141 GB
    assert resolve_gpu("b200").hbm_bytes == 183359 * MiB


def test_a_file_of_several_gpus_reports_its_error_per_gpu(tmp_path, capsys):
    rows = pd.DataFrame([agg_row(c=4), agg_row(c=4, system="h200_sxm"), agg_row(c=8, system="b200_sxm")])
    src = tmp_path / "rows.csv"
    rows.to_csv(src, index=False)
    assert run_app(app, ["replay-benchmark", str(src), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["per_gpu"]) == {"h100-sxm", "h200-sxm", "b200"}
    assert "  b200 " in capsys.readouterr().out
    out = pd.read_csv(tmp_path / "out" / "rows.csv")
    assert "pdsim_gpu" not in out.columns and list(out.columns[: len(rows.columns)]) == list(rows.columns)


def test_vllm_batches_by_its_own_defaults_for_the_gpu():
    from planner.engines import vllm_batch_defaults

    assert vllm_batch_defaults(resolve_gpu("h100-sxm")) == (8192, 1024)
    assert vllm_batch_defaults(resolve_gpu("a100")) == (2048, 256)  # 80 GB, but vLLM's A100 carve-out
    assert vllm_batch_defaults(resolve_gpu("l40s")) == (2048, 256)
    on_a100 = row_case(agg_row(system="a100_sxm", c=512, precision="bf16", gemm_quant_mode=np.nan,
                               moe_quant_mode=np.nan, model="meta-llama/Llama-3.1-8B-Instruct", tp=1), 0)
    assert on_a100.deployment.workers.max_batch_tokens == 2048 and on_a100.deployment.workers.max_seqs == 256


def test_trtllm_budget_holds_the_prompt_beside_the_decode_batch_so_long_prompts_do_not_starve():
    from planner.engines import trtllm_max_num_tokens

    assert trtllm_max_num_tokens(1024, 16) == 2560  # 1024 + 16 + 1500 = 2540, in whole blocks of 32
    case = row_case(agg_row(backend="trtllm", system="h200_sxm", tp=8, isl=8192, osl=64, c=8), 0)
    pool = case.deployment.workers
    assert not pool.chunked_prefill and pool.max_batch_tokens >= 8192 + 8
    disagg = row_case(agg_row(backend="trtllm", mode="disagg", isl=8192, prefill_num_workers=1, prefill_tp_size=8,
                              prefill_batch_size=1, decode_num_workers=1, decode_tp_size=8, decode_batch_size=8,
                              silicon_data_source="silicon_concurrency=8"), 0)
    assert disagg.deployment.pools["prefill"].max_batch_tokens >= 8192
    # with the library's 8192 a prompt of 8192 tokens never joins a running batch: each waits for it to drain
    from dataclasses import replace

    starved = replace(case, deployment=replace(case.deployment, workers=replace(pool, max_batch_tokens=8192)))
    ttft_s, _ = simulate_case(case, requests_per_client=3, rounds=3)
    starved_ttft_s, _ = simulate_case(starved, requests_per_client=3, rounds=3)
    assert ttft_s < starved_ttft_s / 3


def test_replay_reports_its_progress_row_by_row():
    rows = pd.DataFrame([agg_row(c=2, osl=16), agg_row(c=4, osl=16), agg_row(model="no/such-model")])
    seen = []
    result = replay(rows, progress=lambda done, total: seen.append((done, total)), requests_per_client=2, rounds=2)
    assert seen == [(1, 2), (2, 2)]  # the unknown model is skipped before simulating
    assert result.summary["predicted"] == 2


def test_what_a_row_leaves_unsaid_is_reported_as_assumed_not_hidden(tmp_path):
    said = agg_row(mode="disagg", isl=1024, osl=16, prefill_num_workers=1, prefill_tp_size=4, prefill_batch_size=1,
                   decode_num_workers=1, decode_tp_size=4, decode_batch_size=4,
                   silicon_data_source="silicon_concurrency=4")
    unsaid = said.drop(["prefill_num_workers", "decode_num_workers", "decode_batch_size"])
    assert row_case(said, 0).assumed == ""
    assert "one prefill worker, one decode worker" in row_case(unsaid, 1).assumed
    result = replay(pd.DataFrame([said, unsaid]), requests_per_client=2, rounds=2)
    assert list(result.rows["assumed"] != "") == [False, True]
    assert sum(result.summary["assumptions"].values()) == 1
    assert "assumed    1: one prefill worker" in format_summary(result.summary)
    paths = write_replay(result, tmp_path / "out")
    assert "Predicted on assumptions" in paths["report"].read_text()
    assert pd.read_csv(paths["rows"])["assumed"].notna().tolist() == [False, True]
    # clients: a disagg row's source names none (the decode seats are taken); an agg row's id leaves c{N} empty
    seats = row_case(said.drop("silicon_data_source"), 2)
    assert (seats.concurrency, seats.assumed) == (4, "as many clients as decode seats (the row does not say)")
    no_c = row_case(agg_row(id="qwen3_32b_h100_sxm_trtllm_agg_4000x1000_c_tp2_epnone_1", c=64), 3)
    assert (no_c.concurrency, no_c.assumed) == (64, "as many clients as the batch size (the row does not say)")
    assert row_case(agg_row(id="qwen3_32b_h100_sxm_vllm_agg_1024x128_c64_tp2", c=64), 4).assumed == ""


INFERENCEMAX = "source_file=2026-04-06.csv; model=Llama-3.1-70B; silicon_concurrency=8; measured=2025-10-29; wip=False"


def test_inferencemax_rows_are_replayed_with_its_clients_varied_lengths(tmp_path):
    """InferenceMAX's client draws every length uniformly from [0.8 L, L] and sends 10 x CONC requests through CONC
    slots at once: simulated as it ran, its clients fall out of step and no prompt waits for a wave; an aiperf
    row (fixed lengths) keeps the fitted admission wait of clients partly in step."""
    from profiler.costmodel import Batch
    from profiler.roofline import RooflineCostModel

    imax = row_case(agg_row(c=8, isl=8192, osl=1024, tp=8, silicon_data_source=INFERENCEMAX), 0)
    fixed = row_case(agg_row(c=8, isl=8192, osl=1024, tp=8), 1)
    assert (imax.range_ratio, fixed.range_ratio) == (0.8, 1.0)
    assert (imax.mean_length(1024), fixed.mean_length(1024)) == (922, 1024)
    assert imax.mean_length(1000) == 900 and "InferenceMAX" in imax.client
    assert row_case(agg_row(silicon_data_source="source_file=/data/h100_sxm/vllm/0.12.0/x.csv"), 2).range_ratio == 1
    eff = replace(engine_efficiency("vllm"), ttft_wait_prefills=2.0)
    varied_ttft, varied_tpot = simulate_case(imax, efficiency=eff)
    fixed_ttft, _ = simulate_case(fixed, efficiency=eff)
    cm = RooflineCostModel(CATALOG["llama-3.1-70b"], resolve_gpu("h100-sxm"), 8, "fp8", "bf16", eff)
    solo = cm.iteration_s(Batch.of(prefill=[(8192, 0)]))
    assert varied_ttft < 2 * solo < fixed_ttft  # the fixed-length client waits two prefills as well as its own
    assert simulate_case(imax, efficiency=replace(eff, ttft_wait_prefills=0.0)) == (varied_ttft, varied_tpot)
    result = replay(pd.DataFrame([agg_row(c=4, osl=64, silicon_data_source=INFERENCEMAX), agg_row(c=4, osl=64)]),
                    requests_per_client=2, rounds=2)
    assert result.rows["client"].tolist() == [imax.client, fixed.client]
    assert set(result.summary["per_client"]) == {imax.client, fixed.client}
    assert "InferenceMAX" in format_summary(result.summary)
    assert "client: InferenceMAX" in write_replay(result, tmp_path / "out")["report"].read_text()


def test_inferencemax_trtllm_rows_run_its_recipe():
    """InferenceMAX's TRT-LLM recipe for Llama-3.1-70B: max_num_tokens 16384, and batch waiting (20 iterations or
    0.9 of the budget) at 1k/1k below TP8; another model's rows and an aiperf TRT-LLM row keep the generator's
    budget and no waiting."""
    def pool(**kw):
        case = row_case(agg_row(backend="trtllm", **kw), 0)
        return case.deployment.workers, case.assumed

    waits, note = pool(tp=4, silicon_data_source=INFERENCEMAX)
    assert (waits.max_batch_tokens, waits.batch_wait_iters, waits.batch_wait_tokens_ratio) == (16384, 20, 0.9)
    assert "batch waiting (20 iterations or 0.9 of 16384 tokens)" in note
    tp8, _ = pool(tp=8, silicon_data_source=INFERENCEMAX)
    long, _ = pool(tp=4, isl=8192, silicon_data_source=INFERENCEMAX)
    assert (tp8.batch_wait_iters, long.batch_wait_iters, tp8.max_batch_tokens) == (0, 0, 16384)
    other, _ = pool(model="Qwen/Qwen3-32B", tp=4, silicon_data_source=INFERENCEMAX)  # another model: its own recipe
    assert (other.batch_wait_iters, other.max_batch_tokens) == (0, trtllm_max_num_tokens(1024, 16))
    aiperf, note = pool(tp=4)
    assert (aiperf.batch_wait_iters, aiperf.max_batch_tokens, note) == (0, trtllm_max_num_tokens(1024, 16), "")


def test_attention_dp_rows_are_predicted_each_group_keeping_its_own_sequences():
    # aiconfigurator's convention: tp x attention_dp GPUs, experts over all of them, batch_size per DP rank
    case = row_case(agg_row(model="deepseek-ai/DeepSeek-R1", backend="trtllm", tp=1, attention_dp_size=8,
                            moe_ep_size=8, c=16, isl=1024, osl=64, system="h200_sxm"), 0)
    pool = case.deployment.workers
    assert not case.skipped and (pool.tp, pool.attention_dp, pool.attention_tp) == (8, 8, 1)
    assert case.concurrency == 128 and "attention DP8" in case.deployment.describe()
    ttft_s, tpot_s = simulate_case(case, requests_per_client=2, rounds=2)
    assert 0 < ttft_s < 10 and 0 < tpot_s < 1
    # a disagg row's batch sizes are per rank too: 32 decode ranks of 16 seat 512 sequences
    dis = row_case(agg_row(model="deepseek-ai/DeepSeek-R1", backend="sglang", mode="disagg", system="gb200",
                           prefill_num_workers=2, prefill_tp_size=1, prefill_attention_dp_size=8, prefill_batch_size=1,
                           decode_num_workers=1, decode_tp_size=1, decode_attention_dp_size=32, decode_batch_size=16,
                           silicon_data_source="silicon_concurrency=512"), 1)
    pf, dec = dis.deployment.prefill, dis.deployment.decode
    assert (pf.tp, pf.attention_dp, pf.max_seqs, dec.tp, dec.attention_dp, dec.max_seqs) == (8, 8, 8, 32, 32, 512)
    # experts over eight nodes are an all-to-all; tensor parallelism over more than two nodes is not modelled
    wide = dict(model="deepseek-ai/DeepSeek-R1", backend="trtllm", system="h200_sxm", c=4)
    assert not row_case(agg_row(tp=1, attention_dp_size=64, moe_ep_size=64, **wide), 2).skipped
    assert "spans more than two nodes" in row_case(agg_row(tp=32, moe_ep_size=32, **wide), 3).skip_reason


def test_attention_dp_splits_attention_and_its_kv_over_the_groups_not_the_experts():
    from profiler.roofline import RooflineCostModel

    ds, h200 = CATALOG["deepseek-v3"], resolve_gpu("h200-sxm")
    eff = replace(engine_efficiency("trtllm"), attn_compute=1.0, attn_memory=0.5)  # reads bound, whatever the fit
    tp8 = RooflineCostModel(ds, h200, 8, "fp8", "fp8", eff)
    dp8 = RooflineCostModel(ds, h200, 8, "fp8", "fp8", eff, attn_dp=8)
    assert RooflineCostModel(ds, h200, 8, "fp8", "fp8", eff, attn_dp=1).decode_steps_s(8, 8000, 1)[0] == \
        tp8.decode_steps_s(8, 8000, 1)[0]
    # MLA's latent KV is replicated over TP ranks: with attention DP each GPU reads only its own sequences'
    n, ctx = 256, 8000
    assert dp8._attn_layers_s(0.0, 0.0, n, n * ctx) == pytest.approx(tp8._attn_layers_s(0.0, 0.0, n, n * ctx) / 8)
    assert dp8.decode_steps_s(n, n * ctx, 1)[0] < tp8.decode_steps_s(n, n * ctx, 1)[0]
    # and the KV room grows with the groups: each keeps only its own sequences
    tp_fit = memory_fit(ds, h200, 8, "fp8", "fp8", 8192)
    dp_fit = memory_fit(ds, h200, 1, "fp8", "fp8", 8192, attn_dp=8)
    assert dp_fit.kv_tokens > 2 * tp_fit.kv_tokens
    with pytest.raises(ValueError):
        RooflineCostModel(ds, h200, 8, "fp8", "fp8", eff, attn_dp=3)
    # each group's scheduler walks only its own sequences, beside the others
    host = replace(eff, per_seq_overhead_s=1e-3)
    assert RooflineCostModel(ds, h200, 8, "fp8", "fp8", host).decode_steps_s(800, 800 * 100, 1)[0] > 0.8
    assert RooflineCostModel(ds, h200, 8, "fp8", "fp8", host, attn_dp=8).decode_steps_s(800, 800 * 100, 1)[0] < 0.2


def test_attention_dp_in_a_deployment_file_is_checked_and_not_emitted():
    from planner.emit import placement
    from simulator.deployment import parse_deployment

    base = {"model": "deepseek-v3", "gpu": "h200-sxm", "dtype": "fp8", "topology": "agg"}
    dep = parse_deployment(base | {"workers": {"tp": 8, "attention_dp": 8}})
    assert dep.workers.attention_tp == 1 and dep.to_dict()["workers"]["attention_dp"] == 8
    assert "attention_dp" not in parse_deployment(base | {"workers": {"tp": 8}}).to_dict()["workers"]
    with pytest.raises(InputError, match="attention_dp 3 must divide tp 8"):
        parse_deployment(base | {"workers": {"tp": 8, "attention_dp": 3}})
    with pytest.raises(InputError, match="not emitted"):
        placement(dep)
    from profiler.factory import make_cost_model
    from profiler.memory import require_fit

    with pytest.raises(InputError, match="at attention TP=1 x DP=8: weights need"):  # 8 H100s cannot hold R1 fp8
        require_fit(CATALOG["deepseek-v3"], resolve_gpu("h100-sxm"), 1, "fp8", "fp8", 8192, attn_dp=8)
    with pytest.raises(InputError, match="roofline only"):
        make_cost_model(CATALOG["deepseek-v3"], resolve_gpu("h200-sxm"), 8, "fp8", profile="x", attn_dp=8)
