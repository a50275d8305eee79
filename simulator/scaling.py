"""Scaling a running deployment: a replica added starts serving after its start-up time (model load); a
replica removed drains (takes no new requests, finishes what it holds, then gives its GPUs back), or, for a
decode replica with ``migrate``, stops between steps and sends each sequence's KV to the live decode replica
with the most free blocks (a transfer over its own link, as fast as a prefill replica's); what no replica
has room for it finishes itself. GPUs count from the moment a replica is asked for until it has drained, so
``gpu_hours`` is what the deployment paid for."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from simulator.block_manager import blocks_for
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
        self.migrate_from: set[int] = set()  # draining decode replicas that hand their sequences on
        self.moving: dict[int, tuple[int, int]] = {}  # request -> (from, to) while its KV migrates

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

    def drain(self, w: Worker, migrate: bool = False) -> None:
        """``w`` takes no new requests; once it holds nothing its GPUs are given back."""
        ws = self.sim.serving[w.pool_name]
        if w.wid in self.draining or w.wid in self.down_s:
            return
        if w in ws:
            ws.remove(w)
        self.draining.add(w.wid)
        if migrate:
            self.migrate_from.add(w.wid)
        self._log(w.pool_name, "drain, migrating" if migrate else "drain")
        self._check(w)

    def _check(self, w: Worker) -> None:
        if w.wid in self.migrate_from and w.proc is not None and (w.ready or len(w.running) or w.reserving):
            self.migrate_out(w)
        if holds_nothing(w):
            self.draining.discard(w.wid)
            self.down_s[w.wid] = self.env.now
            self._log(w.pool_name, "drained")
        else:
            self.env.timeout(DRAIN_POLL_S).callbacks.append(lambda _ev: self._check(w))

    def migrate_out(self, w: Worker) -> None:
        """Hand ``w``'s sequences to other decode replicas: those still waiting for blocks are routed anew, those
        with KV here stop between steps and their KV moves."""
        sim, S, ops = self.sim, self.sim.seqs, self.sim.ops
        targets = sim.serving["decode"]
        if not targets:
            return  # nowhere to go: it finishes them itself
        for r in list(w.reserving):  # their KV is still on a prefill replica
            w.reserving.remove(r)
            w.load -= 1
            sim.handoff(r, None)
        if not (w.ready or len(w.running)):
            return
        self._stop_between_steps(w)
        moving, kept = w.running.tolist() + list(w.ready), []
        w.ready.clear()
        link = sim.links.get(w.wid)
        if link is None:  # a decode replica's outbound link, for migrations
            ref = next(iter(sim.links.values()))
            link = sim.links[w.wid] = KVLink(self.env, ref.bandwidth_bytes_s, ref.latency_s)
        for r in moving:
            d = max(targets, key=lambda x: x.kv.free)
            need = int(blocks_for(S.computed[r], d.B))
            if need > d.kv.free:
                kept.append(r)
                continue
            w.kv.deallocate(S.blocks[r])
            if w.cache is not None:  # its KV stays cached here, idle, until evicted
                w.cache.release(r, int(S.computed[r]))
            w.load -= 1
            d.kv.allocate(need)
            d.load += 1
            S.blocks[r] = need
            S.decode_worker[r] = d.wid
            self.moving[r] = (w.wid, d.wid)
            a = ops.attempt[r]
            ops.log.append((r, self.env.now, f"KV of {S.computed[r]} tokens migrates from decode worker {w.wid} to "
                                             f"{d.wid} (drain)"))
            kv_bytes = float(sim.kv_bytes[r] / S.isl[r] * S.computed[r])  # per rank pair, as a prefill's KV
            link.send(kv_bytes, lambda r=r, d=d, a=a: self._migrated(r, d, a))
        w.running = np.asarray(kept, np.int64)
        w.proc = self.env.process(w.loop())

    def _stop_between_steps(self, w: Worker) -> None:
        """End ``w``'s engine loop where it is: a fast-forwarded run keeps the steps that have ended, the step in
        flight is dropped; KV blocks are settled as the end of a run settles them."""
        w.proc.defused = True
        w.proc.interrupt("migrating")
        run = w.run
        if run is not None:
            w.settle_run(run, min(int(np.searchsorted(run.cum, self.env.now - run.t0, side="right")), run.k))
        w.run = w.wake = None

    def _migrated(self, r: int, d: Worker, attempt: int) -> None:
        if self.sim.ops.attempt[r] != attempt:  # a fault overtook it
            return
        del self.moving[r]
        d.add_ready(r)

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
