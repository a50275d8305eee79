"""The search space: deployment *units* that fit in memory and in the GPU budget.

A unit is the smallest repeating block of a deployment: one aggregated replica, or ``n_p`` prefill
plus ``n_d`` decode replicas with no common factor. A deployment is ``k`` copies of a unit; under
load-balanced routing its goodput is about ``k`` times the unit's, so the search measures units and
scales them, and the recommendation is confirmed by simulating the whole deployment.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from math import gcd

from planner.engines import ENGINES, engine_memory_utilization
from profiler.gpus import GPUSpec
from profiler.memory import memory_fit
from profiler.models import ModelSpec
from simulator.deployment import Deployment, KVLinkSpec, PoolSpec

TPS = (1, 2, 4, 8)
AGG_BATCH_TOKENS = (512, 1024, 2048, 4096, 8192, 16384)  # = the chunked-prefill size (vLLM semantics)
PREFILL_BATCH_TOKENS = (4096, 8192, 16384, 32768)
MAX_SEQS = (32, 64, 128, 256, 512)
DECODE_BATCH_TOKENS = 8192  # a decode pool's budget only matters when it recomputes a preempted prompt


@dataclass(frozen=True)
class Space:
    """What may vary, for one model on one GPU type under a GPU budget."""

    model: ModelSpec
    gpu: GPUSpec
    model_name: str  # as the user gave it, written into deployment.yaml
    gpu_name: str
    budget_gpus: int = 8
    dtype: str = "bf16"
    kv_dtype: str | None = None
    engine: str = "vllm"  # its scheduler's shape and memory share (planner/engines.py), its fitted factors
    gpu_memory_utilization: float | None = None  # None: the engine's default share for each pool
    min_kv_tokens: int = 1  # one request's KV must fit: isl + osl
    topologies: tuple[str, ...] = ("agg", "disagg")
    tp_choices: tuple[int, ...] = TPS
    agg_batch_tokens: tuple[int, ...] = AGG_BATCH_TOKENS
    prefill_batch_tokens: tuple[int, ...] = PREFILL_BATCH_TOKENS
    max_seqs: tuple[int, ...] = MAX_SEQS
    router: str = "least_loaded"
    kv_tiers: tuple[tuple[str, float], ...] = ()  # (tier, capacity GB) for every replica (simulator/kv_tiers.py)

    @property
    def resolved_kv_dtype(self) -> str:
        return self.kv_dtype or ("bf16" if self.dtype in ("bf16", "fp16", "fp32") else "fp8")

    def memory_share(self, tp: int, max_batch_tokens: int) -> float:
        """The share of a GPU's memory the engine lets a pool of this TP and batch budget use."""
        if self.gpu_memory_utilization is not None:
            return self.gpu_memory_utilization
        return engine_memory_utilization(self.engine, self.model, self.gpu, tp, self.dtype, max_batch_tokens)

    def kv_tokens(self, tp: int, max_batch_tokens: int) -> int:
        fit = memory_fit(self.model, self.gpu, tp, self.dtype, self.resolved_kv_dtype, max_batch_tokens,
                         self.memory_share(tp, max_batch_tokens))
        return fit.kv_tokens

    def fits(self, tp: int, max_batch_tokens: int) -> bool:
        return self.kv_tokens(tp, max_batch_tokens) >= self.min_kv_tokens

    def tps(self) -> list[int]:
        """TP degrees that exist on one node and fit the smallest batch budget in memory."""
        return [t for t in self.tp_choices if t <= min(self.budget_gpus, self.gpu.max_tp_per_node)
                and self.fits(t, min(self.agg_batch_tokens))]

    def kv_link(self) -> KVLinkSpec:
        """NVLink inside one node, RDMA across nodes: the link a budget of this size would use."""
        if self.budget_gpus <= self.gpu.max_tp_per_node:
            return KVLinkSpec(self.gpu.nvlink_bw_bytes_s / 1e9, self.gpu.nvlink_latency_s * 1e6, "intra")
        return KVLinkSpec(self.gpu.internode_bw_bytes_s / 1e9, self.gpu.internode_latency_s * 1e6, "inter")

    def pool(self, replicas: int, tp: int, max_batch_tokens: int, max_seqs: int) -> PoolSpec:
        """A pool as the engine schedules it (chunked prefill or whole prompts; prefill-first)."""
        e = ENGINES[self.engine]
        return PoolSpec(replicas, tp, max_batch_tokens, max_seqs, chunked_prefill=e.chunked_prefill,
                        prefill_first=e.prefill_first)

    def deployment(self, topology: str, **pools: PoolSpec) -> Deployment:
        share = min(self.memory_share(p.tp, p.max_batch_tokens) for p in pools.values())  # one share for all
        return Deployment(model=self.model_name, gpu=self.gpu_name, dtype=self.dtype, topology=topology,
                          kv_link=self.kv_link(), router=self.router, engine=self.engine,
                          kv_dtype=self.kv_dtype, gpu_memory_utilization=share,
                          extra={"kv_tiers": {t: {"capacity_gb": gb} for t, gb in self.kv_tiers}} if self.kv_tiers
                          else {}, **pools)


def agg_unit(space: Space, tp: int, max_batch_tokens: int, max_seqs: int) -> Deployment:
    return space.deployment("agg", workers=space.pool(1, tp, max_batch_tokens, max_seqs))


def disagg_unit(space: Space, prefill_tp: int, prefill_replicas: int, prefill_batch_tokens: int,
                decode_tp: int, decode_replicas: int, decode_max_seqs: int) -> Deployment:
    g = gcd(prefill_replicas, decode_replicas)
    return space.deployment(
        "disagg",
        prefill=space.pool(prefill_replicas // g, prefill_tp, prefill_batch_tokens, MAX_SEQS[-1]),
        decode=space.pool(decode_replicas // g, decode_tp, DECODE_BATCH_TOKENS, decode_max_seqs),
    )


def infeasible_reason(space: Space, dep: Deployment) -> str | None:
    """Why a unit cannot run at all (memory, budget), or None. Checked before anything is simulated."""
    if dep.gpus > space.budget_gpus:
        return f"needs {dep.gpus} GPUs > budget {space.budget_gpus}"
    for name, pool in dep.pools.items():
        kv = space.kv_tokens(pool.tp, pool.max_batch_tokens)
        if kv < space.min_kv_tokens:
            return (f"{name} TP{pool.tp} with {pool.max_batch_tokens} batched tokens leaves KV room for {kv} tokens "
                    f"< {space.min_kv_tokens} (one request)")
    return None


def enumerate_units(space: Space) -> list[Deployment]:
    """Every unit that fits: the whole discrete space the search and the screen walk."""
    tps = space.tps()
    units: list[Deployment] = []
    if "agg" in space.topologies:
        units += [agg_unit(space, tp, mbt, seqs) for tp in tps for mbt in space.agg_batch_tokens
                  for seqs in space.max_seqs]
    if "disagg" in space.topologies:
        for tp_p in tps:
            for tp_d in tps:
                for n_p in range(1, space.budget_gpus // tp_p + 1):
                    for n_d in range(1, (space.budget_gpus - n_p * tp_p) // tp_d + 1):
                        if gcd(n_p, n_d) != 1:
                            continue
                        units += [disagg_unit(space, tp_p, n_p, mbt, tp_d, n_d, seqs)
                                  for mbt in space.prefill_batch_tokens for seqs in space.max_seqs]
    return [u for u in units if infeasible_reason(space, u) is None]


def scale(unit: Deployment, copies: int) -> Deployment:
    """``copies`` units side by side: every pool's replicas multiplied."""
    pools = {name: replace(pool, replicas=pool.replicas * copies) for name, pool in unit.pools.items()}
    return replace(unit, **pools)


def max_copies(space: Space, unit: Deployment) -> int:
    return space.budget_gpus // unit.gpus


def unit_key(dep: Deployment) -> str:
    """A short, stable name of a unit's shape and settings (the cache and study key)."""
    if dep.topology == "agg":
        w = dep.workers
        return f"agg tp{w.tp} mbt{w.max_batch_tokens} seqs{w.max_seqs}"
    p, d = dep.prefill, dep.decode
    return f"disagg {p.replicas}p-tp{p.tp} mbt{p.max_batch_tokens} + {d.replicas}d-tp{d.tp} seqs{d.max_seqs}"
