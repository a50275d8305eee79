"""Fault injection: plays a FaultPlan (simulator/fault_plan.py) into a running Simulation -- worker deaths and
restarts, lost and slowed KV transfers, degraded links -- and keeps every request's fault record (retries, the
last fault that hit it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from profiler.costmodel import Batch
from profiler.errors import InputError
from simulator.fault_plan import FaultPlan, LinkDegradation
from simulator.sequence import FAILED, PENDING

if TYPE_CHECKING:
    from simulator.sim import Simulation
    from simulator.worker import Worker


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
            w = self.worker(d.worker, "dies")
            self.env.timeout(d.at_s).callbacks.append(lambda _ev, w=w, d=d: self.kill(w, d.back_after_s))
        for g in plan.degradations:
            links = list(sim.links.values()) if g.link is None else [sim.links[self.worker(g.link, "link").wid]]
            self.env.timeout(g.at_s).callbacks.append(lambda _ev, ls=links, g=g: self._degrade(ls, g))

    def worker(self, ref: tuple[str, int], what: str) -> Worker:
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
            self.sim.route(r)
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
        sim.complete(np.array([r]), FAILED, why)

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


