"""ProfiledCostModel: reproduces the measured points, monotone in tokens and context, flags extrapolation."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from profiler.costmodel import Batch, CostModel, LinkSpec
from profiler.errors import InputError
from profiler.factory import make_cost_model
from profiler.gpus import local_cpu, resolve_gpu
from profiler.models import CATALOG
from profiler.profile import COLUMNS, Profile
from profiler.profiled import ATTN_LAYER_OPS, DENSE_MLP_OPS, ProfiledCostModel
from profiler.roofline import engine_efficiency

TINY = CATALOG["tiny"]
TOKENS = [1, 4, 16, 64, 256]
PF_BATCH, PF_LEN = [1, 2, 4], [16, 64, 256]
DEC_BATCH, DEC_CTX = [1, 4, 16], [16, 128, 1024]


def op_time(op: str, t: float) -> float:
    """A made-up but plausible cost: a fixed launch cost plus work linear in tokens."""
    return 5e-6 * (1 + len(op) % 3) + 1e-7 * t * (1 + len(op) % 5)


def synthetic_profile(model=TINY, dtype="fp32", tp=1, noisy_op: str | None = None) -> Profile:
    rows = []
    for op in [*ATTN_LAYER_OPS, *DENSE_MLP_OPS, "embed", "lm_head"]:
        for t in TOKENS:
            med = op_time(op, t)
            if op == noisy_op and t == 16:
                med *= 3  # a noisy measurement: slower than at 64 tokens
            rows.append({"op": op, "tokens": t, "median_s": med})
    for b in PF_BATCH:
        for s in PF_LEN:
            rows.append({"op": "attn_prefill", "batch": b, "seq_len": s, "median_s": 1e-5 * b + 1e-8 * b * s * s})
    for b in DEC_BATCH:
        for c in DEC_CTX:
            rows.append({"op": "attn_decode", "batch": b, "ctx_len": c, "median_s": 1e-5 + 2e-8 * b * c})
    t = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in t:
            t[c] = "" if c == "path" else 0
    t["model"], t["dtype"], t["tp"], t["p10_s"], t["p90_s"], t["repeats"] = model.name, dtype, tp, 0.0, 0.0, 5
    t["p10_s"], t["p90_s"] = t.median_s * 0.9, t.median_s * 1.1
    return Profile(t[COLUMNS].fillna(0), {"runs": [{"model": model.name, "dtype": dtype, "tp": tp}]})


@pytest.fixture(scope="module")
def cm() -> ProfiledCostModel:
    """As the runtime's engine sees it: no overhead beyond the profile's ops (none measured here)."""
    return ProfiledCostModel(synthetic_profile(), model=TINY, gpu=local_cpu(), tp=1, dtype="fp32",
                             engine="pdsim-runtime")


def test_it_is_a_cost_model_made_by_the_factory(tmp_path):
    cm = make_cost_model(TINY, local_cpu(), 1, "fp32", profile=synthetic_profile())
    assert isinstance(cm, ProfiledCostModel) and isinstance(cm, CostModel)
    synthetic_profile().save(tmp_path)
    by_path = make_cost_model(TINY, local_cpu(), 1, "fp32", profile=str(tmp_path))
    b = Batch.of(decode_ctx=[100] * 3)
    assert by_path.iteration_s(b) == pytest.approx(cm.iteration_s(b), rel=1e-9)


@pytest.mark.parametrize("op", ["qkv", "down", "lm_head", "rmsnorm"])
def test_reproduces_each_measured_op_at_the_measured_tokens(cm, op):
    np.testing.assert_allclose(cm.op_s(op, np.array(TOKENS)), [op_time(op, t) for t in TOKENS], rtol=1e-9)


def test_reproduces_measured_attention_grid_points(cm):
    for b in PF_BATCH:
        for s in PF_LEN:
            assert cm.prefill_attn_s(b, s) == pytest.approx(1e-5 * b + 1e-8 * b * s * s, rel=1e-9)
    for b in DEC_BATCH:
        for c in DEC_CTX:
            assert cm.decode_attn_s(b, c) == pytest.approx(1e-5 + 2e-8 * b * c, rel=1e-9)
    assert cm.extrapolated == 0


def test_iteration_is_the_sum_of_its_measured_ops(cm):
    """A decode step of 4 sequences at context 128 = per-layer ops x layers + embed + head + attention."""
    per_layer = sum(n * op_time(op, 4) for op, n in ATTN_LAYER_OPS.items()) + sum(
        n * op_time(op, 4) for op, n in DENSE_MLP_OPS.items())
    want = (TINY.layers * (per_layer + 1e-5 + 2e-8 * 4 * 128) + op_time("embed", 4)
            + op_time("rmsnorm", 4) + op_time("lm_head", 4))
    assert cm.iteration_s(Batch.of(decode_ctx=[128] * 4)) == pytest.approx(want, rel=1e-9)


def test_the_measured_overhead_is_the_runtimes_and_other_engines_keep_their_own():
    prof = synthetic_profile()
    prof.table.loc[len(prof.table)] = {**prof.table.iloc[0].to_dict(), "op": "iteration_overhead", "tokens": 0,
                                       "batch": 1, "ctx_len": 16, "median_s": 7e-4}
    b = Batch.of(decode_ctx=[128] * 4)
    ops_only = ProfiledCostModel(synthetic_profile(), model=TINY, gpu=local_cpu(), tp=1, dtype="fp32",
                                 engine="pdsim-runtime").iteration_s(b)
    runtime = ProfiledCostModel(prof, model=TINY, gpu=local_cpu(), tp=1, dtype="fp32", engine="pdsim-runtime")
    vllm = ProfiledCostModel(prof, model=TINY, gpu=local_cpu(), tp=1, dtype="fp32", engine="vllm")
    assert runtime.iteration_s(b) == pytest.approx(ops_only + 7e-4, rel=1e-12)
    fixed = engine_efficiency("vllm")
    assert vllm.iteration_s(b) == pytest.approx(ops_only + fixed.iteration_overhead_s + fixed.layer_overhead_s
                                                 * TINY.layers, rel=1e-12)


def test_monotone_in_tokens_and_context(cm):
    tokens = np.unique(np.geomspace(1, 256, 200).astype(int))
    t_tok = [cm.iteration_s(Batch.of(prefill=[(int(n), 0)])) for n in tokens]
    assert np.all(np.diff(t_tok) >= 0)
    ctx = np.unique(np.geomspace(1, 1024, 200).astype(int))
    for b in (1, 3, 16):
        t_ctx = [cm.iteration_s(Batch.of(decode_ctx=[int(c)] * b)) for c in ctx]
        assert np.all(np.diff(t_ctx) >= 0)
    t_batch = [cm.iteration_s(Batch.of(decode_ctx=[300] * b)) for b in range(1, 17)]
    assert np.all(np.diff(t_batch) > 0)


def test_a_noisy_measurement_never_makes_more_tokens_cheaper():
    cm = ProfiledCostModel(synthetic_profile(noisy_op="qkv"), model=TINY, gpu=local_cpu(), tp=1, dtype="fp32")
    t = cm.op_s("qkv", np.geomspace(1, 256, 100))
    assert np.all(np.diff(t) >= 0)
    assert cm.op_s("qkv", 64) == pytest.approx(3 * op_time("qkv", 16))  # held at the slow point's level


def test_decode_steps_match_iteration_by_iteration(cm):
    steps = cm.decode_steps_s(n_seqs=4, ctx_sum=400, steps=50, ctx_max=101)
    one_by_one = [cm.iteration_s(Batch.of(decode_ctx=[100 + k, 99 + k, 101 + k, 100 + k])) for k in range(50)]
    np.testing.assert_allclose(steps, one_by_one, rtol=1e-9)
    assert np.all(np.diff(steps) >= 0)


def test_the_bundled_runtime_pays_decode_attention_over_padded_contexts():
    """runtime/model.py pads a step's decode contexts to the longest: the runtime's profiled costs price every
    sequence at the longest context (stepping and fast-forward alike); a paged engine's stay per sequence."""
    runtime = ProfiledCostModel(synthetic_profile(), model=TINY, gpu=local_cpu(), tp=1, dtype="fp32",
                                engine="pdsim-runtime")
    paged = ProfiledCostModel(synthetic_profile(), model=TINY, gpu=local_cpu(), tp=1, dtype="fp32", engine="vllm")
    mixed, longest = Batch.of(decode_ctx=[40, 60, 900, 80]), Batch.of(decode_ctx=[900] * 4)
    assert runtime.iteration_s(mixed) == pytest.approx(runtime.iteration_s(longest), rel=1e-12)
    assert paged.iteration_s(mixed) < paged.iteration_s(longest)
    steps = runtime.decode_steps_s(4, 1080, 5, ctx_max=900)
    one_by_one = [runtime.iteration_s(Batch.of(decode_ctx=[40 + k, 60 + k, 900 + k, 80 + k])) for k in range(5)]
    np.testing.assert_allclose(steps, one_by_one, rtol=1e-9)
    np.testing.assert_allclose(paged.decode_steps_s(4, 1080, 5, ctx_max=900), paged.decode_steps_s(4, 1080, 5))


def test_beyond_the_measured_range_scales_by_the_roofline_and_says_so():
    cm = ProfiledCostModel(synthetic_profile(), model=TINY, gpu=local_cpu(), tp=1, dtype="fp32")
    at_edge = cm.iteration_s(Batch.of(decode_ctx=[1024] * 16))
    assert cm.extrapolated == 0
    beyond = cm.iteration_s(Batch.of(decode_ctx=[4096] * 16))
    assert cm.extrapolated > 0 and beyond > at_edge
    n = cm.extrapolated
    big_prefill = cm.iteration_s(Batch.of(prefill=[(2048, 0)]))
    assert cm.extrapolated > n and big_prefill > cm.iteration_s(Batch.of(prefill=[(256, 0)]))


def test_tensor_parallel_adds_the_all_reduce():
    gpu = resolve_gpu("h100-sxm")
    one = ProfiledCostModel(synthetic_profile(tp=2), model=TINY, gpu=gpu, tp=2, dtype="fp32")
    b = Batch.of(decode_ctx=[128] * 4)
    assert one.iteration_s(b) > ProfiledCostModel(synthetic_profile(), model=TINY, gpu=gpu, tp=1,
                                                  dtype="fp32").iteration_s(b)


def test_a_config_the_profile_lacks_is_one_clear_error():
    with pytest.raises(InputError, match=r"no measurements for tiny/bf16/tp1; it has tiny/fp32/tp1"):
        ProfiledCostModel(synthetic_profile(), model=TINY, gpu=local_cpu(), tp=1, dtype="bf16")
    with pytest.raises(InputError, match="llama-3.1-8b"):
        make_cost_model(CATALOG["llama-3.1-8b"], local_cpu(), 1, "fp32", profile=synthetic_profile())


def test_transfer_uses_the_link(cm):
    assert cm.transfer_s(1e9, LinkSpec(50e9, 10e-6)) == pytest.approx(0.02001)


def test_the_cost_model_does_not_import_torch():
    code = ("import sys, profiler.profiled, profiler.profile, profiler.factory, profiler.device; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_shape_and_many_shapes_give_the_same_times(cm):
    rng = np.random.default_rng(0)
    xs = rng.uniform(1, 256, 50)
    np.testing.assert_allclose([cm.token_curve.at(x) for x in xs], cm.token_curve(xs), rtol=1e-12)
    a, b = rng.uniform(1, 16, 50), rng.uniform(16, 1024, 50)
    np.testing.assert_allclose([cm.decode_attn.at(x, y) for x, y in zip(a, b, strict=True)], cm.decode_attn(a, b),
                               rtol=1e-12)


def test_weights_without_tensor_cores_of_their_own_run_weight_only_at_the_bf16_rate():
    from profiler.roofline import RooflineCostModel

    a100, h100, b200 = resolve_gpu("a100"), resolve_gpu("h100"), resolve_gpu("b200")
    assert a100.weight_only("fp8") and a100.flops("fp8") == a100.flops("bf16")
    assert h100.weight_only("fp4") and h100.flops("fp4") == h100.flops("bf16")
    assert not h100.weight_only("fp8") and h100.flops("fp8") == h100.fp8_flops > h100.flops("bf16")
    assert not b200.weight_only("fp4") and b200.flops("fp4") > b200.flops("fp8")
    m = CATALOG["llama-3.1-8b"]
    bf16, fp8 = RooflineCostModel(m, a100, 1, "bf16"), RooflineCostModel(m, a100, 1, "fp8")
    # W8A16 on an A100: a long prompt is compute-bound at the bf16 rate, a small decode step reads half the bytes
    prompt, decode = Batch.of(prefill=[(8192, 0)]), Batch.of(decode_ctx=[512] * 4)
    assert fp8.iteration_s(prompt) == pytest.approx(bf16.iteration_s(prompt), rel=0.05)
    assert fp8.iteration_s(decode) < 0.7 * bf16.iteration_s(decode)


def test_emit_forecasts_an_aiperf_run_with_the_profiles_costs():
    """`plan --profile ... --emit aiperf`: the forecast of each aiperf run simulates the profile's measured costs,
    closed loop and open loop alike, not the roofline's."""
    from planner import emit
    from planner.replay import simulate_benchmark
    from simulator import simulate
    from simulator.deployment import parse_deployment
    from traces.synthetic import synthetic_workload

    dep = parse_deployment({"model": "tiny", "gpu": "cpu", "dtype": "fp32", "engine": "pdsim-runtime",
                            "workers": {"replicas": 1, "max_seqs": 8}})
    profile = synthetic_profile()
    measured = {"workers": ProfiledCostModel(profile, model=TINY, gpu=local_cpu(), tp=1, dtype="fp32",
                                             engine="pdsim-runtime")}
    predict, by = emit.simulation_predictor(dep, profile=profile)
    roofline, _ = emit.simulation_predictor(dep)
    closed = emit.BenchPoint(64, 16, concurrency=4, requests=16, warmup=4)
    assert predict(closed) == simulate_benchmark(dep, measured, 64, 16, 4, rounds=4)
    assert predict(closed) != roofline(closed) and "measured profile" in by
    opened = emit.BenchPoint(64, 16, request_rate=20.0, requests=40, warmup=4)
    s = simulate(dep, synthetic_workload(requests=44, isl=64, osl=16, rate=20.0, warmup_requests=4),
                 cost_models=measured).summary()
    assert predict(opened) == (s["ttft_ms"]["mean"] * 1e-3, s["tpot_ms"]["mean"] * 1e-3)
