"""What a workload looks like: counts, rate, burstiness, length percentiles."""

from __future__ import annotations

import math

import numpy as np

from traces.workload import Workload

PERCENTILES = (50, 90, 99)


def _lengths(x: np.ndarray) -> dict:
    p = np.percentile(x, PERCENTILES) if len(x) else [math.nan] * len(PERCENTILES)
    return {"mean": float(np.mean(x)), **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p, strict=True)},
            "max": int(np.max(x))}


def burstiness(arrival_s: np.ndarray) -> float:
    """Coefficient of variation of the inter-arrival gaps: 1 for Poisson, 0 for constant, > 1 bursty."""
    gaps = np.diff(np.sort(arrival_s))
    if len(gaps) < 2:
        return math.nan
    with np.errstate(over="ignore", invalid="ignore"):  # gaps near the float limit: an infinite mean is NaN below
        mean = np.mean(gaps)
        # the std of gaps / mean, not std / mean: squaring gaps of 1e200 s would overflow (and warn on stderr)
        return float(np.std(gaps / mean)) if 0 < mean < math.inf else math.nan


def trace_info(w, format: str | None = None, **load_kwargs) -> dict:
    """Summary of a Workload (or of the trace file at a path, loaded with load_trace). NaN where undefined."""
    if not isinstance(w, Workload):
        from traces.loader import load_trace  # noqa: PLC0415

        w = load_trace(w, format, **load_kwargs)
    r = w.requests
    info = {
        "source": w.source, "format": w.format, "requests": len(w), "dropped": w.dropped,
        "drop_reason": w.drop_reason, "concurrency": w.concurrency, "duration_s": w.duration_s,
        "rate": w.rate, "burstiness": math.nan if w.closed_loop else burstiness(r["arrival_s"].to_numpy()),
        "isl": _lengths(r["isl"].to_numpy()), "osl": _lengths(r["osl"].to_numpy()),
    }
    if "hash_ids" in r:
        blocks = np.concatenate([np.asarray(h, dtype=np.int64) for h in r["hash_ids"]] or [np.empty(0, np.int64)])
        info["hash_blocks"], info["unique_hash_blocks"] = len(blocks), len(np.unique(blocks))
        info["hash_block_tokens"] = w.hash_block_tokens
    if "session_id" in r:
        info["sessions"] = int(r["session_id"].nunique())
    return info


def info_table(info: dict) -> str:
    """The info dict as a small aligned text table."""
    rows = [("source", info["source"]), ("format", info["format"]), ("requests", f"{info['requests']:,}")]
    if info["dropped"]:
        rows.append(("dropped", f"{info['dropped']:,} ({info['drop_reason']})"))
    if info["concurrency"] is not None:
        rows.append(("concurrency", f"{info['concurrency']} clients (closed loop)"))
    else:
        rows += [("duration", f"{info['duration_s']:,.1f} s"), ("rate", f"{info['rate']:.3f} req/s"),
                 ("burstiness", f"{info['burstiness']:.2f} (CV of inter-arrival gaps; Poisson = 1)")]
    for key in ("hash_blocks", "unique_hash_blocks", "sessions"):
        if key in info:
            rows.append((key.replace("_", " "), f"{info[key]:,}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    cols = ["mean", *(f"p{q}" for q in PERCENTILES), "max"]
    lines += ["", f"{'tokens':<{width}}  " + "".join(f"{c:>10}" for c in cols)]
    for name in ("isl", "osl"):
        lines.append(f"{name:<{width}}  " + "".join(f"{info[name][c]:>10,.0f}" for c in cols))
    return "\n".join(lines)
