"""Frontend: the request path behind the HTTP API (runtime/api.py): the router's caller, the worker
connections, retries, metrics and the request log.

Every request gets one id (``x-request-id``); each attempt at it is ``<id>.<n>`` on the workers. In
disagg, the prefill worker computes the prompt and the first token and sends the KV to the decode
worker the router chose; on the first token the frontend tells that decode worker to continue, and holds
the token back until the decode worker says the KV has arrived (``kv_received``): as in the simulator and
DESIGN.md, the decode worker streams, so the user's first token comes once the KV is there. A
worker that dies, or KV that never arrives, sends the request again (prompt plus the tokens already
streamed) to live workers, once; after that the client gets an error event, never a hang.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from runtime.router import NoWorker, Router, WorkerHandle
from runtime.tokenizer import Tokenizer
from runtime.wire import FRAME, arecv, encode

RETRYABLE = {"worker_died", "kv_timeout", "kv_send_failed", "kv_mismatch"}
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


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
    held: tuple | None = None  # disagg: the prefilled first token event, until its KV reaches the decode worker
    kv_here: str = ""  # the attempt whose KV has reached its decode worker
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
                    if req.kv_here != sid:  # streamed when the KV reaches the decode worker
                        req.held = ("token", sid, token, finish)
                        continue
                req.events.put_nowait(("token", sid, token, finish, t))
        elif kind == "kv_received":
            req = self.sids.get(h["rid"])
            if req is not None:
                attempt_of(req, h["rid"]).setdefault("transfer", {})["received"] = h["received"]
                if h["rid"] == req.sid:
                    req.kv_here = req.sid
                    if req.held is not None and req.held[1] == req.sid:
                        req.events.put_nowait((*req.held, t))
                        req.held = None
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
