"""Autoscaling in the loop, after Dynamo's planner: every ``interval_s`` observe the last interval's request
rate and ISL/OSL, forecast the next, and set the replicas of each pool to carry it within the SLOs and the
GPU budget; or react to the latencies users saw.

```yaml
autoscale: {policy: trend, interval_s: 60, window: 5, ttft_ms: 500, tpot_ms: 50, gpu_budget: 16,
            startup_s: 30, target_util: 0.7}
```
Policies: ``rate`` (moving average of the last ``window`` rates), ``trend`` (least-squares line through
them, read one interval plus a start-up ahead), ``load`` (p90 TTFT over target: one more prefill replica;
under 30 % of it for ``window`` intervals in a row: one fewer; p90 TPOT likewise for decode, 95 % / 60 %).
Sizing (rate, trend): a prefill replica carries
``target_util`` x its full-budget prefill tokens/s; a decode replica holds the most sequences whose step
still meets the TPOT target (and fit its KV), and a request stays ``osl`` steps (Little's law).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from profiler.costmodel import Batch
from profiler.errors import InputError
from simulator.block_manager import blocks_for

if TYPE_CHECKING:
    from simulator.sim import Simulation

AUTOSCALE_POLICIES = ("rate", "trend", "load")


@dataclass(frozen=True)
class AutoscaleSpec:
    policy: str
    ttft_ms: float
    tpot_ms: float
    interval_s: float = 60.0
    window: int = 5
    gpu_budget: int | None = None
    startup_s: float = 30.0
    target_util: float = 0.7
    min_replicas: int = 1


def parse_autoscale(data: Any, where: str = "deployment.autoscale") -> AutoscaleSpec:
    if not isinstance(data, dict):
        raise InputError("must be a mapping like {policy: trend, ttft_ms: 500, tpot_ms: 50}", where=where)
    allowed = set(AutoscaleSpec.__dataclass_fields__)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})", where=where)
    if data.get("policy") not in AUTOSCALE_POLICIES:
        raise InputError(f"policy must be one of {', '.join(AUTOSCALE_POLICIES)}, got {data.get('policy')!r}",
                         where=where)
    for key in ("ttft_ms", "tpot_ms"):
        if key not in data:
            raise InputError(f"needs {key} (the SLO it scales for; `pdsim simulate --ttft/--tpot`)", where=where)
    kw = dict(data)
    for key in ("ttft_ms", "tpot_ms", "interval_s", "startup_s", "target_util"):
        if key in kw:
            v = kw[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or math.isinf(v) or (
                    key != "startup_s" and v == 0):
                raise InputError(f"must be a positive number, got {v!r}", where=f"{where}.{key}")
            kw[key] = float(v)
    for key in ("window", "gpu_budget", "min_replicas"):
        v = kw.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise InputError(f"must be a whole number >= 1, got {v!r}", where=f"{where}.{key}")
    if kw.get("target_util", 0.7) > 1:
        raise InputError("must be at most 1", where=f"{where}.target_util")
    return AutoscaleSpec(**kw)


def forecast(rates: list[float], policy: str, ahead: float = 1.0) -> float:
    """Next interval's rate: the mean of ``rates`` (rate), or their least-squares line ``ahead`` intervals past
    the last one (trend); never below zero."""
    if not rates:
        return 0.0
    if policy == "trend" and len(rates) >= 2:
        x = np.arange(len(rates), dtype=np.float64)
        slope, icpt = np.polyfit(x, np.asarray(rates), 1)
        return max(0.0, float(icpt + slope * (len(rates) - 1 + ahead)))
    return float(np.mean(rates))


class Autoscaler:
    def __init__(self, sim: Simulation, spec: AutoscaleSpec):
        self.sim, self.spec, self.env = sim, spec, sim.env
        self.rates: list[float] = []
        self.isl, self.osl = None, None
        self.cold: dict[str, int] = {}  # load policy: intervals in a row each pool looked over-provisioned
        self.log: list[dict] = []
        self.env.process(self.loop())

    def loop(self):
        sim, spec = self.sim, self.spec
        n = sim.seqs.n
        while sim.done < n:
            yield self.env.timeout(spec.interval_s)
            obs = self.observe()
            want = self.decide(obs)
            for pool, k in want.items():
                self.apply(pool, k)
            self.log.append({**obs, **{f"want_{p}": k for p, k in want.items()},
                             **{f"replicas_{p}": self.sim.scaler.replicas(p) for p in self.sim.pools}})

    def observe(self) -> dict:
        S, now, dt = self.sim.seqs, self.env.now, self.spec.interval_s
        arrived = (S.arrival_s > now - dt) & (S.arrival_s <= now)
        done = (S.last_token_s > now - dt) & (S.last_token_s <= now) & (S.generated >= S.osl)
        first = (S.first_token_s > now - dt) & (S.first_token_s <= now)
        rate = float(arrived.sum()) / dt
        self.rates = (self.rates + [rate])[-self.spec.window:]
        if arrived.any():
            self.isl = float(S.isl[arrived].mean())
        if done.any():
            self.osl = float(S.osl[done].mean())
        ttft = S.first_token_s[first] - S.arrival_s[first]
        multi = done & (S.osl > 1)
        tpot = (S.last_token_s[multi] - S.first_token_s[multi]) / (S.osl[multi] - 1)
        return {"time_s": now, "rate": rate, "ttft_p90_ms": float(np.percentile(ttft, 90) * 1e3) if len(ttft) else None,
                "tpot_p90_ms": float(np.percentile(tpot, 90) * 1e3) if len(tpot) else None}

    def decide(self, obs: dict) -> dict[str, int]:
        spec, scaler = self.spec, self.sim.scaler
        pools = list(self.sim.pools)
        cur = {p: scaler.replicas(p) for p in pools}
        if spec.policy == "load":
            if any(p for p, _ in scaler.starting):  # let the last change land first
                return cur
            ttft_hot = obs["ttft_p90_ms"] is not None and obs["ttft_p90_ms"] > spec.ttft_ms
            ttft_cold = obs["ttft_p90_ms"] is None or obs["ttft_p90_ms"] < 0.3 * spec.ttft_ms
            tpot_hot = obs["tpot_p90_ms"] is not None and obs["tpot_p90_ms"] > 0.95 * spec.tpot_ms
            tpot_cold = obs["tpot_p90_ms"] is None or obs["tpot_p90_ms"] < 0.6 * spec.tpot_ms
            step = {"prefill": (ttft_hot, ttft_cold), "decode": (tpot_hot, tpot_cold),
                    "workers": (ttft_hot or tpot_hot, ttft_cold and tpot_cold)}
            want = {}
            for p in pools:  # up at once; down only after `window` cold intervals in a row (no flapping)
                hot, cold = step[p]
                self.cold[p] = self.cold.get(p, 0) + 1 if cold else 0
                want[p] = cur[p] + 1 if hot else cur[p] - 1 if self.cold[p] >= spec.window else cur[p]
                if want[p] != cur[p]:
                    self.cold[p] = 0
        else:
            if self.isl is None:
                return cur
            ahead = 1.0 + spec.startup_s / spec.interval_s
            rate = forecast(self.rates, spec.policy, ahead)
            osl = self.osl or self.isl
            pre = rate * self.isl / (self.prefill_tok_s(self.isl) * spec.target_util)
            dec = rate * osl * spec.tpot_ms * 1e-3 / self.decode_seqs(self.isl + osl)
            want = {"workers": math.ceil(pre + dec)} if "workers" in pools else {
                "prefill": math.ceil(pre), "decode": math.ceil(dec)}
        return self._budget({p: max(spec.min_replicas, k) for p, k in want.items()})

    def _budget(self, want: dict[str, int]) -> dict[str, int]:
        if self.spec.gpu_budget is None:
            return want
        tp = {p: self.sim.dep.pools[p].tp for p in want}
        while sum(k * tp[p] for p, k in want.items()) > self.spec.gpu_budget:
            p = max((p for p in want if want[p] > self.spec.min_replicas), key=lambda p: want[p] * tp[p], default=None)
            if p is None:
                break
            want[p] -= 1
        return want

    def apply(self, pool: str, want: int) -> None:
        scaler = self.sim.scaler
        have = scaler.replicas(pool)
        for _ in range(want - have):
            scaler.add(pool, self.spec.startup_s)
        for _ in range(have - want):
            w = scaler.newest_serving(pool)
            if w is None or len(self.sim.serving[pool]) <= 1:
                break
            scaler.drain(w)

    # ---- capacities from the pool's cost model ----------------------------------------------------
    def prefill_tok_s(self, isl: float) -> float:
        """Prompt tokens/s of one replica with its token budget full of ``isl``-token prompts."""
        pool = "workers" if "workers" in self.sim.pools else "prefill"
        w, spec = self.sim.pools[pool][0], self.sim.dep.pools[pool]
        n = max(1, int(isl))
        k = max(1, spec.max_batch_tokens // n)
        return k * n / w.cost.iteration_s(Batch.of(prefill=[(n, 0)] * k))

    def decode_seqs(self, ctx: float) -> int:
        """Most sequences of context ``ctx`` one replica decodes with a step within the TPOT target."""
        pool = "workers" if "workers" in self.sim.pools else "decode"
        w, spec = self.sim.pools[pool][0], self.sim.dep.pools[pool]
        c = max(1, int(ctx))
        hi = max(1, min(spec.max_seqs, w.kv.total // max(1, int(blocks_for(c, w.B)))))
        target_s = self.spec.tpot_ms * 1e-3
        lo = 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if w.cost.decode_steps_s(mid, mid * c, 1)[0] <= target_s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def record(self) -> dict:
        return {"policy": self.spec.policy, "interval_s": self.spec.interval_s, "decisions": self.log}


def attach_autoscaler(sim: Simulation, data: Any) -> Autoscaler:
    return Autoscaler(sim, parse_autoscale(data))


def attainment_over_time(requests: pd.DataFrame, ttft_ms: float, tpot_ms: float, bucket_s: float) -> pd.DataFrame:
    """Per ``bucket_s`` of arrival time: requests, and the share that finished within both targets."""
    df = requests
    good = (df["outcome"] != "failed") & (df["ttft_s"] * 1e3 <= ttft_ms) & (
        df["tpot_s"].isna() | (df["tpot_s"] * 1e3 <= tpot_ms))
    b = (df["arrival_s"] // bucket_s).astype(int)
    out = pd.DataFrame({"bucket": b, "good": good}).groupby("bucket")["good"].agg(["size", "mean"])
    out.index = out.index * bucket_s
    return out.rename(columns={"size": "requests", "mean": "attainment"}).rename_axis("start_s").reset_index()
