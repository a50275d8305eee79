"""Synthetic workloads: open loop (an arrival process at a rate) or closed loop (N clients)."""

from __future__ import annotations

import numpy as np

from profiler.errors import InputError
from traces.arrivals import arrival_times
from traces.lengths import length_dist
from traces.workload import Workload, make_requests

MAX_REQUESTS = 10**8  # every request is a row held in memory; the largest real trace (Azure week) has 27 M


def synthetic_workload(*, requests: int, isl, osl, rate: float | None = None, concurrency: int | None = None,
                       arrival: str = "poisson", cv: float = 1.0, seed: int = 0, warmup_requests: int = 0,
                       system_prompts: int = 0, system_tokens: int = 0, sessions: int = 0,
                       reuse: float = 0.0) -> Workload:
    """`requests` requests with lengths `isl`/`osl` (int, LengthDist, spec string or length file).

    Exactly one of `rate` (open loop, req/s, `arrival` process) or `concurrency` (closed loop: N clients,
    arrival_s NaN, each client sends its next request when its last one finishes). When isl and osl name
    the same file, whole rows are resampled so prompt and output lengths stay paired. ``system_prompts`` /
    ``system_tokens`` / ``sessions`` / ``reuse``: shared prompt prefixes (traces/prefixes.py).
    """
    if (rate is None) == (concurrency is None):
        raise InputError("give exactly one of rate (open loop, req/s) or concurrency (closed loop, clients)")
    if not isinstance(requests, int | np.integer) or not 1 <= requests <= MAX_REQUESTS:
        raise InputError(f"requests must be a whole number from 1 to {MAX_REQUESTS:,}, got {requests!r}")
    if concurrency is not None and (not isinstance(concurrency, int | np.integer) or concurrency < 1):
        raise InputError(f"concurrency must be a whole number of clients >= 1, got {concurrency!r}")
    if not 0 <= warmup_requests < requests:
        raise InputError(f"warmup_requests must be in [0, {requests}), got {warmup_requests}")
    # Separate streams, so that a rate sweep with one seed replays the same lengths (common random numbers).
    arrivals_rng, isl_rng, osl_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    isl_dist, osl_dist = length_dist(isl, "isl"), length_dist(osl, "osl")
    if isl_dist.kind == osl_dist.kind == "empirical" and isl_dist.source == osl_dist.source:
        idx = isl_rng.integers(0, len(isl_dist.values), requests)
        isl_tokens, osl_tokens = isl_dist.values[idx], osl_dist.values[idx]
    else:
        isl_tokens, osl_tokens = isl_dist.sample(requests, isl_rng), osl_dist.sample(requests, osl_rng)
    if concurrency is None:
        arrival_s = arrival_times(requests, rate, arrival, cv, arrivals_rng)
        how = f"{arrival}{f' cv {cv:g}' if arrival == 'gamma' else ''} at {rate:g} req/s"
    else:
        arrival_s, how = np.full(requests, np.nan), f"closed loop, {concurrency} clients"
    source = f"synthetic: {requests} requests, {how}, isl {isl_dist}, osl {osl_dist}"
    w = Workload(make_requests(arrival_s, isl_tokens, osl_tokens), source=source, concurrency=concurrency,
                 warmup_requests=warmup_requests, format="synthetic")
    if system_prompts or system_tokens or sessions or reuse:
        from traces.prefixes import add_prefixes

        w = add_prefixes(w, system_prompts=system_prompts, system_tokens=system_tokens, sessions=sessions,
                         reuse=reuse, seed=seed)
    return w
