"""How well each cost source predicts the measured serving results of data/calibration.

For every model/engine with aggregated silicon rows on H100: mean absolute error of TTFT and TPOT
(closed-loop steady-state estimate, planner/calibrate.py) with (a) the roofline at the engine's default
efficiencies, (b) the roofline calibrated on half the rows and scored on the other half, (c) AIConfigurator's
measured operation tables (--perf-db aiconfigurator, needs pdsim[aic]). Prints a table; asserts nothing.

    .venv/bin/python bench/perfdb_vs_roofline.py [data/calibration/silicon_h100_sxm.csv]
"""

import sys
import time
from functools import cache
from pathlib import Path

from planner import calibrate as cb
from profiler.errors import InputError
from profiler.gpus import resolve_gpu
from profiler.models import resolve_model
from profiler.perfdb import PerfDBCostModel
from simulator.deployment import parse_deployment

DATA = Path(__file__).resolve().parents[1] / "data" / "calibration" / "silicon_h100_sxm.csv"
CSV = sys.argv[1] if len(sys.argv) > 1 else str(DATA)
CASES = [("llama-3.1-70b", "vllm", "fp8"), ("qwen3-32b", "trtllm", "fp8"), ("qwen3-32b", "vllm", "fp8"),
         ("qwen3-235b-a22b", "trtllm", "fp8"), ("minimax-m2.5", "vllm", "fp8"), ("gpt-oss-120b", "vllm", "fp4")]


@cache
def perfdb_model(model: str, gpu: str, tp: int, dtype: str, kv_dtype, engine: str) -> PerfDBCostModel:
    return PerfDBCostModel(resolve_model(model), resolve_gpu(gpu), tp, dtype, kv_dtype, engine)


def perfdb_models(d):
    return {n: perfdb_model(d.model, d.gpu, p.tp, d.dtype, d.kv_dtype, d.engine) for n, p in d.pools.items()}


print(f"{'model':<17}{'engine':<8}{'rows':>5}  {'roofline':>15}  {'calibrated*':>15}  {'aiconfigurator':>15}   "
      "(mean abs error TTFT / TPOT, %)")
for model, engine, dtype in CASES:
    dep = parse_deployment({"model": model, "gpu": "h100-sxm", "dtype": dtype, "engine": engine,
                            "topology": "agg", "workers": {"tp": 1}})
    pts, _ = cb.read_measured(CSV, dep)
    pts = pts[pts.topology == "agg"].reset_index(drop=True)
    t0 = time.time()
    base = cb.errors(cb.predict_points(dep, pts), pts)
    train, test = pts.iloc[::2], pts.iloc[1::2]
    enough = len(train) >= 2 * len(cb.FIT_DEFAULT)  # fewer rows cannot pin the factors
    cal = cb.errors(cb.predict_points(dep, test, cb.fit_efficiency(dep, train)), test) if enough else None
    try:
        aic = cb.errors(cb.predict_points(dep, pts, models=perfdb_models), pts)
    except InputError as e:
        aic = None
        print(f"  aiconfigurator: {e}")

    def fmt(e):
        return f"{e['ttft_mape_pct']:6.1f} / {e['tpot_mape_pct']:5.1f}" if e else f"{'n/a':>15}"

    print(f"{model:<17}{engine:<8}{len(pts):>5}  {fmt(base):>15}  {fmt(cal):>15}  {fmt(aic):>15}   "
          f"({time.time() - t0:.1f} s)")
print(f"* fitted on every other row, scored on the rows it did not see (n/a: under {2 * len(cb.FIT_DEFAULT)} rows "
      "to fit on)")
