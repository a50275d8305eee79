"""A Llama-style decoder in torch (RMSNorm, RoPE, grouped-query attention via SDPA, SwiGLU) over a paged
KV cache, built from a ``profiler.models.ModelSpec`` with seeded random weights (timings do not depend on
values) or real ones loaded by ``runtime.smollm2``.

One engine step runs a flat batch: decode tokens first (one per sequence, attention batched over the
padded contexts), then prefill chunks (attention per chunk over its cached context plus itself). The
pieces the profiler times on their own are ``Attention.qkv``, ``attend_prefill``, ``attend_decode``,
``MLP.forward`` and ``Model.logits``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from profiler.models import ModelSpec

ROPE_THETA = 10000.0
NORM_EPS = 1e-5
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
HEAP_MMAP_THRESHOLD_BYTES = 32 * 2**20  # the largest glibc allows on 64-bit
HEAP_TRIM_THRESHOLD_BYTES = 2**30


def keep_heap() -> bool:
    """Serve tensors up to 32 MB from the heap and keep freed memory there (glibc's mallopt). By default glibc
    maps each large tensor afresh and unmaps it once freed, so every forward faults its temporaries' pages in
    again: a decode step of the tiny model, 16 sequences x 256 tokens, took 14.4 ms of CPU time that way and
    6.2 ms with this (48 x 300: 52.9 -> 17.9 ms), while an op timed alone in a loop (the profile) reuses its
    buffers and never pays it. Call once per process before the model runs (workers, the profiler, verify);
    False where the C library is not glibc. (With ``gather``, profiler.profiled.RUNTIME_REVISION 2.)"""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(M_TRIM_THRESHOLD, HEAP_TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError, TypeError):
        return False


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = NORM_EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(max_pos: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position, [max_pos, head_dim // 2] each."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Hugging Face layout). x: [T, heads, head_dim]; cos, sin: [T, head_dim // 2]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def attend_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cached: int) -> torch.Tensor:
    """Causal attention of one prefill chunk. q: [n, heads, d]; k, v: [cached + n, kv_heads, d] -> [n, heads, d]."""
    n, ctx = q.shape[0], k.shape[0]
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    if cached == 0:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, enable_gqa=True)
    else:  # query i sits at position cached + i and sees keys 0..cached + i
        mask = torch.arange(ctx)[None, :] <= (torch.arange(n)[:, None] + cached)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask.to(q.device), enable_gqa=True)
    return out[0].transpose(0, 1)


def attend_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One new token per sequence over its padded context. q: [B, heads, d]; k, v: [B, L, kv_heads, d];
    mask: [B, L] true where a key exists -> [B, heads, d]."""
    out = F.scaled_dot_product_attention(q[:, :, None], k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask[:, None, None, :], enable_gqa=True)
    return out[:, :, 0]


def gather(t: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """``t[slots]`` for ``slots`` of any shape, by ``index_select``: on a CPU several times faster than advanced
    indexing (16 sequences x 256 slots of the tiny model's cache: 0.06 ms against 0.34 ms)."""
    return t.index_select(0, slots.reshape(-1)).view(*slots.shape, *t.shape[1:])


@dataclass
class StepInput:
    """A flat batch: decode tokens first, then prefill chunks. Slots index the paged cache
    (block b holds slots b * block_tokens ... (b + 1) * block_tokens - 1)."""

    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slots: torch.Tensor  # [T] where each new token's K and V are written
    n_decode: int = 0
    decode_ctx_slots: torch.Tensor | None = None  # [B, L] context slots of each decode sequence, padded
    decode_mask: torch.Tensor | None = None  # [B, L]
    prefill: list[tuple[int, int, int, torch.Tensor]] = field(default_factory=list)  # (start, n, cached, ctx slots)
    logits_rows: torch.Tensor | None = None  # rows of T that need logits (None: all)


def default_kv_tokens(spec: ModelSpec, elem_bytes: int = 4) -> int:
    """A worker's KV cache in tokens when not given: 256 MiB of K and V (fp32 on a CPU), at most 32768."""
    return min(32768, (256 << 20) // (spec.layers * 2 * spec.kv_heads * spec.head_dim * elem_bytes))


class KVCache:
    """K and V of every layer, one flat slot axis split into fixed-size blocks."""

    def __init__(self, spec: ModelSpec, num_blocks: int, block_tokens: int, dtype: torch.dtype,
                 device: str | torch.device = "cpu"):
        self.num_blocks, self.block_tokens = num_blocks, block_tokens
        shape = (spec.layers, num_blocks * block_tokens, spec.kv_heads, spec.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.k[:, 0].numel() * self.k.element_size()

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer, slots] = k
        self.v[layer, slots] = v

    def read(self, slots: torch.Tensor) -> torch.Tensor:
        """K and V of ``slots`` across all layers, [2, layers, n, kv_heads, d] (what a transfer moves)."""
        return torch.stack((self.k.index_select(1, slots), self.v.index_select(1, slots)))

    def load(self, slots: torch.Tensor, kv: torch.Tensor) -> None:
        """Write a transferred ``read`` result into ``slots``."""
        self.k[:, slots] = kv[0]
        self.v[:, slots] = kv[1]


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_heads, spec.head_dim
        q_dim, kv_dim = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim
        self.wqkv = nn.Linear(spec.hidden, q_dim + 2 * kv_dim, bias=False)  # fused, as gpt-fast
        self.wo = nn.Linear(q_dim, spec.hidden, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Project and rotate. x: [T, hidden] -> q [T, heads, d], k and v [T, kv_heads, d]."""
        q_dim, kv_dim = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.wqkv(x).split((q_dim, kv_dim, kv_dim), dim=-1)
        q = apply_rope(q.view(-1, self.heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(-1, self.kv_heads, self.head_dim), cos, sin)
        return q, k, v.view(-1, self.kv_heads, self.head_dim)

    def forward(self, x, cos, sin, cache: KVCache, layer: int, step: StepInput) -> torch.Tensor:
        q, k, v = self.qkv(x, cos, sin)
        cache.write(layer, step.slots, k, v)
        out = torch.empty_like(q)
        nd = step.n_decode
        if nd:
            ctx = step.decode_ctx_slots
            out[:nd] = attend_decode(q[:nd], gather(cache.k[layer], ctx), gather(cache.v[layer], ctx), step.decode_mask)
        for start, n, cached, ctx_slots in step.prefill:
            if cached == 0:  # the chunk's own K and V are the whole context
                kc, vc = k[start:start + n], v[start:start + n]
            else:
                kc, vc = gather(cache.k[layer], ctx_slots), gather(cache.v[layer], ctx_slots)
            out[start:start + n] = attend_prefill(q[start:start + n], kc, vc, cached)
        return self.wo(out.flatten(1))


class MLP(nn.Module):
    """SwiGLU with fused gate and up projections."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.w13 = nn.Linear(spec.hidden, 2 * spec.intermediate, bias=False)
        self.w2 = nn.Linear(spec.intermediate, spec.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(spec.hidden), Attention(spec)
        self.mlp_norm, self.mlp = RMSNorm(spec.hidden), MLP(spec)

    def forward(self, x, cos, sin, cache: KVCache, layer: int, step: StepInput) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, layer, step)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, spec: ModelSpec, rope_theta: float = ROPE_THETA, max_context: int | None = None):
        super().__init__()
        self.spec = spec
        self.max_context = max_context or spec.max_context
        self.embed = nn.Embedding(spec.vocab, spec.hidden)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.layers))
        self.norm = RMSNorm(spec.hidden)
        self.lm_head = nn.Linear(spec.hidden, spec.vocab, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_tables(self.max_context, spec.head_dim, rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head over the rows that sample a token. -> [rows, vocab] float32."""
        return self.lm_head(self.norm(x)).float()

    @torch.inference_mode()
    def forward(self, step: StepInput, cache: KVCache) -> torch.Tensor:
        """Run one step; returns logits of ``step.logits_rows`` (all rows when None)."""
        x = self.embed(step.token_ids)
        cos, sin = self.cos[step.positions], self.sin[step.positions]
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, layer, step)
        if step.logits_rows is not None:
            x = x[step.logits_rows]
        return self.logits(x)


def build_model(spec: ModelSpec, seed: int = 0, dtype: torch.dtype = torch.float32,
                device: str | torch.device = "cpu") -> Model:
    """A model with seeded random weights (std 0.02, norms at one): the same seed gives the same model."""
    gen = torch.Generator().manual_seed(seed)
    model = Model(spec)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.to(device=device, dtype=dtype).eval()


def prefill_step(tokens: list[int], slots: torch.Tensor, device: str | torch.device = "cpu") -> StepInput:
    """A step that prefills one whole prompt into ``slots`` (the profiler's and tests' simplest batch)."""
    t = torch.tensor(tokens, device=device)
    n = len(tokens)
    return StepInput(token_ids=t, positions=torch.arange(n, device=device), slots=slots,
                     prefill=[(0, n, 0, slots)], logits_rows=torch.tensor([n - 1], device=device))


def decode_step(tokens: list[int], ctx_slots: list[torch.Tensor], device: str | torch.device = "cpu") -> StepInput:
    """A step that decodes one token per sequence; ``ctx_slots[i]`` are sequence i's slots including the new one."""
    lens = torch.tensor([len(s) for s in ctx_slots], device=device)
    pad = torch.zeros(len(ctx_slots), int(lens.max()), dtype=torch.long, device=device)
    for i, s in enumerate(ctx_slots):
        pad[i, : len(s)] = s
    mask = torch.arange(pad.shape[1], device=device)[None, :] < lens[:, None]
    return StepInput(token_ids=torch.tensor(tokens, device=device), positions=lens - 1,
                     slots=torch.stack([s[-1] for s in ctx_slots]), n_decode=len(tokens),
                     decode_ctx_slots=pad, decode_mask=mask)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch CPU threads, as a worker does (one), then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
