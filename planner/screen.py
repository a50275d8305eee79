"""The analytic screen: steady-state throughput and latency of a unit from its cost model, in microseconds
per unit, so that the whole space can be ranked before anything is simulated.

Agg replica: with ``B`` sequences decoding, each iteration also carries ``B * isl / osl`` prompt tokens on
average (prefill and decode tokens arrive in that ratio), in chunks of at most ``max_batch_tokens - B``.
TPOT is the mean iteration time; TTFT is one prompt's chunks plus an M/D/1 wait for the prefill share.
Disagg: a prefill replica is an M/D/1 server of whole prompts, a decode replica holds ``B`` sequences
within max_seqs, KV memory and the TPOT target. Never used to recommend: only to order the search.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from planner.space import Space
from profiler.costmodel import Batch, CostModel, LinkSpec
from profiler.factory import make_cost_model
from simulator.deployment import Deployment, PoolSpec


@dataclass(frozen=True)
class Estimate:
    """What the screen predicts for one unit at the highest rate it believes meets both targets."""

    goodput_rps: float  # requests/s of the unit (0: cannot meet the targets at any rate)
    tok_s_per_gpu: float
    ttft_s: float  # at that rate
    tpot_s: float
    limit: str  # what bounds the rate, in words


@dataclass
class Screen:
    """Cost models per TP and the workload's shape; estimates units of one space."""

    space: Space
    isl: float
    osl: float
    ttft_s: float
    tpot_s: float
    percentile: float | str = 90.0  # or "mean"
    profile: object | None = None
    efficiency: object | None = None  # a calibration's Efficiency (None: the engine's)
    perf_db: str | None = None  # aiconfigurator[:BACKEND]: AIConfigurator's tables instead of the roofline
    _cms: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    def cost_model(self, tp: int) -> CostModel:
        if tp not in self._cms:
            s = self.space
            self._cms[tp] = make_cost_model(s.model, s.gpu, tp, s.dtype, s.resolved_kv_dtype, s.engine, self.profile,
                                            efficiency=self.efficiency, perf_db=self.perf_db)
        return self._cms[tp]

    @property
    def wait_quantile(self) -> float:
        """Multiplier from mean to the target percentile of an exponential-tailed queueing wait (1: the mean)."""
        return 1.0 if self.percentile == "mean" else math.log(1.0 / (1.0 - self.percentile / 100.0))

    @property
    def spread_quantile(self) -> float:
        """Standard deviations from the mean to the target percentile of a normal spread (0 at the median, mean)."""
        if self.percentile == "mean":
            return 0.0
        return max(0.0, NormalDist().inv_cdf(min(self.percentile, 99.9) / 100.0))

    def estimate(self, dep: Deployment) -> Estimate:
        if dep.topology == "agg":
            return self._agg(dep.workers)
        return self._disagg(dep)

    # ---- aggregated --------------------------------------------------------------------------
    def _agg(self, pool: PoolSpec) -> Estimate:
        key = ("agg", pool.tp, pool.max_batch_tokens, pool.max_seqs)
        if key in self._cache:
            return self._cache[key]
        cm = self.cost_model(pool.tp)
        isl, osl, mbt = self.isl, self.osl, pool.max_batch_tokens
        ctx = int(isl + osl / 2)
        kv_tokens = self.space.kv_tokens(pool.tp, mbt)
        best = Estimate(0.0, 0.0, math.inf, math.inf, "")
        s0 = _prefill_s(cm, isl, mbt, [])
        if s0 > self.ttft_s:
            best = Estimate(0.0, 0.0, s0, math.inf, f"one prompt alone takes {s0 * 1e3:.0f} ms to prefill")
        bmax = min(pool.max_seqs, int(kv_tokens // (isl + osl)), int(mbt * osl / (isl + osl)))
        for b in _batch_grid(bmax):
            chunk = min(mbt - b, int(isl))  # prompt tokens one chunk iteration carries (one prompt's at most)
            if chunk <= 0:
                break
            share = b * isl / osl / chunk  # share of iterations that carry a prompt chunk
            if share >= 1.0:
                break
            t_chunk = cm.iteration_s(Batch.of(prefill=[(chunk, int(isl / 2))], decode_ctx=[ctx] * b))
            t_plain = cm.iteration_s(Batch.of(decode_ctx=[ctx] * b))
            # a request's TPOT is the mean of its osl steps, of which a Poisson number (mean share x osl) carry a
            # chunk: its percentile lies z standard deviations above the mean, more so the bigger the chunks
            spread = (t_chunk - t_plain) * math.sqrt(share * osl) / osl
            tpot = share * t_chunk + (1 - share) * t_plain + self.spread_quantile * spread
            service = math.ceil(isl / chunk) * t_chunk
            ttft = service + self.wait_quantile * share / (2 * (1 - share)) * service
            if tpot > self.tpot_s or ttft > self.ttft_s:
                if best.goodput_rps == 0 and not best.limit:
                    which = "TPOT" if tpot > self.tpot_s else "TTFT"
                    best = Estimate(0.0, 0.0, ttft, tpot, f"{which} target missed with {b} sequences")
                break
            rate = b / (osl * tpot)
            best = Estimate(rate, rate * osl / pool.tp, ttft, tpot, _agg_limit(b, pool, kv_tokens, isl, osl))
        self._cache[key] = best
        return best

    # ---- disaggregated -----------------------------------------------------------------------
    def _prefill_replica(self, tp: int, mbt: int, budget_s: float) -> tuple[float, float]:
        """(rate one prefill replica sustains within a TTFT budget, one prompt's prefill seconds)."""
        key = ("prefill", tp, mbt, round(budget_s, 6))
        if key not in self._cache:
            self._cache[key] = self._prefill_replica_uncached(tp, mbt, budget_s)
        return self._cache[key]

    def _prefill_replica_uncached(self, tp: int, mbt: int, budget_s: float) -> tuple[float, float]:
        cm = self.cost_model(tp)
        isl = self.isl
        alone = _prefill_s(cm, isl, mbt, [])
        per_iter = max(1, int(mbt // isl))  # prompts batched into one iteration at high load
        batched = _prefill_s(cm, isl * per_iter, mbt, []) / per_iter
        room = budget_s - alone
        if room <= 0:
            return 0.0, alone
        # M/D/1 wait (quantile-scaled) within the room left: rho <= 2R / (q S + 2R)
        rho = 2 * room / (self.wait_quantile * batched + 2 * room)
        return min(rho, 0.95) / batched, alone

    def _decode_replica(self, tp: int, max_seqs: int) -> tuple[float, int, float, str]:
        """(rate one decode replica sustains within the TPOT target, its batch, TPOT, what bounds it)."""
        key = ("decode", tp, max_seqs)
        if key not in self._cache:
            self._cache[key] = self._decode_replica_uncached(tp, max_seqs)
        return self._cache[key]

    def _decode_replica_uncached(self, tp: int, max_seqs: int) -> tuple[float, int, float, str]:
        cm = self.cost_model(tp)
        ctx_mean = self.isl + self.osl / 2
        kv_cap = int(self.space.kv_tokens(tp, 8192) // (self.isl + self.osl))
        bmax = min(max_seqs, kv_cap)
        best = (0.0, 0, math.inf, "")
        for b in _batch_grid(bmax):
            t = float(cm.decode_steps_s(b, int(b * ctx_mean), 1)[0])
            if t > self.tpot_s:
                if best[1] == 0:
                    best = (0.0, 0, t, f"one decode step takes {t * 1e3:.1f} ms")
                break
            limit = "max_seqs" if b == max_seqs else "KV memory" if b == kv_cap else "TPOT target"
            best = (b / (self.osl * t), b, t, limit)
        return best

    def _disagg(self, dep: Deployment) -> Estimate:
        p, d = dep.prefill, dep.decode
        d_rate, _, tpot, d_limit = self._decode_replica(d.tp, d.max_seqs)
        kv_bytes = self.space.model.kv_bytes_per_token(self.space.resolved_kv_dtype) * self.isl
        link = LinkSpec(dep.kv_link.bandwidth_bytes_s, dep.kv_link.latency_s, dep.kv_link.placement)
        transfer = self.cost_model(p.tp).transfer_s(kv_bytes / min(p.tp, d.tp), link)
        first_step = tpot if math.isfinite(tpot) else 0.0
        p_rate, alone = self._prefill_replica(p.tp, p.max_batch_tokens, self.ttft_s - transfer - first_step)
        ttft = alone + transfer + first_step
        if p_rate == 0 or d_rate == 0:
            why = d_limit if d_rate == 0 else f"prefill + transfer take {ttft * 1e3:.0f} ms"
            return Estimate(0.0, 0.0, ttft, tpot, why)
        pf, dc = p.replicas * p_rate, d.replicas * d_rate
        rate = min(pf, dc)
        limit = "prefill pool (TTFT)" if pf < dc else f"decode pool ({d_limit})"
        return Estimate(rate, rate * self.osl / dep.gpus, ttft, tpot, limit)


def _prefill_s(cm: CostModel, tokens: float, mbt: int, decode_ctx: list[int]) -> float:
    """Seconds to prefill ``tokens`` prompt tokens in chunks of at most ``mbt``."""
    total, done = 0.0, 0
    tokens = int(tokens)
    while done < tokens:
        c = min(mbt, tokens - done)
        total += cm.iteration_s(Batch.of(prefill=[(c, done)], decode_ctx=decode_ctx))
        done += c
    return total


def _batch_grid(bmax: int) -> list[int]:
    """Batch sizes to try: every size up to 8, then about 12 % apart."""
    if bmax < 1:
        return []
    return sorted({int(b) for b in np.unique(np.geomspace(1, bmax, 48).astype(int)) if b >= 1} | {bmax})


def _agg_limit(b: int, pool: PoolSpec, kv_tokens: int, isl: float, osl: float) -> str:
    if b >= pool.max_seqs:
        return "max_seqs"
    if b >= int(kv_tokens // (isl + osl)):
        return "KV memory"
    return "latency targets"
