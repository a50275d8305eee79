"""The live runtime end to end: real processes on 127.0.0.1 (frontend, 1 prefill and 2 decode workers),
driven with the official openai client and plain HTTP. Every wait is bounded in count and time."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from needs import needs_real_model

from profiler.models import CATALOG
from runtime.engine import Engine
from runtime.model import build_model, torch_threads
from runtime.scheduler import SchedulerConfig
from runtime.sequence import Sequence
from runtime.tokenizer import ByteTokenizer

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[1]
KEY = "test-key"
DISAGG = {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "disagg", "router": "round_robin",
          "prefill": {"replicas": 1, "max_batch_tokens": 512},
          "decode": {"replicas": 2, "max_seqs": 64}, "kv_block_tokens": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path, deployment: dict, *args: str, ready_s: float = 120.0):
    dep = tmp / "deployment.yaml"
    dep.write_text(yaml.safe_dump(deployment))
    port, log = free_port(), tmp / "requests.jsonl"
    cmd = [sys.executable, "-c", "from planner.cli import main; main()", "serve", "--deployment", str(dep),
           "--port", str(port), "--log", str(log), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline, out = time.monotonic() + ready_s, []
    while time.monotonic() < deadline:
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            out.append(line)
            if "ready on" in line:
                return proc, f"http://127.0.0.1:{port}", log
            if not line:
                break
    proc.kill()
    pytest.fail(f"server did not start: {''.join(out)[-2000:]}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url, log = start_server(tmp_path_factory.mktemp("serve"), DISAGG, "--api-key", KEY, "--kv-timeout", "5")
    yield url, log
    stop_server(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, timeout=60, max_retries=0)


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def expected_texts(prompts: list[str], max_tokens: int) -> dict[str, str]:
    """What seed-0 tiny weights answer at temperature 0, computed in this process (one batch)."""
    tok = ByteTokenizer()
    engine = Engine(tiny_model(), SchedulerConfig(), 256, 16)
    seqs = {p: Sequence(p, tok.encode(p), len(tok.encode(p)), max_tokens) for p in prompts}
    for seq in seqs.values():
        engine.add(seq)
    with torch_threads(1):  # as the workers; many threads on a busy 2-core box are slower, not faster
        for _ in range(max_tokens + 2):
            if engine.has_work:
                engine.step()
    return {p: tok.decode(s.token_ids[s.num_prompt:]) for p, s in seqs.items()}


@functools.cache
def tiny_model():
    return build_model(CATALOG["tiny"], seed=0)


def read_log(log: Path, request_id: str, wait_s: float = 5.0) -> dict:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            rec = json.loads(line)
            if rec["request_id"] == request_id:
                return rec
        time.sleep(0.05)
    raise AssertionError(f"{request_id} not in the request log")


def test_openai_client_streams_a_chat_completion_of_max_tokens(client):
    stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello there"}],
                                            max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content is not None]
    assert len(token_chunks) == 12
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12


def test_32_concurrent_streams_complete_with_their_tokens_in_order(server):
    url, log = server
    prompts = [f"request {i}: " + "x" * (i * 7 % 50) for i in range(32)]
    want = expected_texts(prompts, 16)

    async def one(http: httpx.AsyncClient, prompt: str) -> tuple[str, str, str]:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0, "stream": True}
        text, rid = [], None
        async with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            rid = r.headers["x-request-id"]
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    text.append(chunk["choices"][0]["text"])
        return prompt, "".join(text), rid

    async def all_of_them():
        async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=60) as http:
            return await asyncio.wait_for(asyncio.gather(*(one(http, p) for p in prompts)), 120)

    results = asyncio.run(all_of_them())
    assert {p: t for p, t, _ in results} == want
    # the request log follows each request from prefill worker through the KV transfer to a decode worker
    decode_workers = set()
    for _, _, rid in results:
        rec = read_log(log, rid)
        assert rec["outcome"] == "ok" and rec["output_tokens"] == 16
        (a,) = rec["attempts"]
        assert a["prefill"]["worker"] == "prefill-0"
        t = a["transfer"]
        assert t["bytes"] == rec["prompt_tokens"] * CATALOG["tiny"].layers * 2 * 2 * 64 * 4  # fp32 K and V
        assert a["prefill"]["first_token"] <= t["send_start"] <= t["received"] <= a["decode"]["admitted"]
        assert a["decode"]["worker"] == a["decode_worker"]
        decode_workers.add(a["decode_worker"])
        assert rec["arrival_s"] <= rec["first_token_s"] and rec["token_s"] == sorted(rec["token_s"])
        assert t["received"] <= rec["first_token_s"]  # the user's first token once the KV is at the decode worker
    assert decode_workers == {"decode-0", "decode-1"}  # round robin over the pool


def test_same_seed_and_prompt_give_the_same_output(client):
    def ask(temperature: float, seed: int) -> str:
        r = client.completions.create(model="tiny", prompt="determinism", max_tokens=20, temperature=temperature,
                                      seed=seed)
        return r.choices[0].text

    assert ask(0, 1) == ask(0, 2) == expected_texts(["determinism"], 20)["determinism"]
    assert ask(0.9, 7) == ask(0.9, 7)
    assert ask(0.9, 7) != ask(0.9, 8)


def test_one_token_answer_ends_on_the_prefill_worker(server):
    url, log = server
    r = httpx.post(url + "/v1/completions", json={"prompt": "one", "max_tokens": 1, "temperature": 0},
                   headers=auth())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1
    assert r.json()["choices"][0]["finish_reason"] == "length"
    (a,) = read_log(log, r.json()["id"])["attempts"]
    assert "prefill" in a and "decode" not in a and "transfer" not in a


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (json.dumps({"model": "llama-9000", "prompt": "hi"}).encode(), 400, "model"),
    (json.dumps({"prompt": "hi", "max_tokens": 0}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "x" * 4200, "max_tokens": 8}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": "hi", "max_tokens": 10**6}).encode(), 400, "max_tokens"),
    (json.dumps({"prompt": ""}).encode(), 400, "prompt"),
    (json.dumps({"prompt": "hi", "temperature": -1}).encode(), 400, "temperature"),
    (b'{"prompt": "' + b"x" * (2 << 20) + b'"}', 413, None),
])
def test_bad_input_gets_an_openai_style_error(server, body, status, param):
    r = httpx.post(server[0] + "/v1/completions", content=body, headers={**auth(), "content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error" and err["param"] == param


def test_api_key_guards_everything_but_health(server):
    url = server[0]
    assert httpx.get(url + "/health").status_code == 200
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(url + path).status_code == 401
        assert httpx.get(url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url + path, headers=auth()).status_code == 200
    assert httpx.get(url + "/v1/models", headers=auth()).json()["data"][0]["id"] == "tiny"


def test_an_idle_keep_alive_connection_outlives_the_clients_pool_expiry(server):
    """The server keeps an idle connection open longer than httpx keeps one in its pool (5 s), so a pooled
    connection is never reused just as the server closes it."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(server[0])
    request = f"GET /health HTTP/1.1\r\nHost: {u.hostname}\r\n\r\n".encode()

    def response(f) -> bytes:  # status line; headers and the Content-Length body read off the stream
        status = f.readline()
        length = 0
        while (line := f.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        f.read(length)
        return status

    with socket.create_connection((u.hostname, u.port), timeout=10) as sock, sock.makefile("rb") as f:
        for idle_s in (0.0, httpx.Limits().keepalive_expiry + 0.5):
            time.sleep(idle_s)
            sock.sendall(request)
            assert response(f).startswith(b"HTTP/1.1 200"), "the server closed the idle connection"


def metric(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", headers=auth()).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")
               or line.startswith(name + " "))


def test_client_disconnect_frees_kv_blocks(server):
    url, log = server
    body = {"model": "tiny", "prompt": "a long answer " * 10, "max_tokens": 3000, "temperature": 0, "stream": True}
    with httpx.Client(base_url=url, headers=auth(), timeout=30) as http:
        with http.stream("POST", "/v1/completions", json=body) as r:
            rid = r.headers["x-request-id"]
            for n, _ in enumerate(r.iter_lines()):
                if n >= 10:
                    break
    # left the stream: the request is cancelled and every worker's KV blocks come back
    assert read_log(log, rid)["outcome"] == "cancelled"
    deadline, zeros = time.monotonic() + 10, 0
    while time.monotonic() < deadline and zeros < 2:  # twice, a stats period apart: not a stale reading
        zeros = zeros + 1 if metric(url, "pdsim_worker_kv_blocks_used") == 0 else 0
        time.sleep(0.3)
    assert zeros == 2, "KV blocks still in use after the client left"
    assert 'pdsim_requests_total{outcome="cancelled"}' in httpx.get(url + "/metrics", headers=auth()).text


def test_metrics_report_latency_histograms_and_transfer_bytes(server):
    url = server[0]
    assert metric(url, "pdsim_ttft_seconds_count") > 0
    assert metric(url, "pdsim_itl_seconds_count") > 0
    assert metric(url, "pdsim_kv_transfer_bytes_total") > 0
    assert metric(url, "pdsim_worker_up") == 3


def test_killing_a_decode_worker_mid_stream_gives_every_request_an_outcome(server):
    """Runs last in this module: it leaves one decode worker."""
    url, log = server
    workers = httpx.get(url + "/health").json()["workers"]
    victim = next(w for w in workers if w["id"] == "decode-1")

    async def one(http: httpx.AsyncClient, i: int, started: asyncio.Event):
        body = {"model": "tiny", "prompt": f"survive {i}", "max_tokens": 400, "temperature": 0, "stream": True}
        n, error = 0, None
        async with http.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = chunk["error"]["message"]
                    elif chunk["choices"][0]["finish_reason"] is None:
                        n += 1
                        if n == 5:
                            started.set()
            return r.headers["x-request-id"], n, error

    async def run():
        started = asyncio.Event()
        async with httpx.AsyncClient(base_url=url, headers=auth(), timeout=60) as http:
            tasks = [asyncio.create_task(one(http, i, started)) for i in range(6)]
            await asyncio.wait_for(started.wait(), 30)
            os.kill(victim["pid"], signal.SIGKILL)
            return await asyncio.wait_for(asyncio.gather(*tasks), 120)

    results = asyncio.run(run())
    for rid, n, error in results:
        rec = read_log(log, rid)
        if error is None:  # finished on the surviving worker: every token, in one stream
            assert n == 400 and rec["outcome"] == "ok"
        else:
            assert rec["outcome"] == "error" and "died" in error
    retried = [read_log(log, rid) for rid, _, _ in results if len(read_log(log, rid)["attempts"]) > 1]
    assert retried, "some request was on the killed worker"
    for rec in retried:
        assert "decode-1" in rec["attempts"][0]["error"] and rec["attempts"][1]["decode_worker"] == "decode-0"
    health = httpx.get(url + "/health").json()
    assert health["status"] == "degraded"
    r = httpx.post(url + "/v1/completions", json={"prompt": "still here", "max_tokens": 4}, headers=auth())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


def test_agg_deployment_serves_and_sigterm_stops_every_process(tmp_path):
    dep = {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "agg", "workers": {"replicas": 1}}
    proc, url, log = start_server(tmp_path, dep)
    pids = [w["pid"] for w in httpx.get(url + "/health").json()["workers"]]
    r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
    (a,) = read_log(log, r.json()["id"])["attempts"]
    assert a["agg"]["worker"] == "agg-0" and "transfer" not in a
    assert stop_server(proc) == 0
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
@needs_real_model
def test_smollm2_answers_paris(tmp_path):
    dep = {"model": "smollm2-135m", "gpu": "cpu", "dtype": "fp32", "topology": "agg", "workers": {"replicas": 1}}
    proc, url, _ = start_server(tmp_path, dep, "--kv-tokens", "2048")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60, max_retries=0)
        r = client.chat.completions.create(model="smollm2-135m", temperature=0, max_tokens=20,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
    finally:
        stop_server(proc)
