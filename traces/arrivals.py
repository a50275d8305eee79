"""Open-loop arrival processes: when requests arrive, at a mean rate, with a given burstiness."""

from __future__ import annotations

import numpy as np

from profiler.errors import InputError

ARRIVALS = ("poisson", "gamma", "constant")
MIN_CV, MAX_CV = 1e-3, 100.0  # gamma arrivals: nearly constant to extremely bursty (real traces: CV 1-10)


def arrival_times(n: int, rate: float, arrival: str = "poisson", cv: float = 1.0,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """n arrival times in seconds, the first at 0, at mean `rate` req/s.

    poisson: exponential gaps (CV 1); gamma: gamma gaps whose coefficient of variation is `cv`
    (> 1 bursty, < 1 smoother than Poisson); constant: exactly 1/rate apart.
    """
    if arrival not in ARRIVALS:
        raise InputError(f"unknown arrival process {arrival!r}; use one of {', '.join(ARRIVALS)}")
    if not rate > 0 or not np.isfinite(rate):
        raise InputError(f"rate must be a positive number of requests/s, got {rate}")
    if not MIN_CV <= cv <= MAX_CV:  # gamma's shape is 1/cv^2: 0 or an overflow beyond these
        raise InputError(f"cv (burstiness) must be in [{MIN_CV:g}, {MAX_CV:g}], got {cv}")
    if arrival != "gamma" and cv != 1.0:
        raise InputError(f"cv={cv} needs gamma arrivals; {arrival} arrivals have CV {1 if arrival == 'poisson' else 0}")
    if arrival == "constant":
        return np.arange(n, dtype=np.float64) / rate
    rng = rng if rng is not None else np.random.default_rng(0)
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, n - 1) if n > 1 else np.empty(0)
    else:
        shape = 1.0 / cv**2  # gamma(k, theta): mean k*theta = 1/rate, CV = 1/sqrt(k)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n - 1) if n > 1 else np.empty(0)
    return np.concatenate([[0.0], np.cumsum(gaps)])[:n]
