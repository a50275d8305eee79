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
from typing import TYPE_CHECKING, Any

import numpy as np

from profiler.costmodel import Batch
from profiler.errors import InputError
from simulator.sequence import FAILED, PENDING

if TYPE_CHECKING:
    from simulator.sim import Simulation
    from simulator.worker import Worker

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


# ---- the simulation side ---------------------------------------------------------------------
class Faults:
    """Plays a FaultPlan into a running Simulation and keeps every request's fault record."""

    def __init__(self, sim: Simulation, plan: FaultPlan):
        self.sim, self.plan, self.env = sim, plan, sim.env
        n = sim.seqs.n
        self.attempt = np.zeros(n, np.int64)  # bumped whenever a request's path is cut: stale callbacks see it
        self.retries = np.zeros(n, np.int64)
        self.reason = np.full(n, "", dtype=object)  # the last fault that hit the request
        self.rng = np.random.default_rng(sim.seed)
        self.lost: dict[int, int] = {}  # request -> decode worker waiting for KV that will never come
        self.incidents: list[dict] = []
        self.wasted_gpu_s = 0.0
        self.epoch: dict[int, int] = {}  # worker -> deaths so far (a restart after a later death is void)
        self.log: list[tuple[int, float, str]] = []  # (request, time_s, what happened): --trace-requests
        for d in plan.deaths:
            w = self._worker(d.worker, "dies")
            self.env.timeout(d.at_s).callbacks.append(lambda _ev, w=w, d=d: self.kill(w, d.back_after_s))
        for g in plan.degradations:
            links = list(sim.links.values()) if g.link is None else [sim.links[self._worker(g.link, "link").wid]]
            self.env.timeout(g.at_s).callbacks.append(lambda _ev, ls=links, g=g: self._degrade(ls, g))

    def _worker(self, ref: tuple[str, int], what: str) -> Worker:
        pool, i = ref
        ws = self.sim.pools.get(pool)
        if ws is None or i >= len(ws):
            have = ", ".join(f"{p}[0..{len(v) - 1}]" for p, v in self.sim.pools.items())
            raise InputError(f"{pool}[{i}] {what}, but the deployment has {have}", where="faults")
        if what == "link" and pool != "prefill":
            raise InputError("KV links belong to prefill replicas: name prefill[i], or no replica for all links",
                             where="faults")
        return ws[i]

    # ---- worker death ----------------------------------------------------------------------------
    def kill(self, w: Worker, back_after_s: float | None) -> None:
        sim, S = self.sim, self.sim.seqs
        if w.proc is None or not w.proc.is_alive:
            return
        name = f"{w.pool_name}[{sim.pools[w.pool_name].index(w)}]"
        why = f"{name} died at {self.env.now:g}s"
        busy = w.wake is None or w.run is not None  # an iteration is in flight (idle, it waits on ``wake``)
        w.proc.defused = True  # the Interrupt ends its loop; nobody waits on the process
        w.proc.interrupt(why)
        w.proc = None
        run = w.run
        in_flight_s = self.env.now - w.step_start_s if busy else 0.0
        if run is not None:  # a fast-forwarded decode run: the steps that ended before the death count
            j = min(int(np.searchsorted(run.cum, self.env.now - run.t0, side="right")), run.k)
            if j:
                w.advance_run(run, j)
            in_flight_s = self.env.now - run.t0 - (run.cum[j - 1] if j else 0.0)
        self.wasted_gpu_s += in_flight_s * sim.dep.pools[w.pool_name].tp  # the iteration cut short
        ws = sim.serving[w.pool_name]
        if w in ws:
            ws.remove(w)
        mine = (S.outcome == PENDING)
        redo: list[int] = list(w.waiting) + w.running.tolist()  # KV (or its place in the queue) lost
        rehand: list[int] = []  # disagg: KV still on a live prefill worker, it only needs another decode worker
        if w.role == "prefill":
            held = np.flatnonzero(mine & (S.prefill_worker == w.wid) & (S.xfer_blocks > 0)).tolist()
            for r in held:  # handed on, but the KV never left: the decode side lets go of it
                self._drop_reservation(r)
                S.xfer_blocks[r] = 0
            redo += held
            sim.links[w.wid].clear()
        elif w.role == "decode":
            redo += list(w.ready)
            rehand = list(w.reserving) + [r for r in np.flatnonzero(mine & (S.decode_worker == w.wid)
                                                                    & (S.xfer_blocks > 0)).tolist()
                                          if r not in w.reserving]
            redo += [r for r, d in self.lost.items() if d == w.wid]
            for r, (src, dst) in list(sim.scaler.moving.items()):  # KV migrating to it, or from it (lost in flight)
                if w.wid in (src, dst):
                    del sim.scaler.moving[r]
                    redo.append(r)
                    if src == w.wid:
                        d = sim.workers[dst]
                        d.kv.deallocate(S.blocks[r])
                        d.load -= 1
            if w.wid in sim.links:
                sim.links[w.wid].clear()
        for r in redo:
            if w.role == "decode":  # its KV was made by a prefill worker: that work is lost
                if S.xfer_blocks[r]:  # a lost transfer still on the wire
                    sim.workers[int(S.prefill_worker[r])].release_xfer(r)
                self.wasted_gpu_s += self._prefill_gpu_s(sim.pools["prefill"][0], int(S.computed[r]))
            else:
                self.wasted_gpu_s += self._prefill_gpu_s(w, int(S.computed[r]))
            self.lost.pop(r, None)
        self._reset(w)
        S.blocks[redo + rehand] = 0
        self.incidents.append({"time_s": self.env.now, "fault": "death", "worker": name,
                               "requests": len(redo) + len(rehand)})
        for r in redo:
            self.retry(r, why)
        for r in rehand:
            self.retry(r, why, handoff=True)
        self.epoch[w.wid] = self.epoch.get(w.wid, 0) + 1
        if back_after_s is not None:
            ep = self.epoch[w.wid]
            self.env.timeout(back_after_s).callbacks.append(lambda _ev: self._restart(w, ep))

    def _reset(self, w: Worker) -> None:
        """A dead replica holds nothing: empty queues, an empty KV cache."""
        S = self.sim.seqs
        for r in list(w.waiting) + w.running.tolist() + list(w.ready) + list(w.reserving):
            S.blocks[r] = 0
        w.waiting.clear()
        w.ready.clear()
        w.reserving.clear()
        w.not_before.clear()  # admission gates of prompts it will never admit
        w.running = np.empty(0, np.int64)
        w.kv.free = w.kv.total
        if w.cache is not None:  # cached prefixes die with the replica (issue 8)
            w.cache.clear()
        w.load = 0
        w.wake = w.run = None

    def _restart(self, w: Worker, epoch: int) -> None:
        if self.epoch.get(w.wid) != epoch or w.proc is not None:
            return
        w.proc = self.env.process(w.loop())
        if w not in self.sim.serving[w.pool_name] and w.wid not in self.sim.scaler.draining:
            self.sim.serving[w.pool_name].append(w)
        self.incidents.append({"time_s": self.env.now, "fault": "restart", "worker": w.pool_name, "requests": 0})

    def _drop_reservation(self, r: int) -> None:
        """The decode worker routed to ``r`` forgets it (blocks reserved for its KV are freed)."""
        sim, S = self.sim, self.sim.seqs
        d = sim.workers[int(S.decode_worker[r])]
        if r in d.reserving:
            d.reserving.remove(r)
        elif S.blocks[r]:
            d.kv.deallocate(S.blocks[r])
            S.blocks[r] = 0
            d.try_reserve()
        d.load -= 1

    def _prefill_gpu_s(self, w: Worker, tokens: int) -> float:
        """GPU-seconds a prompt of ``tokens`` tokens costs alone on ``w`` (the work a lost KV throws away)."""
        if tokens <= 0:
            return 0.0
        return w.cost.iteration_s(Batch.of(prefill=[(tokens, 0)])) * self.sim.dep.pools[w.pool_name].tp

    # ---- retries ---------------------------------------------------------------------------------
    def retry(self, r: int, why: str, handoff: bool = False) -> None:
        """Send ``r`` again after the backoff (``handoff``: only to another decode worker), or fail it."""
        S, pol = self.sim.seqs, self.plan.retry
        self.attempt[r] += 1
        self.retries[r] += 1
        self.reason[r] = why
        if not handoff:  # recompute from scratch: the prompt and what was already streamed
            if np.isnan(S.first_token_s[r]):  # a prefill worker's token that never reached the user
                S.generated[r] = 0
            S.computed[r] = 0
            S.blocks[r] = 0
            S.target[r] = S.isl[r] + S.generated[r]
        if pol.policy == "fail" or self.retries[r] > pol.max_retries:
            self.fail(r, why if pol.policy == "fail" else f"{why}; gave up after {pol.max_retries} retries")
            self.log.append((r, self.env.now, f"failed: {S.fail_reason[r]}"))
            return
        a = self.attempt[r]
        delay = pol.backoff_s * 2.0 ** (self.retries[r] - 1)
        self.log.append((r, self.env.now, f"{why}: retry {self.retries[r]} of {pol.max_retries} in {delay:g}s, "
                                          + ("to another decode worker" if handoff else
                                             f"re-prefilling {S.target[r]} tokens")))
        self.env.timeout(delay).callbacks.append(lambda _ev: self.attempt[r] == a and self._resend(r, handoff))

    def _resend(self, r: int, handoff: bool) -> None:
        S, a = self.sim.seqs, self.attempt[r]
        if handoff:
            self.sim.handoff(r, None)
        else:
            self.sim._route(r)  # the system retries: no second trip through the frontend
        if self.attempt[r] == a:  # not refused again (no live replica)
            w = S.decode_worker[r] if handoff else S.prefill_worker[r]
            self.log.append((r, self.env.now, f"sent again to {'decode' if handoff else 'entry'} worker {w}"))

    def no_worker(self, r: int, pool: str) -> None:
        """Every replica of ``pool`` is down (or draining): the request is refused, and retried."""
        self.retry(r, f"no live {pool} worker at {self.env.now:g}s", handoff=pool == "decode")

    def fail(self, r: int, why: str) -> None:
        sim, S = self.sim, self.sim.seqs
        if S.xfer_blocks[r]:  # KV waiting on a prefill worker for a decode worker that never came
            sim.workers[int(S.prefill_worker[r])].release_xfer(r)
        S.outcome[r] = FAILED
        S.fail_reason[r] = why
        sim._completed(np.array([r]))
        if sim.workload.closed_loop:
            sim._send_next(1)

    # ---- KV transfers ----------------------------------------------------------------------------
    def transfer(self, r: int, kv_bytes: float, done):
        """Decide this transfer's fate (seeded); returns the bytes to move and what to do when they have."""
        p, S = self.plan, self.sim.seqs
        a = self.attempt[r]
        if S.target[r] != S.isl[r]:  # re-prefilled after a fault: the streamed tokens' KV moves too
            kv_bytes *= S.target[r] / S.isl[r]
        lost = p.kv_loss_prob > 0 and self.rng.random() < p.kv_loss_prob
        if p.kv_slow_prob > 0 and self.rng.random() < p.kv_slow_prob:
            kv_bytes *= p.slow_factor
        if lost:
            self.lost[r] = int(self.sim.seqs.decode_worker[r])
            self.log.append((r, self.env.now, f"KV transfer to decode worker {self.lost[r]} starts, and is lost"))
            self.env.timeout(p.retry.kv_timeout_s).callbacks.append(lambda _ev: self._timeout(r, a))

        def arrived() -> None:
            if self.attempt[r] != a:
                return
            if lost:  # the sender is done with it; the receiver still waits
                self.sim.workers[int(self.sim.seqs.prefill_worker[r])].release_xfer(r)
            else:
                done()

        return kv_bytes, arrived

    def _timeout(self, r: int, a: int) -> None:
        sim, S = self.sim, self.sim.seqs
        if self.attempt[r] != a:
            return
        self.lost.pop(r, None)
        if S.xfer_blocks[r]:  # still on the wire: the sender lets go too
            sim.workers[int(S.prefill_worker[r])].release_xfer(r)
        self._drop_reservation(r)
        self.wasted_gpu_s += self._prefill_gpu_s(sim.workers[int(S.prefill_worker[r])], int(S.isl[r]))
        self.incidents.append({"time_s": self.env.now, "fault": "kv lost", "worker": f"request {r}", "requests": 1})
        self.retry(r, f"KV transfer lost; decode timed out after {self.plan.retry.kv_timeout_s:g}s")

    def _degrade(self, links: list, g: LinkDegradation) -> None:
        for link in links:
            link.set_bandwidth(link.bandwidth_bytes_s * g.factor)
        self.incidents.append({"time_s": self.env.now, "fault": f"link at {g.factor:.0%}", "worker":
                               "all links" if g.link is None else f"{g.link[0]}[{g.link[1]}]", "requests": 0})

        def restore(_ev) -> None:
            for link in links:
                link.set_bandwidth(link.bandwidth_bytes_s / g.factor)

        self.env.timeout(g.for_s).callbacks.append(restore)


# ---- attaching, results ----------------------------------------------------------------------
def attach_ops(sim: Simulation):
    """The simulation's fault and scaling controller, or None when the deployment asks for neither (then the
    simulation is the fault-free one, event for event)."""
    from simulator.autoscale import attach_autoscaler
    from simulator.scaling import Scaler

    plan = fault_plan(sim.dep.extra)
    auto = sim.dep.extra.get("autoscale")
    if plan.empty and not auto:
        return None
    sim.serving = {name: list(ws) for name, ws in sim.pools.items()}
    sim.scaler = Scaler(sim)
    ops = Faults(sim, plan)
    for d in plan.drains:
        w = ops._worker(d.worker, "drains")
        if d.migrate and w.role != "decode":
            raise InputError(f"only decode replicas migrate KV; {d.worker[0]}[{d.worker[1]}] drains by finishing",
                             where="faults")
        sim.env.timeout(d.at_s).callbacks.append(lambda _ev, w=w, m=d.migrate: sim.scaler.drain(w, m))
    for u in plan.scale_ups:
        if u.pool not in sim.pools:
            raise InputError(f"the deployment has no {u.pool} pool (it has {', '.join(sim.pools)})", where="faults")
        for _ in range(u.count):
            sim.env.timeout(u.at_s).callbacks.append(lambda _ev, u=u: sim.scaler.add(u.pool, u.startup_s))
    ops.autoscaler = attach_autoscaler(sim, auto) if auto else None
    return ops


def annotate(sim: Simulation, result, baseline) -> None:
    """Outcomes (``retried_ok``), each request's retries and fault, and the run's fault and scaling record in
    ``result.extra["ops"]``. ``baseline(dep)`` simulates the same workload without the faults: the extra
    latency they caused is measured against it, request by request."""
    ops: Faults = sim.ops
    df = result.requests
    df["retries"] = ops.retries
    df["fault"] = ops.reason
    df.loc[(df["outcome"] == "ok") & (ops.retries > 0), "outcome"] = "retried_ok"
    rec: dict = {"log": ops.log, "incidents": ops.incidents, "wasted_gpu_s": ops.wasted_gpu_s,
                 "retries": int(ops.retries.sum()),
                 "scaling": sim.scaler.actions, "gpu_hours": sim.scaler.gpu_hours(result.end_s),
                 "replicas_at_start": {name: p.replicas for name, p in sim.dep.pools.items()}}
    if ops.autoscaler is not None:
        rec["autoscale"] = ops.autoscaler.record()
    faulted = any(i["fault"] != "restart" for i in ops.incidents)
    if faulted:
        extra = {k: v for k, v in sim.dep.extra.items() if k not in ("faults", "retry")}
        scale = [f for f in sim.dep.extra.get("faults") or [] if _is_scaling(f)]
        if scale:
            extra["faults"] = scale
        from dataclasses import replace

        base = baseline(replace(sim.dep, extra=extra)).requests
        df["fault_extra_s"] = df["e2e_s"] - base["e2e_s"].to_numpy()
    result.extra["ops"] = rec


def _is_scaling(item: Any) -> bool:
    plan = FaultPlan()
    parse_fault(item, plan, "faults")
    return bool(plan.drains or plan.scale_ups)


def ops_summary(result) -> dict:
    """Summary keys every run has: ``outcomes``, ``availability``, ``fail_reasons`` (failed requests by reason)
    and ``cost``; with faults or scaling also
    ``faults`` (incidents, retries, wasted GPU-seconds, extra latency) and ``scaling``."""
    from simulator.metrics import _num, stats_ms

    df = result.requests
    counts = df["outcome"].value_counts()
    outcomes = {k: int(counts.get(k, 0)) for k in ("ok", "retried_ok", "failed")}
    n = len(df)
    ops = result.extra.get("ops")
    ok = df[df["outcome"] != "failed"]
    tokens = float(ok["osl"].sum())
    if ops is not None:
        gpu_hours = ops["gpu_hours"]
    else:
        m = ok[ok["measured"]]
        start = float(df.loc[df["measured"], "arrival_s"].min()) if len(m) else 0.0
        window_s = float(m["last_token_s"].max()) - start if len(m) else 0.0
        gpu_hours, tokens = result.gpus * max(window_s, 0.0) / 3600.0, float(m["osl"].sum())
    price = result.extra.get("usd_per_gpu_hour")
    usd = None if price is None else price * gpu_hours
    failed = df.loc[df["outcome"] == "failed", "fail_reason"]
    s: dict = {"outcomes": outcomes, "availability": _num((outcomes["ok"] + outcomes["retried_ok"]) / n) if n else None,
               "fail_reasons": {str(k): int(v) for k, v in failed.value_counts().items()},
               "cost": {"usd_per_gpu_hour": price, "gpu_hours": _num(gpu_hours), "usd": None if usd is None else
                        _num(usd), "usd_per_million_tokens": _num(usd / tokens * 1e6) if usd and tokens else None}}
    if ops is not None:
        hit = df["retries"] > 0
        extra_s = df.loc[hit, "fault_extra_s"].to_numpy() if "fault_extra_s" in df else []
        everyone_s = df["fault_extra_s"].to_numpy() if "fault_extra_s" in df else []  # queues behind retries too
        s["faults"] = {"incidents": len(ops["incidents"]), "requests_hit": int(hit.sum()), "retries": ops["retries"],
                       "wasted_gpu_s": _num(ops["wasted_gpu_s"]),
                       "extra_latency_ms": stats_ms(extra_s) if len(extra_s) else None,
                       "extra_latency_all_ms": stats_ms(everyone_s) if len(everyone_s) else None}
        s["scaling"] = {"actions": len(ops["scaling"]), "gpu_hours": _num(ops["gpu_hours"])}
        if "autoscale" in ops:
            s["autoscale"] = ops["autoscale"]
    return s


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


def ops_table(summary: dict) -> str:
    """Outcomes, cost and (with faults or scaling) their record, as terminal lines."""
    o, c = summary["outcomes"], summary["cost"]
    avail = summary["availability"]
    lines = [f"outcomes ok {o['ok']}  retried_ok {o['retried_ok']}  failed {o['failed']}  availability "
             f"{'-' if avail is None else f'{avail * 100:.2f}%'}"]
    lines += [f"  failed x{k}: {why}" for why, k in summary["fail_reasons"].items()]
    if c["usd_per_gpu_hour"] is not None:
        per_m = c["usd_per_million_tokens"]
        lines.append(f"cost ${c['usd_per_gpu_hour']:g}/GPU-hour x {c['gpu_hours']:.3f} GPU-hours = ${c['usd']:.2f}"
                     f"  ->  {'-' if per_m is None else f'${per_m:.3f}'} per million output tokens")
    f = summary.get("faults")
    if f and (f["incidents"] or f["requests_hit"]):
        ex = f["extra_latency_ms"]
        lines.append(f"faults {f['incidents']} incidents, {f['requests_hit']} requests hit, {f['retries']} retries, "
                     f"{f['wasted_gpu_s']:.2f} GPU-s thrown away"
                     + (f", their extra E2E p50 {ex['p50']:.1f} ms p99 {ex['p99']:.1f} ms" if ex else ""))
        if f.get("extra_latency_all_ms"):
            a = f["extra_latency_all_ms"]
            lines.append(f"  every request's E2E against the same run without faults: mean {a['mean']:+.1f} ms, "
                         f"p99 {a['p99']:+.1f} ms")
    sc = summary.get("scaling")
    if sc and sc["actions"]:
        lines.append(f"scaling {sc['actions']} actions, {sc['gpu_hours']:.3f} GPU-hours")
    auto = summary.get("autoscale")
    if auto and auto["decisions"]:
        d = auto["decisions"]
        every = max(1, len(d) // 12)
        lines.append(f"autoscale {auto['policy']} every {auto['interval_s']:g} s (every {every}th decision shown):")
        lines.append(f"  {'time s':>8}{'req/s':>8}{'p90 TTFT':>10}{'p90 TPOT':>10}  replicas")
        for x in d[::every]:
            reps = " ".join(f"{k[9:]} {v}" for k, v in x.items() if k.startswith("replicas_"))
            t, p = x["ttft_p90_ms"], x["tpot_p90_ms"]
            lines.append(f"  {x['time_s']:>8.0f}{x['rate']:>8.2f}{'-' if t is None else f'{t:.0f}':>10}"
                         f"{'-' if p is None else f'{p:.1f}':>10}  {reps}")
    return "\n".join(lines)
