"""Measured serving benchmarks (aiconfigurator's ``silicon_*.csv`` format) read as pdsim cases: each row a model
served by an engine in a precision, agg (one replica, ``batch_size`` closed-loop clients) or disagg (prefill and
decode workers), with its ISL/OSL (fixed, or drawn as its client drew them: InferenceMAX's) and the measured mean
TTFT and TPOT. ``row_case`` turns a row into a Deployment and a closed loop, or into a skip reason.

Parallelism convention of the file: a worker has ``tp x attention_dp = moe_tp x moe_ep`` GPUs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from planner.engines import (
    ENGINES,
    EngineDefaults,
    engine_memory_utilization,
    sglang_memory_defaults,
    trtllm_max_num_tokens,
    vllm_batch_defaults,
)
from profiler.errors import InputError
from profiler.gpus import GiB, GPUSpec, canonical_gpu_name, resolve_gpu
from profiler.memory import memory_fit
from profiler.models import CATALOG, canonical_model_name
from simulator.deployment import Deployment, KVLinkSpec, PoolSpec

REQUIRED_COLUMNS = ("model_path", "backend", "mode", "isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms")
DENSE_MODELS = ("llama-3.1-8b", "llama-3.1-70b", "qwen3-32b")


# A row that ran where the engine's default memory share holds its weights but not one request's KV: its
# operator raised the share (SGLang says "not enough memory, increase --mem-fraction-static"), taken as this.
RAISED_MEMORY_FRACTION = 0.95


# InferenceMAX (SemiAnalysis's nightly serving benchmark) records name the day's file and the model:
# "source_file=2026-04-06.csv; model=Llama-3.1-70B; ...". Its client (bench_serving/benchmark_serving.py
# --dataset-name random --random-range-ratio 0.8 --num-prompts 10*CONC --max-concurrency CONC --request-rate inf
# --ignore-eos) draws each prompt's and each output's length uniformly from [0.8 L, L], and its 10 x CONC
# requests go through CONC slots that all start at once. Varied lengths keep those clients out of step: no
# admission wait, which its rows show (vLLM Llama-3.1-70B on H100, 4-8 clients: TTFT 1.2-2.3 prefills against
# 2.5-3.5 in the fixed-length vLLM Qwen3-32B runs, 4-5.4 in TRT-LLM's).
INFERENCEMAX_SOURCE = re.compile(r"source_file=\d{4}-\d{2}-\d{2}\.csv;\s*model=")
INFERENCEMAX_RANGE_RATIO = 0.8
FIXED_CLIENT = "fixed lengths"
INFERENCEMAX_CLIENT = f"InferenceMAX [{INFERENCEMAX_RANGE_RATIO:g} L, L]"


# Its TRT-LLM recipe for Llama-3.1-70B (benchmarks/70b_fp8_*_trt_slurm.sh; each model has its own):
# trtllm-serve --max_num_tokens 16384 and, at ISL = OSL = 1024 below TP8, batch waiting (batch_wait_timeout_iters
# 20, batch_wait_max_tokens_ratio 0.9).
INFERENCEMAX_TRTLLM_RECIPE_MODEL = "llama-3.1-70b"
INFERENCEMAX_TRTLLM_MAX_NUM_TOKENS = 16384
INFERENCEMAX_TRTLLM_BATCH_WAIT = {"batch_wait_iters": 20, "batch_wait_tokens_ratio": 0.9}


def length_range(length: int, ratio: float) -> tuple[int, int]:
    """The lengths a client of ``ratio`` (< 1: uniform in [ratio x L, L], as bench_serving draws them) sends for
    ``length``: (lowest, highest); ``ratio`` >= 1: ``length`` itself."""
    return (length, length) if ratio >= 1 else (max(1, int(length * ratio)), length)


def range_ratio_of(row: pd.Series) -> float:
    """Lengths of the row's benchmark client, uniform in [ratio x L, L]: 1 (fixed) unless its source is an
    InferenceMAX record."""
    return INFERENCEMAX_RANGE_RATIO if INFERENCEMAX_SOURCE.search(str(row.get("silicon_data_source", ""))) else 1.0


# ---- rows -> cases ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One benchmark row as pdsim sees it: what to simulate, or why not."""

    row: int  # position in the file
    model: str = ""  # catalog key
    engine: str = ""
    mode: str = ""
    isl: int = 0
    osl: int = 0
    concurrency: int = 0
    dtype: str = ""
    deployment: Deployment | None = None
    skip_reason: str = ""
    assumed: str = ""  # what the row leaves unsaid and the replay took for it
    range_ratio: float = 1.0  # the client's lengths: uniform in [range_ratio x L, L] (1: fixed ISL and OSL)

    @property
    def skipped(self) -> bool:
        return bool(self.skip_reason)

    @property
    def client(self) -> str:
        return FIXED_CLIENT if self.range_ratio >= 1 else INFERENCEMAX_CLIENT

    def mean_length(self, length: int) -> int:
        return round(sum(length_range(length, self.range_ratio)) / 2)


def weight_dtype(row: pd.Series) -> str:
    """Weight format from gemm_quant_mode / precision, else from the checkpoint's name (``-FP8``), else bf16."""
    for col in ("gemm_quant_mode", "precision", "moe_quant_mode"):
        v = row.get(col)
        if isinstance(v, str) and v.strip():
            v = v.strip().lower()
            if "fp4" in v:
                return "fp4"
            if "fp8" in v or v in ("w8a8", "int8"):
                return "fp8"
            if v in ("bf16", "fp16", "float16", "bfloat16", "none"):
                return "bf16"
            return v
    name = str(row.get("model_path", "")).lower()
    if re.search(r"fp4", name):
        return "fp4"
    if re.search(r"fp8", name):
        return "fp8"
    return "bf16"


def kv_cache_dtype(row: pd.Series) -> str:
    """KV cache format. The TRT-LLM benchmarks ran fp8 and fp4 checkpoints with an fp8 cache (TRT-LLM's own
    default follows the checkpoint; aiconfigurator, whose configs these runs used, takes fp8 KV for such
    checkpoints): the Qwen3-32B fp8 rows at TP1 run 64 clients x 4,224 tokens (270k) un-queued, more than a bf16
    cache of the GPU holds (~173k), and queue from ~295k (fp8: 346k). vLLM and SGLang keep the activation dtype
    (bf16) unless the checkpoint carries KV scales: NVIDIA's ModelOpt fp8/fp4 checkpoints (``nvidia/...-FP8``)
    do; quantising weights on load does not."""
    name = str(row.get("model_path", "")).lower()
    if str(row.get("backend", "")).lower() == "trtllm" and weight_dtype(row) in ("fp8", "fp4"):
        return "fp8"
    return "fp8" if name.startswith("nvidia/") and re.search(r"fp8|fp4", name) else "bf16"


def _num(row: pd.Series, col: str, default: float = 1.0) -> float:
    v = row.get(col)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(v) or v <= 0 else v


def _source_concurrency(row: pd.Series) -> int | None:
    """The clients the row's source names (``silicon_concurrency=N``), or None."""
    m = re.search(r"silicon_concurrency=(\d+)", str(row.get("silicon_data_source", "")))
    return int(m.group(1)) if m else None


def concurrency_of(row: pd.Series) -> int | None:
    """Clients of the closed loop: agg ``batch_size`` per attention-DP rank (aiconfigurator's rows give the
    batch of one rank: the MiniMax-M2.5 rows at DP4 and batch b measured what the DP1 rows did at 4b clients);
    disagg ``silicon_concurrency=N`` in the source, else the decode pool's seats (decode workers x decode batch
    size x its attention-DP ranks)."""
    if row["mode"] == "agg":
        c = _num(row, "batch_size", 0) * _num(row, "attention_dp_size")
        return int(c) if c else None
    if said := _source_concurrency(row):
        return said
    seats = (_num(row, "decode_num_workers", 0) * _num(row, "decode_batch_size", 0)
             * _num(row, "decode_attention_dp_size"))
    return int(seats) if seats else None


def expert_gpus_tp(row: pd.Series, prefix: str) -> int:
    """A worker's tensor parallelism where a MoE row's experts span more GPUs than its ``tp`` and the row says no
    attention DP: aiconfigurator's rows give a worker's GPUs as tp x attention_dp for attention and moe_tp x
    moe_ep for the experts, the same GPUs, and these leave the difference unsaid. The worker has the experts'
    GPUs (vLLM's Qwen3-235B rows on H200 at tp 1 and moe_tp 2 decode at 55-59 ms a token as its tp 2 rows do,
    51-59 ms; at tp 1-2 and moe_tp 4 at 37-46 ms, as its tp 4 rows, 34-46 ms), taken as tensor parallelism over
    them (attention DP over them predicts those rows within 7 points of it). The row's ``tp`` otherwise."""
    tp = int(_num(row, f"{prefix}tp_size"))
    model = canonical_model_name(str(row.get("model_path", "")))
    if _num(row, f"{prefix}attention_dp_size", 0) or model is None or not CATALOG[model].is_moe:
        return tp
    return max(tp, int(_num(row, f"{prefix}moe_tp_size") * _num(row, f"{prefix}moe_ep_size")))


def _pool(row: pd.Series, prefix: str, engine: str, clients: int, gpu: GPUSpec) -> tuple[PoolSpec, str]:
    """(pool, skip reason). The row's batch size is one attention-DP rank's (concurrency_of); without one a
    prefill worker takes one prompt per rank and a decode worker every client. With attention data parallelism
    each attention group schedules its own share of the sequences with the engine's token budget: the pool's
    budget and seats are theirs together. A MoE row whose experts span more GPUs than its tp: expert_gpus_tp."""
    tp = expert_gpus_tp(row, prefix)
    dp = int(_num(row, f"{prefix}attention_dp_size"))
    pp = int(_num(row, f"{prefix}pp_size"))
    workers = int(_num(row, f"{prefix}num_workers")) if prefix else 1
    e = ENGINES.get(engine, EngineDefaults())
    why = f"pipeline parallelism (pp={pp}) is not modelled" if pp > 1 else ""
    batch = _num(row, f"{prefix}batch_size", 0)
    seats = int(batch * dp) if batch else (dp if prefix == "prefill_" else clients)
    chunk = e.max_batch_tokens
    if engine == "sglang":
        chunk = sglang_memory_defaults(gpu, tp * dp)[0]
    elif engine == "vllm":
        chunk, most = vllm_batch_defaults(gpu)
        seats = min(seats, most * dp)  # more clients than that wait in vLLM's queue
    elif engine == "trtllm" and prefix != "decode_":  # a decode worker runs no prompts: the default holds
        chunk = trtllm_max_num_tokens(int(row["isl"]), 0 if prefix == "prefill_" else max(1, -(-seats // dp)))
    waiting = {}
    if (engine == "trtllm" and not prefix and range_ratio_of(row) < 1
            and canonical_model_name(str(row["model_path"])) == INFERENCEMAX_TRTLLM_RECIPE_MODEL):
        chunk = INFERENCEMAX_TRTLLM_MAX_NUM_TOKENS
        if int(row["isl"]) == int(row["osl"]) == 1024 and tp * dp < 8:
            waiting = INFERENCEMAX_TRTLLM_BATCH_WAIT
    pool = PoolSpec(replicas=workers, tp=tp * dp, max_batch_tokens=chunk * dp, max_seqs=max(1, seats),
                    chunked_prefill=e.chunked_prefill, prefill_first=e.prefill_first, attention_dp=dp, **waiting)
    return pool, why


def row_case(row: pd.Series, i: int, gpu_name: str | None = None) -> Case:
    """The deployment and closed loop a row describes, or the reason pdsim cannot express it; on ``gpu_name``, or
    (None) on the GPU the row's ``system`` column names."""
    model = canonical_model_name(str(row["model_path"]))
    base = Case(row=i, model=model or "", engine=str(row["backend"]).lower(), mode=str(row["mode"]),
                isl=int(row["isl"]), osl=int(row["osl"]), range_ratio=range_ratio_of(row))
    if model is None:
        return replace(base, skip_reason=f"unknown model {row['model_path']!r} (not in the catalog)")
    if base.engine not in ENGINES:
        return replace(base, skip_reason=f"unknown engine {row['backend']!r}")
    if gpu_name is None:
        system = row.get("system")
        if not isinstance(system, str) or not system.strip():
            return replace(base, skip_reason="no GPU system in the row (pass --system)")
        gpu_name = canonical_gpu_name(system)
        if gpu_name is None:
            return replace(base, skip_reason=f"unknown GPU system {system!r} (not in the GPU catalog)")
    gpu = resolve_gpu(gpu_name)
    dtype = weight_dtype(row)
    base = replace(base, dtype=dtype)
    if dtype not in ("bf16", "fp16", "fp8", "fp4"):
        return replace(base, skip_reason=f"unsupported precision {dtype!r}")
    c = concurrency_of(row)
    if not c:
        return replace(base, skip_reason="no concurrency: agg batch_size or disagg silicon_concurrency missing")
    base = replace(base, concurrency=c)
    spec = CATALOG[model]
    unsaid = []
    if base.mode == "agg":
        pool, why = _pool(row, "", base.engine, c, gpu)
        pools = {"workers": pool}
        if re.search(r"_c_", str(row.get("id", ""))) and _source_concurrency(row) is None:
            unsaid.append("as many clients as the batch size")  # aiconfigurator's id leaves its c{N} empty
        if pool.batch_wait_iters:
            unsaid.append(f"InferenceMAX's TRT-LLM batch waiting ({pool.batch_wait_iters} iterations or "
                          f"{pool.batch_wait_tokens_ratio:g} of {pool.max_batch_tokens} tokens)")
    elif base.mode == "disagg":
        pf, why_p = _pool(row, "prefill_", base.engine, c, gpu)
        dec, why_d = _pool(row, "decode_", base.engine, c, gpu)
        pf = replace(pf, chunked_prefill=False)  # a prefill worker runs whole prompts
        why = why_p or why_d
        pools = {"prefill": pf, "decode": dec}
        unsaid = [what for col, what in (("prefill_num_workers", "one prefill worker"),
                                         ("decode_num_workers", "one decode worker"),
                                         ("decode_batch_size", "a decode batch of every client"))
                  if not _num(row, col, 0)]
        if _source_concurrency(row) is None:
            unsaid.append("as many clients as decode seats")
    else:
        return replace(base, skip_reason=f"unknown mode {row['mode']!r}")
    for prefix in ("",) if base.mode == "agg" else ("prefill_", "decode_"):
        if (tp := expert_gpus_tp(row, prefix)) > (said := int(_num(row, f"{prefix}tp_size"))):
            unsaid.append(f"{prefix.rstrip('_') or 'workers'}: TP {tp} over the experts' GPUs (tp {said}, "
                          f"moe_tp x moe_ep {tp})")
    if why:
        return replace(base, skip_reason=why)
    if max(p.attention_tp for p in pools.values()) > 2 * gpu.max_tp_per_node:  # experts may span more (all-to-all)
        return replace(base, skip_reason="a worker's tensor parallelism spans more than two nodes")
    kv_dtype = kv_cache_dtype(row)
    raised = False
    for name, p in pools.items():
        util = engine_memory_utilization(base.engine, spec, gpu, p.attention_tp, dtype, p.max_batch_tokens,
                                         p.attention_dp)
        fit = memory_fit(spec, gpu, p.attention_tp, dtype, kv_dtype, p.max_batch_tokens, util, p.attention_dp)
        if fit.kv_tokens < base.isl + base.osl and util < RAISED_MEMORY_FRACTION:
            raised = True
            fit = memory_fit(spec, gpu, p.attention_tp, dtype, kv_dtype, p.max_batch_tokens, RAISED_MEMORY_FRACTION,
                             p.attention_dp)
        if fit.weights_bytes > gpu.hbm_bytes:  # not a memory model's verdict: no engine could have run this
            return replace(base, skip_reason=(
                f"{name} pool: the row's parallelism ({p.tp} GPU{'s' if p.tp > 1 else ''} a worker) cannot hold "
                f"the weights ({fit.weights_bytes / GiB:.0f} GiB a GPU of {gpu.hbm_bytes / GiB:.0f}): the row "
                "does not describe the deployment that ran"))
        if fit.kv_tokens < base.isl + base.osl:
            return replace(base, skip_reason=f"{name} pool: model says out of memory ({fit.kv_tokens} KV tokens)")
    big = max(pools.values(), key=lambda p: p.tp)
    util = engine_memory_utilization(base.engine, spec, gpu, big.attention_tp, dtype,
                                     max(p.max_batch_tokens for p in pools.values()), big.attention_dp)
    if raised:
        util = max(util, RAISED_MEMORY_FRACTION)
        unsaid.append(f"a memory share of {RAISED_MEMORY_FRACTION:g}, raised from the engine's default, which cannot "
                      "hold one request's KV")
    if unsaid:
        base = replace(base, assumed=", ".join(unsaid) + " (the row does not say)")
    inter = any(p.tp > gpu.max_tp_per_node for p in pools.values())
    link = KVLinkSpec(bandwidth_gb_s=(gpu.internode_bw_bytes_s if inter else gpu.nvlink_bw_bytes_s) / 1e9,
                      latency_us=(gpu.internode_latency_s if inter else gpu.nvlink_latency_s) * 1e6,
                      placement="inter" if inter else "intra")
    dep = Deployment(model=model, gpu=gpu_name, dtype=dtype, topology=base.mode, kv_link=link, engine=base.engine,
                     kv_dtype=kv_dtype, gpu_memory_utilization=round(util, 4), router="least_loaded", **pools)
    return replace(base, deployment=dep)


def load_benchmark(path: str | Path) -> pd.DataFrame:
    """Read a benchmark CSV; every error names the file and what is wrong."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise InputError("file not found", where=str(path)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"not a CSV benchmark file ({e.__class__.__name__})", where=str(path)) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"missing columns {missing} (expected aiconfigurator's silicon CSV format)", where=str(path))
    for col in ("isl", "osl", "silicon_ttft_ms", "silicon_tpot_ms"):
        bad = pd.to_numeric(df[col], errors="coerce").isna()
        if bad.any():
            line = int(np.flatnonzero(bad.to_numpy())[0]) + 2
            raise InputError(f"line {line}: column {col!r} must be a number, got {df[col][bad].iloc[0]!r}",
                             where=str(path))
    return df


def fidelity_sample(df: pd.DataFrame, per_group: int = 12) -> pd.DataFrame:
    """A fixed sample of a benchmark file: up to ``per_group`` rows evenly spaced (by id) in every engine and
    mode, dense and MoE alike; the rows the CI fidelity guard replays (tests/test_fidelity_pinned.py)."""
    picks = []
    for _, g in df.sort_values("id", kind="stable").groupby(["backend", "mode"], sort=True):
        idx = np.unique(np.linspace(0, len(g) - 1, min(per_group, len(g))).round().astype(int))
        picks.append(g.iloc[idx])
    return pd.concat(picks)


def select_models(df: pd.DataFrame, models: list[str] | None) -> pd.DataFrame:
    """Rows of the named models (catalog names, aliases or HF ids); all rows when none are named."""
    if not models:
        return df
    keys = set()
    for m in models:
        key = canonical_model_name(m)
        if key is None:
            raise InputError(f"--models: unknown model {m!r}; known: {', '.join(CATALOG)}")
        keys.add(key)
    return df[df["model_path"].map(lambda p: canonical_model_name(str(p)) in keys)]
