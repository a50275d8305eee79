"""The OpenAI-compatible HTTP surface of the frontend (FastAPI): request validation into a
``GenRequest``, ``/v1/completions`` and ``/v1/chat/completions`` (SSE streaming or whole), ``/v1/models``,
``/health``, ``/metrics``; bearer-key auth and body bounds. Errors are OpenAI-style bodies."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from runtime.frontend import Frontend, GenRequest
from runtime.tokenizer import Detokenizer

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


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
