"""Faults and operations events: what can go wrong (or be changed) while a deployment serves, and what
happens to the requests it hits.

```yaml
faults:                                   # strings (as `pdsim simulate --fault`) or mappings
  - prefill[0] dies at 120s, back after 30s   # {worker: prefill[0], dies_at_s: 120, back_after_s: 30}
  - kv transfers lost with p=0.01             # {kv_loss_prob: 0.01}
  - kv transfers slowed 4x with p=0.05        # {kv_slow_prob: 0.05, slow_factor: 4}
  - link prefill[0] degrades to 25% at 60s for 30s   # {link: prefill[0], degrade_at_s: 60, for_s: 30, factor: 0.25}
  - decode[1] drains at 300s                  # {worker: decode[1], drains_at_s: 300}   (scaling.py)
  - decode[1] drains at 300s, migrating       # {..., migrate: true}: its sequences' KV moves to other replicas
  - prefill adds 1 at 200s, start-up 60s      # {pool: prefill, add: 1, at_s: 200, startup_s: 60}
retry: {policy: retry, max_retries: 3, backoff_s: 0.5, kv_timeout_s: 5}   # policy: retry | fail
```
A dead worker loses its KV: what it held is sent again (after the backoff) to a live worker of the same
pool and recomputed there (prompt plus the tokens already streamed), or fails under ``policy: fail`` or
past ``max_retries``. A lost transfer is noticed by the decode worker ``kv_timeout_s`` after it began;
it frees the blocks it reserved and the prompt is prefilled again. Every request ends ``ok``,
``retried_ok`` (a fault touched it, it still finished) or ``failed`` with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from profiler.errors import InputError

POLICIES = ("retry", "fail")


@dataclass(frozen=True)
class RetryPolicy:
    policy: str = "retry"  # retry | fail
    max_retries: int = 3
    backoff_s: float = 0.5  # wait before the first retry; doubles with each further one
    kv_timeout_s: float = 5.0  # a decode worker gives up on KV this long after the transfer began


@dataclass(frozen=True)
class Death:
    worker: tuple[str, int]  # (pool, index)
    at_s: float
    back_after_s: float | None = None  # None: never comes back


@dataclass(frozen=True)
class LinkDegradation:
    link: tuple[str, int] | None  # the prefill replica whose link degrades; None: every link
    at_s: float
    for_s: float
    factor: float  # bandwidth times this


@dataclass(frozen=True)
class Drain:
    worker: tuple[str, int]
    at_s: float
    migrate: bool = False  # decode: move the sequences' KV to other decode replicas instead of finishing them


@dataclass(frozen=True)
class ScaleUp:
    pool: str
    count: int
    at_s: float
    startup_s: float = 60.0


@dataclass
class FaultPlan:
    deaths: list[Death] = field(default_factory=list)
    degradations: list[LinkDegradation] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    scale_ups: list[ScaleUp] = field(default_factory=list)
    kv_loss_prob: float = 0.0
    kv_slow_prob: float = 0.0
    slow_factor: float = 4.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def empty(self) -> bool:
        return not (self.deaths or self.degradations or self.drains or self.scale_ups or self.kv_loss_prob
                    or self.kv_slow_prob)


# ---- parsing ---------------------------------------------------------------------------------
_T = r"(\d+(?:\.\d+)?)\s*s?"  # seconds, the unit optional
_W = r"(workers|prefill|decode)\s*\[\s*(\d+)\s*\]"
_GRAMMAR = [
    ("death", rf"^{_W}\s+dies\s+at\s+{_T}(?:\s*,?\s*back\s+after\s+{_T})?$"),
    ("loss", r"^kv\s+(?:transfers?\s+)?lost\s+(?:with\s+)?p\s*=\s*(\d*\.?\d+)$"),
    ("slow", r"^kv\s+(?:transfers?\s+)?slowed\s+(\d*\.?\d+)\s*x\s+(?:with\s+)?p\s*=\s*(\d*\.?\d+)$"),
    ("link", rf"^link(?:\s+{_W})?\s+degrades\s+to\s+(\d*\.?\d+)\s*(%?)\s+at\s+{_T}\s+for\s+{_T}$"),
    ("drain", rf"^{_W}\s+drains\s+at\s+{_T}(\s*,?\s*migrating)?$"),
    ("add", rf"^(workers|prefill|decode)\s+(?:adds\s+|\+)(\d+)\s+at\s+{_T}(?:\s*,?\s*start-?up\s+{_T})?$"),
]
EXAMPLES = ("prefill[0] dies at 120s, back after 30s | kv transfers lost with p=0.01 | kv transfers slowed 4x "
            "with p=0.05 | link prefill[0] degrades to 25% at 60s for 30s | decode[1] drains at 300s | "
            "prefill adds 1 at 200s, start-up 60s")


def _prob(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise InputError(f"must be a probability in [0, 1], got {v!r}", where=where)
    return float(v)


def _secs(v: Any, where: str, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v < 0 or (positive and v == 0):
        raise InputError(f"must be a number of seconds {'> 0' if positive else '>= 0'}, got {v!r}", where=where)
    return float(v)


def _worker_ref(v: Any, where: str) -> tuple[str, int]:
    m = re.fullmatch(_W, str(v).strip())
    if not m:
        raise InputError(f"must name a replica like prefill[0], decode[1] or workers[0], got {v!r}", where=where)
    return m.group(1), int(m.group(2))


def parse_fault(item: Any, plan: FaultPlan, where: str) -> None:
    """Add one entry (a sentence or a mapping) to ``plan``."""
    if isinstance(item, str):
        _parse_sentence(item, plan, where)
        return
    if not isinstance(item, dict):
        raise InputError(f"must be a sentence ({EXAMPLES}) or a mapping", where=where)
    keys = set(item)
    if "dies_at_s" in keys:
        _only(item, {"worker", "dies_at_s", "back_after_s"}, where)
        back = item.get("back_after_s")
        plan.deaths.append(Death(_worker_ref(item.get("worker"), f"{where}.worker"),
                                 _secs(item["dies_at_s"], f"{where}.dies_at_s"),
                                 None if back is None else _secs(back, f"{where}.back_after_s")))
    elif "drains_at_s" in keys:
        _only(item, {"worker", "drains_at_s", "migrate"}, where)
        if not isinstance(item.get("migrate", False), bool):
            raise InputError("must be true or false", where=f"{where}.migrate")
        plan.drains.append(Drain(_worker_ref(item.get("worker"), f"{where}.worker"),
                                 _secs(item["drains_at_s"], f"{where}.drains_at_s"), item.get("migrate", False)))
    elif "add" in keys:
        _only(item, {"pool", "add", "at_s", "startup_s"}, where)
        if item.get("pool") not in ("workers", "prefill", "decode"):
            raise InputError(f"must be workers, prefill or decode, got {item.get('pool')!r}", where=f"{where}.pool")
        n = item["add"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InputError(f"must be a whole number >= 1, got {n!r}", where=f"{where}.add")
        plan.scale_ups.append(ScaleUp(item["pool"], n, _secs(item.get("at_s"), f"{where}.at_s"),
                                      _secs(item.get("startup_s", 60.0), f"{where}.startup_s")))
    elif "degrade_at_s" in keys:
        _only(item, {"link", "degrade_at_s", "for_s", "factor"}, where)
        link = item.get("link", "all")
        f = item.get("factor")
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise InputError(f"must be a bandwidth share in (0, 1], got {f!r}", where=f"{where}.factor")
        plan.degradations.append(LinkDegradation(None if link == "all" else _worker_ref(link, f"{where}.link"),
                                                 _secs(item["degrade_at_s"], f"{where}.degrade_at_s"),
                                                 _secs(item.get("for_s"), f"{where}.for_s", positive=True), float(f)))
    elif keys & {"kv_loss_prob", "kv_slow_prob"}:
        _only(item, {"kv_loss_prob", "kv_slow_prob", "slow_factor"}, where)
        if "kv_loss_prob" in item:
            plan.kv_loss_prob = _prob(item["kv_loss_prob"], f"{where}.kv_loss_prob")
        if "kv_slow_prob" in item:
            plan.kv_slow_prob = _prob(item["kv_slow_prob"], f"{where}.kv_slow_prob")
        if "slow_factor" in item:
            plan.slow_factor = _slow_factor(item["slow_factor"], f"{where}.slow_factor")
    else:
        raise InputError("a fault mapping needs dies_at_s, drains_at_s, add, degrade_at_s, kv_loss_prob or "
                         "kv_slow_prob", where=where)


def _only(item: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})", where=where)


def _slow_factor(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 1 or v == float("inf"):
        raise InputError(f"must be a slow-down factor >= 1, got {v!r}", where=where)
    return float(v)


def _parse_sentence(text: str, plan: FaultPlan, where: str) -> None:
    s = " ".join(text.strip().lower().split())
    for kind, pattern in _GRAMMAR:
        m = re.match(pattern, s)
        if not m:
            continue
        g = m.groups()
        if kind == "death":
            plan.deaths.append(Death((g[0], int(g[1])), float(g[2]), None if g[3] is None else float(g[3])))
        elif kind == "loss":
            plan.kv_loss_prob = _prob(float(g[0]), where)
        elif kind == "slow":
            plan.slow_factor, plan.kv_slow_prob = _slow_factor(float(g[0]), where), _prob(float(g[1]), where)
        elif kind == "link":
            share = float(g[2]) / (100.0 if g[3] else 1.0)
            if not 0 < share <= 1:
                raise InputError(f"a link degrades to a share in (0, 100%], got {g[2]}{g[3]}", where=where)
            ref = None if g[0] is None else (g[0], int(g[1]))
            plan.degradations.append(LinkDegradation(ref, float(g[4]), float(g[5]), share))
        elif kind == "drain":
            plan.drains.append(Drain((g[0], int(g[1])), float(g[2]), g[3] is not None))
        else:
            if int(g[1]) < 1:
                raise InputError("a pool adds at least 1 replica", where=where)
            plan.scale_ups.append(ScaleUp(g[0], int(g[1]), float(g[2]), 60.0 if g[3] is None else float(g[3])))
        return
    raise InputError(f"cannot read {text!r}; write it like: {EXAMPLES}", where=where)


def parse_retry(data: Any, where: str) -> RetryPolicy:
    if not isinstance(data, dict):
        raise InputError("must be a mapping like {policy: retry, max_retries: 3, backoff_s: 0.5, kv_timeout_s: 5}",
                         where=where)
    _only(data, {"policy", "max_retries", "backoff_s", "kv_timeout_s"}, where)
    kw: dict[str, Any] = {}
    if "policy" in data:
        if data["policy"] not in POLICIES:
            raise InputError(f"must be retry or fail, got {data['policy']!r}", where=f"{where}.policy")
        kw["policy"] = data["policy"]
    if "max_retries" in data:
        n = data["max_retries"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InputError(f"must be a whole number >= 0, got {n!r}", where=f"{where}.max_retries")
        kw["max_retries"] = n
    if "backoff_s" in data:
        kw["backoff_s"] = _secs(data["backoff_s"], f"{where}.backoff_s")
    if "kv_timeout_s" in data:
        kw["kv_timeout_s"] = _secs(data["kv_timeout_s"], f"{where}.kv_timeout_s", positive=True)
    return RetryPolicy(**kw)


def fault_plan(extra: dict, where: str = "deployment") -> FaultPlan:
    """The deployment's ``faults:`` list and ``retry:`` policy."""
    plan = FaultPlan()
    items = extra.get("faults") or []
    if not isinstance(items, list):
        raise InputError("must be a list of faults", where=f"{where}.faults")
    for i, item in enumerate(items):
        parse_fault(item, plan, f"{where}.faults[{i}]")
    if "retry" in extra:
        plan.retry = parse_retry(extra["retry"], f"{where}.retry")
    return plan


def is_scaling(item: Any) -> bool:
    plan = FaultPlan()
    parse_fault(item, plan, "faults")
    return bool(plan.drains or plan.scale_ups)


def with_ops(dep, faults: list[str] | None, autoscale: str | None, ttft_ms: float | None, tpot_ms: float | None):
    """``dep`` with `pdsim simulate`'s ``--fault`` sentences added to its faults and ``--autoscale POLICY`` (the
    SLO from ``--ttft/--tpot`` unless the deployment's ``autoscale:`` section gives it); checked here."""
    from dataclasses import replace

    from simulator.autoscale import parse_autoscale

    extra = dict(dep.extra)
    if faults:
        extra["faults"] = [*(extra.get("faults") or []), *faults]
    if autoscale is not None:
        auto = dict(extra.get("autoscale") or {})
        auto["policy"] = autoscale
        for key, v in (("ttft_ms", ttft_ms), ("tpot_ms", tpot_ms)):
            if v is not None:
                auto[key] = v
        extra["autoscale"] = auto
    fault_plan(extra, where="--fault")
    if "autoscale" in extra:
        parse_autoscale(extra["autoscale"], where="--autoscale")
    return replace(dep, extra=extra)
