"""The frontend's request path against scripted workers (no processes): disagg hand-off, a KV timeout
that is re-prefilled, and the retry budget running out into a clear error."""

import asyncio
import json

import pytest

from runtime.api import BadRequest, parse
from runtime.frontend import FRAME, Frontend, FrontendConfig, GenRequest
from runtime.router import WorkerHandle
from runtime.tokenizer import ByteTokenizer


class Wire:
    """Captures what the frontend writes to one worker."""

    def __init__(self):
        self.msgs: list[dict] = []

    def write(self, data: bytes) -> None:
        h, _ = FRAME.unpack(data[:FRAME.size])
        self.msgs.append(json.loads(data[FRAME.size:FRAME.size + h]))


def frontend(max_retries: int = 1) -> Frontend:
    workers = [WorkerHandle("prefill-0", "prefill", 1, 11, alive=True, writer=Wire()),
               WorkerHandle("decode-0", "decode", 2, 12, alive=True, writer=Wire()),
               WorkerHandle("decode-1", "decode", 3, 13, alive=True, writer=Wire())]
    return Frontend(FrontendConfig(max_retries=max_retries), workers, ByteTokenizer())


def request() -> GenRequest:
    return GenRequest("req", [256, 1, 2, 3], 3, 0.0, 0, frozenset(), 0.0)


async def drive(fe: Frontend, req: GenRequest, script) -> list:
    """Run generate() while ``script(fe, req)`` plays the workers' side."""
    out = []

    async def consume():
        async for item in fe.generate(req):
            out.append(item)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    try:
        await script(fe, req)
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
    return out


def tokens(sid, *items, done=None):
    return {"type": "tokens", "items": [[sid, t, f] for t, f in items], "done": done or {}}


def test_kv_timeout_is_re_prefilled_and_continues_where_it_was():
    fe = frontend()
    p, d0, d1 = fe.workers

    async def script(fe, req):
        fe.on_message(p, tokens("req.1", (7, "prefilled")), 1.0)
        await asyncio.sleep(0.01)  # let generate() take the events
        (decode,) = d0.writer.msgs
        assert decode["type"] == "decode" and decode["tokens"] == [256, 1, 2, 3, 7]
        fe.on_message(d0, {"type": "error", "rid": "req.1", "code": "kv_timeout", "message": "no KV"}, 2.0)
        await asyncio.sleep(0.01)  # let generate() take the events
        retry = p.writer.msgs[-1]  # the user never saw 7 (its KV never arrived): the prompt again
        assert retry["rid"] == "req.2" and retry["tokens"] == [256, 1, 2, 3] and retry["num_generated"] == 0
        assert retry["decode_port"] == d1.port  # the decode worker that timed out is avoided
        fe.on_message(p, tokens("req.2", (7, "prefilled")), 3.0)
        fe.on_message(d1, {"type": "kv_received", "rid": "req.2", "received": 3.5}, 3.5)
        fe.on_message(d1, tokens("req.2", (8, None), (9, "length")), 4.0)

    req = request()
    out = asyncio.run(drive(fe, req, script))
    assert out == [(7, None), (8, None), (9, "length")]
    assert req.outcome == "ok" and [a.get("error") for a in req.attempts] == ["kv_timeout: no KV", None]
    assert not any(w.inflight for w in fe.workers)


@pytest.mark.parametrize("kv_first", [False, True])
def test_disagg_first_token_reaches_the_user_when_the_kv_reaches_the_decode_worker(kv_first):
    fe = frontend()
    p, d0, _ = fe.workers
    seen = []

    async def script(fe, req):
        if kv_first:  # the decode worker's notice can overtake the prefill worker's token
            fe.on_message(d0, {"type": "kv_received", "rid": "req.1", "received": 1.5}, 1.5)
        fe.on_message(p, tokens("req.1", (7, "prefilled")), 1.0)
        await asyncio.sleep(0.01)
        seen.append(list(req.token_s))
        if not kv_first:
            fe.on_message(d0, {"type": "kv_received", "rid": "req.1", "received": 2.0}, 2.0)
        fe.on_message(d0, tokens("req.1", (8, None), (9, "length")), 3.0)

    req = request()
    out = asyncio.run(drive(fe, req, script))
    assert out == [(7, None), (8, None), (9, "length")]
    first_s = 1.0 if kv_first else 2.0  # the later of the two messages
    assert seen == [[first_s] if kv_first else []]  # held until the KV is at the decode worker
    assert req.token_s == [first_s, 3.0, 3.0]
    assert req.attempts[0]["transfer"]["received"] == (1.5 if kv_first else 2.0)


def test_retries_exhausted_is_an_error_not_a_hang():
    fe = frontend(max_retries=0)
    p, d0, _ = fe.workers

    async def script(fe, req):
        fe.on_message(p, tokens("req.1", (7, "prefilled")), 1.0)
        fe.on_message(d0, {"type": "error", "rid": "req.1", "code": "kv_timeout", "message": "no KV"}, 2.0)

    req = request()
    with pytest.raises(RuntimeError, match="kv_timeout"):
        asyncio.run(drive(fe, req, script))
    assert req.outcome == "error" and fe.outcomes["error"] == 1


def test_chat_text_parts_are_one_message_and_other_content_is_refused():
    fe = frontend()
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text",
                                                                                          "text": "lo"}]}]}
    plain = {"messages": [{"role": "user", "content": "Hello"}]}
    assert parse(fe, parts, chat=True)[0].prompt == parse(fe, plain, chat=True)[0].prompt
    for bad in ([], [{"role": "user"}], [{"role": "user", "content": [{"type": "image_url"}]}], "hi"):
        with pytest.raises(BadRequest) as e:
            parse(fe, {"messages": bad}, chat=True)
        assert e.value.param == "messages"


def test_a_request_larger_than_the_kv_cache_is_refused_up_front():
    fe = frontend()
    for w in fe.workers:
        w.stats = {"kv_blocks_total": 4, "block_tokens": 16}
    assert parse(fe, {"prompt": "x" * 40, "max_tokens": 23}, chat=False)[0].max_tokens == 23  # 41 + 23 = 64
    with pytest.raises(BadRequest, match="KV cache of 64 tokens") as e:
        parse(fe, {"prompt": "x" * 40, "max_tokens": 24}, chat=False)
    assert e.value.param == "max_tokens"
