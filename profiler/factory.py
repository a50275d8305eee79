"""The one place that turns (model, GPU, TP, dtype, engine[, profile | perf_db]) into a CostModel."""

from __future__ import annotations

from profiler.costmodel import CostModel
from profiler.gpus import GPUSpec
from profiler.models import ModelSpec
from profiler.roofline import Efficiency, RooflineCostModel, engine_efficiency


def make_cost_model(model: ModelSpec, gpu: GPUSpec, tp: int, dtype: str, kv_dtype: str | None = None,
                    engine: str = "vllm", profile=None, efficiency: Efficiency | None = None,
                    perf_db: str | None = None, attn_dp: int = 1) -> CostModel:
    """Roofline with the engine's fitted efficiencies (or ``efficiency``, e.g. from a calibration file),
    a ProfiledCostModel when a profile is given, or AIConfigurator's tables with ``perf_db``
    (``aiconfigurator[:BACKEND]``, the optional extra pdsim[aic]). ``attn_dp``: attention data parallelism,
    on the roofline only."""
    if attn_dp > 1 and (perf_db is not None or profile is not None):
        from profiler.errors import InputError  # noqa: PLC0415

        raise InputError("attention data parallelism (attention_dp > 1) is modelled on the roofline only, "
                         "not with a profile or --perf-db")
    if perf_db is not None:
        from profiler.perfdb import perfdb_cost_model  # noqa: PLC0415 (optional extra)

        return perfdb_cost_model(perf_db, model, gpu, tp, dtype, kv_dtype, engine)
    if profile is not None:
        from profiler.profiled import ProfiledCostModel  # noqa: PLC0415 (only with --profile)

        return ProfiledCostModel(profile, model=model, gpu=gpu, tp=tp, dtype=dtype, engine=engine)
    return RooflineCostModel(model, gpu, tp, dtype, kv_dtype, efficiency or engine_efficiency(engine), attn_dp)
