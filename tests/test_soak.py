"""Soak and kill, short CI variants on one `pdsim serve` (2 prefill + 2 decode workers, tiny model, 127.0.0.1).

- Soak (bench/soak.py runs it for 5 minutes): 64 concurrent streaming clients; no request fails or comes up
  short, and once idle no KV block is still in use.
- Kill: SIGKILL a prefill worker, and separately a decode worker, while 24 streaming clients keep the server
  busy: every request in flight ends with all its tokens or with an error, none hangs, and the frontend goes
  on serving new requests on the workers left. (tests/test_runtime_serve.py kills a decode worker under six
  streams; this adds load and the prefill side.)

Tests run in file order on the shared server: the soak first, then one kill each. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DEPLOYMENT = {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "disagg", "router": "round_robin",
              "prefill": {"replicas": 2, "max_batch_tokens": 256}, "decode": {"replicas": 2, "max_seqs": 64}}


def load_soak():
    path = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("bench_soak", path)
    module = sys.modules["bench_soak"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


soak = load_soak()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("soak")
    dep, log = tmp / "dep.yaml", tmp / "requests.jsonl"
    dep.write_text(yaml.safe_dump(DEPLOYMENT))
    proc, url = soak.start_server(str(dep), str(log), "--kv-timeout", "3")
    yield url, log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_64_streaming_clients_get_every_token_and_leave_no_kv_in_use(server):
    result = asyncio.run(soak.run_soak(server[0], clients=64, duration_s=5, isl=(16, 96), osl=(4, 24),
                                       request_timeout_s=90))
    text = soak.report(result, windows=3)
    print(text)
    assert len({r["client"] for r in result.results}) == 64, text  # every client was served at least once
    assert soak.failures(result) == [], text
    assert max(k for _, k in result.kv_samples) > 0, text  # the load was real: KV was held ...
    assert not soak.leaked(result), text  # ... and all of it came back
    assert "when idle: KV blocks in use 0, requests in flight 0" in text


def worker_holds(url: str, worker: str) -> float:
    """Requests waiting or running on ``worker``, by its last report in /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(("pdsim_worker_waiting{", "pdsim_worker_running{")) and f'worker="{worker}"' in line)


# the victim's stage is the bottleneck, so that it always holds requests when it dies: long prompts and short
# answers keep the prefill workers queued, short prompts and longer answers keep the decode workers full
LOAD = {"prefill-0": {"isl": (500, 1000), "osl": (4, 8)}, "decode-1": {"isl": (32, 400), "osl": (16, 48)}}


@pytest.mark.parametrize("victim", sorted(LOAD, reverse=True))
def test_a_worker_killed_under_load_ends_every_request_and_the_rest_keep_serving(server, victim):
    url, log = server
    pid = next(w["pid"] for w in httpx.get(url + "/health").json()["workers"] if w["id"] == victim)
    since, killed = time.time(), {}

    async def kill_when_busy(_soak) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the victim holds requests: the kill hits work in flight
            if await asyncio.to_thread(worker_holds, url, victim) > 0:
                break
            await asyncio.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        killed["at"] = time.perf_counter()

    result = asyncio.run(soak.run_soak(url, clients=24, duration_s=6, **LOAD[victim], request_timeout_s=60,
                                       on_start=kill_when_busy))
    text = soak.report(result, windows=3)
    print(f"killed {victim}:\n{text}")
    # every request ended: its tokens, or an error; a request timeout would be a hang
    assert result.results and "at" in killed, text
    for r in soak.failures(result):
        assert r["error"] and "Timeout" not in r["error"], text
    assert max((r["times"] or [r["sent"]])[-1] for r in result.results) - killed["at"] < 60
    # the kill hit requests in flight: the log shows them retried (the victim died, or KV it was sending never
    # came) and finished, or failed with the reason
    records = [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["arrival_s"] >= since]
    hit = [r for r in records if len(r["attempts"]) > 1 or r["outcome"] != "ok"]
    assert any(victim in (a.get("error") or "") for r in hit for a in r["attempts"]), text
    assert all((r["outcome"] == "ok" and r["output_tokens"] == r["max_tokens"]) or r["error"] for r in hit), text
    # the frontend still serves, on the workers left, and holds no KV for what ended
    health = httpx.get(url + "/health").json()
    assert health["status"] == "degraded" and victim in [w["id"] for w in health["workers"] if not w["alive"]]
    after = asyncio.run(soak.run_soak(url, clients=8, duration_s=0.5, isl=(16, 64), osl=(8, 8), request_timeout_s=60))
    assert len(after.results) >= 8 and soak.failures(after) == [], soak.report(after, windows=1)
    assert not soak.leaked(after), soak.report(after, windows=1)
