"""Scoring a unit by simulation: goodput by bisection over simulated rates, or the fewest copies that
carry a fixed load (rate, clients or trace). Every figure here comes out of a discrete-event run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from planner.screen import Estimate, Screen
from planner.space import Space, max_copies, scale, unit_key
from simulator import SLO, simulate
from simulator.deployment import Deployment
from traces.synthetic import synthetic_workload
from traces.workload import Workload

TIE = 0.02  # unit scores this close count as equal: the deployment that serves more in total is preferred


@dataclass(frozen=True)
class Load:
    """Traffic a deployment must carry. All None: find the highest rate it sustains (goodput)."""

    rate: float | None = None  # req/s, Poisson
    concurrency: int | None = None  # closed-loop clients
    trace: Workload | None = None

    @property
    def fixed(self) -> bool:
        return self.rate is not None or self.concurrency is not None or self.trace is not None

    def describe(self) -> str:
        if self.trace is not None:
            return f"trace {self.trace.source} ({len(self.trace)} requests)"
        if self.concurrency is not None:
            return f"{self.concurrency} concurrent clients"
        return f"{self.rate:g} req/s Poisson" if self.rate is not None else "goodput (highest rate meeting targets)"


@dataclass
class Probe:
    """One simulation: a deployment under one load, and whether it met the targets."""

    rate_rps: float  # offered req/s (closed loop: achieved)
    requests: int
    met: bool
    summary: dict
    wall_s: float


@dataclass
class Evaluation:
    """What simulation says of one unit."""

    key: str
    unit: Deployment
    feasible: bool  # meets both targets at some rate (goodput) or at the load with <= budget GPUs
    score: float  # tokens/s/GPU at the goodput or at the fixed load; 0 when infeasible
    copies: int  # units in the deployment the score refers to
    rate_rps: float  # unit's goodput (req/s), or the load's share each copy carries
    summary: dict  # the simulator's summary at that operating point (the last probe that met, else the lowest)
    constraint: str = ""  # which target failed, by how much, where infeasible
    estimate: Estimate | None = None
    probes: list[Probe] = field(default_factory=list)
    above: tuple[float, str] | None = None  # goodput: the lowest rate probed that missed (req/s, what it missed)
    learned: float | None = None  # goodput: simulated over screened goodput, what it added to the calibration
    pid: int = 0  # the process that simulated it

    @property
    def gpus(self) -> int:
        return self.unit.gpus * self.copies

    @property
    def sims(self) -> int:
        return len(self.probes)

    @property
    def deployment(self) -> Deployment:
        return scale(self.unit, self.copies)


def misses(summary: dict, slo: SLO) -> str:
    """Which target a summary misses and by how much, in words ('' when both are met)."""
    p = slo.stat
    stopped = summary.get("stopped_early")
    if stopped:
        n = summary.get("requests") or 1
        what = [f"{name} for {stopped[k] / n:.0%} of requests" for k, name in
                (("ttft_missed", f"TTFT > {slo.ttft_ms:g} ms"), ("tpot_missed", f"TPOT > {slo.tpot_ms:g} ms"),
                 ("failed", "failed")) if stopped.get(k)]
        return (f"{', '.join(what)} by {stopped['at_s']:,.0f} s (simulation stopped: more than "
                f"{1 - slo.attainment:.0%} miss)")
    out = []
    for name, target in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms)):
        got = (summary.get(f"{name.lower()}_ms") or {}).get(p)
        if got is None:
            if name == "TTFT":
                out.append("no request completed")
            continue
        if got > target:
            out.append(f"{p} {name} {got:.0f} ms > {target:g} ms")
    att = summary.get("slo_attainment")
    if not out and att is not None and att < slo.attainment:
        out.append(f"attainment {att:.0%} < {slo.attainment:.0%}")
    return ", ".join(out)


@dataclass
class Evaluator:
    space: Space
    screen: Screen
    slo: SLO
    isl: object  # int, LengthDist or spec: what synthetic_workload takes
    osl: object
    load: Load = field(default_factory=Load)
    seed: int = 0
    profile: object | None = None
    min_requests: int = 150
    max_requests: int = 800
    horizon_e2e: float = 5.0  # simulated time per probe, in units of one request's end-to-end latency
    tolerance: float = 0.10  # bisection stops when hi / lo < 1 + tolerance
    max_probes: int = 6
    calibration: dict[str, list[float]] = field(default_factory=dict)  # topology -> simulated / screened goodput
    efficiency: object | None = None  # `--calibration`: fitted roofline factors for every simulation
    perf_db: str | None = None  # `--perf-db`: AIConfigurator's tables for every simulation

    # ---- one simulation --------------------------------------------------------------------------
    def run(self, dep: Deployment, workload: Workload, rate: float | None = None,
            stop_when_missed: bool = True) -> tuple[Probe, object]:
        """Simulate; ``rate`` is the Poisson rate the workload was drawn at (else its realised rate). A run that
        misses for certain stops there unless ``stop_when_missed`` is False (a run whose latencies are shown)."""
        t0 = time.perf_counter()
        cms = None
        if self.efficiency is not None or self.perf_db is not None:
            from planner.calibrate import cost_models  # noqa: PLC0415

            cms = cost_models(dep, self.efficiency, self.perf_db)
        result = simulate(dep, workload, seed=self.seed, profile=self.profile, slo=self.slo, cost_models=cms,
                          stop_when_missed=stop_when_missed)
        summary = result.summary(self.slo)
        if rate is None:
            rate = workload.rate if not workload.closed_loop else (summary.get("throughput_tok_s") or 0.0) / max(
                float(workload.requests["osl"].mean()), 1.0)
        return Probe(float(rate), len(workload), bool(summary["slo_met"]), summary, time.perf_counter() - t0), result

    def requests_for(self, rate: float, est: Estimate | None) -> int:
        """Enough requests that the run lasts several end-to-end latencies past its warm-up."""
        e2e = 1.0
        if est is not None and math.isfinite(est.ttft_s) and math.isfinite(est.tpot_s):
            e2e = est.ttft_s + est.tpot_s * self.screen.osl
        return int(np.clip(rate * self.horizon_e2e * e2e, self.min_requests, self.max_requests))

    def workload(self, rate: float | None = None, concurrency: int | None = None, requests: int = 200,
                 copies: int = 1, warmup: int | None = None) -> Workload:
        """The unit's share of the load: synthetic at ``rate`` or ``concurrency``, or every ``copies``-th
        request of the trace; the first ``warmup`` requests (default a tenth) are left out of the metrics."""
        if self.load.trace is not None:
            df = self.load.trace.requests.iloc[::copies].reset_index(drop=True)
            df["request_id"] = np.arange(len(df))
            return self.load.trace.with_requests(df, source=f"{self.load.trace.source} (1/{copies})")
        warm = requests // 10 if warmup is None else warmup  # they meet an empty system
        return synthetic_workload(requests=requests, isl=self.isl, osl=self.osl, rate=rate, concurrency=concurrency,
                                  seed=self.seed, warmup_requests=warm)

    def probe_rate(self, dep: Deployment, rate: float, requests: int) -> Probe:
        return self.run(dep, self.workload(rate=rate, requests=requests), rate=rate)[0]

    # ---- goodput ---------------------------------------------------------------------------------
    def goodput(self, unit: Deployment, est: Estimate) -> Evaluation:
        """Highest simulated rate at which the unit meets both targets (bisection), as tokens/s/GPU.

        The first probe is the screen's estimate corrected by what earlier units of the same topology
        measured against theirs, so that after a few units the bracket starts tight."""
        probes: list[Probe] = []
        seen = self.calibration.get(unit.topology, [])
        ratio = float(np.median(seen)) if seen else 1.0
        step = 1.15 if len(seen) >= 2 else 1.6
        r = est.goodput_rps * ratio if est.goodput_rps > 0 else 0.5 / max(
            self.screen.osl * self.slo.tpot_ms * 1e-3, 1e-3)
        n = self.requests_for(r, est)  # one arrival pattern, stretched: every probe sees the same requests
        lo: Probe | None = None
        hi: Probe | None = None
        while len(probes) < self.max_probes:
            p = self.probe_rate(unit, r, n)
            probes.append(p)
            if p.met:
                lo = p if lo is None or p.rate_rps > lo.rate_rps else lo
            else:
                hi = p if hi is None or p.rate_rps < hi.rate_rps else hi
            if lo is None:
                r = hi.rate_rps / step
            elif hi is None:
                r = lo.rate_rps * step
            elif hi.rate_rps / lo.rate_rps < 1 + self.tolerance:
                break
            else:
                r = math.sqrt(lo.rate_rps * hi.rate_rps)
        learned = lo.rate_rps / est.goodput_rps if lo is not None and est.goodput_rps > 0 else None
        if learned is not None:
            self.calibration.setdefault(unit.topology, []).append(learned)
        osl = float(self.screen.osl)
        if lo is None:
            lowest = min(probes, key=lambda q: q.rate_rps)
            return Evaluation(unit_key(unit), unit, False, 0.0, 1, 0.0, lowest.summary,
                              f"misses targets even at {lowest.rate_rps:.3g} req/s: {misses(lowest.summary, self.slo)}",
                              est, probes)
        above = None if hi is None else (hi.rate_rps, misses(hi.summary, self.slo))
        return Evaluation(unit_key(unit), unit, True, lo.rate_rps * osl / unit.gpus, 1, lo.rate_rps, lo.summary, "",
                          est, probes, above, learned)

    # ---- fixed load ------------------------------------------------------------------------------
    def share(self, unit: Deployment, copies: int, est: Estimate | None) -> Probe:
        """Simulate one unit carrying 1/copies of the load."""
        if self.load.concurrency is not None:
            clients = math.ceil(self.load.concurrency / copies)
            return self.run(unit, self.workload(concurrency=clients, requests=max(self.min_requests, 4 * clients)))[0]
        if self.load.trace is not None:
            return self.run(unit, self.workload(copies=copies))[0]
        rate = self.load.rate / copies
        return self.probe_rate(unit, rate, self.requests_for(rate, est))

    def offered_rps(self, est: Estimate | None) -> float | None:
        """The fixed load as req/s: the rate, the trace's mean rate, or N clients over the estimated latency."""
        if self.load.rate is not None:
            return self.load.rate
        if self.load.trace is not None:
            return self.load.trace.rate
        if self.load.concurrency is not None and est is not None and math.isfinite(est.ttft_s + est.tpot_s):
            return self.load.concurrency / max(est.ttft_s + est.tpot_s * self.screen.osl, 1e-9)
        return None

    def fewest_copies(self, unit: Deployment, est: Estimate, max_gpus: int | None = None) -> Evaluation:
        """The fewest copies of the unit, within the GPU budget (and ``max_gpus``: more could not win), whose
        share of the load meets both targets."""
        kmax = max_copies(self.space, unit) if max_gpus is None else min(max_copies(self.space, unit),
                                                                        max_gpus // unit.gpus)
        rate = self.offered_rps(est)
        k = math.ceil(rate / est.goodput_rps) if est.goodput_rps > 0 and rate is not None else 1
        k = int(np.clip(k, 1, kmax))
        results: dict[int, Probe] = {}
        probes: list[Probe] = []
        lo, hi = 0, None  # the most copies known to miss, the fewest known to meet
        while len(probes) < self.max_probes:
            p = self.share(unit, k, est)
            results[k] = p
            probes.append(p)
            if p.met:
                hi = k
            else:
                lo = k
            if (hi is not None and hi - lo <= 1) or (hi is None and lo >= kmax):
                break
            # from the screen's guess: half as many again while they miss, then halve the bracket
            k = min(kmax, lo + max(1, lo // 2)) if hi is None else (lo + hi) // 2
        met = sorted(k for k, p in results.items() if p.met)
        if not met:
            worst = max(results)
            copies = f"{worst} cop{'y' if worst == 1 else 'ies'}"
            return Evaluation(unit_key(unit), unit, False, 0.0, worst, results[worst].rate_rps,
                              results[worst].summary, f"misses targets with {copies} ({worst * unit.gpus} GPUs): "
                              f"{misses(results[worst].summary, self.slo)}", est, probes)
        k = met[0]
        p = results[k]
        return Evaluation(unit_key(unit), unit, True, self.load_tok_s(p, k) / (k * unit.gpus), k, p.rate_rps,
                          p.summary, "", est, probes)

    def load_tok_s(self, p: Probe, copies: int) -> float:
        """Output tokens/s the whole load asks for (closed loop: what the copies achieved)."""
        if self.load.rate is not None:
            return self.load.rate * float(self.screen.osl)
        if self.load.trace is not None:
            return self.load.trace.rate * float(self.load.trace.requests["osl"].mean())
        return p.summary["throughput_tok_s"] * copies

    def evaluate(self, unit: Deployment, est: Estimate, max_gpus: int | None = None) -> Evaluation:
        return self.fewest_copies(unit, est, max_gpus) if self.load.fixed else self.goodput(unit, est)
