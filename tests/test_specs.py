"""Model and GPU specs, memory fit, the roofline cost model and the deployment schema."""

import json

import numpy as np
import pytest

from profiler.costmodel import Batch, CostModel, LinkSpec
from profiler.errors import InputError
from profiler.gpus import GiB, resolve_gpu
from profiler.memory import memory_fit, require_fit
from profiler.models import CATALOG, canonical_model_name, from_hf_config, resolve_model
from profiler.roofline import RooflineCostModel
from simulator.deployment import load_deployment, parse_deployment


def test_llama_8b_kv_bytes_per_token_bf16():
    assert resolve_model("llama-3.1-8b").kv_bytes_per_token("bf16") == 131_072
    assert resolve_model("llama-3.1-8b").kv_bytes_per_token("fp8") == 65_536


@pytest.mark.parametrize(
    "name, billions",
    [("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.6), ("qwen3-32b", 32.8), ("mixtral-8x7b", 46.7),
     ("deepseek-v3", 671.0), ("qwen3-235b-a22b", 235.1), ("gpt-oss-120b", 116.8)],
)
def test_parameter_counts_match_published_sizes(name, billions):
    assert resolve_model(name).total_params() / 1e9 == pytest.approx(billions, rel=0.01)


def test_moe_active_parameters_are_a_fraction_of_total():
    ds = resolve_model("deepseek-v3")
    assert ds.active_params_per_token() / 1e9 == pytest.approx(37.5, rel=0.03)  # published: 37B active
    assert resolve_model("qwen3-235b-a22b").active_params_per_token() / 1e9 == pytest.approx(22, rel=0.05)


def test_mla_kv_is_the_latent_and_replicated_over_tp():
    ds = resolve_model("deepseek-v3")
    assert ds.kv_bytes_per_token("bf16") == 61 * (512 + 64) * 2
    assert ds.kv_bytes_per_token_per_gpu("bf16", 8) == ds.kv_bytes_per_token("bf16")


def test_tiny_model_has_a_few_million_parameters():
    assert 1e6 < resolve_model("tiny").total_params() < 10e6


@pytest.mark.parametrize(
    "hf_id, key",
    [("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"), ("nvidia/Llama-3.1-8B-Instruct-FP8", "llama-3.1-8b"),
     ("Qwen/Qwen3-235B-A22B-FP8", "qwen3-235b-a22b"), ("deepseek-ai/DeepSeek-R1", "deepseek-v3"),
     ("QWEN3-32B", "qwen3-32b"), ("not-a-model", None)],
)
def test_hugging_face_ids_map_to_catalog(hf_id, key):
    assert canonical_model_name(hf_id) == key


def test_from_hf_config_matches_catalog(tmp_path):
    cfg = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
           "intermediate_size": 14336, "vocab_size": 128256, "head_dim": 128}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    spec = from_hf_config(path)
    assert spec.total_params() == CATALOG["llama-3.1-8b"].total_params()
    assert resolve_model(str(tmp_path)).kv_bytes_per_token() == 131_072


def test_bad_model_inputs_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="unknown model"):
        resolve_model("gpt-17")
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 10}')
    with pytest.raises(InputError, match="config.json: missing field 'num_attention_heads'"):
        from_hf_config(bad)
    with pytest.raises(InputError, match="unknown GPU"):
        resolve_gpu("voodoo-5")


def test_memory_fit_and_what_would_fit():
    m, g = resolve_model("llama-3.1-70b"), resolve_gpu("h100-sxm")
    assert not memory_fit(m, g, 1, "bf16", "bf16", 8192).fits  # 141 GB of weights on 80 GiB
    assert memory_fit(m, g, 4, "bf16", "bf16", 8192).fits
    with pytest.raises(InputError, match="TP=2 would fit"):
        require_fit(m, g, 1, "bf16", "bf16", 8192)
    fit = memory_fit(resolve_model("llama-3.1-8b"), resolve_gpu("h200-sxm"), 1, "bf16", "bf16", 8192)
    assert fit.weights_bytes / GiB == pytest.approx(14.96, rel=0.01)
    assert 500_000 < fit.kv_tokens < 1_000_000


@pytest.fixture
def llama_h200():
    return RooflineCostModel(resolve_model("llama-3.1-8b"), resolve_gpu("h200-sxm"), 1, "bf16")


def test_roofline_is_a_cost_model(llama_h200):
    assert isinstance(llama_h200, CostModel)


def test_small_decode_is_bound_by_reading_weights(llama_h200):
    m, g = llama_h200.model, llama_h200.gpu
    weights_s = m.param_bytes("bf16") / g.hbm_bw_bytes_s
    step = llama_h200.iteration_s(Batch.of(decode_ctx=[100])) - llama_h200.eff.iteration_overhead_s
    assert weights_s < step < 1.5 * weights_s


def test_large_prefill_is_bound_by_flops(llama_h200):
    tokens = 8192
    step = llama_h200.iteration_s(Batch.of(prefill=[(tokens, 0)]))
    linear_s = tokens * llama_h200.model.flops_per_token() / llama_h200.gpu.bf16_flops
    assert linear_s < step < 3 * linear_s


def test_costs_grow_with_tokens_and_context(llama_h200):
    prefill = [llama_h200.iteration_s(Batch.of(prefill=[(n, 0)])) for n in (128, 512, 2048, 8192)]
    decode = [llama_h200.iteration_s(Batch.of(decode_ctx=[c] * 64)) for c in (128, 1024, 8192, 32768)]
    cached = [llama_h200.iteration_s(Batch.of(prefill=[(512, c)])) for c in (0, 4096, 32768)]
    assert np.all(np.diff(prefill) > 0) and np.all(np.diff(decode) > 0) and np.all(np.diff(cached) > 0)


def test_decode_steps_match_single_iterations(llama_h200):
    steps = llama_h200.decode_steps_s(8, 8 * 1000, 5)
    single = [llama_h200.iteration_s(Batch.of(decode_ctx=[1000 + j] * 8)) for j in range(5)]
    assert steps == pytest.approx(single, rel=1e-9)


def test_tensor_parallel_speeds_up_but_pays_all_reduce():
    m, g = resolve_model("llama-3.1-70b"), resolve_gpu("h200-sxm")
    tp1 = RooflineCostModel(m, g, 1, "bf16").iteration_s(Batch.of(prefill=[(4096, 0)]))
    tp4 = RooflineCostModel(m, g, 4, "bf16").iteration_s(Batch.of(prefill=[(4096, 0)]))
    assert tp1 / 4 < tp4 < tp1 / 2


def test_fp8_halves_weight_reading(llama_h200):
    fp8 = RooflineCostModel(llama_h200.model, llama_h200.gpu, 1, "fp8")
    b = Batch.of(decode_ctx=[100])
    o = llama_h200.eff.iteration_overhead_s
    assert (fp8.iteration_s(b) - o) == pytest.approx((llama_h200.iteration_s(b) - o) / 2, rel=0.1)


def test_transfer_is_latency_plus_bytes_over_bandwidth(llama_h200):
    link = LinkSpec(bandwidth_bytes_s=50e9, latency_s=10e-6)
    assert llama_h200.transfer_s(50e9, link) == pytest.approx(1.0 + 10e-6)


DISAGG = """
model: llama-3.1-8b        # catalog name or path to config.json
gpu: h200-sxm
dtype: fp8
topology: disagg
prefill: {replicas: 2, tp: 1, max_batch_tokens: 8192}
decode:  {replicas: 1, tp: 2, max_seqs: 256}
kv_link: {bandwidth_gb_s: 50, latency_us: 10}
router: least_loaded
"""


def test_deployment_yaml_round_trip(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(DISAGG)
    d = load_deployment(path)
    assert d.topology == "disagg" and d.gpus == 4 and d.prefill.replicas == 2 and d.decode.tp == 2
    assert d.kv_link.bandwidth_bytes_s == 50e9 and d.resolved_kv_dtype == "fp8"
    path.write_text(d.to_yaml())
    assert load_deployment(path) == d


@pytest.mark.parametrize(
    "data, message",
    [({"gpu": "h100"}, "missing field 'model'"),
     ({"model": "x", "topology": "mesh"}, "topology: must be agg or disagg"),
     ({"model": "x", "workers": {"replicas": -1}}, "workers.replicas: must be positive"),
     ({"model": "x", "workers": {"replicas": 1.5}}, "whole number"),
     ({"model": "x", "workers": {"tp": "two"}}, "workers.tp: must be a number"),
     ({"model": "x", "workers": {"replica": 2}}, "unknown field 'replica'"),
     ({"model": "x", "topology": "disagg", "prefill": {}}, "missing field 'decode'"),
     ({"model": "x", "router": "random"}, "router: must be one of"),
     ({"model": "x", "kv_link": {"bandwidth_gb_s": 0}}, "bandwidth_gb_s: must be positive"),
     ([1, 2], "must be a YAML mapping")],
)
def test_bad_deployments_name_the_field(data, message):
    with pytest.raises(InputError, match=message):
        parse_deployment(data)


def test_unparseable_deployment_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: x\nworkers: {replicas: 1\n")
    with pytest.raises(InputError, match=r"bad.yaml: line \d+: not valid YAML"):
        load_deployment(path)
