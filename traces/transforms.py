"""Workload transforms: cut a time window, speed up or slow down, keep the first n, spread ticks."""

from __future__ import annotations

import numpy as np

from profiler.errors import InputError
from traces.workload import Workload, make_requests


def _open_loop(w: Workload, what: str) -> np.ndarray:
    if w.closed_loop:
        raise InputError(f"{what} needs arrival times; a closed-loop workload has none", where=w.source)
    return w.requests["arrival_s"].to_numpy()


def _rebuild(w: Workload, keep: np.ndarray, arrival_s: np.ndarray, note: str) -> Workload:
    """Keep rows `keep` (mask or indices) with new arrival times; ids renumbered in arrival order."""
    df = w.requests.iloc[keep] if keep.dtype != bool else w.requests[keep]
    extra = {c: df[c].to_numpy() for c in df.columns if c not in ("request_id", "arrival_s", "isl", "osl")}
    requests = make_requests(arrival_s, df["isl"].to_numpy(), df["osl"].to_numpy(), **extra)
    return w.with_requests(requests, source=f"{w.source} [{note}]")


def time_window(w: Workload, start_s: float, end_s: float) -> Workload:
    """Requests arriving in [start_s, end_s), their times shifted so that the window starts at 0."""
    if not 0 <= start_s < end_s:
        raise InputError(f"time window needs 0 <= start < end, got [{start_s}, {end_s})")
    a = _open_loop(w, "a time window")
    keep = (a >= start_s) & (a < end_s)
    if not keep.any():
        raise InputError(f"no requests in [{start_s:g}, {end_s:g}) s; the trace spans 0-{w.duration_s:.1f} s",
                         where=w.source)
    return _rebuild(w, keep, a[keep] - start_s, f"window {start_s:g}-{end_s:g} s")


def rescale(w: Workload, speedup: float | None = None, rate: float | None = None) -> Workload:
    """Divide arrival times by `speedup`, or scale them to a mean `rate` (req/s); lengths unchanged."""
    if (speedup is None) == (rate is None):
        raise InputError("rescale needs exactly one of speedup or rate")
    a = _open_loop(w, "rescaling")
    if rate is not None:
        if not rate > 0:
            raise InputError(f"rate must be > 0 req/s, got {rate}")
        if not w.rate > 0:
            raise InputError("cannot rescale to a rate: all requests arrive at the same instant", where=w.source)
        speedup = rate * w.duration_s / (len(w) - 1)  # = rate / w.rate, but w.rate is inf over a 1e-320 s span
        if not 0 < speedup < np.inf:
            raise InputError(f"cannot rescale to {rate:g} req/s: the arrivals span {w.duration_s:g} s", where=w.source)
    if not speedup > 0 or not np.isfinite(speedup):
        raise InputError(f"speedup must be a positive number, got {speedup}")
    note = f"rescaled to {rate:g} req/s" if rate is not None else f"{speedup:g}x speed"
    return _rebuild(w, np.ones(len(a), dtype=bool), a / speedup, note)


def head(w: Workload, n: int) -> Workload:
    """The first n requests (in arrival order)."""
    if n < 1:
        raise InputError(f"head needs n >= 1 requests, got {n}")
    keep = np.arange(min(n, len(w)))
    return _rebuild(w, keep, w.requests["arrival_s"].to_numpy()[keep], f"first {n}")


def spread_ticks(w: Workload, seed: int = 0, tick_s: float | None = None) -> Workload:
    """Spread requests that share a timestamp uniformly over their tick (seeded); first request stays at 0.

    A tick is `tick_s` or, by default, the median gap between distinct timestamps (Mooncake: ~3 s); a
    group never spreads past the next distinct timestamp, so groups keep their order.
    """
    a = _open_loop(w, "spreading ticks")
    times, group, counts = np.unique(a, return_inverse=True, return_counts=True)
    if tick_s is None:
        tick_s = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    width = np.minimum(np.diff(times, append=np.inf), tick_s)[group]
    shared = counts[group] > 1
    u = np.random.default_rng(seed).uniform(0.0, 1.0, len(a))
    spread = a + np.where(shared, u * width, 0.0)
    return _rebuild(w, np.ones(len(a), dtype=bool), spread - spread.min(), f"ticks spread over {tick_s:g} s")
