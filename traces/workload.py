"""Workload: the requests a simulation (or a live replay) serves, and where they came from.

``requests`` is a DataFrame with one row per request, sorted by arrival:

- ``request_id`` int, 0..n-1 in arrival order
- ``arrival_s``  float seconds from the start (NaN for closed-loop workloads: the client decides)
- ``isl``        int prompt tokens (>= 1)
- ``osl``        int output tokens (>= 1)
- ``hash_ids``   optional: list of prefix block hashes (block size ``hash_block_tokens``)
- ``session_id`` optional: conversation the request belongs to

A closed-loop workload (``concurrency`` set) has N clients that each send the next request as soon
as their previous one has finished; the first ``warmup_requests`` are left out of the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from profiler.errors import InputError

REQUIRED_COLUMNS = ("request_id", "arrival_s", "isl", "osl")


@dataclass(frozen=True)
class Workload:
    requests: pd.DataFrame
    source: str = "synthetic"
    concurrency: int | None = None  # closed loop: this many clients
    warmup_requests: int = 0  # closed loop: requests left out of the metrics
    hash_block_tokens: int = 512  # tokens per entry of hash_ids
    dropped: int = 0  # rows the loader dropped (counted, never silent)
    drop_reason: str = ""
    format: str = ""  # the loader's format (azure, mooncake, ...), "synthetic", or "" when built by hand

    def __post_init__(self):
        missing = [c for c in REQUIRED_COLUMNS if c not in self.requests.columns]
        if missing:
            raise InputError(f"workload lacks columns {missing}", where=self.source)

    def __len__(self) -> int:
        return len(self.requests)

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    @property
    def duration_s(self) -> float:
        a = self.requests["arrival_s"]
        return float(a.max() - a.min()) if len(a) > 1 and not self.closed_loop else 0.0

    @property
    def rate(self) -> float:
        d = self.duration_s
        return (len(self) - 1) / d if d > 0 else float("nan")

    def with_requests(self, requests: pd.DataFrame, **changes) -> Workload:
        return replace(self, requests=requests, **changes)


def make_requests(arrival_s, isl, osl, **extra) -> pd.DataFrame:
    """Build a valid, sorted request table from columns (arrays or scalars broadcast)."""
    arrival = np.asarray(arrival_s, dtype=np.float64)
    n = len(arrival)
    isl = np.broadcast_to(np.asarray(isl, dtype=np.int64), (n,))
    osl = np.broadcast_to(np.asarray(osl, dtype=np.int64), (n,))
    df = pd.DataFrame({"arrival_s": arrival, "isl": isl, "osl": osl})
    for k, v in extra.items():
        df[k] = v
    if n and not np.isnan(arrival).all():
        df = df.sort_values("arrival_s", kind="stable").reset_index(drop=True)
    df.insert(0, "request_id", np.arange(n, dtype=np.int64))
    return df
