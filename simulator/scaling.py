"""Scaling a running deployment: a replica added starts serving after its start-up time (model load); a
replica removed drains (takes no new requests, finishes what it holds, then gives its GPUs back).
GPUs count from the moment a replica is asked for until it has drained, so ``gpu_hours`` is what the
deployment paid for."""

from __future__ import annotations

from typing import TYPE_CHECKING

from simulator.link import KVLink
from simulator.worker import Worker

if TYPE_CHECKING:
    from simulator.sim import Simulation

DRAIN_POLL_S = 0.5  # how often a draining replica is checked for being empty


class Scaler:
    def __init__(self, sim: Simulation):
        self.sim, self.env = sim, sim.env
        self.up_s = {w.wid: 0.0 for w in sim.workers}  # when each replica's GPUs were taken
        self.down_s: dict[int, float] = {}  # when a drained replica gave them back
        self.draining: set[int] = set()
        self.starting: list[tuple[str, float]] = []  # (pool, asked at) of replicas still loading
        self.actions: list[dict] = []  # time_s, pool, action, replicas (serving or starting after it)

    def replicas(self, pool: str) -> int:
        """Replicas serving or starting in ``pool`` (draining ones no longer count)."""
        return len(self.sim.serving[pool]) + sum(p == pool for p, _ in self.starting)

    def add(self, pool: str, startup_s: float) -> None:
        """Ask for one more replica of ``pool``; it serves ``startup_s`` later."""
        entry = (pool, self.env.now)
        self.starting.append(entry)
        self._log(pool, "add")
        self.env.timeout(startup_s).callbacks.append(lambda _ev: self._started(entry))

    def _started(self, entry: tuple[str, float]) -> None:
        sim = self.sim
        pool, asked_s = entry
        self.starting.remove(entry)
        model = sim.pools[pool][0]
        spec = sim.dep.pools[pool]
        w = Worker(sim, len(sim.workers), pool, model.role, spec, model.cost, model.kv.total, model.B,
                   model.fast_forward)
        sim.workers.append(w)
        sim.pools[pool].append(w)
        if sim.kvm is not None:  # its own (empty) prefix cache, issue 8
            sim.kvm.add_worker(w)
        if model.role == "prefill":
            link = sim.links[model.wid]
            sim.links[w.wid] = KVLink(self.env, link.bandwidth_bytes_s, link.latency_s)
        self.up_s[w.wid] = asked_s
        sim.serving[pool].append(w)
        self._log(pool, "serving")

    def drain(self, w: Worker) -> None:
        """``w`` takes no new requests; once it holds nothing its GPUs are given back."""
        ws = self.sim.serving[w.pool_name]
        if w.wid in self.draining or w.wid in self.down_s:
            return
        if w in ws:
            ws.remove(w)
        self.draining.add(w.wid)
        self._log(w.pool_name, "drain")
        self._check(w)

    def _check(self, w: Worker) -> None:
        if holds_nothing(w):
            self.draining.discard(w.wid)
            self.down_s[w.wid] = self.env.now
            self._log(w.pool_name, "drained")
        else:
            self.env.timeout(DRAIN_POLL_S).callbacks.append(lambda _ev: self._check(w))

    def newest_serving(self, pool: str) -> Worker | None:
        """The replica to drain first: the least loaded, the newest among equals."""
        ws = self.sim.serving[pool]
        return min(reversed(ws), key=lambda w: w.load) if ws else None

    def gpu_hours(self, end_s: float) -> float:
        tp = {name: p.tp for name, p in self.sim.dep.pools.items()}
        held = sum((self.down_s.get(w.wid, end_s) - self.up_s[w.wid]) * tp[w.pool_name] for w in self.sim.workers)
        held += sum((end_s - t) * tp[p] for p, t in self.starting)
        return held / 3600.0

    def _log(self, pool: str, action: str) -> None:
        self.actions.append({"time_s": self.env.now, "pool": pool, "action": action, "replicas": self.replicas(pool)})


def holds_nothing(w: Worker) -> bool:
    """No request queued, running or reserved on ``w``, and no KV of its waiting to leave."""
    return not (w.waiting or w.ready or w.reserving or len(w.running) or w.load or w.kv.used)
