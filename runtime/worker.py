"""A worker process: one Engine (role prefill, decode or agg) behind a loopback TCP port.

``python -m runtime.worker '<json config>'`` builds the model on one torch thread, listens on
127.0.0.1, prints ``READY <port>`` and serves until its frontend connection closes.

Messages in: ``hello`` (frontend or a prefill peer), ``generate`` (prefill / agg), ``decode`` (the
request a decode worker continues), ``kv`` (a prefill peer's KV blocks, raw payload), ``abort``.
Messages out to the frontend: ``ready``, ``tokens`` (every token of a step, with the finished
sequences' stage times), ``kv_sent``, ``kv_received`` (decode: a request's KV is here, sent by the
reader thread the moment it arrives), ``error``, ``stats``. A prefill worker sends each finished
prompt's KV straight to the decode worker the frontend named, from a sender thread so that compute
goes on; the decode worker gives up on KV that has not come ``kv_timeout_s`` after its request.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from profiler.costmodel import Batch
from runtime.engine import Engine, StepResult
from runtime.load import load_model
from runtime.model import keep_heap
from runtime.scheduler import SchedulerConfig
from runtime.sequence import Sequence
from runtime.wire import Conn, connect

STATS_EVERY_S = 0.25


@dataclass(frozen=True)
class WorkerConfig:
    worker_id: str = "agg-0"
    role: str = "agg"  # prefill | decode | agg
    model: str = "tiny"
    seed: int = 0
    max_batch_tokens: int = 8192
    max_seqs: int = 256
    chunk_tokens: int = 8192
    chunked_prefill: bool = True
    block_tokens: int = 16
    kv_tokens: int = 32768  # KV cache size in tokens (rounded up to whole blocks)
    kv_timeout_s: float = 10.0
    step_log: str = ""  # a JSON-lines file of every step (start, duration, batch), if set
    device: str = "cpu"
    # paced replay (pdsim validate --paced): each step lasts pace_scale x what this profile predicts for its batch
    pace_profile: str = ""
    pace_dtype: str = "fp32"
    pace_scale: float = 1.0


class Worker:
    def __init__(self, cfg: WorkerConfig, engine: Engine):
        self.cfg, self.engine = cfg, engine
        self.inbox: queue.Queue[tuple[Conn, dict, bytearray]] = queue.Queue()
        self.frontend: Conn | None = None
        self.decode_port: dict[str, int] = {}  # prefill: where each request's KV goes
        self.pending: dict[str, tuple[dict, float]] = {}  # decode: request waiting for its KV, deadline
        self.received: dict[str, tuple[dict, torch.Tensor, float]] = {}  # decode: KV waiting for its request
        self.transfers: dict[str, dict] = {}  # decode: bytes and times of each request's KV transfer
        self.outbox: queue.Queue[tuple[int, dict, torch.Tensor]] = queue.Queue()
        self.peers: dict[int, Conn] = {}
        self.last_stats = 0.0
        self.steps = open(cfg.step_log, "a") if cfg.step_log else None  # noqa: SIM115 - lives as long as the worker

    # ---- network threads -----------------------------------------------------------------------
    def accept(self, listener: socket.socket) -> None:
        while True:
            sock, _ = listener.accept()
            threading.Thread(target=self.read, args=(Conn(sock),), daemon=True).start()

    def read(self, conn: Conn) -> None:
        try:
            while True:
                header, payload = conn.recv()
                header["_recv_t"] = time.time()
                if header.get("type") == "kv":  # the frontend holds the user's first token until now
                    self.to_frontend({"type": "kv_received", "rid": header["rid"], "received": header["_recv_t"]})
                self.inbox.put((conn, header, payload))
        except (ConnectionError, OSError, ValueError):
            conn.close()
            if conn is self.frontend:  # the frontend is gone: so is this worker's purpose
                os._exit(0)

    def send_kv(self) -> None:
        """Sender thread (prefill): move each finished prompt's KV to its decode worker."""
        while True:
            port, header, kv = self.outbox.get()
            rid = header["rid"]
            try:
                peer = self.peers.get(port)
                if peer is None:
                    peer = self.peers[port] = connect(port)
                    peer.send({"type": "hello", "role": "prefill", "worker": self.cfg.worker_id})
                data = kv.contiguous().cpu().view(torch.uint8).numpy()  # raw bytes (numpy has no bf16)
                header["send_start"] = time.time()
                peer.send(header, memoryview(data))
                self.to_frontend({"type": "kv_sent", "rid": rid, "bytes": data.nbytes,
                                  "send_start": header["send_start"], "send_end": time.time()})
            except OSError as e:
                self.peers.pop(port, None)
                self.to_frontend({"type": "error", "rid": rid, "code": "kv_send_failed",
                                  "message": f"{self.cfg.worker_id} could not send KV to port {port}: {e}"})

    def to_frontend(self, msg: dict) -> None:
        if self.frontend is not None:
            try:
                self.frontend.send(msg)
            except OSError:
                os._exit(0)

    # ---- engine thread -------------------------------------------------------------------------
    def run(self) -> None:
        parent = os.getppid()
        while True:
            self.drain(block=not self.engine.has_work)
            self.expire()
            result = self.engine.step()
            if result is not None:
                self.emit(result)
            now = time.time()
            if now - self.last_stats > STATS_EVERY_S:
                self.last_stats = now
                self.to_frontend({"type": "stats", "worker": self.cfg.worker_id, **self.engine.stats()})
                if os.getppid() != parent:  # the supervisor died before its frontend connected
                    os._exit(0)

    def drain(self, block: bool) -> None:
        try:
            item = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
            while True:
                self.handle(*item)
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def handle(self, conn: Conn, h: dict, payload: bytearray) -> None:
        kind, rid = h.get("type"), h.get("rid", "")
        if kind == "hello":
            conn.role = h.get("role", "")
            if conn.role == "frontend":
                self.frontend = conn
                self.to_frontend({"type": "ready", "worker": self.cfg.worker_id, "pid": os.getpid(),
                                  **self.engine.stats()})
        elif kind == "generate":
            seq = self.sequence(h, prefill_only=self.cfg.role == "prefill")
            if not self.engine.fits(len(seq.token_ids) + seq.max_tokens - seq.num_generated):
                self.to_frontend({"type": "error", "rid": rid, "code": "too_long",
                                  "message": f"{len(seq.token_ids)} + {seq.max_tokens} tokens exceed the KV cache "
                                             f"of {self.cfg.worker_id} ({self.engine.blocks.num_blocks} blocks)"})
                return
            seq.times["queued"] = h["_recv_t"]
            if "decode_port" in h:
                self.decode_port[rid] = h["decode_port"]
            self.engine.add(seq)
        elif kind == "decode":
            self.pending[rid] = (h, h["_recv_t"] + self.cfg.kv_timeout_s)
            self.start_decode(rid)
        elif kind == "kv":
            shape = tuple(h["shape"])
            kv = torch.frombuffer(payload, dtype=getattr(torch, h["dtype"])).view(shape) if payload else None
            self.transfers[rid] = {"bytes": len(payload), "ready": h.get("ready"), "send_start": h["send_start"],
                                   "received": h["_recv_t"],
                                   "duration_s": h["_recv_t"] - h["send_start"], "from": h.get("worker", "")}
            self.received[rid] = (h, kv, h["_recv_t"])
            self.start_decode(rid)
        elif kind == "abort":
            self.engine.abort(rid)
            self.pending.pop(rid, None)
            self.received.pop(rid, None)
            self.transfers.pop(rid, None)
            self.decode_port.pop(rid, None)

    def sequence(self, h: dict, prefill_only: bool = False) -> Sequence:
        return Sequence(h["rid"], list(h["tokens"]), len(h["tokens"]), int(h["max_tokens"]),
                        temperature=float(h.get("temperature", 0.0)), seed=int(h.get("seed", 0)),
                        stop_ids=frozenset(h.get("stop_ids", ())), prefill_only=prefill_only,
                        num_generated=int(h.get("num_generated", 0)))

    def start_decode(self, rid: str) -> None:
        """A decode request starts when both it and its KV are here."""
        if rid not in self.pending or rid not in self.received:
            return
        h, _ = self.pending.pop(rid)
        _, kv, recv_t = self.received.pop(rid)
        seq = self.sequence(h)
        seq.num_cached = seq.num_tokens - 1  # all but the prefill worker's sampled token
        seq.num_prompt = seq.num_tokens - seq.num_generated
        seq.times.update(queued=h["_recv_t"], kv_received=recv_t)
        if kv is None or kv.shape[2] != seq.num_cached:
            got = None if kv is None else kv.shape[2]
            self.to_frontend({"type": "error", "rid": rid, "code": "kv_mismatch",
                              "message": f"KV for {seq.num_cached} tokens expected, got {got}"})
            return
        self.engine.add_transferred(seq, kv)

    def expire(self) -> None:
        now = time.time()
        for rid, (_, deadline) in list(self.pending.items()):
            if now > deadline:
                del self.pending[rid]
                self.to_frontend({"type": "error", "rid": rid, "code": "kv_timeout",
                                  "message": f"{self.cfg.worker_id}: no KV within {self.cfg.kv_timeout_s} s"})
        for rid, (_, _, recv_t) in list(self.received.items()):  # KV whose request never came
            if now - recv_t > 2 * self.cfg.kv_timeout_s:
                del self.received[rid]
                self.transfers.pop(rid, None)

    def emit(self, r: StepResult) -> None:
        items, done = [], {}
        for seq, token in r.tokens:
            items.append([seq.rid, token, seq.finish_reason])
            if seq.finish_reason is not None:
                done[seq.rid] = {"worker": self.cfg.worker_id, "times": seq.times, "preemptions": seq.preemptions,
                                 "transfer": self.transfers.pop(seq.rid, None)}
                if seq.finish_reason != "prefilled":
                    self.decode_port.pop(seq.rid, None)
        self.to_frontend({"type": "tokens", "worker": self.cfg.worker_id, "t": time.time(), "items": items,
                          "done": done})
        for rid, kv in r.kv.items():
            port = self.decode_port.pop(rid, None)
            if port is not None:
                self.outbox.put((port, {"type": "kv", "rid": rid, "worker": self.cfg.worker_id, "ready": time.time(),
                                        "shape": list(kv.shape), "dtype": str(kv.dtype).removeprefix("torch.")}, kv))
        if self.steps is not None:
            b = r.batch
            self.steps.write(json.dumps({"worker": self.cfg.worker_id, "start": r.start_s, "duration_s": r.duration_s,
                                         "compute_s": r.compute_s, "model_s": r.model_s, "cpu_s": r.cpu_s,
                                         "gap_s": r.gap_s, "gap_cpu_s": r.gap_cpu_s, "sampled": len(r.tokens),
                                         "prefill_tokens": b.prefill_tokens.tolist(),
                                         "prefill_cached": b.prefill_cached.tolist(),
                                         "decode_ctx": b.decode_ctx.tolist()}) + "\n")
            self.steps.flush()


def make_engine(cfg: WorkerConfig, pace_s: Callable[[Batch], float] | None = None) -> Engine:
    dtype = torch.bfloat16 if cfg.device.startswith("cuda") else torch.float32
    model = load_model(cfg.model, cfg.seed, dtype=dtype, device=cfg.device)
    sched = SchedulerConfig(cfg.max_batch_tokens, cfg.max_seqs, cfg.chunk_tokens, cfg.chunked_prefill)
    return Engine(model, sched, -(-cfg.kv_tokens // cfg.block_tokens), cfg.block_tokens, pace_s=pace_s)


def main(argv: list[str] | None = None, pace_s: Callable[[Batch], float] | None = None) -> None:
    """Entry point of a worker process; ``pace_s`` is the paced-replay hook (see Engine)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops workers; Ctrl-C reaches it alone
    cfg = WorkerConfig(**json.loads((argv or sys.argv[1:])[0]))
    torch.set_num_threads(1)
    keep_heap()
    if pace_s is None and cfg.pace_profile:
        from profiler.paced import paced_cost_model

        pace_s = paced_cost_model(cfg.pace_profile, cfg.model, cfg.pace_dtype, scale=cfg.pace_scale).iteration_s
    worker = Worker(cfg, make_engine(cfg, pace_s))
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=worker.accept, args=(listener,), daemon=True).start()
    threading.Thread(target=worker.send_kv, daemon=True).start()
    print(f"READY {listener.getsockname()[1]}", flush=True)
    os.dup2(2, 1)  # nobody reads our stdout after READY: a full pipe must never block the worker
    worker.run()


if __name__ == "__main__":
    main()
