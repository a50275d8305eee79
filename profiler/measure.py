"""Timed operations: the building blocks of one serving iteration, at a model's (TP-sharded) shapes.

The blocks are the runtime's own (``runtime.model``: ``apply_rope``, ``attend_prefill``,
``attend_decode``, ``RMSNorm``, the fused QKV and gate/up projections), timed one by one so that
their sum is what a whole forward pass costs. Random weights: timings do not depend on values.
On CUDA each run is timed with events and a synchronise; on the CPU with ``perf_counter_ns`` (or the
thread's CPU time), each run after a sweep through as much memory as a forward pass moves (``Sweep``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from profiler.device import device_identity
from profiler.errors import InputError
from profiler.models import ModelSpec
from profiler.profile import COLUMNS, SHAPE_COLUMNS, Profile, pdsim_version
from profiler.profiled import RUNTIME_REVISION
from runtime.model import (
    apply_rope,
    attend_decode,
    attend_prefill,
    default_kv_tokens,
    gather,
    keep_heap,
    rope_tables,
    torch_threads,
)

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK_TOKENS = 16  # paged-cache block size of the timed KV reads and writes, as the runtime's


@dataclass(frozen=True)
class Timing:
    median_s: float
    p10_s: float
    p90_s: float
    repeats: int


@dataclass(frozen=True)
class Grid:
    """Log-spaced shapes to time, and how hard to time each."""

    tokens: tuple[int, ...]  # per-layer token ops and GEMMs
    prefill_batch: tuple[int, ...]
    prefill_len: tuple[int, ...]
    decode_batch: tuple[int, ...]
    decode_ctx: tuple[int, ...]
    kv_bytes: tuple[int, ...]
    warmup: int = 2
    repeats: int = 15
    budget_s: float = 0.25  # stop repeating a point after this long (at least min_repeats runs)
    min_repeats: int = 3
    # wall: perf_counter_ns (CUDA: events). cpu: this thread's CPU time (CPU, one torch thread only), which
    # other processes on a shared machine cannot inflate by taking the core away mid-run.
    clock: str = "wall"


def log2_grid(lo: int, hi: int, step: int = 2) -> tuple[int, ...]:
    """lo, lo*step, ... up to hi, always ending at hi."""
    out, x = [], lo
    while x < hi:
        out.append(x)
        x *= step
    return tuple([*out, hi])


def grid_for(model: ModelSpec, device: str, quick: bool) -> Grid:
    """The default grid: sized so that ``--quick`` on a 2-core CPU with the tiny model takes well under a
    minute, and the full grid of an 8B model on one H200 under ten minutes."""
    ctx_max = min(model.max_context, 4096 if device == "cpu" else 16384)
    if device == "cpu":
        if quick:
            return Grid(tokens=log2_grid(1, 1024), prefill_batch=(1, 2, 4), prefill_len=log2_grid(16, 1024, 4),
                        decode_batch=(1, 2, 4, 8, 16, 32, 64), decode_ctx=log2_grid(16, ctx_max, 2),
                        kv_bytes=log2_grid(64 * KiB, 64 * MiB, 4), repeats=9, budget_s=0.1)
        return Grid(tokens=log2_grid(1, 4096), prefill_batch=(1, 2, 4, 8), prefill_len=log2_grid(16, ctx_max, 2),
                    decode_batch=(1, 2, 4, 8, 16, 32, 64, 128), decode_ctx=log2_grid(16, ctx_max, 2),
                    kv_bytes=log2_grid(64 * KiB, 1 * GiB, 4))
    # The runtime's decode attention gathers each context into a padded tensor: 256 sequences x 16k tokens
    # of an 8-KV-head model gather 8.6 GB each of K and V in bf16, beside a cache as large: 34 GB in all.
    if quick:
        return Grid(tokens=log2_grid(1, 8192, 4), prefill_batch=(1, 4, 16), prefill_len=log2_grid(64, 8192, 4),
                    decode_batch=(1, 8, 64, 256), decode_ctx=log2_grid(64, ctx_max, 4),
                    kv_bytes=log2_grid(64 * KiB, 256 * MiB, 16), repeats=10)
    return Grid(tokens=log2_grid(1, 16384), prefill_batch=(1, 2, 4, 8, 16), prefill_len=log2_grid(32, 16384, 2),
                decode_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256), decode_ctx=log2_grid(32, ctx_max, 2),
                kv_bytes=log2_grid(64 * KiB, 1 * GiB, 4), repeats=20, budget_s=0.2)


# ---- timing ------------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_op(fn: Callable[[], object], device: str, grid: Grid, before: Callable[[], object] | None = None) -> Timing:
    """Warm up, then run ``fn`` up to ``grid.repeats`` times (fewer past ``grid.budget_s``); median, p10, p90.
    ``before`` runs, untimed, ahead of every run (what the op follows in a whole pass)."""
    for _ in range(grid.warmup):
        if before is not None:
            before()
        fn()
    sync(device)
    cuda = device.startswith("cuda")
    clock = time.thread_time_ns if grid.clock == "cpu" else time.perf_counter_ns
    times, spent, t_start = [], 0.0, time.perf_counter()
    while len(times) < grid.repeats and (len(times) < grid.min_repeats or spent < grid.budget_s):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            if before is not None:
                before()
            t0 = clock()
            fn()
            times.append((clock() - t0) / 1e9)
        spent = time.perf_counter() - t_start
    p10, p50, p90 = np.percentile(times, [10, 50, 90])
    return Timing(float(p50), float(p10), float(p90), len(times))


# ---- the model's shapes on one TP rank -----------------------------------------------------------
def shard(model: ModelSpec, tp: int) -> ModelSpec:
    """One TP rank's shapes: heads, KV heads (never below one), MLP width and vocab divided by TP."""
    if tp == 1:
        return model
    return replace(model, heads=max(1, model.heads // tp), kv_heads=max(1, model.kv_heads // tp),
                   intermediate=max(1, model.intermediate // tp), vocab=math.ceil(model.vocab / tp),
                   moe_intermediate=max(1, model.moe_intermediate // tp) if model.is_moe else 0)


def check_profilable(model: ModelSpec, device: str, dtype: str) -> None:
    if model.is_mla:
        raise InputError(f"{model.name}: MLA (latent) attention is not profiled; use the roofline cost model")
    if dtype not in TORCH_DTYPES:
        raise InputError(f"dtype {dtype!r} cannot be profiled; use one of {', '.join(TORCH_DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU here (use --device cpu)")
    if dtype == "fp8" and not (device.startswith("cuda") and torch.cuda.get_device_capability() >= (8, 9)
                               and hasattr(torch, "_scaled_mm")):
        raise InputError("fp8 GEMMs need a CUDA GPU with fp8 tensor cores (compute capability 8.9+)")
    if dtype == "fp8":  # a one-row and a 16-row product: what this torch's fp8 GEMM accepts
        try:
            w = Linear(64, 64, "fp8", device, torch.Generator(device=device).manual_seed(0), 0)
            for rows in (1, 16):
                w(torch.randn(rows, 64, device=device, dtype=torch.bfloat16))
        except (RuntimeError, TypeError, ValueError) as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise InputError(f"torch {torch.__version__} cannot run fp8 GEMMs on this GPU ({first})") from None


def check_clock(clock: str, device: str, threads: int | None) -> None:
    if clock not in ("wall", "cpu"):
        raise InputError(f"clock {clock!r}: use wall or cpu")
    if clock == "cpu" and (device != "cpu" or threads != 1):
        raise InputError("--clock cpu times this thread's CPU time: only with --device cpu and --threads 1")


def rotate_bytes(device: str, reuse_bytes: float) -> int:
    """Bytes of weight copies to cycle through so that each timed GEMM finds its weights where a whole forward
    pass leaves them: a weight is used again only after ``reuse_bytes`` of other data went through the caches.
    Past 4x the last-level cache that is plain memory, so no more copies are needed."""
    if device.startswith("cuda"):
        return int(min(reuse_bytes, 256 * MiB))  # H100/H200 L2 is 50-60 MB
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            size = f.read().strip()
        llc = int(size[:-1]) * {"K": KiB, "M": MiB}[size[-1]] if size[-1] in "KM" else int(size)
    except (OSError, ValueError):
        llc = 32 * MiB
    return int(min(reuse_bytes, 4 * llc))


def forward_bytes(m: ModelSpec, dtype: str, tokens: int) -> float:
    """Bytes one forward pass of ``tokens`` tokens moves between two uses of the same weight: every weight,
    plus each layer's activations (inputs and outputs of its norms, projections, RoPE, MLP and adds)."""
    q_dim, kv_dim = m.heads * m.head_dim, m.kv_heads * m.head_dim
    width = max(m.intermediate, m.moe_intermediate * max(m.active_experts, 1))
    act_elems = 7 * m.hidden + 2 * q_dim + 3 * kv_dim + 3 * width
    return m.param_bytes(dtype) + tokens * m.layers * act_elems * TORCH_DTYPES[dtype].itemsize


class Linear:
    """``x @ w.T`` as the runtime's ``nn.Linear``, cycling through weight copies so that the weights are as
    cold as in a whole pass (see ``rotate_bytes``); fp8 quantises the activations per call (dynamic scaling)
    and multiplies on fp8 tensor cores."""

    def __init__(self, in_dim: int, out_dim: int, dtype: str, device: str, gen: torch.Generator,
                 max_reuse_bytes: float):
        self.fp8, self.device = dtype == "fp8", device
        w = torch.randn(out_dim, in_dim, generator=gen, device=device) * 0.02
        w = w.to(device=device, dtype=torch.float8_e4m3fn if self.fp8 else TORCH_DTYPES[dtype])
        self.w_bytes = w.numel() * w.element_size()
        self.ws = [w] + [w.clone() for _ in range(self.copies_for(max_reuse_bytes) - 1)]
        self.i = 0
        self.scale = torch.ones((), device=device)

    def copies_for(self, reuse_bytes: float) -> int:
        return max(1, min(256, rotate_bytes(self.device, reuse_bytes) // max(1, self.w_bytes)))

    def __call__(self, x: torch.Tensor, copies: int | None = None) -> torch.Tensor:
        self.i = (self.i + 1) % min(copies or len(self.ws), len(self.ws))
        w = self.ws[self.i]
        if not self.fp8:
            return F.linear(x, w)
        scale = x.abs().amax().float().clamp(min=1e-12) / 448.0
        xq = (x / scale).to(torch.float8_e4m3fn)
        return torch._scaled_mm(xq, w.t(), scale_a=scale, scale_b=self.scale, out_dtype=torch.bfloat16)


class Sweep:
    """On a CPU, an op inside a whole pass runs right after others have churned the caches; timed in a tight
    loop it finds them as it left them, and runs several times faster. Before each timed run, read through as
    many bytes as a forward pass of the same tokens moves (capped at 4x the last-level cache)."""

    def __init__(self, m: ModelSpec, dtype: str, device: str):
        self.m, self.dtype, self.cpu = m, dtype, not device.startswith("cuda")
        self.buf = torch.ones(rotate_bytes("cpu", forward_bytes(m, dtype, 1 << 20)) // 4) if self.cpu else None

    def before(self, tokens: int) -> Callable[[], object] | None:
        if not self.cpu:
            return None
        view = self.buf[: rotate_bytes("cpu", forward_bytes(self.m, self.dtype, tokens)) // 4]
        return view.sum


# ---- op builders: each returns a no-argument closure over preallocated tensors ----------------------
def token_ops(m: ModelSpec, dtype: str, device: str, gen: torch.Generator,
              max_tokens: int) -> dict[str, tuple[int, int, Callable]]:
    """Per-layer ops over T tokens: name -> (in_dim, out_dim, make(T) -> closure)."""
    act = TORCH_DTYPES[dtype]
    q_dim, kv_dim = m.heads * m.head_dim, m.kv_heads * m.head_dim
    reuse = forward_bytes(m, dtype, max_tokens)
    qkv_w = Linear(m.hidden, q_dim + 2 * kv_dim, dtype, device, gen, reuse)
    o_w = Linear(q_dim, m.hidden, dtype, device, gen, reuse)
    norm_w = torch.ones(m.hidden, device=device, dtype=act)
    cos_t, sin_t = (t.to(device) for t in rope_tables(4 * BLOCK_TOKENS, m.head_dim, 10000.0))
    embed_w = torch.randn(m.vocab, m.hidden, generator=gen, device=device, dtype=act)
    rand = lambda *s: torch.randn(*s, generator=gen, device=device, dtype=act)  # noqa: E731

    def qkv_views(t):
        """q, k, v as the runtime has them: views into one fused projection's output."""
        qkv = rand(t, q_dim + 2 * kv_dim)
        q, k, v = qkv.split((q_dim, kv_dim, kv_dim), dim=-1)
        return q.view(-1, m.heads, m.head_dim), k.view(-1, m.kv_heads, m.head_dim), v.view(-1, m.kv_heads, m.head_dim)

    def rope(t):
        q, k, _ = qkv_views(t)
        pos = torch.arange(t, device=device) % cos_t.shape[0]
        cos, sin = cos_t[pos], sin_t[pos]
        return lambda: (apply_rope(q, cos, sin), apply_rope(k, cos, sin))

    def kv_write(t):
        slots_n = max(t, BLOCK_TOKENS)
        kc, vc = (torch.zeros(slots_n, m.kv_heads, m.head_dim, device=device, dtype=act) for _ in range(2))
        _, k, v = qkv_views(t)
        k = k.contiguous()  # RoPE's output
        slots = torch.randperm(slots_n, generator=gen, device=device)[:t]

        def run():
            kc[slots] = k
            vc[slots] = v
        return run

    def add(t):
        a, b = rand(t, m.hidden), rand(t, m.hidden)
        return lambda: a + b

    def rmsnorm(t):
        x = rand(t, m.hidden)
        return lambda: F.rms_norm(x, (m.hidden,), norm_w, 1e-5)

    def embed(t):
        ids = torch.randint(0, m.vocab, (t,), generator=gen, device=device)
        return lambda: F.embedding(ids, embed_w)

    def gemm(w: Linear, in_dim: int):
        def make(t):
            x, copies = rand(t, in_dim), w.copies_for(forward_bytes(m, dtype, t))
            return lambda: w(x, copies)
        return make

    ops = {"qkv": (m.hidden, q_dim + 2 * kv_dim, gemm(qkv_w, m.hidden)), "rope": (q_dim, q_dim, rope),
           "kv_write": (kv_dim, kv_dim, kv_write), "o": (q_dim, m.hidden, gemm(o_w, q_dim)),
           "add": (m.hidden, m.hidden, add), "rmsnorm": (m.hidden, m.hidden, rmsnorm),
           "embed": (m.vocab, m.hidden, embed)}
    if m.dense_layers:
        gu_w = Linear(m.hidden, 2 * m.intermediate, dtype, device, gen, reuse)
        down_w = Linear(m.intermediate, m.hidden, dtype, device, gen, reuse)

        def swiglu(t):
            gu = rand(t, 2 * m.intermediate)

            def run():
                gate, up = gu.chunk(2, dim=-1)
                return F.silu(gate) * up
            return run

        ops |= {"gate_up": (m.hidden, 2 * m.intermediate, gemm(gu_w, m.hidden)),
                "swiglu": (2 * m.intermediate, m.intermediate, swiglu),
                "down": (m.intermediate, m.hidden, gemm(down_w, m.intermediate))}
    if m.is_moe:
        ops["moe"] = (m.hidden, m.hidden, moe_op(m, dtype, device, gen))
    return ops


def moe_op(m: ModelSpec, dtype: str, device: str, gen: torch.Generator) -> Callable:
    """A MoE layer over T tokens: router, top-k, then each touched expert's SwiGLU over its tokens."""
    act = TORCH_DTYPES[dtype]
    reuse = m.param_bytes(dtype)
    router = Linear(m.hidden, m.experts, "bf16" if dtype == "fp8" else dtype, device, gen, reuse)
    n_exp = m.experts + m.shared_experts
    # All experts of a layer are weights enough: one copy each, reused only after the other layers' turn.
    w13 = [Linear(m.hidden, 2 * m.moe_intermediate, dtype, device, gen, 0) for _ in range(n_exp)]
    w2 = [Linear(m.moe_intermediate, m.hidden, dtype, device, gen, 0) for _ in range(n_exp)]

    def make(t):
        x = (torch.randn(t, m.hidden, generator=gen, device=device) * 0.02).to(act)

        def run():
            probs = router(x).float().softmax(-1)
            weight, idx = probs.topk(m.active_experts, dim=-1)
            out = torch.zeros_like(x)
            flat = idx.flatten()
            order = flat.argsort()
            counts = torch.bincount(flat, minlength=m.experts).tolist()
            tok = (order // m.active_experts)
            start = 0
            for e, c in enumerate(counts):
                if c:
                    rows = tok[start:start + c]
                    gate, up = w13[e](x[rows]).chunk(2, dim=-1)
                    y = w2[e](F.silu(gate) * up) * weight.flatten()[order[start:start + c], None].to(act)
                    out.index_add_(0, rows, y.to(act))
                    start += c
            for e in range(m.experts, n_exp):  # shared experts see every token
                gate, up = w13[e](x).chunk(2, dim=-1)
                out += w2[e](F.silu(gate) * up).to(act)
            return out
        return run
    return make


def attn_prefill_op(m: ModelSpec, dtype: str, device: str, gen: torch.Generator) -> Callable:
    """``batch`` uncached prompts of ``seq_len`` tokens, one ``attend_prefill`` each, as the runtime runs them."""
    act = TORCH_DTYPES[dtype]

    def make(batch: int, seq_len: int):
        q = torch.randn(batch * seq_len, m.heads, m.head_dim, generator=gen, device=device, dtype=act)
        k, v = (torch.randn(batch * seq_len, m.kv_heads, m.head_dim, generator=gen, device=device, dtype=act)
                for _ in range(2))
        out = torch.empty_like(q)

        def run():
            for i in range(batch):
                s = slice(i * seq_len, (i + 1) * seq_len)
                out[s] = attend_prefill(q[s], k[s], v[s], 0)
        return run
    return make


def attn_decode_op(m: ModelSpec, dtype: str, device: str, gen: torch.Generator) -> Callable:
    """One token for each of ``batch`` sequences over ``ctx_len`` cached tokens: the paged-cache gather and
    ``attend_decode``, as the runtime runs them."""
    act = TORCH_DTYPES[dtype]
    cache_blocks = default_kv_tokens(m) // BLOCK_TOKENS

    def make(batch: int, ctx_len: int):
        blocks = math.ceil(ctx_len / BLOCK_TOKENS)
        slots_n = max(batch * blocks, cache_blocks) * BLOCK_TOKENS
        kc, vc = (torch.randn(slots_n, m.kv_heads, m.head_dim, generator=gen, device=device, dtype=act)
                  for _ in range(2))
        # Each sequence's blocks scattered over a cache the size of a worker's, as after a while of serving
        # (a cache of only the blocks in use stays in the CPU's caches; a worker's does not).
        perm = torch.randperm(slots_n // BLOCK_TOKENS, generator=gen, device=device)[:batch * blocks]
        perm = perm.view(batch, blocks)
        ctx = (perm[:, :, None] * BLOCK_TOKENS + torch.arange(BLOCK_TOKENS, device=device)).view(batch, -1)[:, :ctx_len]
        mask = torch.ones(batch, ctx_len, dtype=torch.bool, device=device)
        q = torch.randn(batch, m.heads, m.head_dim, generator=gen, device=device, dtype=act)
        out = torch.empty_like(q)

        def run():
            out[:] = attend_decode(q, gather(kc, ctx), gather(vc, ctx), mask)
        return run
    return make


# ---- KV movement -------------------------------------------------------------------------------
IPC_CHILD = r"""
import sys
import numpy as np
n = int(sys.argv[2])
src = np.memmap(sys.argv[1], dtype=np.uint8, mode="r", shape=(n,))
dst = np.ones(n, dtype=np.uint8)
out, inp = sys.stdout.buffer, sys.stdin.buffer
out.write(b"r"); out.flush()
while inp.read(1) == b"g":
    np.copyto(dst, src)
    out.write(b"d"); out.flush()
"""


def ipc_copy(n_bytes: int, grid: Grid) -> Timing:
    """Move ``n_bytes`` from this process to another through shared memory (a file in /dev/shm, mapped by
    both): copy in, signal, the other process copies out and answers. Pipes carry the signals."""
    shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.NamedTemporaryFile(dir=shm_dir, prefix="pdsim-kv-") as f:
        f.truncate(n_bytes)
        buf = np.memmap(f.name, dtype=np.uint8, mode="r+", shape=(n_bytes,))
        child = subprocess.Popen([sys.executable, "-c", IPC_CHILD, f.name, str(n_bytes)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        try:
            if child.stdout.read(1) != b"r":
                raise RuntimeError("the IPC copy's child process did not start")
            src = np.ones(n_bytes, dtype=np.uint8)

            def run():
                np.copyto(buf, src)
                child.stdin.write(b"g")
                child.stdin.flush()
                if child.stdout.read(1) != b"d":
                    raise RuntimeError("the IPC copy's child process died")
            return time_op(run, "cpu", replace(grid, clock="wall"))  # two processes: only wall time tells
        finally:
            child.stdin.close()
            child.wait(timeout=30)


def kv_copy_rows(device: str, grid: Grid, free_bytes: int) -> list[dict]:
    """d2h, h2d and d2d copies (memcpy on a CPU) and a copy between two processes, over ``grid.kv_bytes``."""
    rows = []
    host_free = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) if hasattr(os, "sysconf") else 0
    cap = min(free_bytes // 4, host_free // 4) if host_free else free_bytes // 4
    # A tmpfs smaller than the copy would fault when the mapping is touched: stay well inside it.
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else os.statvfs(tempfile.gettempdir())
    shm_cap = shm.f_bavail * shm.f_frsize // 2
    for n in grid.kv_bytes:
        if n > cap:
            break
        rows += [row("kv_copy", t, bytes=n, path=path) for path, t in device_copies(n, device, grid).items()]
        if n <= shm_cap:
            rows.append(row("kv_copy", ipc_copy(n, grid), bytes=n, path="ipc"))
    return rows


def device_copies(n: int, device: str, grid: Grid) -> dict[str, Timing]:
    """Device to host (pinned), host to device and device to device copies of ``n`` bytes."""
    cuda = device.startswith("cuda")
    dev = torch.ones(n, dtype=torch.uint8, device=device)
    host = torch.empty(n, dtype=torch.uint8, pin_memory=cuda)
    dev2 = torch.empty_like(dev)
    return {"d2h": time_op(lambda: host.copy_(dev), device, grid),
            "h2d": time_op(lambda: dev.copy_(host), device, grid),
            "d2d": time_op(lambda: dev2.copy_(dev), device, grid)}


# ---- the profile ---------------------------------------------------------------------------------
def row(op: str, t: Timing, **shape) -> dict:
    return {"op": op, **shape, **asdict(t)}


def to_table(rows: list[dict], model: ModelSpec, dtype: str, tp: int) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for c in COLUMNS:
        if c not in table:
            table[c] = "" if c == "path" else 0
    table = table.fillna({"path": ""}).fillna(0)
    table[SHAPE_COLUMNS] = table[SHAPE_COLUMNS].astype(np.int64)
    table["model"], table["dtype"], table["tp"] = model.name, dtype, tp
    return table[COLUMNS]


def iteration_overhead(ops: Profile, model: ModelSpec, rank: ModelSpec, tp: int, dtype: str, device: str,
                       grid: Grid, seed: int, sweep: Sweep | None = None) -> dict:
    """The per-iteration cost no op carries (Python dispatch, module calls, views, index arithmetic): a whole
    decode step of one sequence through the runtime's model with 1 and with up to 4 layers, minus the
    composition of the measured ops, extended to the model's layers as ``fixed + per_layer x layers``. Only
    that many layers of one rank's shapes are ever built. The whole step runs after ``sweep`` churned the
    caches, as each op was timed: a step timed hot against ops timed cold came out faster than its ops (the
    overhead clamped to zero) while live single-sequence decode steps took 1.15-1.2x the composition."""
    from profiler.gpus import local_cpu  # noqa: PLC0415
    from profiler.profiled import ProfiledCostModel  # noqa: PLC0415
    from runtime.model import KVCache, build_model, decode_step  # noqa: PLC0415

    ctx = ops.table[ops.table.op == "attn_decode"].ctx_len.min()
    deep = min(rank.layers, 4)  # 4 layers: small enough to build for any model, far enough apart to fit a line
    steps = {}
    for layers in sorted({1, deep}):
        spec = replace(rank, layers=layers, max_context=max(ctx, BLOCK_TOKENS))
        net = build_model(spec, seed=seed, dtype=TORCH_DTYPES[dtype], device=device)
        cache = KVCache(spec, math.ceil(ctx / BLOCK_TOKENS) + 1, BLOCK_TOKENS, TORCH_DTYPES[dtype], device)
        step = decode_step([1], [torch.arange(ctx, device=device)], device)
        with torch.inference_mode():
            whole = time_op(lambda net=net, step=step, cache=cache: net(step, cache), device,
                            replace(grid, warmup=5, repeats=max(grid.repeats, 60), budget_s=max(grid.budget_s, 0.5)),
                            sweep.before(1) if sweep is not None else None)
        cm = ProfiledCostModel(ops, model=replace(model, layers=layers), gpu=local_cpu(), tp=tp, dtype=dtype)
        composed = cm.tokens_s(1) + layers * cm.decode_attn_s(1, ctx) + cm.logits_s(1)
        steps[layers] = {q: getattr(whole, q) - composed for q in ("median_s", "p10_s", "p90_s")}
        steps[layers]["repeats"] = whole.repeats
        del net, cache
    per_layer = {q: (steps[deep][q] - steps[1][q]) / max(1, deep - 1) for q in ("median_s", "p10_s", "p90_s")}
    # fixed + per_layer x layers; never below zero (one nanosecond keeps the row a positive time).
    over = {q: max(1e-9, steps[1][q] + per_layer[q] * (rank.layers - 1)) for q in per_layer}
    lo, hi = min(over.values()), max(over.values())
    return {"op": "iteration_overhead", "batch": 1, "ctx_len": int(ctx), "median_s": over["median_s"], "p10_s": lo,
            "p90_s": hi, "repeats": min(steps[1]["repeats"], steps[deep]["repeats"])}


def profile_model(model: ModelSpec, device: str = "cpu", tp: int = 1, dtype: str | None = None, quick: bool = False,
                  grid: Grid | None = None, threads: int | None = 1, seed: int = 0, clock: str | None = None,
                  log: Callable[[str], None] = lambda s: None) -> Profile:
    """Time every op of ``model`` (one TP rank's shapes) on ``device`` over ``grid``; a Profile of one run.

    ``threads`` pins torch's CPU threads (1 by default, as the runtime's workers); None leaves them be.
    """
    dtype = dtype or ("fp32" if device == "cpu" else "bf16")
    check_profilable(model, device, dtype)
    grid = grid or grid_for(model, device, quick)
    grid = replace(grid, clock=clock or grid.clock)
    check_clock(grid.clock, device, threads)
    keep_heap()  # as the runtime's workers run
    with torch_threads(threads) if threads is not None else nullcontext():
        return measure_all(model, device, tp, dtype, quick, grid, seed, log)


def measure_all(model: ModelSpec, device: str, tp: int, dtype: str, quick: bool, grid: Grid, seed: int,
                log: Callable[[str], None]) -> Profile:
    gen = torch.Generator(device=device).manual_seed(seed)  # tensors are made where they are timed
    m = shard(model, tp)
    sweep = Sweep(m, dtype, device)
    started = time.perf_counter()
    rows: list[dict] = []
    with torch.inference_mode():
        for name, (in_dim, out_dim, make) in token_ops(m, dtype, device, gen, max(grid.tokens)).items():
            for t in grid.tokens:
                rows.append(row(name, time_op(make(t), device, grid, sweep.before(t)), tokens=t, in_dim=in_dim,
                                out_dim=out_dim))
            log(f"{name}: {len(grid.tokens)} token counts")
        lm = Linear(m.hidden, m.vocab, "bf16" if dtype == "fp8" else dtype, device, gen,
                    forward_bytes(m, dtype, max(grid.tokens)))
        act = TORCH_DTYPES[dtype]
        for t in grid.tokens:
            x, n = torch.randn(t, m.hidden, generator=gen, device=device, dtype=act), lm.copies_for(
                forward_bytes(m, dtype, t))
            timing = time_op(lambda x=x, n=n: lm(x, n).float(), device, grid, sweep.before(t))
            rows.append(row("lm_head", timing, tokens=t, in_dim=m.hidden, out_dim=m.vocab))
        log("lm_head")
        make = attn_prefill_op(m, dtype, device, gen)
        for b in grid.prefill_batch:
            for s in grid.prefill_len:
                rows.append(row("attn_prefill", time_op(make(b, s), device, grid, sweep.before(b * s)), batch=b,
                                seq_len=s))
        log("attn_prefill")
        make = attn_decode_op(m, dtype, device, gen)
        for b in grid.decode_batch:
            for c in grid.decode_ctx:
                rows.append(row("attn_decode", time_op(make(b, c), device, grid, sweep.before(b)), batch=b, ctx_len=c))
        log("attn_decode")
    ident = device_identity(device)
    rows += kv_copy_rows(device, grid, int(ident.get("free_bytes") or ident.get("memory_bytes") or 4 * GiB))
    log("kv_copy")
    table = to_table(rows, model, dtype, tp)
    if dtype != "fp8":  # the runtime's model has no fp8 path to time whole
        over = iteration_overhead(Profile(table), model, m, tp, dtype, device, grid, seed, sweep)
        table = pd.concat([table, to_table([over], model, dtype, tp)], ignore_index=True)
        log(f"iteration_overhead: {over['median_s'] * 1e3:.3f} ms")
    run = {"model": model.name, "model_spec": model.to_dict(), "dtype": dtype, "tp": tp, "device": ident,
           "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(), "seed": seed,
           "date": datetime.now(UTC).isoformat(timespec="seconds"), "grid": asdict(grid), "quick": quick,
           "duration_s": round(time.perf_counter() - started, 2), "pdsim_version": pdsim_version(),
           "kv_block_tokens": BLOCK_TOKENS, "runtime_revision": RUNTIME_REVISION}
    return Profile(table, {"device": ident, "runs": [run]})
