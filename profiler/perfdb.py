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
Dense (GQA) attention models only: MoE and MLA tables are not wired here.
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
from profiler.roofline import Efficiency, engine_efficiency

INSTALL_HINT = "install the optional extra: pip install 'pdsim[aic]' (aiconfigurator-core, an ~82 MB wheel)"
SYSTEMS = {"a100-80g": "a100_sxm", "h100-sxm": "h100_sxm", "h200-sxm": "h200_sxm", "b200": "b200_sxm",
           "l40s": "l40s"}
GEMM_DTYPES = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8", "fp4": "nvfp4"}
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
    """CostModel of one pool from AIConfigurator's measured operation tables (dense GQA models)."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, dtype: str = "bf16",
                 kv_dtype: str | None = None, backend: str = "vllm", efficiency: Efficiency | None = None,
                 root: Path | None = None):
        if model.is_moe or model.is_mla or model.sliding_layers:
            raise InputError(f"--perf-db aiconfigurator: {model.name} is MoE/MLA/sliding-window; only dense "
                             "attention models are wired to its tables, use the roofline (drop --perf-db)")
        self.model, self.gpu, self.tp, self.dtype, self.backend = model, gpu, tp, dtype, backend
        self.kv_dtype = kv_dtype or ("bf16" if dtype in ("bf16", "fp16", "fp32") else "fp8")
        self.eff = efficiency or engine_efficiency(backend)
        m, g = model, gpu.name
        self.sources: list[Path] = []

        def table(op: str, filename: str) -> pd.DataFrame:
            path = table_path(g, op, backend, filename, root)
            self.sources.append(path)
            return _read(str(path))

        gemm = table("gemm", "gemm_perf.parquet")
        gdt = GEMM_DTYPES.get(dtype)
        gemm = gemm[gemm.gemm_dtype == gdt]
        if gemm.empty:
            raise InputError(f"--perf-db aiconfigurator: no {dtype} GEMMs measured for {backend} on {g}")
        self._gemm = {nk: grp.groupby("m").latency.min() for nk, grp in gemm.groupby(["n", "k"])}
        self._gemm_at: dict[tuple[int, int], tuple] = {}
        heads, kv_heads = max(1, m.heads // tp), max(1, m.kv_heads // tp)
        qkv = (heads + 2 * kv_heads) * m.head_dim
        self._layer_gemms = [(qkv, m.hidden), (m.hidden, heads * m.head_dim), (2 * m.intermediate // tp, m.hidden),
                             (m.hidden, m.intermediate // tp)]
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

    def _prefill_attn_s(self, tokens: np.ndarray, cached: np.ndarray) -> float:
        total = tokens + cached
        pairs = tokens * cached + tokens * (tokens + 1) / 2
        full = _loglog(self._ctx1.index.to_numpy(float), self._ctx1.to_numpy(float), total)
        return float((full * pairs / (total * (total + 1) / 2)).sum()) * 1e-3

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

    def _time(self, tokens, attn_pf_s: float, n_dec: int, ctx_mean, n_logits):
        m = self.model
        layer = sum(self._gemm_s(tokens, n, k) for n, k in self._layer_gemms) + 2 * self._allreduce_s(tokens)
        attn = attn_pf_s + self._decode_attn_s(n_dec, ctx_mean)
        lm = self._gemm_s(np.maximum(n_logits, 1), *self._lm)
        return m.layers * (layer + attn) + lm + self.eff.iteration_overhead_s + self.eff.per_seq_overhead_s * n_logits

    # ---- CostModel -----------------------------------------------------------------------------
    def iteration_s(self, batch: Batch) -> float:
        if batch.empty:
            return 0.0
        c = batch.prefill_tokens.astype(np.float64)
        pf = self._prefill_attn_s(c, batch.prefill_cached.astype(np.float64)) if len(c) else 0.0
        n_dec = len(batch.decode_ctx)
        ctx = float(batch.decode_ctx.mean()) if n_dec else 1.0
        n_last = len(c) if batch.prefill_last_chunks is None else batch.prefill_last_chunks
        return float(self._time(batch.tokens, pf, n_dec, ctx, n_dec + n_last))

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int) -> np.ndarray:
        ctx = (ctx_sum + n_seqs * np.arange(steps, dtype=np.float64)) / max(n_seqs, 1)
        return np.asarray(self._time(n_seqs, 0.0, n_seqs, ctx, n_seqs), dtype=np.float64) * np.ones(steps)

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        return transfer_s(kv_bytes, link)


@lru_cache(maxsize=64)
def perfdb_cost_model(spec: str, model: ModelSpec, gpu: GPUSpec, tp: int, dtype: str, kv_dtype: str | None,
                      engine: str) -> PerfDBCostModel:
    """The CostModel ``--perf-db aiconfigurator[:BACKEND]`` names for one pool (built once per shape: reading
    the tables takes about a second)."""
    return PerfDBCostModel(model, gpu, tp, dtype, kv_dtype, parse_perf_db(spec, engine))
