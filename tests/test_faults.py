"""Faults, retries, drains: what happens to every request when a worker dies, KV is lost or a replica is
removed (simulator/faults.py, simulator/scaling.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from profiler.errors import InputError
from simulator import simulate
from simulator.deployment import parse_deployment
from simulator.fault_plan import fault_plan
from traces.synthetic import synthetic_workload
from traces.workload import Workload, make_requests

DISAGG = {"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg",
          "prefill": {"replicas": 2}, "decode": {"replicas": 2}, "router": "round_robin"}
AGG = {"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "agg",
       "workers": {"replicas": 2}, "router": "round_robin"}


def dep(base: dict, faults=(), **extra):
    return parse_deployment({**base, **({"faults": list(faults)} if faults else {}), **extra})


def load(n=300, rate=40.0, isl=3000, osl=60, seed=1):
    return synthetic_workload(requests=n, isl=isl, osl=osl, rate=rate, seed=seed)


def busy_moment(df, worker: int, column: str = "prefill_worker") -> float:
    """A time at which ``worker`` is prefilling some request (mid-trace), from a fault-free run."""
    rows = df[df[column] == worker]
    row = rows.iloc[len(rows) // 2]
    return float((row.prefill_start_s + row.prefill_end_s) / 2)


def test_a_prefill_worker_killed_mid_trace_loses_no_request():
    wl = load()
    base = simulate(dep(DISAGG), wl).requests
    t = busy_moment(base, 0)
    r = simulate(dep(DISAGG, [f"prefill[0] dies at {t}s"]), wl)
    df = r.requests
    assert set(df["outcome"]) <= {"ok", "retried_ok"}
    hit = df[df["outcome"] == "retried_ok"]
    assert len(hit) >= 1 and (hit["fault"].str.contains("prefill\\[0\\] died")).all()
    assert (hit["prefill_worker"] == 1).all()  # prefilled again on the live replica
    assert (df.loc[df["arrival_s"] > t, "prefill_worker"] == 1).all()  # the dead one gets nothing new
    assert df["last_token_s"].notna().all()
    s = r.summary()
    assert s["outcomes"] == {"ok": len(df) - len(hit), "retried_ok": len(hit), "failed": 0}
    assert s["availability"] == 1.0
    assert s["faults"]["wasted_gpu_s"] > 0  # the prefill in flight when it died


def _seed_losing_first_transfer_only(p: float) -> int:
    """A seed whose first draw loses a transfer (< p) and whose second does not."""
    for seed in range(1000):
        a, b = np.random.default_rng(seed).random(2)
        if a < p <= b:
            return seed
    raise AssertionError("no such seed")


def test_a_lost_transfer_costs_exactly_the_timeout_plus_a_re_prefill():
    wl = Workload(make_requests([0.0], 4000, 20))
    seed = _seed_losing_first_transfer_only(0.5)
    retry = {"kv_timeout_s": 2.0, "backoff_s": 0.0}
    base = simulate(dep(DISAGG), wl, seed=seed).requests.iloc[0]
    r = simulate(dep(DISAGG, ["kv transfers lost with p=0.5"], retry=retry), wl, seed=seed)
    got = r.requests.iloc[0]
    prefill_s = base.prefill_end_s - base.prefill_start_s
    assert got.outcome == "retried_ok" and got.retries == 1 and "KV transfer lost" in got.fault
    assert got.ttft_s - base.ttft_s == pytest.approx(2.0 + prefill_s, abs=1e-9)
    assert got.fault_extra_s == pytest.approx(2.0 + prefill_s, abs=1e-9)
    s = r.summary()
    assert s["faults"]["extra_latency_ms"]["p50"] == pytest.approx((2.0 + prefill_s) * 1e3, abs=1e-6)
    assert s["faults"]["wasted_gpu_s"] > 0


def test_transfers_lost_every_time_fail_after_the_retry_limit():
    wl = Workload(make_requests([0.0, 0.1], 1000, 10))
    r = simulate(dep(DISAGG, [{"kv_loss_prob": 1.0}], retry={"max_retries": 2, "kv_timeout_s": 0.5}), wl)
    df = r.requests
    assert (df["outcome"] == "failed").all()
    assert df["fail_reason"].str.contains("gave up after 2 retries").all()
    assert (df["retries"] == 3).all()


def test_a_decode_worker_death_re_prefills_its_requests_and_keeps_what_users_saw():
    wl = load(n=200, rate=20, isl=1000, osl=400)
    base = simulate(dep(DISAGG), wl).requests
    t = float(base["first_token_s"].quantile(0.5))
    r = simulate(dep(DISAGG, [f"decode[0] dies at {t}s"]), wl)
    df = r.requests
    assert set(df["outcome"]) <= {"ok", "retried_ok"}
    hit = df[df["outcome"] == "retried_ok"]
    assert len(hit) >= 1 and (hit["decode_worker"] == 3).all()  # decode[1] is worker 3
    streaming = hit[hit["first_token_s"] < t]
    assert len(streaming) >= 1
    # their first token had reached the user: TTFT stays what it was, the stall shows in TPOT and E2E
    b = base.set_index("request_id").loc[streaming["request_id"]]
    assert np.array_equal(streaming["first_token_s"].to_numpy(), b["first_token_s"].to_numpy())
    assert (streaming["e2e_s"].to_numpy() > b["e2e_s"].to_numpy()).all()
    assert r.summary()["faults"]["wasted_gpu_s"] > 0  # their KV (prompt and streamed tokens) is made again


def test_fail_policy_fails_what_the_dead_worker_held_and_nothing_else():
    wl = load(n=200, rate=30, isl=2000, osl=100)
    base = simulate(dep(AGG), wl).requests
    t = busy_moment(base, 0)
    df = simulate(dep(AGG, [f"workers[0] dies at {t}s"], retry={"policy": "fail"}), wl).requests
    failed = df[df["outcome"] == "failed"]
    assert len(failed) >= 1 and failed["fail_reason"].str.startswith("workers[0] died at").all()
    assert (failed["prefill_worker"] == 0).all()
    assert (df.loc[df["outcome"] != "failed", "outcome"] == "ok").all()


def test_a_worker_death_cuts_a_fast_forwarded_decode_run_exactly_where_stepping_would():
    wl = load(n=60, rate=5, isl=500, osl=300)
    base = simulate(dep(AGG), wl).requests
    t = float(base["first_token_s"].quantile(0.5)) + 0.0123
    d = dep(AGG, [f"workers[0] dies at {t}s"])
    fast, slow = simulate(d, wl).requests, simulate(d, wl, fast_forward=False).requests
    assert (fast["outcome"] == "retried_ok").any()
    assert fast["outcome"].tolist() == slow["outcome"].tolist()
    np.testing.assert_allclose(fast["last_token_s"], slow["last_token_s"], rtol=1e-9)
    np.testing.assert_allclose(fast["first_token_s"], slow["first_token_s"], rtol=1e-9)


def test_no_live_replica_retries_with_backoff_until_it_returns_or_the_limit():
    wl = Workload(make_requests(np.arange(40) * 0.1, 200, 5))
    one = {**AGG, "workers": {"replicas": 1}}
    back = simulate(dep(one, ["workers[0] dies at 1.0s, back after 2s"]), wl).requests
    assert set(back["outcome"]) == {"ok", "retried_ok"}  # 0.5 + 1 + 2 s of backoff outlast the outage
    short = simulate(dep(one, ["workers[0] dies at 1.0s, back after 2s"], retry={"max_retries": 1}), wl).requests
    failed = short[short["outcome"] == "failed"]
    assert len(failed) >= 1 and failed["fail_reason"].str.contains("no live workers worker").all()
    assert (short.loc[short["arrival_s"] > 3.0, "outcome"] == "ok").all()  # after the restart all is well


def test_a_drained_worker_finishes_its_in_flight_requests_and_gives_its_gpus_back():
    wl = load(n=200, rate=20, isl=1000, osl=200)
    base = simulate(dep(AGG), wl)
    t = busy_moment(base.requests, 0)
    r = simulate(dep(AGG, [f"workers[0] drains at {t}s"]), wl)
    df = r.requests
    mine = df[df["prefill_worker"] == 0]
    assert (df["outcome"] == "ok").all()
    assert (mine["arrival_s"] <= t).all() and (mine["decode_worker"] == 0).all()  # finished where they were
    assert (df.loc[df["arrival_s"] > t, "prefill_worker"] == 1).all()
    acts = r.extra["ops"]["scaling"]
    drained = next(a for a in acts if a["action"] == "drained")
    assert drained["time_s"] >= mine["last_token_s"].max()
    assert r.extra["ops"]["gpu_hours"] < 2 * r.end_s / 3600


def test_a_replica_added_serves_only_after_its_start_up():
    wl = load(n=200, rate=30, isl=2000, osl=50)
    r = simulate(dep(DISAGG, ["prefill adds 1 at 1s, start-up 2s"]), wl)
    df = r.requests
    new = df[df["prefill_worker"] == 4]  # the fifth worker
    assert len(new) >= 1 and (new["prefill_start_s"] >= 3.0).all()
    assert [a["action"] for a in r.extra["ops"]["scaling"]] == ["add", "serving"]


def test_without_faults_the_summary_is_byte_identical():
    wl = load(n=150, rate=30)
    plain = simulate(dep(DISAGG), wl).summary()
    empty = simulate(dep(DISAGG, retry={"max_retries": 5}, faults=[]), wl).summary()
    assert json.dumps(plain, sort_keys=True) == json.dumps(empty, sort_keys=True)
    # a controller that is attached but never changes anything: same requests, same latencies
    inert = simulate(dep(DISAGG, ["kv transfers slowed 1x with p=1"]), wl)
    base = simulate(dep(DISAGG), wl)
    cols = list(base.requests.columns)
    assert inert.requests[cols].equals(base.requests)
    a, b = inert.summary(), base.summary()
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "outcomes", "throughput_tok_s"):
        assert a[key] == b[key]


def test_fault_sentences_and_mappings_parse_alike_and_bad_ones_say_what_is_wrong():
    words = fault_plan({"faults": ["prefill[0] dies at 120s, back after 30s", "kv transfers lost with p=0.01",
                                   "kv transfers slowed 4x with p=0.05",
                                   "link prefill[1] degrades to 25% at 60s for 30s",
                                   "decode[1] drains at 300s", "prefill adds 2 at 200s, start-up 45s"]})
    maps = fault_plan({"faults": [{"worker": "prefill[0]", "dies_at_s": 120, "back_after_s": 30},
                                  {"kv_loss_prob": 0.01}, {"kv_slow_prob": 0.05, "slow_factor": 4},
                                  {"link": "prefill[1]", "degrade_at_s": 60, "for_s": 30, "factor": 0.25},
                                  {"worker": "decode[1]", "drains_at_s": 300},
                                  {"pool": "prefill", "add": 2, "at_s": 200, "startup_s": 45}]})
    assert words == maps
    with pytest.raises(InputError, match=r"faults\[0\].*cannot read 'prefill\[0\] explodes'"):
        fault_plan({"faults": ["prefill[0] explodes"]})
    with pytest.raises(InputError, match=r"faults\[0\]\.kv_loss_prob: must be a probability"):
        fault_plan({"faults": [{"kv_loss_prob": 2}]})
    with pytest.raises(InputError, match=r"retry\.policy: must be retry or fail"):
        fault_plan({"retry": {"policy": "pray"}})
    with pytest.raises(InputError, match=r"decode\[5\] dies, but the deployment has"):
        simulate(dep(DISAGG, ["decode[5] dies at 1s"]), load(n=5))


def test_cli_faults_cost_and_request_timelines(tmp_path, capsys):
    from planner.cli import app, run_app

    d = tmp_path / "d.yaml"
    d.write_text(dep(DISAGG).to_yaml())
    prices = tmp_path / "prices.yaml"
    prices.write_text("h200-sxm: 2.0\n")
    args = ["simulate", "--deployment", str(d), "--rate", "20", "--isl", "1000", "--osl", "20", "--requests", "40",
            "--fault", "kv transfers lost with p=0.5", "--prices", str(prices), "--trace-requests", "0-1",
            "--json", str(tmp_path / "s.json")]
    assert run_app(app, args) == 0
    out = capsys.readouterr().out
    assert "retried_ok" in out and "$2/GPU-hour" in out
    assert "request 0 (outcome" in out and "request 1 (outcome" in out and "first token (TTFT" in out
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["outcomes"]["retried_ok"] >= 1 and s["cost"]["usd_per_gpu_hour"] == 2.0
    assert run_app(app, [*args[:11], "--fault", "prefill[0] explodes"]) == 2
    assert "cannot read 'prefill[0] explodes'" in capsys.readouterr().err


def test_the_simulation_report_has_a_searchable_table_of_every_request(tmp_path):
    from planner.cli import app, run_app

    d = tmp_path / "d.yaml"
    d.write_text(dep(AGG).to_yaml())
    out = tmp_path / "r.html"
    assert run_app(app, ["simulate", "--deployment", str(d), "--rate", "20", "--isl", "500", "--osl", "300",
                         "--requests", "30", "--fault", "workers[0] dies at 1s", "--report", str(out)]) == 0
    html = out.read_text()
    assert 'oninput="pdsimFilter(this)"' in html and "30 shown" in html
    assert html.count("<tr>") == 31  # a heading and one row per request
    assert "retried_ok" in html and "workers[0] died at 1s" in html


def test_a_draining_decode_replica_migrates_its_sequences_kv_and_leaves_at_once():
    wl = load(n=120, rate=20, isl=1000, osl=600)
    t = 3.0
    finish = simulate(dep(DISAGG, [f"decode[0] drains at {t}s"]), wl)
    move = simulate(dep(DISAGG, [f"decode[0] drains at {t}s, migrating"]), wl)
    df = move.requests
    assert (df["outcome"] == "ok").all()
    moved = [r for r, _, what in move.extra["ops"]["log"] if "migrates from decode worker 2 to 3" in what]
    assert len(moved) >= 2
    assert (df.loc[moved, "decode_worker"] == 3).all() and (df.loc[moved, "first_token_s"] < t).all()
    assert (df.loc[moved, "last_token_s"] > t).all()  # they went on streaming elsewhere

    def drained(r):
        return next(a["time_s"] for a in r.extra["ops"]["scaling"] if a["action"] == "drained")

    assert drained(move) < t + 1.0 < drained(finish)  # it leaves once the KV has moved, not after 600 tokens
    # moving the KV is quicker than losing it (a re-prefill after the backoff), request by request on average
    died = simulate(dep(DISAGG, [f"decode[0] dies at {t}s"]), wl).requests
    assert df.loc[moved, "e2e_s"].mean() < died.loc[moved, "e2e_s"].mean()


def test_a_degraded_link_or_a_slowed_transfer_stretches_the_kv_transfer_by_its_factor():
    wl = Workload(make_requests([0.0], 4000, 5))
    lat = 10e-6  # the default link's latency

    def wire_s(faults):
        q = simulate(dep(DISAGG, faults), wl).requests.iloc[0]
        return q.transfer_end_s - q.transfer_start_s - lat

    base = wire_s([])
    assert wire_s(["link degrades to 10% at 0s for 100s"]) == pytest.approx(10 * base, rel=1e-9)
    assert wire_s(["link prefill[0] degrades to 50% at 0s for 100s"]) == pytest.approx(2 * base, rel=1e-9)
    assert wire_s(["link prefill[1] degrades to 50% at 0s for 100s"]) == pytest.approx(base, rel=1e-9)  # not its link
    assert wire_s(["kv transfers slowed 4x with p=1"]) == pytest.approx(4 * base, rel=1e-9)
