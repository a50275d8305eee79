"""A synthetic diurnal load: Poisson arrivals whose rate follows a day's sine, trough at the start, peak
half a period later (``rate(t) = mean x (1 - a cos(2 pi t / period))``, ``a`` set by the peak-to-trough
ratio). For autoscaling replays; a period can be compressed (an hour standing for a day)."""

from __future__ import annotations

import math

import numpy as np

from profiler.errors import InputError
from traces.lengths import length_dist
from traces.workload import Workload, make_requests


def diurnal_rate(t_s, mean_rate: float, peak_to_trough: float, period_s: float):
    """Arrival rate (req/s) at ``t_s``."""
    a = (peak_to_trough - 1.0) / (peak_to_trough + 1.0)
    return mean_rate * (1.0 - a * np.cos(2.0 * math.pi * np.asarray(t_s) / period_s))


def diurnal_workload(*, duration_s: float, mean_rate: float, isl, osl, peak_to_trough: float = 4.0,
                     period_s: float | None = None, seed: int = 0) -> Workload:
    """Requests over ``duration_s`` seconds (one period unless ``period_s``) at a diurnal rate (thinned Poisson,
    seeded); lengths as `synthetic_workload` takes them (int, spec string or length file)."""
    period_s = duration_s if period_s is None else period_s
    if not (duration_s > 0 and mean_rate > 0 and period_s > 0 and peak_to_trough >= 1):
        raise InputError("diurnal load needs duration_s > 0, mean_rate > 0, period_s > 0 and peak_to_trough >= 1")
    arrivals_rng, isl_rng, osl_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    peak = float(diurnal_rate(period_s / 2, mean_rate, peak_to_trough, period_s))
    n_max = arrivals_rng.poisson(peak * duration_s)
    t = np.sort(arrivals_rng.uniform(0.0, duration_s, n_max))
    keep = arrivals_rng.uniform(0.0, peak, n_max) < diurnal_rate(t, mean_rate, peak_to_trough, period_s)
    t = t[keep]
    isl_d, osl_d = length_dist(isl, "isl"), length_dist(osl, "osl")
    source = (f"synthetic diurnal: {len(t)} requests over {duration_s:g} s, mean {mean_rate:g} req/s, peak/trough "
              f"{peak_to_trough:g}, period {period_s:g} s, isl {isl_d}, osl {osl_d}")
    return Workload(make_requests(t, isl_d.sample(len(t), isl_rng), osl_d.sample(len(t), osl_rng)), source=source,
                    format="synthetic")
