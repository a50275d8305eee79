"""ProfiledCostModel: iteration time composed from a Profile's measured operations.

An iteration is the sum over layers of its per-token ops (norms, QKV, RoPE, KV write, output, MLP or
MoE, residual adds) at the batch's token count, prefill attention (chunks x equivalent causal length),
decode attention (sequences x mean context), the final norm and LM head over the rows that sample,
the TP all-reduce (the roofline's formula: one GPU cannot measure it) and a measured per-iteration
overhead where the profile has one. Each op is interpolated in log-log shape space with scipy
(monotone PCHIP in tokens, bilinear in batch x length); outside the measured range the nearest measured
value is scaled by the roofline's ratio, and ``extrapolated`` counts the evaluations that needed it.
No torch here: the simulator imports this.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator, RectBivariateSpline

from profiler.costmodel import Batch, LinkSpec, transfer_s
from profiler.errors import InputError
from profiler.gpus import GPUSpec
from profiler.models import ModelSpec
from profiler.profile import Profile
from profiler.roofline import RooflineCostModel

# How many times each per-token op runs per layer of each kind.
ATTN_LAYER_OPS = {"rmsnorm": 2, "qkv": 1, "rope": 1, "kv_write": 1, "o": 1, "add": 2}
DENSE_MLP_OPS = {"gate_up": 1, "swiglu": 1, "down": 1}


class Curve:
    """Time over one shape axis: monotone PCHIP through the measured medians in log-log space."""

    def __init__(self, x: np.ndarray, t: np.ndarray):
        order = np.argsort(x)
        self.x = np.asarray(x, dtype=np.float64)[order]
        self.t = np.maximum.accumulate(np.asarray(t, dtype=np.float64)[order])  # noise never makes it cheaper
        self.lo, self.hi = self.x[0], self.x[-1]
        self._f = PchipInterpolator(np.log(self.x), np.log(self.t)) if len(self.x) > 1 else None

    def __call__(self, x):
        """Interpolated time at ``x`` clipped into the measured range."""
        xc = np.clip(np.asarray(x, dtype=np.float64), self.lo, self.hi)
        return np.exp(self._f(np.log(xc))) if self._f is not None else self.t[0] * np.ones_like(xc)


class Surface:
    """Time over two shape axes (batch x length): bilinear in log-log space over a monotone grid."""

    def __init__(self, a: np.ndarray, b: np.ndarray, t: np.ndarray, what: str):
        self.a, self.b = np.unique(a), np.unique(b)
        grid = np.full((len(self.a), len(self.b)), np.nan)
        grid[np.searchsorted(self.a, a), np.searchsorted(self.b, b)] = t
        if np.isnan(grid).any():
            raise InputError(f"{what}: the measured shapes do not form a full grid")
        grid = np.maximum.accumulate(np.maximum.accumulate(grid, axis=0), axis=1)
        self.grid = grid
        ka, kb = min(1, len(self.a) - 1), min(1, len(self.b) - 1)
        la, lb = np.log(self.a), np.log(self.b)
        if ka == 0 or kb == 0:  # one row or column: interpolate the other axis alone
            self._f = None
            self._line = PchipInterpolator(lb if ka == 0 else la, np.log(grid[0] if ka == 0 else grid[:, 0])) \
                if max(len(la), len(lb)) > 1 else None
        else:
            self._f = RectBivariateSpline(la, lb, np.log(grid), kx=1, ky=1, s=0)

    def __call__(self, a, b):
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        ac, bc = np.clip(a, self.a[0], self.a[-1]), np.clip(b, self.b[0], self.b[-1])
        if self._f is not None:
            return np.exp(self._f.ev(np.log(ac), np.log(bc)))
        if self._line is None:
            return self.grid[0, 0] * np.ones(np.broadcast(ac, bc).shape)
        return np.exp(self._line(np.log(bc) if len(self.a) == 1 else np.log(ac))) * np.ones(np.broadcast(ac, bc).shape)

    def outside(self, a, b):
        return (np.asarray(a) < self.a[0]) | (np.asarray(a) > self.a[-1]) | (np.asarray(b) < self.b[0]) | (
            np.asarray(b) > self.b[-1])


class ProfiledCostModel:
    """CostModel from a Profile's rows for (model, dtype, TP); the roofline only scales beyond the measured range."""

    def __init__(self, profile: Profile, model: ModelSpec, gpu: GPUSpec, tp: int = 1, dtype: str = "bf16",
                 engine: str = "vllm", kv_dtype: str | None = None):
        self.profile, self.model, self.gpu, self.tp, self.dtype, self.engine = profile, model, gpu, tp, dtype, engine
        rows = profile.rows(model.name, dtype, tp)
        self.roof = RooflineCostModel(model, gpu, tp, dtype, kv_dtype)
        self.extrapolated = 0  # evaluations outside the measured range (scaled by the roofline)
        self.curves: dict[str, Curve] = {}
        for op, g in rows[rows.tokens > 0].groupby("op"):
            self.curves[op] = Curve(g.tokens.to_numpy(), g.median_s.to_numpy())
        m = model
        counts = {op: n * m.layers for op, n in ATTN_LAYER_OPS.items()}
        if m.dense_layers:
            counts |= {op: n * m.dense_layers for op, n in DENSE_MLP_OPS.items()}
        if m.moe_layers:
            counts["moe"] = m.moe_layers
        counts["embed"] = 1
        missing = [op for op in [*counts, "lm_head", "rmsnorm"] if op not in self.curves]
        if missing:
            raise InputError(f"profile lacks ops {missing} for {model.name}/{dtype}/tp{tp}", where=profile.name)
        # One curve for all per-token work and one for the rows that sample: sums at the measured points.
        self.token_curve = self._sum_curve(counts)
        self.logits_curve = self._sum_curve({"rmsnorm": 1, "lm_head": 1})
        pf, dec = rows[rows.op == "attn_prefill"], rows[rows.op == "attn_decode"]
        if pf.empty or dec.empty:
            raise InputError(f"profile lacks attention for {model.name}/{dtype}/tp{tp}", where=profile.name)
        self.prefill_attn = Surface(pf.batch.to_numpy(), pf.seq_len.to_numpy(), pf.median_s.to_numpy(), "attn_prefill")
        self.decode_attn = Surface(dec.batch.to_numpy(), dec.ctx_len.to_numpy(), dec.median_s.to_numpy(),
                                   "attn_decode")
        over = rows[rows.op == "iteration_overhead"]
        self.overhead_s = float(over.median_s.median()) if len(over) else 0.0
        self._tok_hi = self.roof_tokens_s(self.token_curve.hi)
        self._lm_hi = self.roof_logits_s(self.logits_curve.hi)

    def _sum_curve(self, counts: dict[str, int]) -> Curve:
        xs = np.unique(np.concatenate([self.curves[op].x for op in counts]))
        return Curve(xs, sum(n * self.curves[op](xs) for op, n in counts.items()))

    # ---- roofline shapes, for scaling beyond the measured range ---------------------------------
    def roof_tokens_s(self, tokens):
        return self.roof._time(np.asarray(tokens, dtype=np.float64), 0.0, 0.0, 0.0, 0.0, 0.0)

    def roof_logits_s(self, rows):
        return self.roof._linear_s(np.asarray(rows, dtype=np.float64), self.roof._lm_w, 2.0, self.model.hidden)

    def roof_prefill_attn_s(self, batch, seq_len):
        s = np.asarray(seq_len, dtype=np.float64)
        return self.roof._attn_layers_s(batch * s * (s + 1) / 2, batch * s, 0.0, 0.0)

    def roof_decode_attn_s(self, batch, ctx_len):
        return self.roof._attn_layers_s(0.0, 0.0, batch, batch * np.asarray(ctx_len, dtype=np.float64))

    # ---- pieces ---------------------------------------------------------------------------------
    def op_s(self, op: str, tokens):
        """One measured per-token op (or ``lm_head``) at ``tokens``, within the measured range."""
        return self.curves[op](tokens)

    def tokens_s(self, tokens):
        """All per-token work of all layers plus the embedding, at ``tokens`` tokens."""
        t = self.token_curve(tokens)
        over = np.asarray(tokens) > self.token_curve.hi
        if over.any():
            self.extrapolated += int(over.sum())
            t = np.where(over, t * self.roof_tokens_s(tokens) / self._tok_hi, t)
        return t

    def logits_s(self, rows):
        """Final norm and LM head over ``rows`` rows."""
        t = self.logits_curve(np.maximum(rows, 1)) * (np.asarray(rows) > 0)
        over = np.asarray(rows) > self.logits_curve.hi
        if over.any():
            self.extrapolated += int(over.sum())
            t = np.where(over, t * self.roof_logits_s(rows) / self._lm_hi, t)
        return t

    def _surface_s(self, surf: Surface, roof, a, b):
        t = surf(a, b)
        out = surf.outside(a, b)
        if np.any(out):
            self.extrapolated += int(np.sum(out))
            ac, bc = np.clip(a, surf.a[0], surf.a[-1]), np.clip(b, surf.b[0], surf.b[-1])
            t = np.where(out, t * roof(a, b) / roof(ac, bc), t)
        return t

    def prefill_attn_s(self, chunks: int, seq_len):
        """One layer's prefill attention over ``chunks`` prompts of ``seq_len`` tokens (0 chunks: 0)."""
        if chunks == 0:
            return 0.0
        return self._surface_s(self.prefill_attn, self.roof_prefill_attn_s, chunks, seq_len)

    def decode_attn_s(self, seqs: int, ctx_len):
        """One layer's decode attention of ``seqs`` sequences over ``ctx_len`` tokens each."""
        if seqs == 0:
            return 0.0 * np.asarray(ctx_len, dtype=np.float64)
        return self._surface_s(self.decode_attn, self.roof_decode_attn_s, seqs, ctx_len)

    # ---- CostModel -------------------------------------------------------------------------------
    def iteration_s(self, batch: Batch) -> float:
        if batch.empty:
            return 0.0
        c = batch.prefill_tokens.astype(np.float64)
        p = batch.prefill_cached.astype(np.float64)
        n_chunks, n_dec = len(c), len(batch.decode_ctx)
        attn = 0.0
        if n_chunks:
            # Chunks as uncached prompts with the same causal (query, key) pairs, on average.
            pairs = float((c * p + c * (c + 1) / 2).mean())
            attn += self.prefill_attn_s(n_chunks, (np.sqrt(1 + 8 * pairs) - 1) / 2)
        if n_dec:
            attn += self.decode_attn_s(n_dec, float(batch.decode_ctx.mean()))
        n_last = n_chunks if batch.prefill_last_chunks is None else batch.prefill_last_chunks
        tokens = batch.tokens
        t = (self.tokens_s(tokens) + self.model.layers * attn + self.logits_s(n_dec + n_last)
             + self.roof._allreduce_s(tokens) + self.overhead_s)
        return float(t)

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int) -> np.ndarray:
        if n_seqs == 0 or steps == 0:
            return np.zeros(steps)
        mean_ctx = (ctx_sum + n_seqs * np.arange(steps, dtype=np.float64)) / n_seqs
        fixed = float(self.tokens_s(n_seqs) + self.logits_s(n_seqs) + self.roof._allreduce_s(n_seqs)) + self.overhead_s
        return fixed + self.model.layers * self.decode_attn_s(n_seqs, mean_ctx)

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        return transfer_s(kv_bytes, link)
