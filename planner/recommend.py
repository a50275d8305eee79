"""From simulated units to the recommendation: the best units simulated again as whole deployments, the
choice among them (planner/decide.py), its neighbours one step smaller (a fixed load: is it minimal?) and
the best of the other topology at the same load within the same budget. Every figure shown for a
deployment comes from one of these whole-deployment runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from planner import decide
from planner.evaluate import Evaluator, Probe, misses
from planner.parallel import calls
from planner.space import Space, infeasible_reason, max_copies, scale
from simulator.deployment import Deployment, parse_deployment
from simulator.metrics import stat_of

FINALISTS = 2  # unit rows, best first and of distinct behaviour, confirmed as whole deployments
OTHER_TRIES = 2  # deployments of the other topology tried at the recommendation's load
BACKOFF = (1.0, 0.93, 0.86, 0.78, 0.7, 0.6, 0.5)  # confirmation rates, as shares of the unit-scaled goodput
CONFIRM_E2E = 10.0  # a confirmation run lasts this many end-to-end latencies (the search's probes: 5)


@dataclass
class Confirmed:
    """A whole deployment simulated under the load it is shown for."""

    deployment: Deployment
    rate_rps: float
    probe: Probe
    result: object  # SimResult (kept for the report; not serialised)
    key: str = ""  # the unit it scales ("" for a neighbour that is no unit of the search)
    role: str = ""  # finalist, one step smaller, other topology
    above: tuple[float, str] | None = None  # the lowest higher rate simulated that missed: (req/s, what it missed)

    @property
    def summary(self) -> dict:
        return self.probe.summary

    @property
    def met(self) -> bool:
        return self.probe.met

    @property
    def tok_s_per_gpu(self) -> float:
        """Output tokens/s per GPU of the offered load (the simulator's own figure includes ramp and drain)."""
        r = self.result.requests if self.result is not None else None
        if r is None or not len(r) or r["arrival_s"].isna().all():
            return float(self.summary.get("tok_s_per_gpu") or 0.0)
        return self.rate_rps * float(r["osl"].mean()) / self.deployment.gpus

    @property
    def usd_per_million_tokens(self) -> float | None:
        """What a million output tokens cost at this load, at the GPU's list price (profiler/prices.py)."""
        from profiler.prices import usd_per_gpu_hour, usd_per_million_tokens  # noqa: PLC0415

        d = self.deployment
        return usd_per_million_tokens(d.gpus, usd_per_gpu_hour(d.gpu), self.tok_s_per_gpu * d.gpus)

    def run(self, percentile: float | str) -> decide.Run:
        return decide.run_of(self.deployment.describe(), self.deployment, self.summary, self.met,
                             self.tok_s_per_gpu * self.deployment.gpus, percentile)

    def to_dict(self) -> dict:
        """What plan.json says of it; a deployment that misses shows no throughput or cost as if it served."""
        d = {"unit": self.key, "role": self.role, "deployment": self.deployment.to_dict(),
             "description": self.deployment.describe(), "gpus": self.deployment.gpus, "rate_rps": self.rate_rps,
             "basis": "whole deployment at the stated load", "met": self.met, "requests": self.probe.requests,
             "summary": self.summary}
        if self.met:
            d |= {"tok_s_per_gpu": self.tok_s_per_gpu, "usd_per_million_tokens": self.usd_per_million_tokens}
        return d


@dataclass
class Recommendation:
    """The choice and every whole-deployment run it rests on."""

    best: Confirmed | None
    other: Confirmed | None  # the other topology at the same load, within the budget
    runs: list[Confirmed] = field(default_factory=list)  # every whole-deployment run, the two above included
    smaller: list[tuple[str, Confirmed]] = field(default_factory=list)  # (what was taken away, its run)
    sims: int = 0


# ---- whole-deployment runs ------------------------------------------------------------------------
def run_whole(ev: Evaluator, dep: Deployment, rate: float, e2e_s: float,
              stop: bool = False) -> tuple[Probe, object]:
    """Simulate the whole deployment under the plan's load (a longer run than the search's probes); ``stop``: a
    run only its verdict is wanted from ends once it misses for certain."""
    load = ev.load
    if load.trace is not None:
        return ev.run(dep, load.trace, stop_when_missed=stop)
    if load.concurrency is not None:
        return ev.run(dep, ev.workload(concurrency=load.concurrency, requests=max(ev.min_requests,
                                                                                  8 * load.concurrency)))
    r = load.rate if load.rate is not None else rate
    n = int(np.clip(r * CONFIRM_E2E * e2e_s, 3 * ev.min_requests, 4 * ev.max_requests))
    return ev.run(dep, ev.workload(rate=r, requests=n), rate=r, stop_when_missed=stop)


def confirm(ev: Evaluator, dep: Deployment, rate: float, e2e_s: float) -> tuple[Confirmed, int]:
    """The whole deployment under the load; with no fixed load, the rate backed off until it meets."""
    tries, above = 0, None
    for share in BACKOFF if not ev.load.fixed else (1.0,):
        probe, result = run_whole(ev, dep, rate * share, e2e_s, stop=True)  # a run that meets never stops early
        tries += 1
        if probe.met:
            break
        above = (probe.rate_rps, misses(probe.summary, ev.slo))
    return Confirmed(dep, probe.rate_rps, probe, result, above=above), tries


def mean_e2e_s(summary: dict) -> float:
    """Mean end-to-end latency of a summary, seconds (how long a run must last to see requests through)."""
    return ((summary.get("e2e_ms") or {}).get("mean") or 1000.0) * 1e-3


def unit_of(row: dict) -> Deployment:
    return parse_deployment(row["unit"], where=f"unit {row['key']}")


def deployment_of(row: dict, space: Space, fixed_load: bool) -> tuple[Deployment, float]:
    """The whole deployment a unit's row stands for, and the rate it should carry (req/s)."""
    unit = unit_of(row)
    copies = row["copies"] if fixed_load else max(1, max_copies(space, unit))
    return scale(unit, copies), row["rate_rps"] * copies


def unit_run(row: dict, space: Space, fixed_load: bool, percentile: float | str) -> decide.Run:
    """A unit row as the Run of the deployment it stands for (its figures are the unit's share of the load)."""
    dep, _ = deployment_of(row, space, fixed_load)
    return decide.run_of(row["key"], dep, row["summary"], row["feasible"], row["score"] * dep.gpus, percentile)


def behaviour(row: dict, percentile: float | str) -> tuple:
    """Units whose simulations came out the same (batch limits that never bound): one stands for all."""
    p = stat_of(percentile)
    s, u = row["summary"], row["unit"]
    shape = tuple((name, u[name]["replicas"], u[name]["tp"]) for name in ("workers", "prefill", "decode") if name in u)
    return shape, row["copies"], (s.get("ttft_ms") or {}).get(p), (s.get("tpot_ms") or {}).get(p), row["score"]


def smaller_neighbours(dep: Deployment, space: Space) -> list[tuple[str, Deployment]]:
    """One step down in each pool: a replica fewer, or (same replicas) the next smaller TP that fits."""
    out = []
    for name, pool in dep.pools.items():
        label = "replica" if name == "workers" else f"{name} replica"
        if pool.replicas > 1:
            out.append((f"one {label} fewer", _with_pool(dep, name, replicas=pool.replicas - 1)))
        smaller = [t for t in space.tp_choices if t < pool.tp]
        if smaller:
            tp = max(smaller)
            cand = _with_pool(dep, name, tp=tp)
            if infeasible_reason(space, cand) is None:
                out.append((f"{'the pool' if name == 'workers' else name} at TP{tp}", cand))
    return out


def _with_pool(dep: Deployment, name: str, **change) -> Deployment:
    return replace(dep, **{name: replace(dep.pools[name], **change)})


# ---- the choice -------------------------------------------------------------------------------------
def recommend(ev: Evaluator, space: Space, rows: list[dict], jobs: int = 1) -> Recommendation:
    """Confirm the best units as whole deployments, choose (decide.choose), make sure a fixed load's choice is
    minimal, and simulate the other topology's best at the same load. Independent runs go side by side in up
    to ``jobs`` processes; the answer does not depend on ``jobs``."""
    slo, fixed = ev.slo, ev.load.fixed
    pct, targets = slo.percentile, (slo.ttft_ms, slo.tpot_ms)
    out = Recommendation(None, None)
    feasible = [r for r in rows if r["feasible"]]
    if not feasible:
        return out
    by_key = {r["key"]: r for r in rows}
    units = decide.order([unit_run(r, space, fixed, pct) for r in feasible], *targets, fixed)
    finalists, seen = [], set()
    for u in units:
        b = behaviour(by_key[u.name], pct)
        if b not in seen:
            seen.add(b)
            finalists.append(by_key[u.name])
        if len(finalists) == FINALISTS:
            break
    known: dict[str, Confirmed] = {}  # whole runs by deployment (and rate, where the load is not fixed)

    def one(dep: Deployment, rate: float, e2e: float, backoff: bool, stop: bool) -> tuple[Confirmed, int]:
        if backoff:
            return confirm(ev, dep, rate, e2e)
        probe, result = run_whole(ev, dep, rate, e2e, stop=stop)
        return Confirmed(dep, probe.rate_rps, probe, result), 1

    def run(specs: list[tuple[Deployment, float, float, str, str, bool]]) -> list[Confirmed]:
        """Whole runs of (deployment, rate, e2e_s, unit key, role, back off?), each simulated once."""
        names = [dep.to_yaml() + ("" if fixed or backoff else f" @{rate:.6g}")
                 for dep, rate, _, _, _, backoff in specs]
        todo = {n: s for n, s in zip(names, specs, strict=True) if n not in known}
        done = calls(one, [(d, r, e, b, role == "one step smaller") for d, r, e, _, role, b in todo.values()], jobs)
        for (name, (_, _, _, key, role, _)), (c, n) in zip(todo.items(), done, strict=True):
            c.key, c.role = key, role
            known[name] = c
            out.runs.append(c)
            out.sims += n
        return [known[n] for n in names]

    if fixed:  # every finalist under the load
        run([(*deployment_of(row, space, fixed), mean_e2e_s(row["summary"]), row["key"], "finalist", True)
             for row in finalists])
        best = _pick(out.runs, pct, targets, fixed)
    else:  # the leader's highest rate that meets (the next finalist if it meets at none), the rest at that rate
        tried = 0
        for row in finalists:
            tried += 1
            dep, rate = deployment_of(row, space, fixed)
            lead = run([(dep, rate, mean_e2e_s(row["summary"]), row["key"], "finalist", True)])[0]
            if lead.above is None and row.get("above") and lead.met:  # met at once: the unit's bisection saw above
                copies = lead.deployment.gpus // max(1, unit_of(row).gpus)
                lead.above = (row["above"]["rate_rps"] * copies, row["above"]["misses"])
            if lead.met:
                break
        run([(deployment_of(row, space, fixed)[0], lead.rate_rps, mean_e2e_s(row["summary"]), row["key"], "finalist",
              False) for row in finalists[tried:]])
        best = _pick(same_load(out.runs, lead, fixed), pct, targets, fixed)
    if fixed:  # the fewest GPUs that carry the load: no deployment one step smaller may meet the targets
        for _ in range(space.budget_gpus):
            steps = smaller_neighbours(best.deployment, space)
            tried = run([(dep, 0.0, mean_e2e_s(best.summary), "", "one step smaller", False) for _, dep in steps])
            out.smaller = [(what, c) for (what, _), c in zip(steps, tried, strict=True)]
            better = _pick([best, *tried], pct, targets, fixed)
            if better is best:
                break
            best = better
    # the other topology's best at the same load, within the budget
    other_topology = "disagg" if best.deployment.topology == "agg" else "agg"
    for u in [u for u in units if u.topology == other_topology][:OTHER_TRIES]:  # until one meets
        row = by_key[u.name]
        dep = deployment_of(row, space, fixed)[0]
        if run([(dep, best.rate_rps, mean_e2e_s(row["summary"]), row["key"], "other topology", False)])[0].met:
            break
    others = [c for c in same_load(out.runs, best, fixed) if c.deployment.topology == other_topology]
    if others:
        choice = _pick([best, *others], pct, targets, fixed)
        if choice is not best:  # the other topology, simulated at the same load, turned out better
            best, others = choice, [best]
        out.other = min(others, key=lambda c: (not c.met, c.run(pct).load(*targets)))
    out.best = best
    return out


def same_load(runs: list[Confirmed], ref: Confirmed, fixed: bool) -> list[Confirmed]:
    """The runs under the load ``ref`` was run at (a fixed load: all of them)."""
    return [c for c in runs if fixed or abs(c.rate_rps - ref.rate_rps) <= 1e-9 * ref.rate_rps]


def _pick(runs: list[Confirmed], pct: float | str, targets: tuple[float, float], fixed: bool) -> Confirmed:
    """decide.choose over ``runs``, which share one load."""
    rs = [c.run(pct) for c in runs]
    return runs[rs.index(decide.choose(rs, *targets, fixed))]

