"""`pdsim serve`: start the worker processes of a deployment, wait until each is ready, serve HTTP,
and stop them all on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from profiler.errors import InputError
from profiler.models import resolve_model
from runtime.model import default_kv_tokens
from runtime.router import WorkerHandle
from runtime.worker import WorkerConfig
from simulator.deployment import Deployment, PoolSpec, parse_deployment

DEFAULT_DEPLOYMENT = {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "disagg",
                      "prefill": {"replicas": 1}, "decode": {"replicas": 1}}
API_KEY_ENV = "PDSIM_API_KEY"
# An idle keep-alive connection is closed after this long: longer than clients keep idle pooled connections
# (httpx 5 s, aiohttp 15 s), so that a client does not send on a connection the server is closing at that very
# moment. uvicorn's default is httpx's 5 s; a soak client's ReadError before any byte (CI, 2026-11-29) is that
# race's signature.
KEEP_ALIVE_S = 65


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    log_path: str | None = "pdsim-requests.jsonl"
    step_log_dir: str | None = None  # one steps-<worker>.jsonl per worker
    seed: int = 0
    kv_tokens: int | None = None  # KV cache per worker in tokens (default: 256 MiB of KV, at most 32768)
    kv_timeout_s: float = 10.0
    max_tokens_limit: int = 4096
    ready_timeout_s: float = 180.0
    pace_profile: str | None = None  # paced replay: every step lasts pace_scale x this profile's prediction
    pace_scale: float = 1.0


def default_deployment() -> Deployment:
    return parse_deployment(DEFAULT_DEPLOYMENT, where="default deployment")


def worker_configs(dep: Deployment, opts: ServeOptions) -> list[WorkerConfig]:
    spec = resolve_model(dep.model)
    kv_tokens = opts.kv_tokens or default_kv_tokens(spec)
    roles = {"workers": "agg", "prefill": "prefill", "decode": "decode"}
    out = []
    for pool_name, pool in dep.pools.items():
        if pool.tp > 1:
            raise InputError(f"tp={pool.tp}: the bundled runtime runs each replica on one device (tp: 1)",
                             where=f"{pool_name}.tp")
        out += [_config(dep, pool, roles[pool_name], i, opts, kv_tokens) for i in range(pool.replicas)]
    return out


def _config(dep: Deployment, pool: PoolSpec, role: str, i: int, opts: ServeOptions, kv_tokens: int) -> WorkerConfig:
    wid = f"{role}-{i}"
    step_log = os.path.join(opts.step_log_dir, f"steps-{wid}.jsonl") if opts.step_log_dir else ""
    return WorkerConfig(worker_id=wid, role=role, model=dep.model, seed=opts.seed,
                        max_batch_tokens=pool.max_batch_tokens, max_seqs=pool.max_seqs,
                        chunk_tokens=pool.prefill_chunk_tokens, chunked_prefill=pool.chunked_prefill,
                        block_tokens=dep.kv_block_tokens, kv_tokens=kv_tokens, kv_timeout_s=opts.kv_timeout_s,
                        step_log=step_log, device="cuda" if dep.gpu != "cpu" and _has_cuda() else "cpu",
                        pace_profile=opts.pace_profile or "", pace_dtype=dep.dtype, pace_scale=opts.pace_scale)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def start_workers(configs: list[WorkerConfig], timeout_s: float) -> list[tuple[WorkerConfig, subprocess.Popen, int]]:
    """Spawn one process per worker and wait for each ``READY <port>`` line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [(c, subprocess.Popen([sys.executable, "-m", "runtime.worker", json.dumps(asdict(c))],
                                  stdout=subprocess.PIPE, env=env, text=True)) for c in configs]
    ports: dict[int, int] = {}
    sel = selectors.DefaultSelector()
    for i, (_, p) in enumerate(procs):
        sel.register(p.stdout, selectors.EVENT_READ, i)
    deadline = time.monotonic() + timeout_s
    try:
        while len(ports) < len(procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"workers not ready after {timeout_s:.0f} s: "
                                   f"{[c.worker_id for i, (c, _) in enumerate(procs) if i not in ports]}")
            for key, _ in sel.select(timeout=min(left, 0.5)):
                i = key.data
                line = procs[i][1].stdout.readline()
                if line.startswith("READY "):
                    ports[i] = int(line.split()[1])
                    sel.unregister(key.fileobj)
                elif not line:
                    c, p = procs[i]
                    raise RuntimeError(f"worker {c.worker_id} exited with code {p.wait()} while starting")
    except BaseException:
        stop_workers([p for _, p in procs])
        raise
    finally:
        sel.close()
    return [(c, p, ports[i]) for i, (c, p) in enumerate(procs)]


def stop_workers(procs: list[subprocess.Popen], grace_s: float = 5.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def serve(dep: Deployment | None, opts: ServeOptions) -> None:
    """Run until interrupted. Workers first (each ready), then the HTTP frontend on ``opts.host:opts.port``."""
    import uvicorn

    from runtime.api import build_app
    from runtime.frontend import Frontend, FrontendConfig
    from runtime.tokenizer import load_tokenizer

    dep = dep or default_deployment()
    spec = resolve_model(dep.model)
    tokenizer = load_tokenizer(dep.model)  # fails fast (one line) when the real-model extra is missing
    configs = worker_configs(dep, opts)
    try:  # bad paths are one line now, not a worker that fails to start or a traceback
        if opts.step_log_dir:
            os.makedirs(opts.step_log_dir, exist_ok=True)
        if opts.log_path:
            open(opts.log_path, "a").close()
    except OSError as e:
        raise InputError(f"cannot write there ({e.strerror})", where=e.filename) from None
    api_key = opts.api_key or os.environ.get(API_KEY_ENV) or None
    if not api_key and opts.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"pdsim serve: warning: listening on {opts.host} without --api-key: anyone who can reach it may "
              "use it", file=sys.stderr)
    sock = socket.socket(socket.AF_INET6 if ":" in opts.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((opts.host, opts.port))
    except OSError as e:
        raise InputError(f"cannot listen on {opts.host}:{opts.port} ({e.strerror})", where="--port") from None
    started = start_workers(configs, opts.ready_timeout_s)
    procs = [p for _, p, _ in started]
    workers = [WorkerHandle(c.worker_id, c.role, port, p.pid) for c, p, port in started]
    cfg = FrontendConfig(model=dep.model, topology=dep.topology, router=dep.router, api_key=api_key,
                         max_tokens_limit=opts.max_tokens_limit, max_context=spec.max_context,
                         log_path=opts.log_path, seed=opts.seed)
    fe = Frontend(cfg, workers, tokenizer)

    @asynccontextmanager
    async def lifespan(_app):
        await fe.connect(opts.ready_timeout_s)
        host, port = sock.getsockname()[:2]
        print(f"pdsim serve: ready on http://{host}:{port} ({dep.describe()}, model {dep.model}, "
              f"{len(workers)} workers; request log {opts.log_path or 'off'})", flush=True)
        yield
        if fe.log is not None:
            fe.log.close()

    app = build_app(fe)
    app.router.lifespan_context = lifespan
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=3,
                                           timeout_keep_alive=KEEP_ALIVE_S))
    # uvicorn re-raises the signal that stopped it; make SIGTERM unwind like Ctrl-C so workers are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        stop_workers(procs)
        sock.close()
