"""Frontend: the OpenAI-compatible HTTP server (FastAPI), the router's caller, and the request log.

Every request gets one id (``x-request-id``); each attempt at it is ``<id>.<n>`` on the workers. In
disagg, the prefill worker computes the prompt and the first token and sends the KV to the decode
worker the router chose; on the first token the frontend tells that decode worker to continue. A
worker that dies, or KV that never arrives, sends the request again (prompt plus the tokens already
streamed) to live workers, once; after that the client gets an error event, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from runtime.router import NoWorker, Router, WorkerHandle
from runtime.tokenizer import Detokenizer, Tokenizer
from runtime.wire import FRAME, arecv, encode

RETRYABLE = {"worker_died", "kv_timeout", "kv_send_failed", "kv_mismatch"}
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


@dataclass(frozen=True)
class FrontendConfig:
    model: str = "tiny"
    topology: str = "disagg"
    router: str = "round_robin"
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 4096
    max_context: int = 4096
    request_timeout_s: float = 600.0
    max_retries: int = 1
    log_path: str | None = None  # JSON-lines request log
    seed: int = 0  # default sampling seed of requests that give none


@dataclass(eq=False)
class GenRequest:
    rid: str
    prompt: list[int]
    max_tokens: int
    temperature: float
    seed: int
    stop_ids: frozenset[int]
    arrival_s: float
    generated: list[int] = field(default_factory=list)
    token_s: list[float] = field(default_factory=list)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    attempt: int = 0
    sid: str = ""
    sent_tokens: list[int] = field(default_factory=list)  # what the current attempt was given
    workers: list[WorkerHandle] = field(default_factory=list)  # the current attempt's
    decode: WorkerHandle | None = None
    attempts: list[dict] = field(default_factory=list)
    outcome: str | None = None  # ok | error | cancelled
    finish_reason: str | None = None
    error: str | None = None


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets, self.counts, self.sum, self.n = buckets, [0] * len(buckets), 0.0, 0

    def observe(self, v: float) -> None:
        self.sum, self.n = self.sum + v, self.n + 1
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.buckets, self.counts, strict=True)]
        return out + [f'{name}_bucket{{le="+Inf"}} {self.n}', f"{name}_sum {self.sum}", f"{name}_count {self.n}"]


class Frontend:
    def __init__(self, cfg: FrontendConfig, workers: list[WorkerHandle], tokenizer: Tokenizer):
        self.cfg, self.workers, self.tokenizer = cfg, workers, tokenizer
        self.router = Router(cfg.router)
        self.sids: dict[str, GenRequest] = {}
        self.outcomes: Counter[str] = Counter()
        self.ttft, self.itl = Histogram(TTFT_BUCKETS_S), Histogram(ITL_BUCKETS_S)
        self.transfer_s = Histogram(ITL_BUCKETS_S)
        self.transfer_bytes = 0
        self.tokens_out = 0
        self.retries = 0
        self.log = open(cfg.log_path, "a") if cfg.log_path else None  # noqa: SIM115 - closed on shutdown

    def pool(self, role: str) -> list[WorkerHandle]:
        return [w for w in self.workers if w.role == role]

    def kv_capacity_tokens(self) -> int:
        """The most tokens one sequence can hold on every worker (their KV caches, as each reported it)."""
        sizes = [w.stats["kv_blocks_total"] * w.stats["block_tokens"]
                 for w in self.workers if "block_tokens" in w.stats]
        return min(sizes, default=self.cfg.max_context)

    # ---- worker connections --------------------------------------------------------------------
    async def connect(self, timeout_s: float = 60.0) -> None:
        """Open one connection per worker and wait for each one's ``ready``."""
        for w in self.workers:
            reader, w.writer = await asyncio.open_connection("127.0.0.1", w.port)
            self.send(w, {"type": "hello", "role": "frontend"})
            asyncio.get_running_loop().create_task(self.read(w, reader))
        deadline = time.monotonic() + timeout_s
        while not all(w.alive for w in self.workers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready: {[w.id for w in self.workers if not w.alive]}")
            await asyncio.sleep(0.01)

    def send(self, w: WorkerHandle, msg: dict) -> None:
        h = encode(msg)
        w.writer.write(FRAME.pack(len(h), 0) + h)  # loopback, small frames: no drain needed

    async def read(self, w: WorkerHandle, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                h, _ = await arecv(reader)
                self.on_message(w, h, time.time())
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        w.alive = False
        for sid in list(w.inflight):
            req = self.sids.get(sid)
            if req is not None:
                req.events.put_nowait(("error", sid, "worker_died", f"worker {w.id} (pid {w.pid}) died", w.id))
        w.inflight.clear()

    def on_message(self, w: WorkerHandle, h: dict, t: float) -> None:
        kind = h["type"]
        if kind in ("ready", "stats"):
            w.stats = h
            w.alive = w.alive or kind == "ready"
            return
        if kind == "tokens":
            for sid, token, finish in h["items"]:
                req = self.sids.get(sid)
                if req is None:
                    continue
                info, attempt = h["done"].get(sid), attempt_of(req, sid)
                if info is not None:
                    attempt.setdefault(w.role, {}).update(worker=info["worker"], preemptions=info["preemptions"],
                                                          **info["times"])
                    if info["transfer"]:
                        attempt.setdefault("transfer", {}).update(info["transfer"])
                        self.transfer_s.observe(info["transfer"]["duration_s"])
                if finish is not None:
                    w.inflight.discard(sid)
                if sid != req.sid:  # an attempt given up on
                    continue
                if finish == "prefilled" and req.decode is not None:
                    self.send(req.decode, {"type": "decode", "rid": sid, "tokens": [*req.sent_tokens, token],
                                           "num_generated": len(req.sent_tokens) - len(req.prompt) + 1,
                                           "max_tokens": req.max_tokens, "temperature": req.temperature,
                                           "seed": req.seed, "stop_ids": sorted(req.stop_ids)})
                req.events.put_nowait(("token", sid, token, finish, t))
        elif kind == "kv_sent":
            req = self.sids.get(h["rid"])
            if req is not None:
                attempt_of(req, h["rid"]).setdefault("transfer", {}).update(
                    bytes=h["bytes"], send_start=h["send_start"], send_end=h["send_end"])
                self.transfer_bytes += h["bytes"]
        elif kind == "error":
            req = self.sids.get(h["rid"])
            if req is not None:
                req.events.put_nowait(("error", h["rid"], h["code"], h["message"], w.id))

    # ---- one request ---------------------------------------------------------------------------
    def dispatch(self, req: GenRequest) -> None:
        failed = {a.get("failed_worker") for a in req.attempts}
        if self.cfg.topology == "agg":
            first = self.router.pick(self.pool("agg"), avoid=failed)
            req.workers, req.decode = [first], None
        else:
            first = self.router.pick(self.pool("prefill"), avoid=failed)
            req.decode = self.router.pick(self.pool("decode"), avoid=failed)
            req.workers = [first, req.decode]
        req.attempt += 1
        req.sid = f"{req.rid}.{req.attempt}"
        req.sent_tokens = req.prompt + req.generated
        self.sids[req.sid] = req
        for w in req.workers:
            w.inflight.add(req.sid)
        req.attempts.append({"attempt": req.attempt, "dispatched": time.time(), "first_worker": first.id,
                             "decode_worker": req.decode.id if req.decode else first.id})
        msg = {"type": "generate", "rid": req.sid, "tokens": req.sent_tokens, "num_generated": len(req.generated),
               "max_tokens": req.max_tokens, "temperature": req.temperature, "seed": req.seed,
               "stop_ids": sorted(req.stop_ids)}
        if req.decode is not None:
            msg["decode_port"] = req.decode.port
        self.send(first, msg)

    def release(self, req: GenRequest) -> None:
        """Tell the current attempt's workers to drop it (frees its KV blocks)."""
        for w in req.workers:
            if req.sid in w.inflight:
                w.inflight.discard(req.sid)
                if w.alive:
                    self.send(w, {"type": "abort", "rid": req.sid})

    async def generate(self, req: GenRequest) -> AsyncIterator[tuple[int, str | None]]:
        """The request's tokens as they come, each with its finish reason (None until the last)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.request_timeout_s
        try:
            self.dispatch(req)
            while True:
                try:
                    ev = await asyncio.wait_for(req.events.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    self.release(req)
                    raise RuntimeError(f"no answer within {self.cfg.request_timeout_s} s") from None
                if ev[1] != req.sid:  # from an attempt given up on
                    continue
                if ev[0] == "token":
                    _, _, token, finish, t = ev
                    req.generated.append(token)
                    req.token_s.append(t)
                    done = finish in ("length", "stop")
                    if done:
                        req.outcome, req.finish_reason = "ok", finish
                    yield token, finish if done else None
                    if done:
                        return
                    continue
                _, sid, code, message, worker = ev
                req.attempts[-1].update(error=f"{code}: {message}", failed_worker=worker)
                self.release(req)
                if code in RETRYABLE and req.attempt <= self.cfg.max_retries:
                    try:
                        self.retries += 1
                        self.dispatch(req)
                        continue
                    except NoWorker as e:
                        message = f"{message}; retry impossible: {e}"
                raise RuntimeError(f"{code}: {message}")
        except NoWorker as e:
            raise RuntimeError(str(e)) from None
        except RuntimeError as e:
            req.outcome, req.error = "error", str(e)
            raise
        finally:
            if req.outcome is None:  # the client went away
                req.outcome = "cancelled"
            self.release(req)  # frees whatever still holds it (a decode worker reserved for a 1-token answer)
            self.finish(req)

    def finish(self, req: GenRequest) -> None:
        for a in range(1, req.attempt + 1):
            self.sids.pop(f"{req.rid}.{a}", None)
        self.outcomes[req.outcome] += 1
        self.tokens_out += len(req.generated)
        if req.token_s:
            self.ttft.observe(req.token_s[0] - req.arrival_s)
            for a, b in zip(req.token_s, req.token_s[1:], strict=False):
                self.itl.observe(b - a)
        if self.log is not None:
            self.log.write(json.dumps(log_record(req)) + "\n")
            self.log.flush()

    # ---- metrics -------------------------------------------------------------------------------
    def metrics(self) -> str:
        lines = ["# TYPE pdsim_requests_total counter"]
        lines += [f'pdsim_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.outcomes.items())]
        lines += ["# TYPE pdsim_requests_inflight gauge",
                  f"pdsim_requests_inflight {len({r.rid for r in self.sids.values()})}",
                  "# TYPE pdsim_generated_tokens_total counter", f"pdsim_generated_tokens_total {self.tokens_out}",
                  "# TYPE pdsim_retries_total counter", f"pdsim_retries_total {self.retries}",
                  "# TYPE pdsim_kv_transfer_bytes_total counter",
                  f"pdsim_kv_transfer_bytes_total {self.transfer_bytes}"]
        for key in ("waiting", "running", "kv_blocks_used", "kv_blocks_total", "batch_tokens"):
            lines.append(f"# TYPE pdsim_worker_{key} gauge")
            lines += [f'pdsim_worker_{key}{{worker="{w.id}",role="{w.role}"}} {w.stats.get(key, 0)}'
                      for w in self.workers]
        lines.append("# TYPE pdsim_worker_up gauge")
        lines += [f'pdsim_worker_up{{worker="{w.id}",role="{w.role}"}} {int(w.alive)}' for w in self.workers]
        lines += self.ttft.lines("pdsim_ttft_seconds") + self.itl.lines("pdsim_itl_seconds")
        lines += self.transfer_s.lines("pdsim_kv_transfer_seconds")
        return "\n".join(lines) + "\n"


def attempt_of(req: GenRequest, sid: str) -> dict:
    """The log entry of the attempt ``<request id>.<n>``."""
    return req.attempts[int(sid.rpartition(".")[2]) - 1]


def log_record(req: GenRequest) -> dict:
    """One JSON line per request: every stage's timestamps (time.time(), seconds) under one id."""
    first = req.token_s[0] if req.token_s else None
    return {"request_id": req.rid, "arrival_s": req.arrival_s, "prompt_tokens": len(req.prompt),
            "max_tokens": req.max_tokens, "output_tokens": len(req.generated), "outcome": req.outcome,
            "finish_reason": req.finish_reason, "error": req.error, "attempts": req.attempts,
            "first_token_s": first, "last_token_s": req.token_s[-1] if req.token_s else None,
            "ttft_s": first - req.arrival_s if first else None, "token_s": req.token_s}


# ---- HTTP ----------------------------------------------------------------------------------------
def error(status: int, message: str, param: str | None = None, code: str | None = None,
          kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def _int(body: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = body.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"'{key}' must be an integer", key)
    if not lo <= v <= hi:
        raise BadRequest(f"'{key}' must be between {lo} and {hi}, got {v}", key)
    return v


def _text(content) -> str | None:
    """A message's text: a string, or OpenAI content parts of type text joined."""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    return content if isinstance(content, str) else None


def parse(fe: Frontend, body: dict, chat: bool) -> tuple[GenRequest, bool, bool]:
    """Validate an OpenAI request body -> (request, stream, include_usage); raises BadRequest."""
    cfg = fe.cfg
    model = body.get("model", cfg.model)
    if model != cfg.model:
        raise BadRequest(f"model {model!r} is not served here; this server serves {cfg.model!r}", "model",
                         "model_not_found")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    if body.get("stop") not in (None, [], ""):
        raise BadRequest("stop sequences are not supported by this runtime", "stop")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise BadRequest("'messages' must be a non-empty list of {role, content}", "messages")
        msgs = [{"role": m.get("role"), "content": _text(m.get("content"))} for m in msgs]
        if not all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in msgs):
            raise BadRequest("each message needs a string 'role' and text 'content' (a string or text parts)",
                             "messages")
        prompt = fe.tokenizer.chat(msgs)
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, str) and p:
            prompt = fe.tokenizer.encode(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            prompt = list(p)  # token ids, as benchmark clients send
        else:
            raise BadRequest("'prompt' must be a non-empty string or a list of token ids", "prompt")
    key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _int(body, key, 16, 1, cfg.max_tokens_limit)
    if len(prompt) + max_tokens > cfg.max_context:
        raise BadRequest(f"prompt ({len(prompt)} tokens) plus {key} ({max_tokens}) exceeds the model's context of "
                         f"{cfg.max_context} tokens", key, "context_length_exceeded")
    kv_tokens = fe.kv_capacity_tokens()
    if len(prompt) + max_tokens > kv_tokens:
        raise BadRequest(f"prompt ({len(prompt)} tokens) plus {key} ({max_tokens}) does not fit a worker's KV cache "
                         f"of {kv_tokens} tokens", key, "context_length_exceeded")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequest("'temperature' must be a number between 0 and 2", "temperature")
    seed = _int(body, "seed", cfg.seed, -(2**63), 2**63 - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    opts = body.get("stream_options") or {}
    ignore_eos = bool(body.get("ignore_eos", False))
    stop_ids = frozenset() if ignore_eos else fe.tokenizer.stop_ids
    req = GenRequest("", prompt, max_tokens, float(temperature), seed, stop_ids, time.time())
    return req, stream, bool(isinstance(opts, dict) and opts.get("include_usage"))


def build_app(fe: Frontend) -> FastAPI:
    app = FastAPI(title="pdsim runtime", docs_url=None, redoc_url=None, openapi_url=None)
    cfg = fe.cfg

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if cfg.api_key and request.url.path != "/health":
            if request.headers.get("authorization", "") != f"Bearer {cfg.api_key}":
                return error(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key",
                             kind="authentication_error")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cfg.max_body_bytes):
            return error(413, f"request body larger than {cfg.max_body_bytes} bytes")
        return await call_next(request)

    @app.get("/health")
    async def health():
        ok = all(w.alive for w in fe.workers)
        workers = [{"id": w.id, "role": w.role, "pid": w.pid, "alive": w.alive} for w in fe.workers]
        return JSONResponse({"status": "ok" if ok else "degraded", "workers": workers})

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(fe.metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": cfg.model, "object": "model", "created": 0, "owned_by": "pdsim"}]}

    async def handle(request: Request, chat: bool) -> Response:
        raw = await request.body()
        if len(raw) > cfg.max_body_bytes:
            return error(413, f"request body larger than {cfg.max_body_bytes} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return error(400, f"body is not valid JSON ({e})")
        if not isinstance(body, dict):
            return error(400, "body must be a JSON object")
        try:
            req, stream, include_usage = parse(fe, body, chat)
        except BadRequest as e:
            return error(e.status, str(e), e.param, e.code)
        given = request.headers.get("x-request-id", "")
        req.rid = given if _REQUEST_ID.match(given) and not any(r.rid == given for r in fe.sids.values()) \
            else f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:16]}"
        headers = {"x-request-id": req.rid}
        if stream:
            return StreamingResponse(sse(fe, req, chat, include_usage), media_type="text/event-stream",
                                     headers=headers)
        try:
            async for _ in fe.generate(req):
                pass
        except RuntimeError as e:
            return error(500, str(e), code="generation_failed", kind="server_error")
        finish = req.finish_reason
        text = fe.tokenizer.decode(req.generated)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                  if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish})
        return JSONResponse({"id": req.rid, "object": "chat.completion" if chat else "text_completion",
                             "created": int(req.arrival_s), "model": cfg.model, "choices": [choice],
                             "usage": usage(req)}, headers=headers)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


def usage(req: GenRequest) -> dict:
    n = len(req.generated)
    return {"prompt_tokens": len(req.prompt), "completion_tokens": n, "total_tokens": len(req.prompt) + n}


async def sse(fe: Frontend, req: GenRequest, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """Server-sent events: one chunk per token, then the finish reason, [usage], [DONE]."""
    base = {"id": req.rid, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(req.arrival_s), "model": fe.cfg.model}
    detok = Detokenizer(fe.tokenizer)

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = {} if text is None else ({"role": "assistant", "content": text} if first else {"content": text})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    try:
        async for token, finish in fe.generate(req):
            text = detok.add(token)
            if finish is not None:
                text += detok.flush()
            yield chunk(text, None, first=len(req.generated) == 1)
            if finish is not None:
                yield chunk(None, finish)
        if include_usage:
            yield f"data: {json.dumps({**base, 'choices': [], 'usage': usage(req)})}\n\n"
    except RuntimeError as e:
        body = {"error": {"message": str(e), "type": "server_error", "param": None, "code": "generation_failed"}}
        yield f"data: {json.dumps(body)}\n\n"
    yield "data: [DONE]\n\n"
