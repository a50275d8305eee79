"""Fidelity against measured GPU serving results: replay the dense-model rows and print the error.

    .venv/bin/python bench/fidelity.py [--data data/calibration/silicon_h100_sxm.csv] [--all] [--out DIR]
    .venv/bin/python bench/fidelity.py --held-out [--all]   # other GPUs' rows, never fitted on

Prints coverage, median and p90 absolute percentage error of mean TTFT and TPOT overall and per model,
engine and mode, the targets (dense rows: median TTFT <= 15 %, TPOT <= 10 %; p90 <= 35 % / 25 %; every
row predicted), the rows over each p90 limit per model and engine (where a p90 miss comes from), and the load
effect: at fixed ISL/OSL, TTFT rises with concurrency, and at fixed concurrency TPOT falls as OSL grows, in the
prediction wherever it does in the measurement.

``--held-out`` replays instead the rows of every other GPU in aiconfigurator's public silicon_sample.csv (the
file the H100 rows were taken from; installed with the ``aic`` extra): the factors were fitted on H100 rows
only, so this is how they carry to GPUs pdsim has no measurement of (H200, B200, B300, GB200, GB300). The
H100 targets are not applied to it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from planner.benchmark_rows import DENSE_MODELS, fidelity_sample, load_benchmark
from planner.replay import ape, format_summary, replay, write_replay
from profiler.calibration import FIGURES_FILE, FIT_FILE
from profiler.models import canonical_model_name

DATA = Path(__file__).resolve().parents[1] / "data" / "calibration" / "silicon_h100_sxm.csv"
HELD_OUT_FILE = "silicon_sample.csv"  # beside aiconfigurator_core's systems/data
FITTED_SYSTEM = "h100_sxm"  # what profiler/calibration/h100_fit.json was fitted on
TARGETS = {"ttft_median_ape": 15.0, "tpot_median_ape": 10.0, "ttft_p90_ape": 35.0, "tpot_p90_ape": 25.0}


def trend_agreement(rows: pd.DataFrame, x: str, y: str, keys: list[str]) -> tuple[int, int]:
    """(groups where predicted and measured ``y`` move the same way from the smallest to the largest ``x``,
    groups) over groups of ``keys``; groups where the measurement moves by less than 5 % are left out."""
    agree = total = 0
    for _, g in rows.groupby(keys):
        if g[x].nunique() < 2:
            continue
        g = g.sort_values(x)
        m0, m1 = g[f"silicon_{y}_ms"].iloc[[0, -1]]
        p0, p1 = g[f"pred_{y}_ms"].iloc[[0, -1]]
        if abs(m1 - m0) < 0.05 * m0:
            continue
        total += 1
        agree += int(np.sign(m1 - m0) == np.sign(p1 - p0))
    return agree, total


def over_limit(rows: pd.DataFrame, metric: str, limit: float) -> pd.Series:
    """Rows whose ``metric`` (ttft, tpot) misses by more than ``limit`` percent, counted per model and engine,
    most first: where a p90 target's misses come from."""
    bad = rows[ape(rows[f"pred_{metric}_ms"], rows[f"silicon_{metric}_ms"]) > limit]
    return bad.groupby(["pdsim_model", "backend"]).size().sort_values(ascending=False, kind="stable")


def figures(summary: dict) -> dict:
    """Median and p90 APE of TTFT and TPOT, overall and per engine and mode."""
    keep = ("rows", "ttft_median_ape", "ttft_p90_ape", "tpot_median_ape", "tpot_p90_ape")
    pick = lambda e: {k: e[k] for k in keep}  # noqa: E731
    return {"overall": pick(summary["overall"]), "per_engine": {k: pick(v) for k, v in summary["per_engine"].items()},
            "per_mode": {k: pick(v) for k, v in summary["per_mode"].items()}}


def write_figures(summary: dict, jobs: int) -> None:
    """The error figures of the dense rows beside the fit they measure, and those of the fixed sample the CI
    guard replays (planner.replay.fidelity_sample, every engine and mode): a change to the fit updates both."""
    sample = replay(fidelity_sample(load_benchmark(DATA)), jobs=jobs).summary
    source = DATA.relative_to(DATA.parents[2])
    doc = {"what": f"median and p90 absolute percentage error of mean TTFT and TPOT, dense-model rows of {source}, "
                   "replayed by bench/fidelity.py", "fit": FIT_FILE.name, **figures(summary),
           "ci_sample": {"what": f"planner.replay.fidelity_sample of {source} (tests/test_fidelity_pinned.py)",
                         **figures(sample)}}
    FIGURES_FILE.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")


def held_out_rows() -> pd.DataFrame:
    """The rows of aiconfigurator's silicon_sample.csv measured on GPUs other than the one the factors were
    fitted on."""
    from profiler.perfdb import data_root  # noqa: PLC0415 (raises with the install hint without the extra)

    df = load_benchmark(data_root().parent / HELD_OUT_FILE)
    return df[df["system"].astype(str).str.lower() != FITTED_SYSTEM]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--all", action="store_true", help="every row, not only the dense models")
    ap.add_argument("--out", default=None, help="also write rows.csv, summary.json, report.html here")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--held-out", action="store_true",
                    help="the other GPUs' rows of aiconfigurator's silicon_sample.csv (needs the aic extra)")
    ap.add_argument("--write-figures", action="store_true",
                    help=f"store the dense H100 figures in {FIGURES_FILE.name} (`plan` weighs its headroom by them)")
    args = ap.parse_args()
    if args.held_out:
        df = held_out_rows()
        args.data = f"{HELD_OUT_FILE} without {FITTED_SYSTEM}"
    else:
        df = load_benchmark(args.data)
    if not args.all:
        df = df[df["model_path"].map(lambda p: canonical_model_name(str(p)) in DENSE_MODELS)]
    t0 = time.time()
    result = replay(df, jobs=args.jobs)
    wall = time.time() - t0
    s = result.summary
    print(format_summary(s))
    print(f"\nreplayed {s['rows']} rows in {wall:.0f} s ({args.jobs} processes)")
    rows = result.rows[result.rows["skip_reason"] == ""]
    a, n = trend_agreement(rows[rows["mode"] == "agg"], "batch_size", "ttft",
                           ["pdsim_gpu", "pdsim_model", "backend", "tp_size", "isl", "osl"])
    print(f"load effect: TTFT vs concurrency (fixed ISL/OSL/TP) moves as measured in {a}/{n} groups")
    a, n = trend_agreement(rows[rows["mode"] == "agg"], "osl", "tpot",
                           ["pdsim_gpu", "pdsim_model", "backend", "tp_size", "isl", "batch_size"])
    print(f"load effect: TPOT vs OSL (fixed ISL/concurrency/TP) moves as measured in {a}/{n} groups")
    if not args.all and not args.held_out:
        o = s["overall"]
        print(f"\ntargets (dense rows): coverage {s['predicted']}/{s['rows']} "
              f"{'met' if s['predicted'] == s['rows'] else 'MISSED'}")
        for k, limit in TARGETS.items():
            print(f"  {k:16s} {o[k]:6.1f} %  (target <= {limit:.0f} %)  {'met' if o[k] <= limit else 'MISSED'}")
        print(f"rows over a p90 limit, by model and engine (a p90 target allows {len(rows) // 10} of {len(rows)}):")
        for metric in ("ttft", "tpot"):
            limit = TARGETS[f"{metric}_p90_ape"]
            by = over_limit(rows, metric, limit)
            print(f"  {metric.upper()} over {limit:.0f} %: {int(by.sum())} (" +
                  ", ".join(f"{m} {e} {n}" for (m, e), n in by.items()) + ")")
    if args.write_figures:
        if args.all or args.held_out:
            raise SystemExit("--write-figures stores the dense H100 rows' figures: leave out --all and --held-out")
        write_figures(s, args.jobs)
        print(f"wrote {FIGURES_FILE}")
    if args.out:
        write_replay(result, args.out, source=str(args.data))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
