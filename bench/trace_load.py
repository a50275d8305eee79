"""How fast traces load: each real file in data/traces, then a large Azure-2024-form file made here.

    .venv/bin/python bench/trace_load.py [--rows 1000000]

Prints wall seconds (best of 3) and rows per second. Target: the 19,366-row Azure conv file well under 1 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from traces import load_trace

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"


def best_of(fn, repeat: int = 3) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def azure_2024_file(folder: Path, rows: int) -> Path:
    """Azure-2024-form CSV (`+00:00`, with and without microseconds) with Poisson arrivals at 50 req/s."""
    rng = np.random.default_rng(0)
    t = pd.Timestamp("2024-05-10", tz="UTC") + pd.to_timedelta(np.cumsum(rng.exponential(0.02, rows)), unit="s")
    stamps = pd.Series(t.strftime("%Y-%m-%d %H:%M:%S.%f+00:00"))
    whole = rng.random(rows) < 0.1
    stamps[whole] = pd.Series(t[whole].strftime("%Y-%m-%d %H:%M:%S+00:00"), index=stamps.index[whole])
    path = folder / "azure_2024_big.csv"
    pd.DataFrame({"TIMESTAMP": stamps, "ContextTokens": rng.integers(1, 8000, rows),
                  "GeneratedTokens": rng.integers(1, 1000, rows)}).to_csv(path, index=False)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated Azure-2024-form file")
    args = ap.parse_args()
    print(f"{'file':<60} {'rows':>10} {'wall_s':>8} {'rows/s':>12}")
    files = sorted(p for p in TRACES.glob("*") if p.suffix in (".csv", ".jsonl")) if TRACES.is_dir() else []
    with tempfile.TemporaryDirectory() as tmp:
        files.append(azure_2024_file(Path(tmp), args.rows))
        for path in files:
            rate = 5.0 if "stats" in path.name else None
            wall_s, w = best_of(lambda p=path, r=rate: load_trace(p, rate=r))
            print(f"{path.name:<60} {len(w):>10,} {wall_s:>8.3f} {len(w) / wall_s:>12,.0f}")


if __name__ == "__main__":
    main()
