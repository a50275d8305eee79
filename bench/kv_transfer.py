"""How to move a request's KV between two worker processes on one machine: a loopback TCP socket
(what the runtime uses, runtime/wire.py) against a POSIX shared-memory segment both map once. Prints
the median time from the sender having the KV tensor to the receiver holding its own copy, and GB/s.

    .venv/bin/python bench/kv_transfer.py [--model tiny] [--tokens 128,1024,4096] [--reps 20]

On the 2-core CI box (busy) shared memory mapped once was 2-4x faster (tiny, 1024 tokens: 0.36 ms vs
1.6 ms), a segment created per transfer slower than the socket (page faults). The runtime keeps the
socket: it needs no slot management or flow control, works unchanged between machines, and costs well
under one decode step at the runtime's sizes; each transfer's measured bytes and duration are logged.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time
from multiprocessing import shared_memory

import numpy as np

from profiler.models import resolve_model


def kv_shape(model: str, tokens: int) -> tuple[int, ...]:
    s = resolve_model(model)
    return (2, s.layers, tokens, s.kv_heads, s.head_dim)


def socket_receiver(port: int, n: int, reps: int, done) -> None:
    from runtime.wire import connect

    conn = connect(port)
    for _ in range(reps):
        header, payload = conn.recv()
        np.frombuffer(payload, dtype=np.float32).copy()  # into memory the receiver owns, as cache.load does
        conn.send({"t": time.perf_counter()})
    done.set()


def shm_receiver(pipe, name: str, reps: int) -> None:
    shm = shared_memory.SharedMemory(name=name)  # forked: shares the sender's resource tracker
    for _ in range(reps):
        nbytes = pipe.recv()
        np.frombuffer(shm.buf, dtype=np.float32, count=nbytes // 4).copy()
        pipe.send(time.perf_counter())
    shm.close()


def bench_socket(kv: np.ndarray, reps: int) -> list[float]:
    from runtime.wire import Conn

    listener = socket.create_server(("127.0.0.1", 0))
    done = mp.Event()
    p = mp.Process(target=socket_receiver, args=(listener.getsockname()[1], kv.nbytes, reps, done))
    p.start()
    conn = Conn(listener.accept()[0])
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        conn.send({"type": "kv", "shape": list(kv.shape)}, memoryview(kv))
        header, _ = conn.recv()
        out.append(header["t"] - t0)
    p.join(30)
    return out


def bench_shm(kv: np.ndarray, reps: int) -> list[float]:
    """A segment mapped once by both (a ring buffer's best case): copy in, signal, copy out."""
    shm = shared_memory.SharedMemory(create=True, size=kv.nbytes)
    ours, theirs = mp.Pipe()
    p = mp.Process(target=shm_receiver, args=(theirs, shm.name, reps))
    p.start()
    out = []
    view = np.frombuffer(shm.buf, dtype=np.float32, count=kv.size).reshape(kv.shape)
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(view, kv)
        ours.send(kv.nbytes)
        out.append(ours.recv() - t0)
    p.join(30)
    del view
    shm.close()
    shm.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--tokens", default="128,1024,4096")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    print(f"KV of {args.model} (fp32), median of {args.reps} transfers")
    print(f"{'tokens':>7} {'MB':>8} {'socket ms':>10} {'GB/s':>6} {'shm ms':>8} {'GB/s':>6}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        kv = np.random.default_rng(0).standard_normal(kv_shape(args.model, tokens), dtype=np.float32)
        s, m = np.median(bench_socket(kv, args.reps)), np.median(bench_shm(kv, args.reps))
        mb = kv.nbytes / 1e6
        print(f"{tokens:>7} {mb:8.2f} {s * 1e3:10.3f} {mb / 1e3 / s:6.2f} {m * 1e3:8.3f} {mb / 1e3 / m:6.2f}")


if __name__ == "__main__":
    main()
