"""The simulator as a specification: physics that must hold, bookkeeping that must add up."""

from __future__ import annotations

import json

import numpy as np
import pytest
from needs import TRACES

from profiler.costmodel import Batch, LinkSpec
from profiler.errors import InputError
from profiler.factory import make_cost_model
from profiler.gpus import resolve_gpu
from profiler.memory import RESERVE_BYTES, memory_fit
from profiler.models import resolve_model
from profiler.roofline import request_terms
from simulator import SLO, simulate
from simulator.deployment import parse_deployment
from traces.workload import Workload, make_requests

MODEL, GPU = resolve_model("llama-3.1-8b"), resolve_gpu("h200-sxm")
COLUMNS = ["request_id", "arrival_s", "isl", "osl", "prefill_start_s", "prefill_end_s", "transfer_start_s",
           "transfer_end_s", "first_token_s", "last_token_s", "preemptions", "prefill_worker", "decode_worker",
           "outcome", "fail_reason", "ttft_s", "tpot_s", "e2e_s", "measured"]


def agg(replicas=1, tp=1, **pool):
    return parse_deployment({"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "agg",
                             "workers": {"replicas": replicas, "tp": tp, **pool}})


def disagg(prefill=1, decode=1, decode_pool=None, bandwidth_gb_s=50.0, **kw):
    return parse_deployment({"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg",
                             "prefill": {"replicas": prefill, "tp": 1},
                             "decode": {"replicas": decode, "tp": 1, **(decode_pool or {})},
                             "kv_link": {"bandwidth_gb_s": bandwidth_gb_s, "latency_us": 10}, **kw})


def poisson(n, rate, isl, osl, seed=0):
    """Poisson arrivals; a length given as (lo, hi) is drawn uniformly per request."""
    rng = np.random.default_rng(seed)
    isl, osl = (rng.integers(*x, n) if isinstance(x, tuple) else x for x in (isl, osl))
    return Workload(make_requests(np.cumsum(rng.exponential(1 / rate, n)), isl, osl))


def closed(n, concurrency, isl, osl, warmup=0):
    return Workload(make_requests(np.full(n, np.nan), isl, osl), concurrency=concurrency, warmup_requests=warmup)


def cost(tp=1):
    return make_cost_model(MODEL, GPU, tp, "fp8", "fp8")


FRONTEND_S = request_terms(cost())[0]  # a request reaches its worker this long after it is sent


# ---- bookkeeping -------------------------------------------------------------------------------
def test_agg_requests_table_is_complete_and_consistent():
    rng = np.random.default_rng(1)
    wl = Workload(make_requests(np.cumsum(rng.exponential(0.05, 120)), rng.integers(50, 3000, 120),
                                rng.integers(1, 400, 120)))
    res = simulate(agg(), wl)
    df = res.requests
    assert list(df.columns) == COLUMNS and len(df) == 120
    assert (df["outcome"] == "ok").all() and df["measured"].all()
    assert (df["arrival_s"] <= df["prefill_start_s"]).all()
    assert (df["prefill_start_s"] < df["prefill_end_s"]).all()
    assert (df["prefill_end_s"] == df["first_token_s"]).all()  # agg: the prompt's last chunk emits the first token
    assert (df["first_token_s"] <= df["last_token_s"]).all()
    np.testing.assert_allclose(df["ttft_s"], df["first_token_s"] - df["arrival_s"])
    long = df["osl"] > 1
    np.testing.assert_allclose(df.loc[long, "tpot_s"],
                               (df["last_token_s"] - df["first_token_s"])[long] / (df["osl"][long] - 1))
    assert df.loc[~long, "tpot_s"].isna().all()
    assert df["transfer_start_s"].isna().all()
    assert (df["prefill_worker"] == df["decode_worker"]).all()
    ws = res.workers
    assert list(ws.columns) == ["time_s", "worker", "pool", "batch_size", "queue_len", "kv_blocks_used",
                                "iterations"]
    assert (ws["batch_size"] >= 1).all() and ws["time_s"].is_monotonic_increasing
    assert ws["iterations"].sum() == res.iterations and (ws["iterations"] >= 1).all()


def test_summary_keys_and_slo():
    res = simulate(agg(), poisson(100, 10, 500, 50))
    s = res.summary(SLO(ttft_ms=1000, tpot_ms=100))
    for key in ("requests", "completed", "failed", "gpus", "duration_s", "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms",
                "slo_attainment", "slo_met", "throughput_tok_s", "tok_s_per_gpu", "tok_s_per_user", "utilization"):
        assert key in s
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert set(s[key]) == {"mean", "p50", "p90", "p99"}
        assert s[key]["p50"] <= s[key]["p90"] <= s[key]["p99"]
    assert s["requests"] == s["completed"] == 100 and s["failed"] == 0 and s["gpus"] == 1
    assert s["slo_attainment"] == 1.0 and s["slo_met"] is True
    assert s["tok_s_per_user"] == pytest.approx(1000 / s["tpot_ms"]["mean"])
    assert s["throughput_tok_s"] == pytest.approx(100 * 50 / s["duration_s"])
    tight = res.summary(SLO(ttft_ms=1e-3, tpot_ms=100))
    assert tight["slo_attainment"] == 0.0 and tight["slo_met"] is False
    assert res.summary()["slo_attainment"] is None
    json.dumps(s)


def test_same_seed_same_result_byte_identical():
    wl = poisson(150, 20, 1500, 100, seed=3)
    a = simulate(disagg(prefill=2, decode=2, router="least_loaded"), wl, seed=7)
    b = simulate(disagg(prefill=2, decode=2, router="least_loaded"), wl, seed=7)
    assert json.dumps(a.summary(), sort_keys=True) == json.dumps(b.summary(), sort_keys=True)
    assert a.requests.equals(b.requests) and a.workers.equals(b.workers)


def test_requests_that_can_never_fit_fail_with_a_reason_and_the_rest_complete():
    wl = Workload(make_requests([0.0, 0.1, 0.2], [1000, 131000, 500], [100, 1000, 50]))
    res = simulate(agg(), wl)
    df = res.requests
    assert list(df["outcome"]) == ["ok", "failed", "ok"]
    assert "max context" in df.loc[1, "fail_reason"] and df.loc[0, "fail_reason"] == ""
    assert res.summary()["failed"] == 1


def test_request_beyond_kv_capacity_fails_but_is_not_lost():
    dep = tiny_kv_deployment(kv_tokens=2048)
    wl = Workload(make_requests([0.0, 0.0], [1500, 3000], [100, 100]))
    df = simulate(dep, wl).requests
    assert list(df["outcome"]) == ["ok", "failed"]
    assert "KV capacity" in df.loc[1, "fail_reason"]


def test_unknown_model_and_deployment_that_does_not_fit_raise_input_error():
    wl = poisson(5, 1, 100, 10)
    with pytest.raises(InputError, match="unknown model"):
        simulate(parse_deployment({"model": "no-such-model", "workers": {}}), wl)
    big = parse_deployment({"model": "llama-3.1-70b", "gpu": "l40s", "dtype": "bf16", "workers": {"tp": 1}})
    with pytest.raises(InputError, match="does not fit.*TP="):
        simulate(big, wl)


# ---- physics -----------------------------------------------------------------------------------
def test_closed_loop_concurrency_one_ttft_is_one_prefill_iteration():
    isl = 3000
    res = simulate(agg(), closed(5, 1, isl, 20))
    prefill_s = cost().iteration_s(Batch.of(prefill=[(isl, 0)]))
    np.testing.assert_allclose(res.requests["ttft_s"], FRONTEND_S + prefill_s, rtol=1e-12)
    # one client: each request is sent when the previous one has finished
    df = res.requests
    np.testing.assert_allclose(df["arrival_s"].to_numpy()[1:], df["last_token_s"].to_numpy()[:-1])


def test_disagg_ttft_is_prefill_plus_transfer():
    isl = 2000
    dep = disagg()
    res = simulate(dep, closed(3, 1, isl, 20))
    kv_bytes = MODEL.kv_bytes_per_token("fp8") * isl
    expected = FRONTEND_S + cost().iteration_s(Batch.of(prefill=[(isl, 0)])) + cost().transfer_s(
        kv_bytes, LinkSpec(dep.kv_link.bandwidth_bytes_s, dep.kv_link.latency_s))
    np.testing.assert_allclose(res.requests["ttft_s"], expected, rtol=1e-9)
    df = res.requests
    assert (df["transfer_end_s"] == df["first_token_s"]).all()
    assert (df["prefill_end_s"] <= df["transfer_start_s"]).all()


def test_slower_kv_link_raises_ttft_by_bytes_over_bandwidth():
    isl = 4000
    wl = poisson(40, 2, isl, 30, seed=5)  # light load: transfers rarely overlap
    fast = simulate(disagg(bandwidth_gb_s=100), wl).requests["ttft_s"]
    slow = simulate(disagg(bandwidth_gb_s=5), wl).requests["ttft_s"]
    kv_bytes = MODEL.kv_bytes_per_token("fp8") * isl
    expected = kv_bytes / 5e9 - kv_bytes / 100e9
    assert (slow - fast).mean() == pytest.approx(expected, rel=0.05)


def test_ttft_grows_with_load():
    p90 = [simulate(agg(), poisson(300, rate, 2000, 100, seed=1)).summary()["ttft_ms"]["p90"]
           for rate in (2, 15, 30, 45)]
    assert p90[0] < p90[1] < p90[2] < p90[3]
    assert p90[3] > 3 * p90[0]  # queueing shows near capacity, not just batching


def test_doubling_decode_replicas_at_saturation_doubles_decode_throughput():
    wl = Workload(make_requests(np.zeros(64), 200, 400))  # all at once: decode is the bottleneck
    pool = {"max_seqs": 8}
    one = simulate(disagg(prefill=2, decode=1, decode_pool=pool), wl).summary()
    two = simulate(disagg(prefill=2, decode=2, decode_pool=pool), wl).summary()
    assert two["throughput_tok_s"] / one["throughput_tok_s"] == pytest.approx(2.0, rel=0.12)


def test_chunked_prefill_splits_a_long_prompt_into_chunks():
    isl, chunk = 3000, 512
    res = simulate(agg(chunk_size=chunk), closed(1, 1, isl, 2))
    c = cost()
    sizes = [chunk] * (isl // chunk) + [isl % chunk]
    done = np.cumsum([0, *sizes[:-1]])
    batches = [Batch.of(prefill=[(n, cached)]) for n, cached in zip(sizes, done, strict=True)]
    for b in batches[:-1]:
        b.prefill_last_chunks = 0  # only the prompt's last chunk runs the LM head
    expected = FRONTEND_S + sum(c.iteration_s(b) for b in batches)
    assert res.requests["ttft_s"][0] == pytest.approx(expected, rel=1e-12)
    assert res.iterations == len(sizes) + 1  # the chunks, then one decode step


def test_chunked_prefill_mixes_with_running_decodes():
    wl = Workload(make_requests([0.0, 0.05], [200, 6000], [400, 10]))
    res = simulate(agg(chunk_size=1024, max_batch_tokens=2048), wl)
    df = res.requests
    assert (df["outcome"] == "ok").all()
    # the long prompt is prefilled in chunks while the first request keeps decoding: its TPOT stays bounded
    assert df["tpot_s"][0] < 3 * cost().iteration_s(Batch.of(decode_ctx=[400]))
    assert df["prefill_end_s"][1] - df["prefill_start_s"][1] > 5 * cost().iteration_s(Batch.of(decode_ctx=[400]))


def test_without_chunked_prefill_an_oversized_prompt_runs_alone():
    res = simulate(agg(max_batch_tokens=1024, chunked_prefill=False), closed(2, 1, 3000, 3))
    c = cost()
    np.testing.assert_allclose(res.requests["ttft_s"], FRONTEND_S + c.iteration_s(Batch.of(prefill=[(3000, 0)])))


def tiny_kv_deployment(kv_tokens: int, **pool):
    """An agg deployment whose KV cache holds about ``kv_tokens`` tokens."""
    fit = memory_fit(MODEL, GPU, 1, "fp8", "fp8", 8192)
    u = (fit.weights_bytes + fit.activation_bytes + RESERVE_BYTES + kv_tokens * fit.kv_bytes_per_token) / GPU.hbm_bytes
    dep = agg(**pool)
    from dataclasses import replace

    return replace(dep, gpu_memory_utilization=u)


def test_tiny_kv_preempts_and_every_request_still_completes():
    dep = tiny_kv_deployment(kv_tokens=2048)
    wl = Workload(make_requests(np.linspace(0, 0.5, 30), 400, 600))  # 1000 tokens each, 2 fit at once
    res = simulate(dep, wl)
    df = res.requests
    assert (df["outcome"] == "ok").all()
    assert df["preemptions"].sum() > 0
    assert res.workers["kv_blocks_used"].max() <= 2048 // dep.kv_block_tokens
    assert res.summary()["preemptions"] == df["preemptions"].sum()


def test_tiny_kv_in_disagg_decode_preempts_and_completes():
    d = tiny_kv_deployment(kv_tokens=4096)
    dep = disagg(prefill=1, decode=1, gpu_memory_utilization=d.gpu_memory_utilization)
    wl = Workload(make_requests(np.linspace(0, 0.2, 20), 800, 1200))
    df = simulate(dep, wl).requests
    assert (df["outcome"] == "ok").all()
    assert df["preemptions"].sum() > 0


@pytest.mark.parametrize("make", [
    lambda: (agg(replicas=2, chunk_size=256), poisson(80, 40, (100, 1500), (1, 300))),
    lambda: (disagg(prefill=2, decode=2, router="least_loaded"), poisson(80, 40, (100, 1500), (1, 300))),
    lambda: (tiny_kv_deployment(kv_tokens=3000), poisson(40, 20, 500, (600, 800))),
    lambda: (agg(), closed(40, 6, 700, 90, warmup=6)),
])
def test_fast_forward_gives_the_same_token_times_as_stepping(make):
    dep, wl = make()
    ff = simulate(dep, wl)
    step = simulate(dep, wl, fast_forward=False)
    assert ff.iterations == step.iterations
    cols = ["arrival_s", "prefill_end_s", "first_token_s", "last_token_s", "transfer_end_s"]
    np.testing.assert_allclose(ff.requests[cols].to_numpy(), step.requests[cols].to_numpy(), rtol=1e-9, atol=1e-9)
    assert (ff.requests["preemptions"] == step.requests["preemptions"]).all()
    a, b = ff.summary()["itl_ms"], step.summary()["itl_ms"]
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6)


def test_closed_loop_keeps_n_in_flight_and_leaves_warmup_out():
    n, conc, warm = 30, 4, 4
    res = simulate(agg(), closed(n, conc, 1000, 50, warmup=warm))
    df = res.requests
    assert (~df["measured"]).sum() == warm and (df["outcome"] == "ok").all()
    # the first N start together (lock-step)
    assert (df["arrival_s"][:conc] == 0).all() and (df["arrival_s"][conc:] > 0).all()
    t = np.sort(np.concatenate([df["arrival_s"], df["last_token_s"]]))
    in_flight = [((df["arrival_s"] <= x) & (df["last_token_s"] > x)).sum() for x in t]
    assert max(in_flight) == conc
    assert res.summary()["measured"] == n - warm


def test_closed_loop_stagger_spreads_client_starts():
    df = simulate(agg(), closed(8, 4, 1000, 1000), closed_loop_stagger_s=0.5).requests  # none ends before 1.5 s
    np.testing.assert_allclose(df["arrival_s"][:4], [0, 0.5, 1.0, 1.5])


def test_round_robin_and_least_loaded_routing():
    wl = Workload(make_requests(np.arange(12) * 10.0, 500, 20))
    rr = simulate(agg(replicas=3), wl).requests["prefill_worker"]
    assert list(rr) == [0, 1, 2] * 4
    # a long request keeps worker 0 busy: least_loaded sends the next ones elsewhere
    wl2 = Workload(make_requests([0.0, 0.1, 0.2, 0.3], 500, [2000, 10, 10, 10]))
    ll = simulate(parse_deployment({**agg(replicas=2).to_dict(), "router": "least_loaded"}), wl2).requests
    assert list(ll["prefill_worker"]) == [0, 1, 1, 1]


def test_kv_link_shares_bandwidth_among_concurrent_transfers():
    import simpy

    from simulator.link import KVLink

    env = simpy.Environment()
    link = KVLink(env, bandwidth_bytes_s=1e9, latency_s=1e-3)
    done = {}
    link.send(1e9, lambda: done.setdefault("a", env.now))
    env.timeout(0.5).callbacks.append(lambda _e: link.send(0.25e9, lambda: done.setdefault("b", env.now)))
    env.run()
    # a alone for 0.5 s (0.5 GB), then both at 0.5 GB/s: b's 0.25 GB takes 0.5 s, then a finishes its last 0.25 GB
    assert done["b"] == pytest.approx(1.0 + 1e-3)
    assert done["a"] == pytest.approx(1.25 + 1e-3)


def random_case(seed: int):
    """A random small deployment (agg or disagg, tight or ample KV, chunked or whole prompts, decode- or
    prefill-first) and workload."""
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    base = tiny_kv_deployment(int(rng.choice([1500, 3000, 8000, 100000])))
    chunked = bool(rng.integers(2))
    pool = {"max_batch_tokens": int(rng.choice([512, 2048, 8192])), "max_seqs": int(rng.choice([2, 8, 64])),
            "chunked_prefill": chunked, "chunk_size": int(rng.choice([128, 1024])) if chunked else None,
            "prefill_first": bool(rng.integers(2))}
    if rng.integers(2):
        dep = replace(base, workers=replace(base.workers, replicas=int(rng.integers(1, 3)), **pool))
    else:
        dep = disagg(prefill=int(rng.integers(1, 3)), decode=int(rng.integers(1, 3)),
                     decode_pool={"max_seqs": pool["max_seqs"]}, gpu_memory_utilization=base.gpu_memory_utilization,
                     router=str(rng.choice(["round_robin", "least_loaded"])), bandwidth_gb_s=float(rng.choice([1, 50])))
    n = int(rng.integers(5, 50))
    isl, osl = rng.integers(50, 1200, n), rng.integers(1, 500, n)
    if rng.integers(3) == 0:
        return dep, Workload(make_requests(np.full(n, np.nan), isl, osl), concurrency=int(rng.integers(1, 8)))
    return dep, Workload(make_requests(np.cumsum(rng.exponential(1 / rng.choice([1, 20, 200]), n)), isl, osl))


@pytest.mark.parametrize("seed", range(12))
def test_fast_forward_equals_stepping_on_random_deployments(seed):
    dep, wl = random_case(seed)
    ff, step = simulate(dep, wl), simulate(dep, wl, fast_forward=False)
    assert (ff.requests["outcome"] != "pending").all()
    cols = ["prefill_start_s", "transfer_start_s", "first_token_s", "last_token_s", "preemptions"]
    np.testing.assert_allclose(ff.requests[cols].fillna(-1).to_numpy(float),
                               step.requests[cols].fillna(-1).to_numpy(float), rtol=1e-9, atol=1e-9)
    assert ff.iterations == step.iterations


def test_decode_worker_resumes_after_preempting_its_only_sequence():
    # one sequence at a time and a KV cache the queued transfers fill: the decode worker preempts its only
    # sequence, and must then take a ready one (or let a transfer in), not sit idle forever
    dep = parse_deployment({
        "model": "llama-3.1-8b", "gpu": "l40s", "gpu_memory_utilization": 0.42, "topology": "disagg",
        "prefill": {"max_batch_tokens": 512, "max_seqs": 1, "chunked_prefill": False},
        "decode": {"max_batch_tokens": 512, "max_seqs": 1, "chunked_prefill": False},
        "kv_link": {"bandwidth_gb_s": 1.0}})
    arrival = [0.135, 0.310, 0.322, 0.338, 0.358, 0.389, 0.392, 0.486, 0.525, 0.572, 0.594, 0.688, 0.721, 0.889, 0.934]
    isl = [1533, 20000, 2738, 1820, 2439, 1911, 2912, 226, 924, 1948, 20000, 2552, 20000, 50, 526]
    osl = [194, 229, 114, 285, 241, 158, 195, 115, 185, 294, 205, 219, 77, 138, 299]
    df = simulate(dep, Workload(make_requests(arrival, isl, osl))).requests
    assert list(df["outcome"] == "failed") == [x == 20000 for x in isl]
    assert df["preemptions"].sum() > 0


AZURE_CONV = TRACES / "AzureLLMInferenceTrace_conv.csv"


def test_real_trace_slice_through_the_bench_deployment():
    from traces import load_trace
    from traces.transforms import head

    wl = head(load_trace(AZURE_CONV), 1500)
    dep = parse_deployment({"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg",
                            "prefill": {"replicas": 4}, "decode": {"replicas": 2, "tp": 2}, "router": "least_loaded"})
    res = simulate(dep, wl)
    df = res.requests
    assert (df["outcome"] == "ok").all() and len(df) == 1500
    # every prompt is prefilled once, its KV moved once, and its tokens all come out
    assert df["transfer_start_s"].notna().sum() == (df["osl"] > 1).sum()
    assert res.itl[2].sum() == (df["osl"] - 1).sum()
    # least_loaded spreads the decodes over both replicas (ties go to the lowest index, so at this light
    # load the fourth prefill replica may stay idle)
    assert set(df["decode_worker"][df["osl"] > 1]) == {4, 5} and set(df["prefill_worker"]) <= {0, 1, 2, 3}


def test_decode_worker_frees_a_stuck_sequence_for_the_ready_ones_holding_the_kv():
    # max_seqs 1: the one running sequence (re-prefilling after a preemption) needs a block that the ready
    # requests hold while they wait for the seat; it must yield the seat rather than wait forever
    dep = parse_deployment({"model": "llama-3.1-8b", "gpu": "l40s", "gpu_memory_utilization": 0.42,
                            "prefill": {"max_batch_tokens": 512, "max_seqs": 1, "chunked_prefill": False},
                            "decode": {"max_batch_tokens": 512, "max_seqs": 1}, "kv_link": {"bandwidth_gb_s": 1.0}})
    arrival = [0.135, 0.322, 0.338, 0.358, 0.389, 0.392, 0.486, 0.572, 0.688]
    isl = [1533, 2738, 1820, 2439, 1911, 2912, 226, 1948, 2552]
    osl = [194, 114, 285, 241, 158, 195, 115, 294, 219]
    df = simulate(dep, Workload(make_requests(arrival, isl, osl))).requests
    assert (df["outcome"] == "ok").all() and df["preemptions"].sum() > 0


def test_batch_waiting_holds_new_prompts_for_its_iterations_or_until_its_tokens():
    """TRT-LLM's batch waiting: while sequences decode, a new prompt is held back for batch_wait_iters
    iterations, unless the waiting prompts and the decodes reach the token share first; an idle engine and a
    pool without it admit at once; stepping and fast-forward agree."""
    wl = Workload(make_requests([0.0, 0.5, 0.9, 0.9001, 0.9002], [800, 500, 300, 3000, 3000], [400, 20, 20, 20, 20]))
    plain = simulate(agg(max_batch_tokens=8192), wl)
    held = simulate(agg(max_batch_tokens=8192, batch_wait_iters=10, batch_wait_tokens_ratio=0.5), wl)
    stepped = simulate(agg(max_batch_tokens=8192, batch_wait_iters=10, batch_wait_tokens_ratio=0.5), wl,
                       fast_forward=False)
    cols = ["prefill_start_s", "first_token_s", "last_token_s"]
    np.testing.assert_allclose(held.requests[cols].to_numpy(), stepped.requests[cols].to_numpy(), rtol=1e-9)
    assert held.iterations == stepped.iterations
    p, h = plain.requests, held.requests
    assert h["prefill_start_s"][0] == p["prefill_start_s"][0] == FRONTEND_S  # idle: at once
    wait = h["prefill_start_s"] - h["arrival_s"]
    step_s = cost().iteration_s(Batch.of(decode_ctx=[1300]))
    assert 9 * step_s < wait[1] - FRONTEND_S < 11.5 * step_s  # alone: ten decode iterations, then admitted
    assert wait[1] - FRONTEND_S > 5 * (p["prefill_start_s"][1] - p["arrival_s"][1] - FRONTEND_S)  # not the step
    # 300 + 3000 + 3000 waiting tokens and the decodes pass 0.5 x 8192 once the second long prompt is in
    assert h["prefill_start_s"][4] - h["arrival_s"][4] < FRONTEND_S + 2 * step_s
    assert h["prefill_start_s"][2] - h["arrival_s"][2] < FRONTEND_S + 2 * step_s
    d = agg(batch_wait_iters=20, batch_wait_tokens_ratio=0.9).to_dict()["workers"]
    assert (d["batch_wait_iters"], d["batch_wait_tokens_ratio"]) == (20, 0.9)
    assert "batch_wait_iters" not in agg().to_dict()["workers"]
    with pytest.raises(InputError, match="batch_wait_tokens_ratio: must be a share from 0 to 1"):
        agg(batch_wait_tokens_ratio=1.5)
    with pytest.raises(InputError, match="batch_wait_iters: must be a whole number"):
        agg(batch_wait_iters=2.5)


# ---- stopping a hopeless run ------------------------------------------------------------------
def test_a_run_that_meets_its_targets_is_the_same_whether_it_may_stop_early_or_not():
    wl, slo = poisson(300, 8, 1500, 100, seed=4), SLO(ttft_ms=2000, tpot_ms=50)
    full = simulate(agg(), wl, slo=slo)
    watched = simulate(agg(), wl, slo=slo, stop_when_missed=True)
    assert full.summary()["slo_met"] and "stopped_early" not in watched.summary()
    assert json.dumps(full.summary(), sort_keys=True) == json.dumps(watched.summary(), sort_keys=True)
    assert full.requests.equals(watched.requests) and full.workers.equals(watched.workers)


def test_an_overloaded_run_stops_once_the_miss_is_certain_and_says_so():
    wl, slo = poisson(2000, 60, 3000, 300, seed=1), SLO(ttft_ms=500, tpot_ms=30)
    full = simulate(agg(), wl, slo=slo)
    stopped = simulate(agg(), wl, slo=slo, stop_when_missed=True)
    s = stopped.summary()
    assert not full.summary()["slo_met"] and s["slo_met"] is False
    assert s["stopped_early"]["at_s"] < full.end_s and s["stopped_early"]["unfinished"] > 0
    # what it counted as missed by then really missed in the full run
    missed = (full.requests["ttft_s"] * 1e3 > slo.ttft_ms) | (full.requests["tpot_s"] * 1e3 > slo.tpot_ms)
    assert int(missed.sum()) >= s["stopped_early"]["ttft_missed"] > (1 - slo.attainment) * len(wl)
    assert stopped.iterations < full.iterations


def test_peak_seqs_is_the_most_sequences_a_replica_ran_at_once():
    s = simulate(agg(max_seqs=16), closed(200, 40, 500, 50)).summary()
    assert s["peak_seqs"] == {"workers": 16}
    assert simulate(agg(max_seqs=512), closed(200, 40, 500, 50)).summary()["peak_seqs"]["workers"] <= 40
