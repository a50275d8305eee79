"""KV as a managed resource: the deployment's settings and the per-simulation bookkeeping that ties the
workers' prefix caches (prefix_cache.py), their KV tiers (kv_tiers.py) and the router's view of them
(kv_events.py) together, and its metrics.

```yaml
prefix_cache: true          # default: on (vLLM V1, SGLang); it only acts on requests with hash_ids
router: kv_aware
kv_event_delay_s: 0.5       # KV events reach the router this late
router_weights: {overlap: 1.0, load: 1.0}   # see kv_events.kv_aware
kv_tiers: {host: {capacity_gb: 256}}        # see kv_tiers.py
```
A workload without ``hash_ids`` (or ``prefix_cache: false``) builds no cache at all: the simulation is the
same, event for event, as without this module.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from profiler.errors import InputError
from simulator.kv_events import KVView  # importing it registers the kv_aware router
from simulator.kv_tiers import TierSpec, build_tiers, parse_kv_tiers
from simulator.prefix_cache import PrefixCache
from simulator.router import ROUTERS

if TYPE_CHECKING:
    from simulator.deployment import Deployment
    from simulator.sim import Simulation


@dataclass(frozen=True)
class KVSettings:
    prefix_cache: bool = True
    overlap_weight: float = 1.0  # kv_aware: cost of one KV block the worker must prefill
    load_weight: float = 1.0  # kv_aware: cost of one KV block of work already on the worker
    tiers: tuple[TierSpec, ...] = ()
    event_delay_s: float = 0.0


def kv_settings(dep: Deployment, where: str = "deployment") -> KVSettings:
    """The KV sections of a deployment (``Deployment.extra``), validated; errors name the field."""
    extra = dep.extra
    return KVSettings(_prefix_cache(extra.get("prefix_cache", True), f"{where}.prefix_cache"),
                      *_router_weights(extra.get("router_weights"), f"{where}.router_weights"),
                      parse_kv_tiers(extra.get("kv_tiers"), f"{where}.kv_tiers"), dep.kv_event_delay_s)


def check_kv_sections(extra: dict, where: str) -> None:
    """Fail on a bad KV section when the deployment file is read (the simulation parses them again)."""
    _prefix_cache(extra.get("prefix_cache", True), f"{where}.prefix_cache")
    _router_weights(extra.get("router_weights"), f"{where}.router_weights")
    parse_kv_tiers(extra.get("kv_tiers"), f"{where}.kv_tiers")


def _prefix_cache(v: Any, where: str) -> bool:
    if isinstance(v, dict):
        bad = sorted(set(v) - {"enabled"})
        if bad:
            raise InputError(f"unknown field {bad[0]!r} (known: enabled)", where=where)
        v, where = v.get("enabled", True), f"{where}.enabled"
    if not isinstance(v, bool):
        raise InputError(f"must be true or false, got {v!r}", where=where)
    return v


def _router_weights(v: Any, where: str) -> tuple[float, float]:
    if v is None:
        return KVSettings.overlap_weight, KVSettings.load_weight
    if not isinstance(v, dict):
        raise InputError("must be a mapping like {overlap: 1.0, load: 1.0}", where=where)
    bad = sorted(set(v) - {"overlap", "load"})
    if bad:
        raise InputError(f"unknown field {bad[0]!r} (known: load, overlap)", where=where)
    out = []
    for key, default in (("overlap", KVSettings.overlap_weight), ("load", KVSettings.load_weight)):
        x = v.get(key, default)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or x < 0:
            raise InputError(f"must be a number >= 0, got {x!r}", where=f"{where}.{key}")
        out.append(float(x))
    if out == [0.0, 0.0]:
        raise InputError("overlap and load cannot both be 0", where=where)
    return out[0], out[1]


def with_router(dep: Deployment, router: str | None = None, kv_event_delay_s: float | None = None,
                weights: tuple[float, float] | None = None) -> Deployment:
    """``dep`` with another router, KV-event delay or kv_aware weights (the command line's overrides)."""
    from dataclasses import replace

    changes: dict[str, Any] = {}
    if router is not None:
        if router not in ROUTERS:
            raise InputError(f"must be one of {', '.join(ROUTERS)}, got {router!r}", where="--router")
        changes["router"] = router
    if kv_event_delay_s is not None:
        if not kv_event_delay_s >= 0 or not math.isfinite(kv_event_delay_s):
            raise InputError(f"must be a number of seconds >= 0, got {kv_event_delay_s!r}", where="--kv-event-delay")
        changes["kv_event_delay_s"] = float(kv_event_delay_s)
    if weights is not None:
        extra = {**dep.extra, "router_weights": {"overlap": weights[0], "load": weights[1]}}
        _router_weights(extra["router_weights"], "router_weights")
        changes["extra"] = extra
    return replace(dep, **changes)


def request_keys(hash_ids, isl: np.ndarray, hash_block_tokens: int) -> list[list[int]]:
    """Each request's cacheable chain: the hashes of its full hash blocks (a partial last block is not reused)."""
    full = isl // hash_block_tokens
    return [[int(h) for h in ids[:f]] if isinstance(ids, (list, tuple, np.ndarray)) else []
            for ids, f in zip(hash_ids, full.tolist(), strict=True)]


class KVManager:
    """One simulation's prefix caching: request chains, the workers' caches, events and counters."""

    def __init__(self, sim: Simulation, settings: KVSettings, keys: list[list[int]], hash_block_tokens: int,
                 kv_bytes_per_token: float):
        self.sim, self.settings, self.keys = sim, settings, keys
        self.B = B = sim.dep.kv_block_tokens
        longest = max((len(k) for k in keys), default=0)
        self.entry_ends = [(i + 1) * hash_block_tokens // B for i in range(longest)]  # engine blocks
        n = len(keys)
        self.first_hit_tokens = np.zeros(n, np.int64)  # served from cache at the request's first prefill
        self.decode_hit_tokens = np.zeros(n, np.int64)  # disagg: prompt KV the decode side already held
        self.saved_tokens = 0  # prefill tokens not computed, every prefill (re-prefills after preemption too)
        self.stale_routes = 0
        self.view = KVView(sim.env, settings.event_delay_s)
        self.shared: dict = {}  # the remote tier, one for all workers
        self.tiers: dict[int, list] = {}
        self.bytes_per_block = B * kv_bytes_per_token
        for w in sim.workers:
            self.add_worker(w)

    def add_worker(self, w) -> None:
        """Give worker ``w`` (at the start, or scaled up later) its prefix cache and tiers."""
        tiers = build_tiers(self.settings.tiers, self.sim.dep.pools[w.pool_name].tp, self.shared)
        self.tiers[w.wid] = tiers
        w.cache = PrefixCache(self, w, tiers, self.bytes_per_block)
        w.kv.cache = w.cache
        self.view.add_worker(w.wid)

    # ---- the chain arithmetic ----------------------------------------------------------------------
    def usable(self, r: int, m: int) -> tuple[int, int]:
        """Of ``m`` matched entries, those a prefill may skip (at least one prompt token is computed) and
        their tokens."""
        last = int(self.sim.seqs.isl[r]) - 1
        ends, B = self.entry_ends, self.B
        while m and ends[m - 1] * B > last:
            m -= 1
        return m, (ends[m - 1] * B if m else 0)

    def entries_within(self, r: int, tokens: int) -> int:
        """Entries wholly inside the first ``tokens`` tokens of ``r``'s prompt."""
        t = min(tokens, int(self.sim.seqs.isl[r]))
        return min(bisect_right(self.entry_ends, t // self.B), len(self.keys[r]))

    # ---- hooks from the workers --------------------------------------------------------------------
    def hit(self, r: int, tokens: int, transfer: bool) -> None:
        """``r`` found ``tokens`` of its prompt cached: at a prefill (the first one counts for the hit rate), or
        on the decode side of a transfer."""
        if transfer:
            self.decode_hit_tokens[r] = tokens
            return
        self.saved_tokens += tokens
        if np.isnan(self.sim.seqs.prefill_start_s[r]):
            self.first_hit_tokens[r] = tokens

    def stored(self, wid: int, keys: list[int]) -> None:
        self.view.publish(wid, keys, True)

    def removed(self, wid: int, keys: list[int]) -> None:
        self.view.publish(wid, keys, False)

    # ---- results -----------------------------------------------------------------------------------
    def result(self) -> dict:
        """What SimResult.extra['kv'] holds: per-request hits, tier traffic, counters."""
        S = self.sim.seqs
        tiers: dict[str, dict] = {}
        logs = []
        for wid, ts in self.tiers.items():
            for t in ts:
                if t.name == "remote" and wid != min(self.tiers):
                    continue  # the one shared store, counted once (as worker -1)
                row = tiers.setdefault(t.name, {"offloaded_bytes": 0.0, "recalled_bytes": 0.0, "hits": 0})
                row["offloaded_bytes"] += t.offloaded_bytes
                row["recalled_bytes"] += t.recalled_bytes
                row["hits"] += t.hits
                logs += [(time_s, -1 if t.name == "remote" else wid, t.name, what, b) for time_s, what, b in t.log]
        traffic = pd.DataFrame(logs, columns=["time_s", "worker", "tier", "what", "bytes"])
        return {
            "requests": pd.DataFrame({"cached_tokens": self.first_hit_tokens, "isl": S.isl,
                                      "prefill_worker": S.prefill_worker, "prefill_start_s": S.prefill_start_s,
                                      "decode_hit_tokens": self.decode_hit_tokens}),
            "saved_tokens": int(self.saved_tokens),
            "stale_routes": int(self.stale_routes),
            "tiers": tiers,
            "tier_traffic": traffic,  # one row per entry offloaded to or recalled from a tier
        }


def attach_kv(sim: Simulation, workload, kv_bytes_per_token: float) -> KVManager | None:
    """Give the simulation's workers their prefix caches and its routers the KV view and weights; the manager,
    or None when nothing can be cached (no hash_ids, or ``prefix_cache: false``)."""
    settings = kv_settings(sim.dep)
    req = workload.requests
    kvm = None
    if settings.prefix_cache and "hash_ids" in req.columns and len(req):
        keys = request_keys(req["hash_ids"].to_numpy(), sim.seqs.isl, workload.hash_block_tokens)
        if any(keys):
            kvm = KVManager(sim, settings, keys, workload.hash_block_tokens, kv_bytes_per_token)
    for router in sim.routers.values():
        router.kv, router.weights = kvm, (settings.overlap_weight, settings.load_weight)
    return kvm


def kv_summary(kv: dict | None, measured: np.ndarray) -> dict:
    """Summary keys: ``prefix_hit_rate`` (share of measured prompt tokens served from cache) and, with a cache,
    ``kv`` (tokens saved, stale routes, per-worker hit rates, tier traffic)."""
    if kv is None:
        return {"prefix_hit_rate": 0.0}
    req = kv["requests"][measured]
    isl = float(req["isl"].sum())
    rate = float(req["cached_tokens"].sum()) / isl if isl else 0.0
    per = req[req["prefill_worker"] >= 0].groupby("prefill_worker")[["cached_tokens", "isl"]].sum()
    return {"prefix_hit_rate": rate, "kv": {
        "prefill_tokens_saved": kv["saved_tokens"],
        "transfer_tokens_saved": int(req["decode_hit_tokens"].sum()),
        "stale_routes": kv["stale_routes"],
        "worker_hit_rate": {str(w): float(row.cached_tokens / row.isl) if row.isl else 0.0
                            for w, row in per.iterrows()},
        "tiers": kv["tiers"],
    }}
