"""Summary statistics in milliseconds: mean and percentiles, plain or weighted (an ITL sample stands for many
tokens)."""

from __future__ import annotations

import math

import numpy as np

PERCENTILES = (50, 90, 99)


def weighted_percentiles(values: np.ndarray, weights: np.ndarray, qs) -> list[float]:
    """For each q, the smallest value whose cumulative weight reaches q % of the total (inverted CDF)."""
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    i = np.minimum(np.searchsorted(cw, np.asarray(qs, dtype=np.float64) / 100.0 * cw[-1], side="left"), len(cw) - 1)
    return [float(x) for x in values[order[i]]]


def finite(x) -> float | None:
    """``x`` as a float, None where it is nan or infinite (JSON has neither)."""
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def stats_ms(values_s: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """{mean, p50, p90, p99} in milliseconds; None where there are no values."""
    v = np.asarray(values_s, dtype=np.float64)
    keep = ~np.isnan(v)
    v = v[keep]
    if not len(v):
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}}
    if weights is None:
        mean, ps = v.mean(), np.percentile(v, PERCENTILES)
    else:
        w = np.asarray(weights, dtype=np.float64)[keep]
        mean, ps = (v * w).sum() / w.sum(), weighted_percentiles(v, w, PERCENTILES)
    return {"mean": finite(mean * 1e3), **{f"p{q}": finite(p * 1e3) for q, p in zip(PERCENTILES, ps, strict=True)}}
