"""KV as a managed resource (issue 8): prefix caching, KV-aware routing on delayed events, KV tiers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from profiler.errors import InputError
from profiler.gpus import resolve_gpu
from profiler.memory import RESERVE_BYTES, memory_fit
from profiler.models import resolve_model
from simulator import simulate
from simulator.deployment import parse_deployment
from traces.workload import Workload, make_requests

MODEL, GPU = resolve_model("llama-3.1-8b"), resolve_gpu("h200-sxm")
H = 512  # tokens per hash block (Mooncake)
TIMES = ["prefill_start_s", "prefill_end_s", "transfer_end_s", "first_token_s", "last_token_s"]


def deployment(topology="agg", replicas=1, kv_tokens=None, **kw):
    pools = ({"workers": {"replicas": replicas}} if topology == "agg" else
             {"prefill": {"replicas": replicas}, "decode": {"replicas": kw.pop("decode", 1)}})
    dep = parse_deployment({"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": topology,
                            **pools, **kw})
    if kv_tokens is None:
        return dep
    fit = memory_fit(MODEL, GPU, 1, "fp8", "fp8", 8192)  # a KV cache of about kv_tokens tokens
    u = (fit.weights_bytes + fit.activation_bytes + RESERVE_BYTES + kv_tokens * fit.kv_bytes_per_token) / GPU.hbm_bytes
    return replace(dep, gpu_memory_utilization=u)


def chains(prefixes, isl):
    """Hash chains: request i starts with prefix ``prefixes[i]`` (a list of shared ids), then ids of its own."""
    out, fresh = [], 10**6
    for p, n in zip(prefixes, isl, strict=True):
        own = -(-n // H) - len(p)
        out.append(list(p) + list(range(fresh, fresh + own)))
        fresh += own
    return out


def workload(arrival_s, isl, osl, hash_ids=None):
    extra = {} if hash_ids is None else {"hash_ids": pd.Series(hash_ids, dtype=object).to_numpy()}
    return Workload(make_requests(arrival_s, isl, osl, **extra))


def conversations(n=120, sessions=12, rate=6.0, seed=0):
    """Multi-turn sessions: each turn's prompt is the last one plus ~700 new tokens (a growing shared chain)."""
    rng = np.random.default_rng(seed)
    sess = rng.integers(0, sessions, n)
    turns: dict[int, list[int]] = {}
    isl, ids, fresh = [], [], 0
    for s in sess.tolist():
        chain = turns.setdefault(s, [])
        add = -(-int(rng.integers(500, 900)) // H)
        chain += list(range(fresh, fresh + add))
        fresh += add
        isl.append(len(chain) * H - int(rng.integers(0, 200)))
        ids.append(list(chain))
    return workload(np.cumsum(rng.exponential(1 / rate, n)), np.array(isl), 40, ids)


# ---- no sharing: no benefit, no cost ----------------------------------------------------------------
@pytest.mark.parametrize("topology", ["agg", "disagg"])
def test_without_shared_prefixes_the_cache_changes_nothing(topology):
    rng = np.random.default_rng(3)
    n = 60
    arrival, isl, osl = np.cumsum(rng.exponential(0.05, n)), rng.integers(600, 5000, n), rng.integers(1, 300, n)
    plain = workload(arrival, isl, osl)
    unique = workload(arrival, isl, osl, chains([[]] * n, isl))  # every block hash is new
    for router in ("round_robin", "kv_aware"):
        # (under preemption the cache does help: a recomputed prompt finds its own blocks again)
        dep = deployment(topology, replicas=2, kv_tokens=200_000, router=router)
        a, b = simulate(dep, plain), simulate(dep, unique)
        assert a.iterations == b.iterations and a.summary()["preemptions"] == 0
        pd.testing.assert_frame_equal(a.requests, b.requests)
        assert a.summary()["prefix_hit_rate"] == b.summary()["prefix_hit_rate"] == 0.0
        assert b.summary()["kv"]["prefill_tokens_saved"] == 0
    off = simulate(replace(dep, extra={"prefix_cache": False}), unique)
    pd.testing.assert_frame_equal(off.requests, a.requests)


# ---- prefix reuse -------------------------------------------------------------------------------
def test_a_cached_prefix_is_not_prefilled_again():
    isl = np.array([4 * H + 100, 4 * H + 300])
    ids = chains([[1, 2, 3, 4], [1, 2, 3, 4]], isl)  # the second request shares 4 full hash blocks
    wl = workload([0.0, 5.0], isl, 2, ids)
    res = simulate(deployment(), wl)
    s = res.summary()
    assert res.extra["kv"]["requests"]["cached_tokens"].tolist() == [0, 4 * H]
    assert s["prefix_hit_rate"] == pytest.approx(4 * H / isl.sum())
    assert s["kv"]["prefill_tokens_saved"] == 4 * H
    prefill_s = (res.requests["prefill_end_s"] - res.requests["prefill_start_s"]).to_numpy()
    alone = simulate(deployment(), workload([0.0], [300], 2)).requests  # 300 new tokens after a 2048-token cache
    assert prefill_s[1] < prefill_s[0] / 3
    assert prefill_s[1] > (alone["prefill_end_s"] - alone["prefill_start_s"]).iloc[0]  # attention reads the prefix


@pytest.mark.parametrize("block_tokens, cached", [(16, 4 * H), (48, (4 * H // 48) * 48), (1024, 2 * 1024)])
def test_engine_blocks_of_another_size_map_onto_the_hash_blocks(block_tokens, cached):
    isl = np.array([4 * H + 100, 4 * H + 100])
    wl = workload([0.0, 5.0], isl, 2, chains([[1, 2, 3, 4], [1, 2, 3, 4]], isl))
    res = simulate(deployment(kv_block_tokens=block_tokens), wl)
    assert res.extra["kv"]["requests"]["cached_tokens"].tolist() == [0, cached]


def test_a_fully_cached_prompt_still_computes_its_last_hash_block():
    wl = workload([0.0, 5.0], [2 * H, 2 * H], 2, [[7, 8], [7, 8]])
    res = simulate(deployment(), wl)
    assert res.extra["kv"]["requests"]["cached_tokens"].tolist() == [0, H]  # reuse is by whole hash blocks


def test_lru_evicts_the_oldest_prefix_under_pressure():
    # Three 8k-token prefixes, then the first and the last again; HBM holds about two of them.
    isl = np.full(5, 16 * H + 50)
    pre = [list(range(100 * k, 100 * k + 16)) for k in range(3)]
    wl = workload([0, 10, 20, 30, 40], isl, 2, chains([pre[0], pre[1], pre[2], pre[0], pre[2]], isl))
    small = simulate(deployment(kv_tokens=20_000), wl).extra["kv"]["requests"]["cached_tokens"].tolist()
    big = simulate(deployment(kv_tokens=200_000), wl).extra["kv"]["requests"]["cached_tokens"].tolist()
    assert big == [0, 0, 0, 16 * H, 16 * H]
    # the first prefix was the least recently used: its deepest blocks went first, its root survives
    assert 0 < small[3] < 16 * H and small[4] == 16 * H


def test_fast_forward_equals_stepping_with_the_cache_under_pressure():
    wl = conversations(n=80, rate=8.0)
    dep = deployment(replicas=2, kv_tokens=25_000, router="kv_aware")
    ff, step = simulate(dep, wl), simulate(dep, wl, fast_forward=False)
    assert ff.iterations == step.iterations
    np.testing.assert_allclose(ff.requests[TIMES].to_numpy(), step.requests[TIMES].to_numpy(), rtol=1e-9, atol=1e-9)
    assert ff.summary()["prefix_hit_rate"] == step.summary()["prefix_hit_rate"] > 0.3
    assert ff.summary()["preemptions"] == step.summary()["preemptions"]


# ---- routing --------------------------------------------------------------------------------------
def test_kv_aware_routing_beats_round_robin_on_conversations():
    wl = conversations()
    rr = simulate(deployment(replicas=4, router="round_robin"), wl).summary()
    kv = simulate(deployment(replicas=4, router="kv_aware"), wl).summary()
    assert kv["prefix_hit_rate"] > rr["prefix_hit_rate"] + 0.1
    assert kv["ttft_ms"]["p90"] < rr["ttft_ms"]["p90"]
    assert kv["kv"]["stale_routes"] == 0  # events arrive at once: the view is exact


def test_stale_events_send_requests_astray_and_lower_the_hit_rate():
    wl = conversations()
    # delays a conversation's turns apart (a second's delay moves the rate within the run's noise, either way)
    rates = [simulate(deployment(replicas=4, router="kv_aware", kv_event_delay_s=delay), wl).summary()
             ["prefix_hit_rate"] for delay in (0.0, 5.0, 100.0)]
    assert rates[0] > rates[1] > rates[2] and rates[0] > rates[2] + 0.07  # 0.64 -> 0.55 here
    rr = simulate(deployment(replicas=4, router="round_robin"), wl).summary()["prefix_hit_rate"]
    assert rates[2] >= rr - 0.05  # a blind view is no worse than round robin, give or take noise


def test_a_stale_view_that_promises_an_evicted_prefix_counts_as_a_stale_route():
    # The worker caches prefix A (the router knows by t = 5.5), then B evicts A at t = 10; the router learns of
    # that at t = 15, so at t = 12 it sends A's next turn there expecting a hit that is gone.
    isl = np.full(3, 16 * H + 50)
    a, b = list(range(16)), list(range(100, 116))
    wl = workload([0, 10, 12], isl, 2, chains([a, b, a], isl))
    dep = deployment(replicas=1, kv_tokens=12_000, router="kv_aware", kv_event_delay_s=5.0)
    res = simulate(dep, wl)
    assert res.summary()["kv"]["stale_routes"] == 1
    assert res.extra["kv"]["requests"]["cached_tokens"].iloc[2] < 16 * H  # (B evicted A's deepest blocks)
    fresh = simulate(replace(dep, kv_event_delay_s=0.0), wl).summary()
    assert fresh["kv"]["stale_routes"] == 0


def test_router_weights_trade_overlap_against_load():
    wl = conversations(rate=20.0)
    hit = {}
    for name, weights in {"cache": {"overlap": 1, "load": 0}, "load": {"overlap": 0, "load": 1}}.items():
        res = simulate(deployment(replicas=4, router="kv_aware", router_weights=weights), wl)
        hit[name] = res.summary()["prefix_hit_rate"]
    assert hit["cache"] > hit["load"] + 0.1


# ---- tiers ---------------------------------------------------------------------------------------
def test_a_host_tier_keeps_evicted_prefixes_and_recall_time_shows_in_ttft():
    isl = np.full(5, 16 * H + 50)
    pre = [list(range(100 * k, 100 * k + 16)) for k in range(3)]
    wl = workload([0, 10, 20, 30, 40], isl, 2, chains([pre[0], pre[1], pre[2], pre[0], pre[1]], isl))
    hbm = simulate(deployment(kv_tokens=20_000), wl)
    tiered = simulate(deployment(kv_tokens=20_000, kv_tiers={"host": {"capacity_gb": 64, "bandwidth_gb_s": 1}}), wl)
    big = simulate(deployment(kv_tokens=200_000), wl)
    assert hbm.summary()["prefix_hit_rate"] < tiered.summary()["prefix_hit_rate"] == big.summary()["prefix_hit_rate"]
    host = tiered.summary()["kv"]["tiers"]["host"]
    entry_bytes = H * MODEL.kv_bytes_per_token("fp8")  # one hash block of KV
    assert host["hits"] > 0 and host["recalled_bytes"] == pytest.approx(host["hits"] * entry_bytes)
    assert host["offloaded_bytes"] >= host["recalled_bytes"]
    # the same hit, partly from host memory at 1 GB/s, costs its recall time in TTFT
    traffic = tiered.extra["kv"]["tier_traffic"]
    first = traffic[(traffic["what"] == "recalled") & traffic["time_s"].between(30, 39)]
    assert len(first) > 0
    ttft_tier, ttft_hbm = tiered.requests["ttft_s"].iloc[3], big.requests["ttft_s"].iloc[3]
    assert ttft_tier - ttft_hbm == pytest.approx(first["bytes"].sum() / 1e9, rel=1e-6)


def test_disagg_moves_only_the_blocks_the_decode_worker_lacks():
    isl = np.array([8 * H + 100, 8 * H + 100])
    wl = workload([0.0, 10.0], isl, 20, chains([list(range(8))] * 2, isl))
    res = simulate(deployment("disagg", kv_link={"bandwidth_gb_s": 1, "latency_us": 0}), wl)
    xfer = (res.requests["transfer_end_s"] - res.requests["transfer_start_s"]).to_numpy()
    assert res.extra["kv"]["requests"]["decode_hit_tokens"].tolist() == [0, 8 * H]
    assert xfer[1] == pytest.approx(xfer[0] * 100 / (8 * H + 100), rel=1e-6)
    assert res.summary()["kv"]["transfer_tokens_saved"] == 8 * H


# ---- configuration --------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, where", [
    ({"router_weights": {"overlap": -1}}, "router_weights.overlap"),
    ({"router_weights": {"overlap": 0, "load": 0}}, "router_weights"),
    ({"router_weights": {"prefix": 1}}, "router_weights"),
    ({"kv_tiers": {"hbm": {"capacity_gb": 1}}}, "kv_tiers"),
    ({"kv_tiers": {"remote": {"bandwidth_gb_s": 10}}}, "kv_tiers.remote"),
    ({"kv_tiers": {"host": {"bandwidth_gb_s": 0}}}, "kv_tiers.host.bandwidth_gb_s"),
    ({"kv_tiers": {"disk": {"capacity_gb": "lots"}}}, "kv_tiers.disk.capacity_gb"),
    ({"prefix_cache": "yes"}, "prefix_cache"),
])
def test_bad_kv_sections_name_their_field(extra, where):
    with pytest.raises(InputError, match=rf"deployment\.{where}: "):
        parse_deployment({"model": "llama-3.1-8b", **extra})


def test_the_report_figure_shows_the_hit_rate_and_the_tier_traffic():
    from reports.html import kv_timeseries

    isl = np.full(5, 16 * H + 50)
    pre = [list(range(100 * k, 100 * k + 16)) for k in range(3)]
    wl = workload([0, 10, 20, 30, 40], isl, 2, chains([pre[0], pre[1], pre[2], pre[0], pre[1]], isl))
    res = simulate(deployment(kv_tokens=20_000, kv_tiers={"host": {"capacity_gb": 64}}), wl)
    s = res.summary()
    fig = kv_timeseries(res.extra["kv"], bins=1)
    overall = next(t for t in fig.data if t.name == "all workers")
    assert overall.y[0] == pytest.approx(s["prefix_hit_rate"])
    bars = {t.name: sum(t.y) for t in fig.data if t.type == "bar"}
    assert bars["host offloaded"] * 1e9 == pytest.approx(s["kv"]["tiers"]["host"]["offloaded_bytes"])
    assert bars["host recalled"] * 1e9 == pytest.approx(s["kv"]["tiers"]["host"]["recalled_bytes"])
    assert bars["host recalled"] > 0


def test_a_full_host_tier_spills_to_disk():
    isl = np.full(5, 16 * H + 50)
    pre = [list(range(100 * k, 100 * k + 16)) for k in range(3)]
    wl = workload([0, 10, 20, 30, 40], isl, 2, chains([pre[0], pre[1], pre[2], pre[0], pre[1]], isl))
    entry_gb = H * MODEL.kv_bytes_per_token("fp8") / 1e9
    tiers = {"host": {"capacity_gb": 4 * entry_gb}, "disk": {"capacity_gb": 64}}
    res = simulate(deployment(kv_tokens=20_000, kv_tiers=tiers), wl)
    big = simulate(deployment(kv_tokens=200_000), wl)
    t = res.summary()["kv"]["tiers"]
    assert res.summary()["prefix_hit_rate"] == big.summary()["prefix_hit_rate"]
    assert t["disk"]["hits"] > 0 and t["disk"]["offloaded_bytes"] > 0


def test_the_remote_tier_is_shared_between_workers():
    # Round robin over 2 workers, each HBM holds one prefix: P is computed on worker 0, pushed out by R, and
    # found by worker 1 in the remote store.
    isl = np.full(4, 16 * H + 50)
    p, q, r = (list(range(100 * k, 100 * k + 16)) for k in range(3))
    wl = workload([0, 10, 20, 30], isl, 2, chains([p, q, r, p], isl))
    dep = deployment(replicas=2, kv_tokens=8_600)  # one prompt fits, no room left for another prefix
    alone = simulate(dep, wl).extra["kv"]["requests"]
    shared = simulate(replace(dep, extra={"kv_tiers": {"remote": {"capacity_gb": 100}}}), wl)
    assert shared.requests["prefill_worker"].tolist() == [0, 1, 0, 1]
    assert alone["cached_tokens"].iloc[3] < shared.extra["kv"]["requests"]["cached_tokens"].iloc[3] == 16 * H
    assert shared.summary()["kv"]["tiers"]["remote"]["hits"] > 0


def test_a_replica_that_dies_loses_its_cached_prefixes():
    isl = np.full(2, 8 * H + 50)
    wl = workload([0, 10], isl, 2, chains([list(range(8))] * 2, isl))
    alive = simulate(deployment(router="kv_aware"), wl).extra["kv"]["requests"]["cached_tokens"].tolist()
    died = simulate(deployment(router="kv_aware", faults=["workers[0] dies at 5s, back after 1s"]), wl)
    assert alive == [0, 8 * H]
    assert died.extra["kv"]["requests"]["cached_tokens"].tolist() == [0, 0]
    assert (died.requests["outcome"] == "ok").all()


def test_tier_defaults_are_a_typical_host():
    from simulator.kv import kv_settings
    from simulator.kv_tiers import tiers_flag

    dep = deployment(kv_tiers={"host": None, "disk": {"bandwidth_gb_s": 3}})
    host, disk = kv_settings(dep).tiers
    assert (host.capacity_bytes, host.bandwidth_bytes_s) == (256e9, 50e9)
    assert (disk.capacity_bytes, disk.bandwidth_bytes_s) == (2000e9, 3e9)
    assert tiers_flag("host,remote=500") == {"host": {}, "remote": {"capacity_gb": 500.0}}


@pytest.mark.parametrize("seed", range(8))
def test_random_sharing_under_pressure_finishes_everything_and_gives_every_block_back(seed):
    from simulator.sim import Simulation

    rng = np.random.default_rng(seed)
    topology = ("agg", "disagg")[seed % 2]
    n = 50
    isl = rng.integers(300, 6000, n)
    pool = [list(range(1000 * k, 1000 * k + 12)) for k in range(4)]
    prefixes = [pool[i][: int(rng.integers(0, 12))] if rng.random() < 0.8 else [] for i in rng.integers(0, 4, n)]
    prefixes = [p[: int(x) // H] for p, x in zip(prefixes, isl, strict=True)]
    wl = workload(np.cumsum(rng.exponential(0.03, n)), isl, rng.integers(1, 200, n), chains(prefixes, isl))
    dep = deployment(topology, replicas=2, kv_tokens=int(rng.integers(8_000, 30_000)),
                     router=("kv_aware", "round_robin")[seed % 3 == 0],
                     kv_tiers={"host": {"capacity_gb": 1}} if seed % 2 else None)
    dep = dep.with_pool(next(iter(dep.pools)), chunk_size=int(rng.choice([512, 2048, 8192])))
    sim = Simulation(dep, wl)
    sim.env.run()
    res = sim.result()
    assert (res.requests["outcome"] == "ok").all()
    for w in sim.workers:
        assert w.kv.used == 0 and not w.cache.busy and not w.cache.held
        assert w.cache.idle_blocks == sum(w.cache.idle.values()) <= w.kv.free
    step = simulate(dep, wl, fast_forward=False)
    np.testing.assert_allclose(res.requests[TIMES].to_numpy(), step.requests[TIMES].to_numpy(), rtol=1e-9, atol=1e-9)
