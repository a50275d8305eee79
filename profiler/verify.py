"""Self-check of a profile: whole-model forward passes of the runtime's model against the per-op composition.

Prefill batches (B prompts of S tokens in one step) and decode steps (B sequences at context C) run
through ``runtime.model.Model`` on the device the profile was measured on; ProfiledCostModel predicts the
same steps from the profile alone. Shapes deliberately fall between the profile's grid points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from profiler.costmodel import Batch
from profiler.errors import InputError
from profiler.gpus import CATALOG as GPU_CATALOG
from profiler.gpus import GPUSpec, local_cpu
from profiler.measure import BLOCK_TOKENS, TORCH_DTYPES, Grid, Sweep, check_clock, time_op
from profiler.models import ModelSpec
from profiler.profile import Profile
from profiler.profiled import RUNTIME_ENGINE, ProfiledCostModel
from runtime.model import KVCache, StepInput, build_model, decode_step, keep_heap, torch_threads

PREFILL_CASES = ((1, 24), (1, 100), (1, 400), (2, 48), (3, 160), (4, 96))
DECODE_CASES = ((1, 40), (1, 700), (3, 200), (6, 90), (12, 500), (24, 1500), (48, 300))
VERIFY_GRID = Grid(tokens=(), prefill_batch=(), prefill_len=(), decode_batch=(), decode_ctx=(), kv_bytes=(),
                   warmup=3, repeats=21, budget_s=0.5, min_repeats=5)


@dataclass
class VerifyResult:
    table: pd.DataFrame  # kind, batch, length, measured_s, measured_p10_s, composed_s, rel_err, rel_err_p10
    clock: str = "wall"
    extrapolated: int = 0  # composed estimates that left the profile's measured range
    overhead_s: float = 0.0  # the measured per-iteration overhead included in each composed step

    @property
    def median_abs_err(self) -> float:
        return float(self.table.rel_err.abs().median())

    @property
    def worst_abs_err(self) -> float:
        return float(self.table.rel_err.abs().max())

    @property
    def median_abs_err_p10(self) -> float:
        return float(self.table.rel_err_p10.abs().median())


def gpu_for(ident: dict) -> GPUSpec:
    """The catalog GPU a device identity names (for the roofline's scaling only), or the local CPU."""
    if ident.get("kind") != "cuda":
        return local_cpu()
    name = str(ident.get("name", "")).lower()
    for key, spec in GPU_CATALOG.items():
        if key.split("-")[0] in name:
            return spec
    return GPU_CATALOG["h100-sxm"]


def pick_run(profile: Profile, model: str | None, dtype: str | None = None) -> dict:
    """The latest tp-1 run of ``model`` (any) in ``dtype`` (any the runtime's model runs: not fp8)."""
    runs = [r for r in profile.runs if (model is None or r["model"] == model) and int(r["tp"]) == 1
            and (r["dtype"] == dtype if dtype else r["dtype"] != "fp8")]
    if not runs:
        have = ", ".join(f"{r['model']}/{r['dtype']}/tp{r['tp']}" for r in profile.runs) or "none"
        raise InputError(f"no run to verify for model {model or 'any'} dtype {dtype or 'fp32/bf16/fp16'} tp 1 "
                         f"(runs: {have}); --verify times the runtime's whole model on one device, which has no fp8",
                         where=profile.name)
    return runs[-1]


def prefill_batch_step(batch: int, seq_len: int, device: str) -> StepInput:
    """``batch`` uncached prompts of ``seq_len`` tokens in one step, each sampling its last token."""
    n = batch * seq_len
    gen = torch.Generator().manual_seed(batch * 7919 + seq_len)
    slots = torch.arange(n, device=device)
    chunks = [(i * seq_len, seq_len, 0, slots[i * seq_len:(i + 1) * seq_len]) for i in range(batch)]
    return StepInput(token_ids=torch.randint(0, 256, (n,), generator=gen).to(device),
                     positions=torch.arange(seq_len, device=device).repeat(batch), slots=slots, prefill=chunks,
                     logits_rows=torch.arange(seq_len - 1, n, seq_len, device=device))


def verify_profile(profile: Profile, model_name: str | None = None, dtype: str | None = None, device: str | None = None,
                   threads: int | None = None, prefill_cases=PREFILL_CASES, decode_cases=DECODE_CASES,
                   grid: Grid = VERIFY_GRID, seed: int = 0, clock: str | None = None) -> VerifyResult:
    """Time whole prefill and decode steps and compare them with the profile's composition (on the profile's
    clock unless ``clock`` says otherwise)."""
    if dtype == "fp8":
        raise InputError("--verify runs the runtime's model, which has no fp8 path: verify a bf16 or fp32 run")
    run = pick_run(profile, model_name, dtype)
    grid = replace(grid, clock=clock or run.get("grid", {}).get("clock", "wall"))
    spec = ModelSpec(**run["model_spec"])
    device = device or ("cuda" if run["device"].get("kind") == "cuda" else "cpu")
    threads = int(threads or run.get("torch_threads") or 1)
    check_clock(grid.clock, device, threads)
    cost = ProfiledCostModel(profile, model=spec, gpu=gpu_for(run["device"]), tp=1, dtype=run["dtype"],
                             engine=RUNTIME_ENGINE)
    keep_heap()  # as the runtime's workers run
    need_tokens = max([b * s for b, s in prefill_cases] + [b * c for b, c in decode_cases])
    spec = replace(spec, max_context=max(spec.max_context, need_tokens))
    model = build_model(spec, seed=seed, dtype=TORCH_DTYPES[run["dtype"]], device=device)
    cache = KVCache(spec, math.ceil(need_tokens / BLOCK_TOKENS) + 1, BLOCK_TOKENS, TORCH_DTYPES[run["dtype"]],
                    device)
    sweep = Sweep(spec, run["dtype"], device)  # each step finds the caches churned, as its ops did when timed
    rows = []
    with torch_threads(threads), torch.inference_mode():
        for b, s in prefill_cases:
            step = prefill_batch_step(b, s, device)
            t = time_op(lambda step=step: model(step, cache), device, grid, sweep.before(b * s))
            rows.append(("prefill", b, s, t.median_s, t.p10_s, cost.iteration_s(Batch.of(prefill=[(s, 0)] * b))))
        for b, c in decode_cases:
            ctx = [torch.arange(i * c, (i + 1) * c, device=device) for i in range(b)]
            step = decode_step([1] * b, ctx, device)
            t = time_op(lambda step=step: model(step, cache), device, grid, sweep.before(b))
            rows.append(("decode", b, c, t.median_s, t.p10_s, cost.iteration_s(Batch.of(decode_ctx=[c] * b))))
    table = pd.DataFrame(rows, columns=["kind", "batch", "length", "measured_s", "measured_p10_s", "composed_s"])
    table["rel_err"] = table.composed_s / table.measured_s - 1
    # Against each step's least disturbed runs: on a shared CPU, a whole pass (milliseconds) is interrupted
    # by other processes far more often than one op (microseconds) is.
    table["rel_err_p10"] = table.composed_s / table.measured_p10_s - 1
    return VerifyResult(table, grid.clock, cost.extrapolated, cost.overhead_s)


def format_result(r: VerifyResult) -> str:
    t = r.table
    lines = [f"{'kind':8} {'batch':>5} {'len':>5} {'measured ms':>12} {'composed ms':>12} {'error':>8} "
             f"{'p10 ms':>9} {'vs p10':>8}"]
    for row in t.itertuples(index=False):
        lines.append(f"{row.kind:8} {row.batch:5d} {row.length:5d} {row.measured_s * 1e3:12.3f} "
                     f"{row.composed_s * 1e3:12.3f} {row.rel_err * 100:+7.1f}% {row.measured_p10_s * 1e3:9.3f} "
                     f"{row.rel_err_p10 * 100:+7.1f}%")
    pf, dec = (np.median(t[t.kind == k].rel_err.abs()) * 100 for k in ("prefill", "decode"))
    lines.append(f"median |error| {r.median_abs_err * 100:.1f}%, worst {r.worst_abs_err * 100:.1f}% over {len(t)} "
                 f"whole-model steps (prefill median {pf:.1f}%, decode median {dec:.1f}%); against each step's "
                 f"p10: median |error| {r.median_abs_err_p10 * 100:.1f}%")
    lines.append(f"{r.clock} clock; {r.extrapolated} extrapolated estimates; each composed step includes the "
                 f"measured per-iteration overhead {r.overhead_s * 1e3:.3f} ms")
    return "\n".join(lines)
