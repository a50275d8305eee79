"""The fitted roofline's step times beside the sum of AIConfigurator's measured kernels for the same step.

The engines' factors (profiler/calibration/h100_fit.json) were fitted on end-to-end serving rows; here one
iteration of each dense model, as the fitted roofline prices it, is set beside the same iteration composed from
the engine's own per-kernel measurements (profiler.perfdb: GEMMs, attention, all-reduces and the LM head, with
no fixed costs: the tables time kernels alone, not norms, launches or scheduling). Shapes and GPUs the fit never
saw (Llama-3.1-70B under TRT-LLM, H200 and B200) show whether the factors carry physics or only the rows. Prints
a table; asserts nothing. Needs the aic extra.

    .venv/bin/python bench/step_vs_kernels.py [--engines trtllm,vllm,sglang] [--gpus h100-sxm,h200-sxm,b200]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from profiler.costmodel import Batch
from profiler.errors import InputError
from profiler.gpus import resolve_gpu
from profiler.memory import memory_fit
from profiler.models import CATALOG
from profiler.perfdb import PerfDBCostModel
from profiler.roofline import Efficiency, RooflineCostModel, engine_efficiency

MODELS = (("llama-3.1-8b", "bf16"), ("qwen3-32b", "fp8"), ("llama-3.1-70b", "fp8"))
CTX = 2048
STEPS = {f"decode {n} x {CTX}": Batch.of(decode_ctx=[CTX] * n) for n in (1, 16, 64)}
STEPS[f"prompt {CTX} + 16 decodes"] = Batch.of(prefill=[(CTX, 0)], decode_ctx=[CTX] * 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="trtllm,vllm,sglang")
    ap.add_argument("--gpus", default="h100-sxm,h200-sxm,b200")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{'engine':<8}{'gpu':<10}{'model':<15}{'dtype':<6}{'tp':>3}  {'step':<24}{'roofline':>9}{'kernels':>9}"
          f"{'ratio':>7}   (ms; ratio = roofline / kernels)")
    ratios: dict[tuple[str, ...], float] = {}
    for engine in args.engines.split(","):
        eff = engine_efficiency(engine)
        for gpu_name in args.gpus.split(","):
            gpu = resolve_gpu(gpu_name)
            for model, dtype in MODELS:
                m = CATALOG[model]
                for tp in (1, 2, 4, 8):
                    if memory_fit(m, gpu, tp, dtype, dtype, 8192, 0.9).kv_tokens < 64 * CTX:
                        continue  # does not hold the largest batch here
                    try:
                        kernels = PerfDBCostModel(m, gpu, tp, dtype, dtype, engine, Efficiency(iteration_overhead_s=0))
                    except InputError as e:
                        print(f"{engine:<8}{gpu_name:<10}{model:<15}{dtype:<6}{tp:>3}  no tables: {e}")
                        continue
                    roof = RooflineCostModel(m, gpu, tp, dtype, dtype, eff)
                    for label, batch in STEPS.items():
                        r, k = roof.iteration_s(batch) * 1e3, kernels.iteration_s(batch) * 1e3
                        ratios[(engine, gpu_name, model, str(tp), label)] = r / k
                        print(f"{engine:<8}{gpu_name:<10}{model:<15}{dtype:<6}{tp:>3}  {label:<24}{r:9.2f}{k:9.2f}"
                              f"{r / k:7.2f}")
    for by, what in ((1, "GPU"), (4, "step")):
        print(f"\nroofline / kernels by engine and {what}: median [min, max]")
        groups: dict[tuple[str, str], list[float]] = {}
        for key, ratio in ratios.items():
            groups.setdefault((key[0], key[by]), []).append(ratio)
        for (engine, name), rs in groups.items():
            print(f"  {engine:<8}{name:<26}{np.median(rs):5.2f} [{min(rs):.2f}, {max(rs):.2f}]  ({len(rs)})")


if __name__ == "__main__":
    main()
