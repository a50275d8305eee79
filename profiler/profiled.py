"""ProfiledCostModel: iteration time composed from a Profile's measured operations.

An iteration is the sum over layers of its per-token ops (norms, QKV, RoPE, KV write, output, MLP or
MoE, residual adds) at the batch's token count, prefill attention (chunks x equivalent causal length),
decode attention (sequences x mean context), the final norm and LM head over the rows that sample,
the TP all-reduce (the roofline's formula: one GPU cannot measure it) and a per-iteration overhead: the
one measured with the runtime's model for engine ``pdsim-runtime``, the engine's named fixed cost otherwise.
Each op is interpolated in log-log shape space with scipy (monotone PCHIP in tokens, bilinear in batch x
length); outside the measured range the nearest measured value is scaled by the roofline's ratio, and
``extrapolated`` counts the evaluations that needed it.
No torch here: the simulator imports this.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np
from scipy.interpolate import PchipInterpolator, RectBivariateSpline

from profiler.costmodel import Batch, LinkSpec, transfer_s
from profiler.errors import InputError
from profiler.gpus import GPUSpec
from profiler.models import ModelSpec
from profiler.profile import Profile, load_profile
from profiler.roofline import RooflineCostModel, engine_efficiency

RUNTIME_ENGINE = "pdsim-runtime"  # the engine whose model the profiler times (runtime/model.py)
# How runtime/model.py computes; a profile of an older revision timed other ops (``pdsim validate`` keys its
# profile cache by it). 2: gathers by index_select (runtime.model.gather), tensors kept on the heap (keep_heap).
RUNTIME_REVISION = 2
# How many times each per-token op runs per layer of each kind.
ATTN_LAYER_OPS = {"rmsnorm": 2, "qkv": 1, "rope": 1, "kv_write": 1, "o": 1, "add": 2}
DENSE_MLP_OPS = {"gate_up": 1, "swiglu": 1, "down": 1}


class Curve:
    """Time over one shape axis: monotone PCHIP through the measured medians in log-log space."""

    def __init__(self, x: np.ndarray, t: np.ndarray):
        order = np.argsort(x)
        self.x = np.asarray(x, dtype=np.float64)[order]
        self.t = np.maximum.accumulate(np.asarray(t, dtype=np.float64)[order])  # noise never makes it cheaper
        self.lo, self.hi = float(self.x[0]), float(self.x[-1])
        lx, lt = np.log(self.x), np.log(self.t)
        if len(lx) == 1:  # one point: flat
            lx, lt = np.array([lx[0], lx[0] + 1.0]), np.array([lt[0], lt[0]])
        self._f = PchipInterpolator(lx, lt)
        # The same cubic pieces as plain floats, for the simulator's one-shape-at-a-time calls.
        self._knots, self._coef = self._f.x.tolist(), self._f.c.T.tolist()

    def __call__(self, x):
        """Interpolated time at ``x`` (array), clipped into the measured range."""
        return np.exp(self._f(np.log(np.clip(np.asarray(x, dtype=np.float64), self.lo, self.hi))))

    def at(self, x: float) -> float:
        """``self(x)`` for one number, without numpy's per-call overhead."""
        lx = math.log(min(max(x, self.lo), self.hi))
        i = min(max(bisect_right(self._knots, lx) - 1, 0), len(self._coef) - 1)
        d = lx - self._knots[i]
        c3, c2, c1, c0 = self._coef[i]
        return math.exp(((c3 * d + c2) * d + c1) * d + c0)


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
        la, lb, lz = np.log(self.a), np.log(self.b), np.log(grid)
        if len(la) == 1:  # one row or column: a flat second one that clipping never leaves
            la, lz = np.array([la[0], la[0] + 1.0]), np.vstack([lz, lz])
        if len(lb) == 1:
            lb, lz = np.array([lb[0], lb[0] + 1.0]), np.hstack([lz, lz])
        self._f = RectBivariateSpline(la, lb, lz, kx=1, ky=1, s=0)
        self._la, self._lb, self._lz = la.tolist(), lb.tolist(), lz.tolist()
        self.a0, self.a1, self.b0, self.b1 = float(self.a[0]), float(self.a[-1]), float(self.b[0]), float(self.b[-1])

    def __call__(self, a, b):
        a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
        ac, bc = np.clip(a, self.a0, self.a1), np.clip(b, self.b0, self.b1)
        return np.exp(self._f.ev(np.log(ac), np.log(bc)))

    def at(self, a: float, b: float) -> float:
        """``self(a, b)`` for one pair: the same bilinear interpolation in plain floats."""
        la, lb = math.log(min(max(a, self.a0), self.a1)), math.log(min(max(b, self.b0), self.b1))
        i = min(max(bisect_right(self._la, la) - 1, 0), len(self._la) - 2)
        j = min(max(bisect_right(self._lb, lb) - 1, 0), len(self._lb) - 2)
        fa = (la - self._la[i]) / (self._la[i + 1] - self._la[i])
        fb = (lb - self._lb[j]) / (self._lb[j + 1] - self._lb[j])
        z0, z1 = self._lz[i], self._lz[i + 1]
        return math.exp((1 - fa) * ((1 - fb) * z0[j] + fb * z0[j + 1]) + fa * ((1 - fb) * z1[j] + fb * z1[j + 1]))

    def outside(self, a, b):
        return (np.asarray(a) < self.a0) | (np.asarray(a) > self.a1) | (np.asarray(b) < self.b0) | (
            np.asarray(b) > self.b1)


class ProfiledCostModel:
    """CostModel from a Profile's rows for (model, dtype, TP); the roofline only scales beyond the measured range."""

    def __init__(self, profile: Profile | str, model: ModelSpec, gpu: GPUSpec, tp: int = 1, dtype: str = "bf16",
                 engine: str = "vllm", kv_dtype: str | None = None):
        if not isinstance(profile, Profile):  # a directory or a bundled profile's name
            profile = load_profile(profile)
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
        # The runtime's own per-iteration cost where the profile measured it and the runtime is the engine;
        # any other engine's scheduler is not what was timed, so it keeps its named (fitted) fixed cost.
        over = rows[rows.op == "iteration_overhead"]
        self.measured_overhead_s = float(over.median_s.median()) if len(over) else 0.0
        # The bundled runtime batches decode attention over contexts padded to the longest (runtime/model.py
        # decode_step): every sequence of a step costs the longest one's attention. Paged engines do not pad.
        self.pads_decode = engine == RUNTIME_ENGINE
        fixed = engine_efficiency(engine)
        self.overhead_s = (self.measured_overhead_s if engine == RUNTIME_ENGINE
                           else fixed.iteration_overhead_s + fixed.layer_overhead_s * model.layers)
        self._tok_hi = float(self.roof_tokens_s(self.token_curve.hi))
        self._lm_hi = float(self.roof_logits_s(self.logits_curve.hi))

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

    def tokens_s(self, tokens: int) -> float:
        """All per-token work of all layers plus the embedding, at ``tokens`` tokens."""
        t = self.token_curve.at(tokens)
        if tokens > self.token_curve.hi:
            self.extrapolated += 1
            t *= float(self.roof_tokens_s(tokens)) / self._tok_hi
        return t

    def logits_s(self, rows: int) -> float:
        """Final norm and LM head over ``rows`` rows."""
        if rows <= 0:
            return 0.0
        t = self.logits_curve.at(rows)
        if rows > self.logits_curve.hi:
            self.extrapolated += 1
            t *= float(self.roof_logits_s(rows)) / self._lm_hi
        return t

    def _surface_at(self, surf: Surface, roof, a: float, b: float) -> float:
        t = surf.at(a, b)
        if a < surf.a0 or a > surf.a1 or b < surf.b0 or b > surf.b1:
            self.extrapolated += 1
            ac, bc = min(max(a, surf.a0), surf.a1), min(max(b, surf.b0), surf.b1)
            t *= float(roof(a, b) / roof(ac, bc))
        return t

    def prefill_attn_s(self, chunks: int, seq_len: float) -> float:
        """One layer's prefill attention over ``chunks`` prompts of ``seq_len`` tokens (0 chunks: 0)."""
        return self._surface_at(self.prefill_attn, self.roof_prefill_attn_s, chunks, seq_len) if chunks else 0.0

    def decode_attn_s(self, seqs: int, ctx_len):
        """One layer's decode attention of ``seqs`` sequences over ``ctx_len`` tokens each (a number or an array)."""
        if np.ndim(ctx_len) == 0:
            return self._surface_at(self.decode_attn, self.roof_decode_attn_s, seqs, float(ctx_len)) if seqs else 0.0
        if seqs == 0:
            return np.zeros(np.shape(ctx_len))
        surf = self.decode_attn
        t = surf(seqs, ctx_len)
        out = surf.outside(seqs, ctx_len)
        if out.any():
            self.extrapolated += int(out.sum())
            ac, bc = np.clip(seqs, surf.a0, surf.a1), np.clip(ctx_len, surf.b0, surf.b1)
            t = np.where(out, t * self.roof_decode_attn_s(seqs, ctx_len) / self.roof_decode_attn_s(ac, bc), t)
        return t

    # ---- CostModel -------------------------------------------------------------------------------
    def iteration_s(self, batch: Batch) -> float:
        if batch.empty:
            return 0.0
        n_chunks, n_dec = len(batch.prefill_tokens), len(batch.decode_ctx)
        attn = 0.0
        if n_chunks:
            # Chunks as uncached prompts with the same causal (query, key) pairs, on average.
            c, p = batch.prefill_tokens.astype(np.float64), batch.prefill_cached.astype(np.float64)
            pairs = float((c * p + c * (c + 1) / 2).sum()) / n_chunks
            attn += self.prefill_attn_s(n_chunks, (math.sqrt(1 + 8 * pairs) - 1) / 2)
        if n_dec:
            ctx = batch.decode_ctx.max() if self.pads_decode else batch.decode_ctx.sum() / n_dec
            attn += self.decode_attn_s(n_dec, float(ctx))
        n_last = n_chunks if batch.prefill_last_chunks is None else batch.prefill_last_chunks
        tokens = batch.tokens
        return (self.tokens_s(tokens) + self.model.layers * attn + self.logits_s(n_dec + n_last)
                + self._allreduce_s(tokens) + self.overhead_s)

    def _allreduce_s(self, tokens: int) -> float:
        return float(self.roof._allreduce_s(tokens)) if self.tp > 1 else 0.0

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int, ctx_max: int | None = None) -> np.ndarray:
        if n_seqs == 0 or steps == 0:
            return np.zeros(steps)
        grow = np.arange(steps, dtype=np.float64)
        ctx = ctx_max + grow if self.pads_decode and ctx_max is not None else (ctx_sum + n_seqs * grow) / n_seqs
        fixed = self.tokens_s(n_seqs) + self.logits_s(n_seqs) + self._allreduce_s(n_seqs) + self.overhead_s
        return fixed + self.model.layers * self.decode_attn_s(n_seqs, ctx)

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        return transfer_s(kv_bytes, link)
