"""Fit the roofline's per-engine efficiency factors on measured serving results; write them to
profiler/calibration/h100_fit.json, which `profiler.roofline.engine_efficiency` loads by default.

    .venv/bin/python bench/calibrate.py              # the recorded recipe: rebuilds h100_fit.json byte for byte
    .venv/bin/python bench/calibrate.py --verify     # refit and compare with the file, writing nothing
    .venv/bin/python bench/calibrate.py --engines vllm --out /tmp/fit.json   # a partial fit, elsewhere

Physics, not rows: a few shares of datasheet peaks (GEMM compute and memory, attention compute and
memory, all-reduce) and fixed costs (per iteration, per layer, per all-reduce call, per sequence per
iteration, per request before the first token) per engine, fitted on the dense agg rows by least squares on
log(predicted / measured) of mean TTFT and TPOT with a soft-L1 loss (a few rows are pathological: queues of
tens of seconds). First the analytic closed-loop steady state (planner.calibrate.closed_loop_estimate,
clients out of step) over every dense agg row of the engine; then the simulator itself replays the benchmark
as it ran (planner.replay.predict_cases) on an evenly spread subsample of ``--sim-rows`` rows, starting from
there. Then the routed experts' share of peak (moe_compute) alone, the same two ways, on the engine's MoE agg
rows (kept where it cuts their TTFT error by MIN_MOE_GAIN points). Every step is deterministic: the file
records the recipe (data and its sha256, GPU, stages) and the last commit of the code it depends on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from planner.benchmark_rows import DENSE_MODELS, load_benchmark, row_case
from planner.calibrate import closed_loop_estimate
from planner.replay import ape, predict_cases
from profiler.calibration import FIT_FILE
from profiler.gpus import resolve_gpu
from profiler.memory import memory_fit
from profiler.models import CATALOG
from profiler.roofline import ENGINE_EFFICIENCY, Efficiency, RooflineCostModel

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "calibration" / "silicon_h100_sxm.csv"
# name: (low, high) bounds. attn_compute 0.3-0.75: FlashAttention reaches 35-75 % of H100's dense peak (below,
# the fit used attention as a knob for TTFT that grows with ISL, which queueing behind prefills explains;
# above, it reached 1.0). HBM shares up to 0.95: what a streaming kernel reaches (above, 0.999).
FACTORS = {
    "gemm_compute": (0.2, 1.0), "gemm_memory": (0.3, 0.95), "attn_compute": (0.3, 0.75), "attn_memory": (0.2, 0.95),
    "comm": (0.1, 1.0), "allreduce_latency_s": (1e-7, 1e-4), "iteration_overhead_s": (1e-4, 0.03),
    "layer_overhead_s": (1e-7, 2e-4),
    "per_seq_overhead_s": (1e-7, 1e-3),
    "ttft_overhead_s": (1e-4, 0.3), "ttft_wait_prefills": (1e-2, 20.0), "moe_compute": (0.05, 1.0),
}
# Fitted apart, on the MoE agg rows of an engine with at least MIN_MOE_ROWS of them, the dense factors held: the
# dense rows cannot see it. Without enough rows the experts run at gemm_compute.
MOE_FACTORS = ("moe_compute",)
MIN_MOE_ROWS = 20
# ... and kept only where it cuts those rows' TTFT median APE by this many points: a factor the rows barely see
# would be a knob, not physics (TRT-LLM's Qwen3-235B rows, 2026-11-29: 30.0 -> 27.7 % at a share of 0.09; at
# 0.07 held-out TRT-LLM MoE TTFT p90 went 85 -> 255 %; vLLM's: 25.6 -> 17.4 % at 0.25, held-out vLLM MoE TTFT
# 44 -> 33 %)
MIN_MOE_GAIN = 5.0
# The steady state cannot express the benchmark's opening burst nor a prefill-first engine's lock-step: the
# factors are refitted by simulating this many rows of each engine.
SIM_ROWS = 80
SIM_STEPS = 12  # least-squares steps of that stage
# Residual weights of (TTFT, TPOT): TPOT is a steady state measured over hundreds of tokens a request, TTFT carries
# the benchmark's queueing (a few rows queue for seconds); at equal weights the fit traded TRT-LLM's TPOT for its
# TTFT (held-out TPOT median 15.5 -> 27.7 %)
WEIGHTS = np.array([1.0, 2.0])


def agg_cases(df: pd.DataFrame, gpu_name: str) -> list:
    cases = [row_case(r, i, gpu_name) for i, (_, r) in enumerate(df.iterrows())]
    return [c for c in cases if not c.skipped and c.mode == "agg"]


def predict(cases: list, eff: Efficiency, gpu_name: str) -> np.ndarray:
    """(n, 2) predicted mean TTFT and TPOT in seconds, closed-loop steady state (planner.calibrate's estimate);
    a client of varied lengths (InferenceMAX's) at its mean lengths, out of step (no admission wait)."""
    gpu = resolve_gpu(gpu_name)
    out = np.empty((len(cases), 2))
    cms: dict = {}
    for i, c in enumerate(cases):
        d, p = c.deployment, c.deployment.workers
        key = (c.model, p.tp, p.attention_dp, d.dtype, d.kv_dtype)
        if key not in cms:
            m = CATALOG[c.model]
            kv = memory_fit(m, gpu, p.attention_tp, d.dtype, d.kv_dtype, p.max_batch_tokens,
                            d.gpu_memory_utilization, p.attention_dp).kv_tokens
            cms[key] = (RooflineCostModel(m, gpu, p.tp, d.dtype, d.kv_dtype, eff, p.attention_dp), kv)
        cm, kv = cms[key]
        out[i] = closed_loop_estimate(d, {"workers": cm}, c.mean_length(c.isl), c.mean_length(c.osl),
                                      c.concurrency, {"workers": max(1, kv // (c.isl + c.osl))},
                                      in_step=c.range_ratio >= 1)
    return out


def simulated(cases: list, eff: Efficiency, jobs: int) -> np.ndarray:
    pred = predict_cases(cases, efficiency=eff, jobs=jobs)
    return np.array([pred[c.row][:2] for c in cases], dtype=float)


def fit_engine(cases: list, meas: np.ndarray, start: Efficiency, gpu_name: str, jobs: int = 0,
               max_nfev: int = 200, names: tuple[str, ...] = tuple(FACTORS)) -> Efficiency:
    """Least squares over ``names``; ``jobs`` > 0 predicts with the simulator in that many processes."""
    names = list(names)
    lo, hi = np.log([FACTORS[n][0] for n in names]), np.log([FACTORS[n][1] for n in names])
    x0 = np.clip(np.log([max(getattr(start, n), FACTORS[n][0]) for n in names]), lo + 1e-6, hi - 1e-6)

    def eff_at(x) -> Efficiency:
        return replace(start, **{n: float(v) for n, v in zip(names, np.exp(x), strict=True)})

    def residuals(x):
        pred = simulated(cases, eff_at(x), jobs) if jobs else predict(cases, eff_at(x), gpu_name)
        r = ((np.log(pred) - np.log(meas)) * WEIGHTS).ravel()
        return np.where(np.isfinite(r), r, 5.0)

    step = 2e-2 if jobs else 1e-3  # the simulator's output moves in steps (whole iterations)
    res = least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.2, diff_step=step,
                        max_nfev=max_nfev)
    return eff_at(res.x)


def fit_two_ways(cases: list, meas: np.ndarray, start: Efficiency, names: tuple[str, ...], args,
                 x0: Efficiency | None = None):
    """Fit ``names`` on the analytic steady state over every case, then on the simulator over an evenly spread
    subsample of ``--sim-rows`` of them (0: the steady state only), from ``x0`` (default ``start``). Returns
    (fitted, predicted at ``start``, predicted fitted, measured), the last three over the rows the last stage
    saw."""
    eff = fit_engine(cases, meas, x0 or start, args.gpu, names=names)
    if not args.sim_rows:
        return eff, predict(cases, start, args.gpu), predict(cases, eff, args.gpu), meas
    pick = np.linspace(0, len(cases) - 1, min(args.sim_rows, len(cases))).round().astype(int)
    sub = [cases[i] for i in pick]
    eff = fit_engine(sub, meas[pick], eff, args.gpu, jobs=args.jobs, max_nfev=args.sim_steps, names=names)
    return eff, simulated(sub, start, args.jobs), simulated(sub, eff, args.jobs), meas[pick]


def error_report(before: np.ndarray, after: np.ndarray, meas: np.ndarray, prefix: str = "") -> dict:
    """Median APE of TTFT and TPOT after and before the fit, keyed ``{prefix}[before_]ttft_median_ape``."""
    return {f"{prefix}{when}{metric}_median_ape": round(float(np.median(ape(pred, meas)[:, i])), 1)
            for when, pred in (("", after), ("before_", before)) for i, metric in enumerate(("ttft", "tpot"))}


def error_line(what: str, r: dict, prefix: str = "") -> str:
    return (f"{what}  TTFT median APE {r[prefix + 'before_ttft_median_ape']:6.1f}% -> "
            f"{r[prefix + 'ttft_median_ape']:5.1f}%   TPOT {r[prefix + 'before_tpot_median_ape']:6.1f}% -> "
            f"{r[prefix + 'tpot_median_ape']:5.1f}%")


def fit_moe(engine: str, cases: list, meas: np.ndarray, dense: Efficiency, args, report: dict) -> Efficiency:
    """``dense`` with moe_compute fitted on the engine's MoE agg rows (fit_two_ways), or ``dense`` itself where
    that gains less than MIN_MOE_GAIN; the fit's error goes to ``report[engine]``."""
    t0 = time.time()
    dense = replace(dense, moe_compute=0.0)  # the experts at gemm_compute (a refit starts from there too)
    eff, before, after, seen = fit_two_ways(cases, meas, dense, MOE_FACTORS, args,
                                            replace(dense, moe_compute=dense.gemm_compute))
    errors = error_report(before, after, seen, "moe_")
    kept = errors["moe_before_ttft_median_ape"] - errors["moe_ttft_median_ape"] >= MIN_MOE_GAIN
    r = report.setdefault(engine, {})
    r.update({"moe_compute_fitted": round(eff.moe_compute, 4), "moe_compute_kept": kept, "moe_rows": len(cases),
              "moe_simulated_rows": len(seen) if args.sim_rows else 0, **errors})
    print(error_line(f"{engine:7s} {len(cases):4d} MoE rows", r, "moe_")
          + f"   moe_compute={eff.moe_compute:.4g} "
          f"{'kept' if kept else f'not kept (gains under {MIN_MOE_GAIN:g} points)'} ({time.time() - t0:.0f} s)")
    return eff if kept else dense


def fit_code(data: Path) -> list[str]:
    """What the fit ran and read: this script, every project module it imported, the data (repo-relative)."""
    files = {Path(__file__).resolve(), data.resolve()}
    files |= {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    return sorted(f.relative_to(ROOT).as_posix() for f in files
                  if f.is_relative_to(ROOT) and not f.is_relative_to(ROOT / ".venv"))


def code_revision(files: list[str]) -> tuple[str, str]:
    """(commit, its date) of the last commit touching ``files``, "+dirty" when they have uncommitted changes;
    ("unknown", "") outside a git checkout."""
    git = ["git", "-C", str(ROOT)]
    try:
        commit, date = subprocess.run([*git, "log", "-1", "--format=%H %cs", "--", *files], check=True,
                                      capture_output=True, text=True).stdout.split()
        dirty = subprocess.run([*git, "status", "--porcelain", "--", *files], check=True, capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError, ValueError):
        return "unknown", ""
    return commit + ("+dirty" if dirty else ""), date


def recipe(args) -> dict:
    """What the file depends on besides the code: the data (path, sha256), the GPU and the stages."""
    data = Path(args.data).resolve()
    shown = data.relative_to(ROOT).as_posix() if data.is_relative_to(ROOT) else str(data)
    return {"command": "bench/calibrate.py" + (f" --engines {args.engines}" if args.engines else ""),
            "data": shown, "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "gpu": args.gpu,
            "sim_rows": args.sim_rows, "sim_steps": args.sim_steps}


def fit_all(df: pd.DataFrame, args) -> tuple[dict, dict]:
    """({engine: factors}, {engine: fit error}) of every engine with dense agg rows (or those of --engines)."""
    every = agg_cases(df, args.gpu)
    cases = [c for c in every if c.model in DENSE_MODELS]
    chosen = {e.strip() for e in args.engines.split(",") if e.strip()}
    engines: dict[str, dict] = {}
    report: dict[str, dict] = {}

    def measured(rows: list) -> np.ndarray:
        return np.array([[df.iloc[c.row].silicon_ttft_ms, df.iloc[c.row].silicon_tpot_ms] for c in rows]) * 1e-3

    for engine in sorted({c.engine for c in cases}):
        if chosen and engine not in chosen:
            continue
        moe = [c for c in every if c.engine == engine and c.model not in DENSE_MODELS and CATALOG[c.model].is_moe]
        mine = [c for c in cases if c.engine == engine]
        # a prefill-first engine keeps its clients in lock-step: no arrival finds it busy, so no admission wait
        lockstep = any(p.prefill_first for p in mine[0].deployment.pools.values())
        names = tuple(n for n in FACTORS if n not in MOE_FACTORS and not (lockstep and n == "ttft_wait_prefills"))
        start = replace(ENGINE_EFFICIENCY.get(engine, Efficiency()), ttft_overhead_s=0.03, per_seq_overhead_s=1e-5,
                        layer_overhead_s=2e-5, ttft_wait_prefills=0.0 if lockstep else 1.0)
        t0 = time.time()
        eff, before, after, seen = fit_two_ways(mine, measured(mine), start, names, args)
        report[engine] = {"rows": len(mine), "simulated_rows": len(seen) if args.sim_rows else 0,
                          **error_report(before, after, seen)}
        print(error_line(f"{engine:7s} {len(mine):4d} rows", report[engine]) + f"   ({time.time() - t0:.0f} s)")
        if len(moe) >= MIN_MOE_ROWS:
            eff = fit_moe(engine, moe, measured(moe), eff, args, report)
        engines[engine] = {k: float(f"{v:.4g}") for k, v in eff.to_dict().items()}
        print("        " + ", ".join(f"{k}={v:.4g}" for k, v in engines[engine].items()))
    return engines, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--out", default=str(FIT_FILE))
    ap.add_argument("--dry-run", action="store_true", help="print the fit, write nothing")
    ap.add_argument("--verify", action="store_true", help="refit and compare with --out byte for byte; write "
                    "nothing, exit 1 if they differ")
    ap.add_argument("--sim-rows", type=int, default=SIM_ROWS,
                    help=f"rows per engine in the simulator stage (default {SIM_ROWS}; 0: steady state only)")
    ap.add_argument("--sim-steps", type=int, default=SIM_STEPS, help="least-squares steps of the simulator stage")
    ap.add_argument("--engines", default="", help="comma list of engines to fit (default: all); a partial fit "
                    "is written only elsewhere than the default --out")
    ap.add_argument("--jobs", type=int, default=2, help="processes of the simulator stage (the result is the same)")
    args = ap.parse_args()
    if args.engines and Path(args.out).resolve() == FIT_FILE.resolve() and not (args.dry_run or args.verify):
        ap.error(f"--engines: {FIT_FILE.name} holds every engine's fit from one recipe; give --out elsewhere")
    engines, report = fit_all(load_benchmark(args.data), args)
    revision, date = code_revision(fit_code(Path(args.data)))
    doc = {"version": 2, "gpu": args.gpu, "created": date, "code_revision": revision, "recipe": recipe(args),
           "rows": "dense agg rows; moe_compute: MoE agg rows",
           "method": f"soft-L1 least squares on log(pred/measured) mean TTFT and TPOT (weights {WEIGHTS.tolist()}); "
           "analytic closed loop (clients out of step), then simulation of an evenly spread subsample of the "
           "benchmark as it ran (planner.replay.predict_cases)", "engines": engines, "fit_error": report}
    text = json.dumps(doc, indent=2) + "\n"
    out = Path(args.out)
    if args.verify:
        same = out.exists() and out.read_text() == text
        print(f"{out}: {'the same, byte for byte' if same else 'DIFFERS from this fit'}")
        if not same:
            print(text)
        sys.exit(0 if same else 1)
    if args.dry_run:
        return
    if revision.endswith("+dirty") and out.resolve() == FIT_FILE.resolve():
        print(f"note: uncommitted changes to the fitted code; {out.name} records {revision}")
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
