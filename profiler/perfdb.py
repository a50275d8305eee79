"""AIConfigurator's performance database as a cost source (``--perf-db aiconfigurator[:BACKEND]``).

The optional extra ``pdsim[aic]`` installs ``aiconfigurator-core``, which ships NVIDIA's per-operation
measurements (milliseconds per call) for H100, H200, B200 and more, per serving engine and version:
``systems/data/<system>/<op>/<backend>/<version>/*.parquet``. This module reads those tables directly:

- ``gemm/gemm_perf.parquet``: m x n x k latency per GEMM dtype and kernel (the fastest kernel is used);
- ``attention/context_attention_perf.parquet``: prefill attention by batch, prompt length, heads;
- ``attention/generation_attention_perf.parquet``: decode attention by batch and context (``step``);
- ``comm/custom_allreduce_perf.parquet``: the engine's all-reduce by GPUs and message size (elements).

An iteration composes, per layer, the QKV/output/MLP GEMMs at the batch's token count, prefill and decode
attention and two all-reduces, plus the LM head and the engine's per-iteration overhead (pdsim's
``Efficiency``, which the kernel tables do not see). Shapes between measured points are interpolated in
log-log; GEMM shapes off the table's (n, k) grid are scaled from the nearest measured shape by n x k.
- ``moe/moe_perf.parquet``: a MoE layer's experts by tokens, hidden/expert width, top-k, experts, TP/EP.

GQA attention models, dense or MoE (experts sharded over TP, as pdsim's roofline has them); sliding-window
layers read at most the window. MLA (DeepSeek) tables are not wired here.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from profiler.costmodel import Batch, LinkSpec, transfer_s
from profiler.errors import InputError
from profiler.gpus import GPUSpec
from profiler.models import ModelSpec
from profiler.roofline import ENGINE_EFFICIENCY, Efficiency

INSTALL_HINT = "install the optional extra: pip install 'pdsim[aic]' (aiconfigurator and its core, an ~82 MB wheel)"
SYSTEMS = {"a100-80g": "a100_sxm", "h100-sxm": "h100_sxm", "h200-sxm": "h200_sxm", "b200": "b200_sxm",
           "l40s": "l40s"}
# Table dtypes to use, in order of preference (fp4 checkpoints keep attention projections in bf16).
GEMM_DTYPES = {"bf16": ("bfloat16",), "fp16": ("bfloat16",), "fp8": ("fp8", "fp8_block"), "fp4": ("nvfp4", "bfloat16")}
MOE_DTYPES = {"bf16": ("bfloat16",), "fp16": ("bfloat16",), "fp8": ("fp8", "fp8_block"), "fp4": ("w4a16_mxfp4",)}
KV_DTYPES = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8"}
ALLREDUCE_BACKEND = {"vllm": "vllm_graph"}


def parse_perf_db(spec: str, engine: str) -> str:
    """``aiconfigurator[:BACKEND]`` -> the backend whose tables to read (default: the deployment's engine)."""
    source, _, backend = spec.partition(":")
    if source != "aiconfigurator":
        raise InputError(f"--perf-db: unknown source {source!r}; the one known is aiconfigurator[:BACKEND]")
    return backend or engine


def data_root() -> Path:
    try:
        import aiconfigurator_core  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise InputError(f"--perf-db aiconfigurator: aiconfigurator-core is not installed; {INSTALL_HINT}") from None
    return Path(aiconfigurator_core.__file__).parent / "systems" / "data"


def _version_key(v: str):
    from packaging.version import InvalidVersion, Version  # noqa: PLC0415 (a dependency of the extra)

    try:
        return (1, Version(v))
    except InvalidVersion:
        return (0, v)


def table_path(gpu: str, op: str, backend: str, filename: str, root: Path | None = None) -> Path:
    """The newest measured version of one table, or an InputError listing what exists."""
    root = root or data_root()
    system = SYSTEMS.get(gpu)
    if system is None or not (root / system).is_dir():
        have = sorted(k for k, v in SYSTEMS.items() if (root / v).is_dir())
        raise InputError(f"--perf-db aiconfigurator has no tables for GPU {gpu!r}; it has: {', '.join(have)}")
    base = root / system / op / backend
    versions = sorted((p.name for p in base.glob("*") if (p / filename).exists()), key=_version_key)
    if not versions:
        backends = sorted(p.parent.parent.name for p in (root / system / op).glob(f"*/*/{filename}"))
        raise InputError(f"--perf-db aiconfigurator: no {op} table ({filename}) for {backend} on {system}; "
                         f"backends with one: {', '.join(sorted(set(backends))) or 'none'}")
    return base / versions[-1] / filename


@lru_cache(maxsize=32)
def _read(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


def _loglog(x_known: np.ndarray, y_known: np.ndarray, x) -> np.ndarray:
    """Interpolate in log-log; beyond the last point, extrapolate proportionally to x."""
    lx, ly = np.log(x_known), np.log(y_known)
    x = np.maximum(np.asarray(x, dtype=np.float64), x_known[0])
    y = np.exp(np.interp(np.log(x), lx, ly))
    return np.where(x > x_known[-1], y_known[-1] * x / x_known[-1], y)


class PerfDBCostModel:
    """CostModel of one pool from AIConfigurator's measured operation tables (GQA models, dense or MoE)."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, dtype: str = "bf16",
                 kv_dtype: str | None = None, backend: str = "vllm", efficiency: Efficiency | None = None,
                 root: Path | None = None):
        if model.is_mla:
            raise InputError(f"--perf-db aiconfigurator: {model.name} uses MLA, whose tables are not wired; "
                             "use the roofline (drop --perf-db)")
        self.model, self.gpu, self.tp, self.dtype, self.backend = model, gpu, tp, dtype, backend
        self.kv_dtype = kv_dtype or ("bf16" if dtype in ("bf16", "fp16", "fp32") else "fp8")
        # Engine overheads from the unfitted defaults: the fitted ones also absorb the roofline's own errors.
        self.eff = efficiency or ENGINE_EFFICIENCY.get(backend, Efficiency())
        m, g = model, gpu.name
        self.sources: list[Path] = []

        def table(op: str, filename: str) -> pd.DataFrame:
            path = table_path(g, op, backend, filename, root)
            self.sources.append(path)
            return _read(str(path))

        gemm = table("gemm", "gemm_perf.parquet")
        gdt = next((d for d in GEMM_DTYPES.get(dtype, ()) if (gemm.gemm_dtype == d).any()), None)
        gemm = gemm[gemm.gemm_dtype == gdt]
        if gemm.empty:
            raise InputError(f"--perf-db aiconfigurator: no {dtype} GEMMs measured for {backend} on {g}")
        self._gemm = {nk: grp.groupby("m").latency.min() for nk, grp in gemm.groupby(["n", "k"])}
        self._gemm_at: dict[tuple[int, int], tuple] = {}
        heads, kv_heads = max(1, m.heads // tp), max(1, m.kv_heads // tp)
        qkv = (heads + 2 * kv_heads) * m.head_dim
        self._attn_gemms = [(qkv, m.hidden), (m.hidden, heads * m.head_dim)]
        self._mlp_gemms = [(2 * m.intermediate // tp, m.hidden), (m.hidden, m.intermediate // tp)]
        self._moe = self._moe_table(table("moe", "moe_perf.parquet")) if m.is_moe else None
        self._lm = (m.vocab // tp, m.hidden)
        kvd = KV_DTYPES.get(self.kv_dtype, "fp8")
        self._ctx = self._attention(table("attention", "context_attention_perf.parquet"), heads, kv_heads, kvd)
        self._gen = self._attention(table("attention", "generation_attention_perf.parquet"), heads, kv_heads, kvd)
        self._ctx1 = self._ctx[self._ctx.batch_size == self._ctx.batch_size.min()].groupby("isl").latency.min()
        grid = self._gen.pivot_table(index="batch_size", columns="step", values="latency", aggfunc="min")
        self._gen_b = grid.index.to_numpy(float)
        self._gen_rows = [(r.dropna().index.to_numpy(float), r.dropna().to_numpy(float)) for _, r in grid.iterrows()]
        self._ar = None
        if tp > 1:
            ar = table("comm", "custom_allreduce_perf.parquet")
            if "backend" in ar.columns and backend in ALLREDUCE_BACKEND:
                ar = ar[ar.backend == ALLREDUCE_BACKEND[backend]]
            ar = ar[ar.num_gpus == tp]
            if ar.empty:
                raise InputError(f"--perf-db aiconfigurator: no all-reduce over {tp} GPUs measured for {backend}")
            self._ar = ar.groupby("message_size").latency.min()

    def _moe_table(self, t: pd.DataFrame) -> pd.Series:
        """Latency by token count of this model's MoE layer over this TP's GPUs: experts sharded by TP if
        measured so, else by expert parallelism, else any TP x EP split of the same GPUs."""
        m = self.model
        sel = t[(t.hidden_size == m.hidden) & (t.inter_size == m.moe_intermediate) & (t.topk == m.active_experts)
                & (t.num_experts == m.experts) & (t.moe_tp_size * t.moe_ep_size == self.tp)
                & t.moe_dtype.isin(MOE_DTYPES.get(self.dtype, ()))]
        for split in ((self.tp, 1), (1, self.tp)):
            if ((sel.moe_tp_size == split[0]) & (sel.moe_ep_size == split[1])).any():
                sel = sel[(sel.moe_tp_size == split[0]) & (sel.moe_ep_size == split[1])]
                break
        if "distribution" in sel and (sel.distribution == "balanced").any():
            sel = sel[sel.distribution == "balanced"]
        if sel.empty:
            raise InputError(f"--perf-db aiconfigurator: no MoE measurements for {m.name} ({m.experts} experts of "
                             f"{m.moe_intermediate}, top-{m.active_experts}, {self.dtype}) at TP={self.tp} for "
                             f"{self.backend} on {self.gpu.name}")
        return sel.groupby("num_tokens").latency.min()

    @staticmethod
    def _attention(t: pd.DataFrame, heads: int, kv_heads: int, kvd: str) -> pd.DataFrame:
        """Rows of the measured shape nearest to this model's per-rank heads, scaled to its head count."""
        t = t[(t.window_size == 0) & (t.kv_cache_dtype == kvd)] if "window_size" in t else t
        shapes = t[["num_heads", "num_key_value_heads", "head_dim"]].drop_duplicates()
        dist = (np.abs(np.log(shapes.num_heads / heads)) + np.abs(np.log(shapes.num_key_value_heads / kv_heads))
                + 4 * np.abs(np.log(shapes.head_dim / 128.0)))
        best = shapes.iloc[int(np.argmin(dist.to_numpy()))]
        rows = t[(t.num_heads == best.num_heads) & (t.num_key_value_heads == best.num_key_value_heads)
                 & (t.head_dim == best.head_dim)].copy()
        rows["latency"] = rows.latency * heads / best.num_heads
        return rows

    # ---- operations (seconds) ----------------------------------------------------------------
    def _gemm_s(self, m, n: int, k: int):
        if (n, k) not in self._gemm_at:  # nearest measured (n, k), scaled by weight size
            near = min(self._gemm, key=lambda g: abs(np.log(g[0] / n)) + abs(np.log(g[1] / k)))
            s = self._gemm[near]
            self._gemm_at[n, k] = (s.index.to_numpy(float), s.to_numpy(float), n * k / (near[0] * near[1]))
        ms, lat, scale = self._gemm_at[n, k]
        return _loglog(ms, lat, m) * scale * 1e-3

    def _prefill_attn_s(self, tokens: np.ndarray, cached: np.ndarray, window: int = 0) -> float:
        """One layer's prefill attention of chunks: the measured time per (query, key) pair at the length the
        keys span (at most ``window``), times the chunk's pairs."""
        def keys(n):  # sum over positions 1..n of the keys each attends to
            return n * (n + 1) / 2 if not window else np.where(
                n <= window, n * (n + 1) / 2, window * (window + 1) / 2 + (n - window) * window)

        total = tokens + cached
        span = np.minimum(total, window) if window else total
        per_pair = _loglog(self._ctx1.index.to_numpy(float), self._ctx1.to_numpy(float), span) / (span * (span + 1) / 2)
        return float((per_pair * (keys(total) - keys(cached))).sum()) * 1e-3

    def _decode_attn_s(self, n: int, ctx_mean):
        """One layer's decode attention of ``n`` sequences at mean context ``ctx_mean`` (scalar or array)."""
        if n == 0:
            return 0.0 * np.asarray(ctx_mean, dtype=np.float64)
        b = self._gen_b
        x = np.log(min(max(n, b[0]), b[-1]))
        i = int(np.clip(np.searchsorted(np.log(b), x) - 1, 0, len(b) - 2)) if len(b) > 1 else 0
        j = min(i + 1, len(b) - 1)
        w = 0.0 if j == i else (x - np.log(b[i])) / (np.log(b[j]) - np.log(b[i]))
        lo, hi = (_loglog(*self._gen_rows[k], ctx_mean) for k in (i, j))
        lat = np.exp((1 - w) * np.log(lo) + w * np.log(hi)) * max(1.0, n / b[-1])
        return lat * 1e-3

    def _allreduce_s(self, tokens):
        if self._ar is None:
            return 0.0 * np.asarray(tokens, dtype=np.float64)
        elems = np.maximum(np.asarray(tokens, dtype=np.float64), 1) * self.model.hidden
        return _loglog(self._ar.index.to_numpy(float), self._ar.to_numpy(float), elems) * 1e-3

    def _time(self, tokens, pf_s: tuple[float, float], n_dec: int, ctx_mean, n_logits):
        """``pf_s``: one full and one sliding-window layer's prefill attention."""
        m = self.model
        t = m.layers * (sum(self._gemm_s(tokens, n, k) for n, k in self._attn_gemms) + 2 * self._allreduce_s(tokens))
        t = t + m.dense_layers * sum(self._gemm_s(tokens, n, k) for n, k in self._mlp_gemms)
        if m.moe_layers:
            moe = _loglog(self._moe.index.to_numpy(float), self._moe.to_numpy(float), np.maximum(tokens, 1)) * 1e-3
            t = t + m.moe_layers * (moe + self._gemm_s(tokens, m.experts, m.hidden))  # experts + router
        full = m.layers - m.sliding_layers
        t = t + full * (pf_s[0] + self._decode_attn_s(n_dec, ctx_mean))
        if m.sliding_layers:
            t = t + m.sliding_layers * (pf_s[1] + self._decode_attn_s(n_dec, np.minimum(ctx_mean, m.sliding_window)))
        lm = self._gemm_s(np.maximum(n_logits, 1), *self._lm)
        e = self.eff
        return t + lm + e.iteration_overhead_s + e.layer_overhead_s * m.layers + e.per_seq_overhead_s * n_logits

    # ---- CostModel -----------------------------------------------------------------------------
    def iteration_s(self, batch: Batch) -> float:
        if batch.empty:
            return 0.0
        c, p = batch.prefill_tokens.astype(np.float64), batch.prefill_cached.astype(np.float64)
        pf = (self._prefill_attn_s(c, p), self._prefill_attn_s(c, p, self.model.sliding_window)) if len(c) else (0, 0)
        n_dec = len(batch.decode_ctx)
        ctx = float(batch.decode_ctx.mean()) if n_dec else 1.0
        n_last = len(c) if batch.prefill_last_chunks is None else batch.prefill_last_chunks
        return float(self._time(batch.tokens, pf, n_dec, ctx, n_dec + n_last))

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int, ctx_max: int | None = None) -> np.ndarray:
        ctx = (ctx_sum + n_seqs * np.arange(steps, dtype=np.float64)) / max(n_seqs, 1)
        return np.asarray(self._time(n_seqs, (0.0, 0.0), n_seqs, ctx, n_seqs), dtype=np.float64) * np.ones(steps)

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        return transfer_s(kv_bytes, link)


@lru_cache(maxsize=64)
def perfdb_cost_model(spec: str, model: ModelSpec, gpu: GPUSpec, tp: int, dtype: str, kv_dtype: str | None,
                      engine: str) -> PerfDBCostModel:
    """The CostModel ``--perf-db aiconfigurator[:BACKEND]`` names for one pool (built once per shape: reading
    the tables takes about a second)."""
    return PerfDBCostModel(model, gpu, tp, dtype, kv_dtype, parse_perf_db(spec, engine))
