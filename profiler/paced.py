"""The paced cost model: a profile's iteration times stretched by one factor, shared by the live runtime's
paced workers (each step lasts at least this long) and the simulator in ``pdsim validate --paced``, so
that both sides run on the very same cost function and only the system dynamics can differ."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from profiler.costmodel import Batch, CostModel, LinkSpec
from profiler.roofline import Efficiency


@dataclass
class ScaledCostModel:
    """``base``'s iteration times times ``scale`` (> 1: above the real compute); transfers as ``base``'s.
    ``eff``: per-request terms only (``ttft_overhead_s``, read by the simulator via roofline.request_terms),
    e.g. the live runtime's measured HTTP/frontend overhead in ``pdsim validate``."""

    base: CostModel
    scale: float = 1.0
    eff: Efficiency | None = None

    def iteration_s(self, batch: Batch) -> float:
        return self.scale * self.base.iteration_s(batch)

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int) -> np.ndarray:
        return self.scale * self.base.decode_steps_s(n_seqs, ctx_sum, steps)

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        return self.base.transfer_s(kv_bytes, link)


def paced_cost_model(profile_dir: str, model: str, dtype: str, gpu: str = "cpu", scale: float = 1.0) -> CostModel:
    """The ProfiledCostModel of ``model``/``dtype`` (TP 1) from ``profile_dir``, scaled by ``scale``: the bundled
    runtime's costs, its per-iteration overhead included as the profile measured it (not another engine's
    fitted one)."""
    from profiler.gpus import resolve_gpu  # noqa: PLC0415
    from profiler.models import resolve_model  # noqa: PLC0415
    from profiler.profile import load_profile  # noqa: PLC0415
    from profiler.profiled import RUNTIME_ENGINE, ProfiledCostModel  # noqa: PLC0415

    cost = ProfiledCostModel(load_profile(profile_dir), resolve_model(model), resolve_gpu(gpu), 1, dtype,
                             engine=RUNTIME_ENGINE)
    return ScaledCostModel(cost, scale) if scale != 1.0 else cost
