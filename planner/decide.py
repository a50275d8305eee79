"""Which simulated deployment to recommend: one explicit order, ties within the measured noise, never a
dominated pick. Pure functions over `Run`s (what a simulation says of one deployment), so that the rules
can be read, printed and tested apart from the search."""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.metrics import stat_of

# Seed-to-seed spread of a unit's goodput by bisection (bench/plan_noise.py: 12 % max-min over five seeds,
# sd 4-5 %): throughputs closer than this are not told apart by the simulation, so they tie.
NOISE = 0.10
NEAR = 0.10  # a target binds when its percentile latency is within this share of its limit


def tie_break(fixed_load: bool) -> list[str]:
    """The order among deployments that meet the targets, in words."""
    first = "fewer GPUs" if fixed_load else "tokens/s per GPU within the noise, then more tokens/s in total"
    return [first, "lower latency against the targets", "the simpler deployment (agg, then fewer replicas)"]


@dataclass(frozen=True)
class Run:
    """One deployment under one load, as the plan simulated it."""

    name: str  # the deployment in words (or a unit key)
    topology: str
    gpus: int
    replicas: int
    tok_s: float  # output tokens/s it serves at that load (0 when it misses)
    met: bool
    ttft_ms: float  # at the plan's percentile
    tpot_ms: float

    @property
    def per_gpu(self) -> float:
        return self.tok_s / self.gpus if self.gpus else 0.0

    def ratios(self, ttft_target_ms: float, tpot_target_ms: float) -> tuple[float, float]:
        """Percentile latency over its target, TTFT and TPOT (1.0: at the limit)."""
        return self.ttft_ms / ttft_target_ms, self.tpot_ms / tpot_target_ms

    def load(self, ttft_target_ms: float, tpot_target_ms: float) -> float:
        """The worse of the two ratios: how close to its targets the deployment runs."""
        return max(self.ratios(ttft_target_ms, tpot_target_ms))

    @property
    def complexity(self) -> tuple[int, int]:
        return int(self.topology != "agg"), self.replicas


def _num(x) -> float:
    return math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def run_of(name: str, dep, summary: dict, met: bool, tok_s: float, percentile: float | str) -> Run:
    """A Run from a deployment (simulator.deployment.Deployment) and its simulated summary."""
    p = stat_of(percentile)
    return Run(name, dep.topology, dep.gpus, sum(pool.replicas for pool in dep.pools.values()),
               tok_s if met else 0.0, met, _num((summary.get("ttft_ms") or {}).get(p)),
               _num((summary.get("tpot_ms") or {}).get(p)))


def order(runs: list[Run], ttft_ms: float, tpot_ms: float, fixed_load: bool) -> list[Run]:
    """Best first. Those that meet the targets first; then, with a fixed load (every deployment serves the same
    tokens/s), fewer GPUs; finding the highest rate, those within NOISE of the best tokens/s per GPU, more
    tokens/s in total first; then lower latency against the targets; then the simpler deployment."""
    met = [r for r in runs if r.met]
    best = max((r.per_gpu for r in met), default=0.0)

    def key(r: Run):
        if fixed_load:
            first = (r.gpus,)
        else:
            in_band = r.per_gpu >= (1 - NOISE) * best
            first = (not in_band, -r.tok_s if in_band else -r.per_gpu)
        return (not r.met, *first, r.load(ttft_ms, tpot_ms), r.complexity, r.name)

    return sorted(runs, key=key)


def dominates(b: Run, a: Run) -> bool:
    """``b`` is at least as good as ``a`` on everything and better on latency: it meets the targets with no
    more GPUs, serves as much (within NOISE), and has lower TTFT and lower TPOT."""
    return (b is not a and b.met and b.gpus <= a.gpus and b.tok_s >= (1 - NOISE) * a.tok_s
            and b.ttft_ms < a.ttft_ms and b.tpot_ms < a.tpot_ms)


def choose(runs: list[Run], ttft_ms: float, tpot_ms: float, fixed_load: bool) -> Run | None:
    """The first of ``order`` that no other run dominates (None when nothing was run)."""
    ranked = order(runs, ttft_ms, tpot_ms, fixed_load)
    if not ranked:
        return None
    pick = ranked[0]
    for _ in range(len(ranked)):
        better = [r for r in ranked if dominates(r, pick)]
        if not better:
            break
        pick = better[0]
    return pick


def tied(a: Run, b: Run, fixed_load: bool) -> bool:
    """Both meet and the simulation cannot tell their throughput apart (same GPUs at a fixed load)."""
    if not (a.met and b.met):
        return False
    if fixed_load:
        return a.gpus == b.gpus
    return min(a.per_gpu, b.per_gpu) >= (1 - NOISE) * max(a.per_gpu, b.per_gpu)


def binding(r: Run, ttft_ms: float, tpot_ms: float) -> list[str]:
    """The targets within NEAR of their limit (none: the load, not a target, sizes the deployment)."""
    t, p = r.ratios(ttft_ms, tpot_ms)
    return [name for name, x in (("TTFT", t), ("TPOT", p)) if x >= 1 - NEAR]
