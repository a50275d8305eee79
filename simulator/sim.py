"""simulate(): build the pools, routers and KV links of a Deployment, play a Workload through them.

The request path: arrive -> route -> prefill -> (disagg: route to a decode worker, reserve its KV
blocks, transfer over the prefill replica's link) -> decode -> stream. Closed loop: N clients each
send the workload's next row when one of theirs finishes.

KV transfer size: a request's whole KV (``kv_bytes_per_token x isl``) split over min(prefill TP,
decode TP) rank pairs that send in parallel, so one replica link carries the per-rank share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import simpy

from profiler.errors import InputError
from profiler.factory import make_cost_model
from profiler.gpus import resolve_gpu
from profiler.memory import require_fit
from profiler.models import resolve_model
from profiler.prices import usd_per_gpu_hour
from profiler.roofline import request_terms
from simulator.block_manager import blocks_for
from simulator.deployment import Deployment
from simulator.kv import attach_kv
from simulator.link import KVLink
from simulator.metrics import SLO, ITLSamples, SimResult
from simulator.ops import annotate, attach_ops
from simulator.router import Router
from simulator.sequence import FAILED, OK, OUTCOMES, PENDING, Sequences
from simulator.worker import Worker
from traces.workload import Workload

MAX_ARRIVAL_S = 1e9  # float seconds resolve ~0.1 us here; at 1e300 s a whole decode step rounds away (TPOT 0)


def simulate(deployment: Deployment, workload: Workload, *, seed: int = 0, cost_models: dict | None = None,
             profile=None, slo: SLO | None = None, fast_forward: bool = True,
             closed_loop_stagger_s: float = 0.0, admission_wait_prefills: float = 0.0,
             stop_when_missed: bool = False) -> SimResult:
    """Simulate ``workload`` on ``deployment``. ``fast_forward=False`` steps one iteration per event (a debug
    check of the fast path). The model has no randomness yet; ``seed`` is kept for the features that add it.
    ``stop_when_missed`` (open loop, with ``slo``): stop once more requests have missed a target than the
    attainment allows, so that a hopeless run costs little (its summary says ``stopped_early``).

    Two terms of a replayed benchmark's clients (planner/replay.py), zero for any other caller:
    ``closed_loop_stagger_s`` starts the closed loop's clients this far apart instead of all at once;
    ``admission_wait_prefills`` holds a prompt that reaches a busy aggregated worker this many times its own
    prefill run alone before admitting it (fixed-length clients partly in step queue behind each other's
    prompts: Efficiency.ttft_wait_prefills, fitted on such benchmarks)."""
    sim = Simulation(deployment, workload, seed=seed, cost_models=cost_models, profile=profile,
                     fast_forward=fast_forward, closed_loop_stagger_s=closed_loop_stagger_s,
                     admission_wait_prefills=admission_wait_prefills)
    if stop_when_missed and slo is not None and slo.stat != "mean" and not workload.closed_loop and sim.ops is None:
        sim.run_until_missed(slo)
    else:
        sim.env.run()
    result = sim.result(slo)
    result.extra["usd_per_gpu_hour"] = usd_per_gpu_hour(deployment.gpu)  # $ per million tokens in the summary
    if sim.ops is not None:  # faults and scaling (simulator/faults.py): outcomes, extra latency against no faults
        annotate(sim, result, lambda d: simulate(d, workload, seed=seed, cost_models=cost_models, profile=profile,
                                                  slo=slo, fast_forward=fast_forward,
                                                  closed_loop_stagger_s=closed_loop_stagger_s,
                                                  admission_wait_prefills=admission_wait_prefills))
    return result


class Simulation:
    def __init__(self, dep: Deployment, workload: Workload, *, seed: int = 0, cost_models: dict | None = None,
                 profile=None, fast_forward: bool = True, closed_loop_stagger_s: float = 0.0,
                 admission_wait_prefills: float = 0.0):
        if not (np.isfinite(admission_wait_prefills) and admission_wait_prefills >= 0):
            raise InputError(f"admission_wait_prefills must be >= 0, got {admission_wait_prefills!r}")
        self.dep, self.workload, self.seed = dep, workload, seed
        self.admission_wait_prefills = float(admission_wait_prefills)  # read by the aggregated workers
        model = resolve_model(dep.model)
        gpu = resolve_gpu(dep.gpu)
        if not dep.pools:
            raise InputError("the deployment has no pools")
        kv_dtype = dep.resolved_kv_dtype
        B = dep.kv_block_tokens
        req = workload.requests
        n = len(req)
        isl = req["isl"].to_numpy(np.int64)
        osl = req["osl"].to_numpy(np.int64)
        if n and (isl.min() < 1 or osl.min() < 1):
            raise InputError("every request needs isl >= 1 and osl >= 1", where=workload.source)
        arrival = np.full(n, np.nan) if workload.closed_loop else req["arrival_s"].to_numpy(np.float64)
        if not workload.closed_loop and n and (np.isnan(arrival).any() or arrival.min() < 0):
            raise InputError("open-loop requests need arrival_s >= 0", where=workload.source)
        if not workload.closed_loop and n and arrival.max() > MAX_ARRIVAL_S:
            raise InputError(f"the last request arrives at {arrival.max():.3g} s; simulated time keeps microseconds "
                             f"only up to {MAX_ARRIVAL_S:,.0f} s (30 years): use a higher rate or a shorter trace",
                             where=workload.source)
        self.env = simpy.Environment()
        self.seqs = Sequences(isl, osl, arrival)
        self.itl = ITLSamples()
        self.pools: dict[str, list[Worker]] = {}
        capacity: dict[str, int] = {}
        wid = 0
        for name, pool in dep.pools.items():
            fit = require_fit(model, gpu, pool.attention_tp, dep.dtype, kv_dtype, pool.max_batch_tokens,
                              dep.gpu_memory_utilization, min_kv_tokens=B, pool=name, attn_dp=pool.attention_dp)
            cost = (cost_models or {}).get(name) or make_cost_model(model, gpu, pool.tp, dep.dtype, kv_dtype,
                                                                    dep.engine, profile, attn_dp=pool.attention_dp)
            capacity[name] = fit.kv_tokens // B
            role = "agg" if name == "workers" else name
            self.pools[name] = [Worker(self, wid + i, name, role, pool, cost, capacity[name], B, fast_forward)
                                for i in range(pool.replicas)]
            wid += pool.replicas
        self.routers = {name: Router(dep.router) for name in self.pools}
        self.entry = "workers" if dep.topology == "agg" else "prefill"
        # frontend: HTTP, tokenisation, routing before a request reaches a worker (Efficiency.ttft_overhead_s)
        self.frontend_s = request_terms(self.pools[self.entry][0].cost)[0]
        self.workers = [w for ws in self.pools.values() for w in ws]
        self.kvm = attach_kv(self, workload, model.kv_bytes_per_token(kv_dtype))  # prefix caches, kv_aware
        self.fail_reason = self._fail_reasons(model.max_context, capacity, B)
        if dep.topology == "disagg":
            self.links = {w.wid: KVLink(self.env, dep.kv_link.bandwidth_bytes_s, dep.kv_link.latency_s)
                          for w in self.pools["prefill"]}
            ranks = min(dep.prefill.attention_tp, dep.decode.attention_tp)  # the GPUs holding one sequence's KV
            self.kv_bytes = isl * model.kv_bytes_per_token(kv_dtype) / ranks
        self.serving = self.pools  # the replicas routers pick from; faults and scaling keep their own lists
        self.ops = attach_ops(self)  # None without faults, scaling or autoscaling (simulator/faults.py)
        self.done = 0
        self.next_row = 0
        self.stopped: dict | None = None  # run_until_missed stopped the run: when, and what had missed by then
        if workload.closed_loop:
            if workload.concurrency < 1:
                raise InputError(f"concurrency must be >= 1 client, got {workload.concurrency}", where=workload.source)
            clients = min(int(workload.concurrency), n)
            if closed_loop_stagger_s > 0:
                for i in range(clients):
                    self.env.timeout(i * closed_loop_stagger_s).callbacks.append(lambda _ev: self.send_next(1))
            else:
                self.send_next(clients)
        else:
            self.env.process(self._arrivals(np.argsort(arrival, kind="stable")))

    def _fail_reasons(self, max_context: int, capacity: dict[str, int], B: int) -> np.ndarray:
        """Why each request can never be served (empty string: it can)."""
        S = self.seqs
        reason = np.full(S.n, "", dtype=object)
        whole = S.isl + S.osl
        checks = [(whole > max_context, f"isl + osl exceeds the model's max context ({max_context} tokens)")]
        if self.entry == "workers":
            checks.append((blocks_for(whole, B) > capacity["workers"],
                           f"isl + osl exceeds a replica's KV capacity ({capacity['workers'] * B} tokens)"))
        else:
            checks.append((blocks_for(whole, B) > capacity["decode"],
                           f"isl + osl exceeds a decode replica's KV capacity ({capacity['decode'] * B} tokens)"))
            checks.append((blocks_for(S.isl, B) > capacity["prefill"],
                           f"isl exceeds a prefill replica's KV capacity ({capacity['prefill'] * B} tokens)"))
        for bad, why in reversed(checks):
            reason[bad] = why
        return reason

    # ---- the request path --------------------------------------------------------------------
    def _arrivals(self, order: np.ndarray):
        env, arrival = self.env, self.seqs.arrival_s
        for r in order.tolist():
            if arrival[r] > env.now:
                yield env.timeout(arrival[r] - env.now)
            if not self._send(r):
                self._completed(np.array([r]))

    def send_next(self, count: int) -> None:
        """Closed loop: ``count`` clients are free; each sends the next row (a refused row frees it again)."""
        while count > 0 and self.next_row < self.seqs.n:
            r = self.next_row
            self.next_row += 1
            self.seqs.arrival_s[r] = self.env.now
            if self._send(r):
                count -= 1
            else:
                self._completed(np.array([r]))

    def _send(self, r: int) -> bool:
        """Route request ``r`` to its first worker, ``frontend_s`` after it is sent; False if it can never be
        served (then it has failed)."""
        S = self.seqs
        if self.fail_reason[r]:
            S.outcome[r] = FAILED
            S.fail_reason[r] = self.fail_reason[r]
            return False
        if self.frontend_s > 0:
            self.env.timeout(self.frontend_s).callbacks.append(lambda _ev: self.route(r))
        else:
            self.route(r)
        return True

    def route(self, r: int) -> None:
        """Send ``r`` to a replica of the entry pool now (a retry comes here: no second trip through the frontend)."""
        S = self.seqs
        ws = self.serving[self.entry]
        if not ws:  # every replica is down or draining
            self.ops.no_worker(r, self.entry)
            return
        w = self.routers[self.entry].pick(ws, r)
        w.load += 1
        S.prefill_worker[r] = w.wid
        if self.entry == "workers":
            S.decode_worker[r] = w.wid
        w.add(r)

    def handoff(self, r: int, prefill: Worker) -> None:
        """Disagg: ``r``'s prompt is prefilled; a decode worker reserves blocks, then the KV moves."""
        ws = self.serving["decode"]
        if not ws:
            self.ops.no_worker(r, "decode")
            return
        w = self.routers["decode"].pick(ws, r)
        w.load += 1
        self.seqs.decode_worker[r] = w.wid
        w.reserve(r)

    def start_transfer(self, r: int) -> None:
        S = self.seqs
        S.transfer_start_s[r] = self.env.now
        kv_bytes = float(self.kv_bytes[r])
        if self.kvm is not None:  # only the prompt blocks the decode worker lacks move
            kv_bytes *= 1.0 - self.kvm.decode_hit_tokens[r] / S.isl[r]
        done = lambda: self._transfer_done(r)  # noqa: E731
        if self.ops is not None:  # lost or slowed (faults.py)
            kv_bytes, done = self.ops.transfer(r, kv_bytes, done)
        self.links[int(S.prefill_worker[r])].send(kv_bytes, done)

    def _transfer_done(self, r: int) -> None:
        S, now = self.seqs, self.env.now
        self.workers[int(S.prefill_worker[r])].release_xfer(r)
        S.transfer_end_s[r] = now
        if np.isnan(S.first_token_s[r]):  # set already for a request re-prefilled after a fault
            S.first_token_s[r] = now
        S.last_token_s[r] = now
        S.computed[r] = S.target[r]  # the prompt (plus tokens streamed before a fault); generated is 1 more
        self.workers[int(S.decode_worker[r])].add_ready(r)

    def finish(self, rs: np.ndarray) -> None:
        self.complete(rs, OK)

    def complete(self, rs: np.ndarray, outcome: int, reason: str = "") -> None:
        """Requests ``rs`` end with ``outcome`` (OK, or FAILED for ``reason``); a closed loop's clients that sent
        them send their next."""
        self.seqs.outcome[rs] = outcome
        if reason:
            self.seqs.fail_reason[rs] = reason
        self._completed(rs)
        if self.workload.closed_loop:
            self.send_next(len(rs))

    def _completed(self, rs: np.ndarray) -> None:
        """The first ``warmup_requests`` outcomes are left out of the metrics."""
        unmeasured = max(0, self.workload.warmup_requests - self.done)
        self.seqs.measured[rs[:unmeasured]] = False
        self.done += len(rs)

    # ---- stopping a hopeless run ---------------------------------------------------------------
    CHECKS = 40  # times over the arrival span a run that may stop early looks at its requests

    def run_until_missed(self, slo: SLO) -> None:
        """Run as env.run() does, looking every slice of the arrival span at the requests certain to miss a target
        (failed, a first token later than the TTFT target, a TPOT over its target); stop once they outnumber what
        the attainment allows, even if every warm-up request is among them."""
        env, S = self.env, self.seqs
        span = float(np.nanmax(S.arrival_s)) if S.n else 0.0
        step = max(span / self.CHECKS, 1e-3)
        warm = self.workload.warmup_requests
        allowed = (1.0 - slo.attainment) * (S.n - warm) + warm
        check_at = step
        while env.peek() < np.inf:  # what env.run() does, event by event, looking up every `step` seconds
            env.step()
            if env.now < check_at:
                continue
            check_at = env.now + step
            late, slow, failed = self.certain_misses(slo)
            if np.count_nonzero(late | slow | failed) > allowed:
                self.stopped = {"at_s": env.now, "ttft_missed": int(late.sum()), "tpot_missed": int(slow.sum()),
                                "failed": int(failed.sum())}
                return

    def certain_misses(self, slo: SLO) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Requests certain to miss the TTFT target, the TPOT target, or to have failed (boolean masks)."""
        S, now = self.seqs, self.env.now
        ttft_s, tpot_s = slo.ttft_ms * 1e-3, slo.tpot_ms * 1e-3
        late = np.where(np.isnan(S.first_token_s), (S.arrival_s <= now) & (now - S.arrival_s > ttft_s),
                        S.first_token_s - S.arrival_s > ttft_s)
        # TPOT = (last - first token) / (osl - 1): a request decoding this long already exceeds it, however its
        # remaining tokens go
        end = np.where(S.outcome == OK, S.last_token_s, now)
        slow = (S.osl > 1) & ((end - S.first_token_s) > tpot_s * np.maximum(S.osl - 1, 1))
        return late, slow, S.outcome == FAILED

    # ---- results -----------------------------------------------------------------------------
    def result(self, slo: SLO | None = None) -> SimResult:
        S = self.seqs
        pending = int((S.outcome == PENDING).sum())
        if pending and self.stopped is None:
            raise RuntimeError(f"simulator bug: {pending} requests never finished (first: {np.argmax(S.outcome == 0)})")
        req = self.workload.requests
        ttft = S.first_token_s - S.arrival_s
        df = pd.DataFrame({
            "request_id": req["request_id"].to_numpy(),
            "arrival_s": S.arrival_s, "isl": S.isl, "osl": S.osl,
            "prefill_start_s": S.prefill_start_s, "prefill_end_s": S.prefill_end_s,
            "transfer_start_s": S.transfer_start_s, "transfer_end_s": S.transfer_end_s,
            "first_token_s": S.first_token_s, "last_token_s": S.last_token_s,
            "preemptions": S.preemptions, "prefill_worker": S.prefill_worker, "decode_worker": S.decode_worker,
            "outcome": pd.Series(S.outcome).map(OUTCOMES).to_numpy(), "fail_reason": S.fail_reason,
            "ttft_s": ttft,
            "tpot_s": np.where(S.osl > 1, (S.last_token_s - S.first_token_s) / np.maximum(S.osl - 1, 1), np.nan),
            "e2e_s": S.last_token_s - S.arrival_s,
            "measured": S.measured,
        })
        rows = [(t, w.wid, w.pool_name, b, q, kv, it) for w in self.workers for (t, b, q, kv, it) in w.series]
        workers = pd.DataFrame(rows, columns=["time_s", "worker", "pool", "batch_size", "queue_len", "kv_blocks_used",
                                              "iterations"])
        end = self.env.now
        util = {name: (sum(w.busy_s for w in ws) / (len(ws) * end) if end > 0 else 0.0)
                for name, ws in self.pools.items()}
        peak = {name: max((w.peak_running for w in self.workers if w.pool_name == name), default=0)
                for name in self.pools}
        return SimResult(requests=df, workers=workers, itl=self.itl.arrays(), gpus=self.dep.gpus, utilization=util,
                         iterations=sum(w.iterations for w in self.workers), end_s=end,
                         deployment=f"{self.dep.model} on {self.dep.gpu} {self.dep.dtype}: {self.dep.describe()}",
                         extra={"kv": None if self.kvm is None else self.kvm.result()},
                         slo=slo, stopped=self.stopped, peak_seqs=peak)
