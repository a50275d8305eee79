"""The runtime's router: round robin per pool, least loaded by requests in flight, never a dead worker."""

import pytest

from runtime.router import NoWorker, Router, WorkerHandle


def pool(role: str, n: int) -> list[WorkerHandle]:
    return [WorkerHandle(f"{role}-{i}", role, 1000 + i, 0, alive=True) for i in range(n)]


def test_round_robin_turns_separately_in_each_pool():
    r, prefill, decode = Router("round_robin"), pool("prefill", 1), pool("decode", 2)
    picks = [(r.pick(prefill).id, r.pick(decode).id) for _ in range(4)]
    assert [d for _, d in picks] == ["decode-0", "decode-1", "decode-0", "decode-1"]


def test_least_loaded_picks_fewest_in_flight_and_skips_the_dead():
    r, ws = Router("least_loaded"), pool("decode", 3)
    ws[0].inflight |= {"a", "b"}
    ws[1].inflight |= {"c"}
    assert r.pick(ws).id == "decode-2"
    ws[2].alive = False
    assert r.pick(ws).id == "decode-1"
    assert r.pick(ws, avoid={"decode-1"}).id == "decode-0"
    assert r.pick(ws[1:2], avoid={"decode-1"}).id == "decode-1"  # avoiding is a preference, not a refusal
    for w in ws:
        w.alive = False
    with pytest.raises(NoWorker, match="no live decode worker"):
        r.pick(ws)
