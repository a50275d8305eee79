"""The scaled cost model: a profile's iteration times stretched by one factor, plus the overhead of an engine
around its model's compute that the profile did not time. Shared by the live runtime's paced workers (each
step lasts at least the scaled time) and the simulator in ``pdsim validate``: paced, both sides run on the
very same cost function, so only the system dynamics can differ; raw, the simulator's steps cost what the
live runtime's took in the burst before the replay (the compute slowdown and the runtime's own time per step)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from profiler.costmodel import Batch, CostModel, LinkSpec
from profiler.roofline import Efficiency


@dataclass
class ScaledCostModel:
    """``base``'s iteration time x ``scale``, plus ``eff``'s per-iteration overhead (``iteration_overhead_s`` and
    ``per_seq_overhead_s`` for every sequence that samples, as in roofline), time ``base`` did not count; transfers as
    ``base``'s. ``eff`` also carries the per-request terms (``ttft_overhead_s``, read by the simulator via
    roofline.request_terms). In ``pdsim validate``: paced, ``scale`` is the pace and there is no overhead (the paced
    runtime's steps follow the cost model's timeline); raw, ``scale`` is the measured compute slowdown (the live model
    forward's wall time over the profile's) and ``eff`` the wall time a live step took beyond its model's forward and
    the per-request overhead. ``overheads`` builds an ``eff`` with only what is given (Efficiency's defaults are another
    engine's). ``prompt_scales`` and ``decode_scales``: the scale by a step's size where it differs from ``scale``,
    ``((max_size, scale), ...)`` ascending: iterations with prompt tokens by their tokens, iterations of decodes alone
    by their sequences; a step takes the first bucket that holds its size (beyond the last: the last); empty:
    ``scale``. (Raw: a live step's slowdown against the profile depends on its size, small steps losing more to the
    caches other processes churned in between.) ``prompt_spread`` and ``decode_spread``: how steps of one size vary
    around their scale, as equally likely factors of mean 1 (quantiles); where given, each step's time (before the
    overhead) is multiplied by one of them drawn at random, seeded by ``seed`` (numpy's: an integer or a tuple),
    so the same calls in the same order cost the same. Empty: every step of a size costs the same. (Raw: live steps
    of one size spread 0.8-1.3x around their mean, and a queue grows with that spread, not only with the mean.)"""

    base: CostModel
    scale: float = 1.0
    eff: Efficiency | None = None
    prompt_scales: tuple[tuple[int, float], ...] = ()
    decode_scales: tuple[tuple[int, float], ...] = ()
    prompt_spread: tuple[float, ...] = ()
    decode_spread: tuple[float, ...] = ()
    seed: int | tuple[int, ...] = 0

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)
        self._spread = {True: np.asarray(self.prompt_spread, np.float64),
                        False: np.asarray(self.decode_spread, np.float64)}

    def _draw(self, prompts: bool, n: int | None = None):
        """Factors for ``n`` steps (one when None) from the spread of steps with prompts or of decodes alone."""
        spread = self._spread[prompts]
        if not len(spread):
            return 1.0 if n is None else np.ones(n)
        return float(self._rng.choice(spread)) if n is None else self._rng.choice(spread, size=n)

    def _overhead_s(self, seqs):
        e = self.eff
        return 0.0 if e is None else e.iteration_overhead_s + e.per_seq_overhead_s * seqs

    def iteration_s(self, batch: Batch) -> float:
        if batch.empty:
            return 0.0
        last = len(batch.prefill_tokens) if batch.prefill_last_chunks is None else batch.prefill_last_chunks
        prompts = bool(len(batch.prefill_tokens))
        scale = (bucket_scale(self.prompt_scales, batch.tokens, self.scale) if prompts
                 else bucket_scale(self.decode_scales, len(batch.decode_ctx), self.scale))
        return (scale * self._draw(prompts) * self.base.iteration_s(batch)
                + self._overhead_s(len(batch.decode_ctx) + last))

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int, ctx_max: int | None = None) -> np.ndarray:
        scale = bucket_scale(self.decode_scales, n_seqs, self.scale)
        base = self.base.decode_steps_s(n_seqs, ctx_sum, steps, ctx_max)
        return scale * self._draw(False, len(base)) * base + (self._overhead_s(n_seqs) if n_seqs else 0.0)

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        return self.base.transfer_s(kv_bytes, link)


def bucket_scale(buckets, size: int, default: float = 1.0) -> float:
    """The scale of the first ``(max_size, scale)`` bucket that holds ``size`` (ascending; beyond the last: the
    last's); ``default`` without buckets."""
    if not buckets:
        return default
    return next((x for hi, x in buckets if size <= hi), buckets[-1][1])


def overheads(iteration_s: float = 0.0, per_seq_s: float = 0.0, ttft_s: float = 0.0) -> Efficiency:
    """An Efficiency that carries only these overheads (seconds) for a ScaledCostModel."""
    return Efficiency(iteration_overhead_s=iteration_s, per_seq_overhead_s=per_seq_s, ttft_overhead_s=ttft_s)


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
