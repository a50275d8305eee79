"""Deployment: what runs where. Read from and written to the YAML that `pdsim simulate`, `serve`,
`check` and `plan` share.

```yaml
model: llama-3.1-8b        # catalog name or path to config.json
gpu: h200-sxm
dtype: fp8                 # bf16 | fp8 | fp4
topology: disagg           # agg | disagg
prefill: {replicas: 2, tp: 1, max_batch_tokens: 8192}
decode:  {replicas: 1, tp: 2, max_seqs: 256}
kv_link: {bandwidth_gb_s: 50, latency_us: 10}
router: least_loaded       # round_robin | least_loaded | kv_aware
```
An aggregated deployment has one ``workers:`` pool instead of ``prefill`` and ``decode``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from profiler.errors import InputError
from profiler.gpus import resolve_gpu
from profiler.models import resolve_model
from profiler.yamlfile import read_yaml
from simulator.router import ROUTERS

TOPOLOGIES = ("agg", "disagg")
DTYPES = ("bf16", "fp16", "fp8", "fp4", "fp32")
MAX_COUNT = 10**7  # replicas, TP, batch tokens, seqs: above this is a typo that would exhaust memory, not a pool


@dataclass(frozen=True)
class PoolSpec:
    """One pool of identical replicas."""

    replicas: int = 1
    tp: int = 1  # GPUs per replica
    max_batch_tokens: int = 8192  # token budget of one iteration
    max_seqs: int = 256  # sequences in one iteration
    chunk_size: int | None = None  # chunked prefill: most prompt tokens per chunk (None: max_batch_tokens)
    chunked_prefill: bool = True  # split prompts across iterations; False: a prompt runs whole
    # A waiting prompt runs first, in a prefill-only iteration, while the decodes wait (SGLang's default);
    # False: decodes first and prompts fill the rest of the budget (vLLM, TRT-LLM).
    prefill_first: bool = False
    # Attention data parallelism: the replica's tp GPUs form this many groups, each running the attention of
    # its own sequences and keeping their KV; the experts span all tp GPUs (profiler.roofline.RooflineCostModel).
    attention_dp: int = 1
    # Batch waiting (TRT-LLM's batch_wait_timeout_iters and batch_wait_max_tokens_ratio): while sequences decode,
    # new prompts are held back until they and the decodes fill batch_wait_tokens_ratio of max_batch_tokens, or
    # for batch_wait_iters iterations in a row at most, so that more of them prefill together. 0: at once.
    batch_wait_iters: int = 0
    batch_wait_tokens_ratio: float = 0.0

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp

    @property
    def attention_tp(self) -> int:
        """GPUs of one attention group (the replica's tp without attention data parallelism)."""
        return self.tp // self.attention_dp

    def label(self) -> str:
        return f"TP{self.tp}" + (f" (attention DP{self.attention_dp})" if self.attention_dp > 1 else "")

    @property
    def prefill_chunk_tokens(self) -> int:
        return min(self.chunk_size or self.max_batch_tokens, self.max_batch_tokens)


@dataclass(frozen=True)
class KVLinkSpec:
    bandwidth_gb_s: float = 50.0  # GB/s per direction (1 GB = 1e9 bytes)
    latency_us: float = 10.0
    placement: str = "intra"  # intra (NVLink, same node) | inter (RDMA)

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.bandwidth_gb_s * 1e9

    @property
    def latency_s(self) -> float:
        return self.latency_us * 1e-6


@dataclass(frozen=True)
class Deployment:
    model: str
    gpu: str = "h200-sxm"
    dtype: str = "bf16"
    topology: str = "agg"
    workers: PoolSpec | None = None  # agg
    prefill: PoolSpec | None = None  # disagg
    decode: PoolSpec | None = None  # disagg
    kv_link: KVLinkSpec = field(default_factory=KVLinkSpec)
    router: str = "round_robin"
    engine: str = "vllm"  # whose efficiency factors the roofline uses
    kv_dtype: str | None = None  # default: bf16 for 16-bit weights, fp8 otherwise
    kv_block_tokens: int = 16
    gpu_memory_utilization: float = 0.90
    kv_event_delay_s: float = 0.0
    extra: dict = field(default_factory=dict)  # sections owned by later features (kv_tiers, faults, ...)

    # ---- derived -----------------------------------------------------------------------------
    @property
    def pools(self) -> dict[str, PoolSpec]:
        if self.topology == "agg":
            return {"workers": self.workers} if self.workers else {}
        return {k: v for k, v in (("prefill", self.prefill), ("decode", self.decode)) if v}

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.pools.values())

    @property
    def resolved_kv_dtype(self) -> str:
        return self.kv_dtype or ("bf16" if self.dtype in ("bf16", "fp16", "fp32") else "fp8")

    def describe(self) -> str:
        if self.topology == "agg":
            w = self.workers
            return f"agg {w.replicas}x {w.label()}"
        p, d = self.prefill, self.decode
        return f"disagg prefill {p.replicas}x {p.label()} + decode {d.replicas}x {d.label()}"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"model": self.model, "gpu": self.gpu, "dtype": self.dtype, "topology": self.topology}
        for name, pool in self.pools.items():
            d[name] = _pool_dict(pool)
        if self.topology == "disagg":
            d["kv_link"] = asdict(self.kv_link)
        d["router"] = self.router
        d["engine"] = self.engine
        if self.kv_dtype:
            d["kv_dtype"] = self.kv_dtype
        d["kv_block_tokens"] = self.kv_block_tokens
        d["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.kv_event_delay_s:
            d["kv_event_delay_s"] = self.kv_event_delay_s
        d.update(self.extra)
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_pool(self, name: str, **changes) -> Deployment:
        return replace(self, **{name: replace(getattr(self, name), **changes)})


def _pool_dict(pool: PoolSpec) -> dict:
    d = asdict(pool)
    if d["chunk_size"] is None:
        del d["chunk_size"]
    if not d["prefill_first"]:  # the default; only engines that schedule this way say so
        del d["prefill_first"]
    if d["attention_dp"] == 1:
        del d["attention_dp"]
    if not d["batch_wait_iters"] and not d["batch_wait_tokens_ratio"]:
        del d["batch_wait_iters"], d["batch_wait_tokens_ratio"]
    return d


# ---- parsing ---------------------------------------------------------------------------------
# Top-level sections that later features own; parsed by them from Deployment.extra.
EXTRA_SECTIONS = {"kv_tiers", "faults", "prefix_cache", "router_weights", "retry", "autoscale"}


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(allowed))})", where=where)


def _positive(value: Any, where: str, kind: type = int, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"must be a number, got {value!r}", where=where)
    if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):  # NaN fails `> 0`
        raise InputError(f"must be positive, got {value!r}", where=where)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise InputError(f"must be a whole number, got {value!r}", where=where)
    if kind is int and value > MAX_COUNT:
        raise InputError(f"must be at most {MAX_COUNT:,}, got {value!r}", where=where)
    return kind(value)


def _parse_pool(data: Any, where: str) -> PoolSpec:
    if not isinstance(data, dict):
        raise InputError("must be a mapping like {replicas: 1, tp: 1}", where=where)
    allowed = {f.name for f in fields(PoolSpec)}
    _check_keys(data, allowed, where)
    kw: dict[str, Any] = {}
    for key in ("replicas", "tp", "max_batch_tokens", "max_seqs", "attention_dp"):
        if key in data:
            kw[key] = _positive(data[key], f"{where}.{key}")
    if kw.get("tp", 1) % kw.get("attention_dp", 1):
        raise InputError(f"attention_dp {kw['attention_dp']} must divide tp {kw.get('tp', 1)} (the replica's GPUs "
                         "form that many attention groups)", where=f"{where}.attention_dp")
    if "chunk_size" in data:
        kw["chunk_size"] = _positive(data["chunk_size"], f"{where}.chunk_size", allow_none=True)
    for key in ("chunked_prefill", "prefill_first"):
        if key in data:
            if not isinstance(data[key], bool):
                raise InputError("must be true or false", where=f"{where}.{key}")
            kw[key] = data[key]
    if data.get("batch_wait_iters"):
        kw["batch_wait_iters"] = _positive(data["batch_wait_iters"], f"{where}.batch_wait_iters")
    if "batch_wait_tokens_ratio" in data:
        ratio = data["batch_wait_tokens_ratio"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise InputError(f"must be a share from 0 to 1 of max_batch_tokens, got {ratio!r}",
                             where=f"{where}.batch_wait_tokens_ratio")
        kw["batch_wait_tokens_ratio"] = float(ratio)
    return PoolSpec(**kw)


def parse_deployment(data: Any, where: str = "deployment") -> Deployment:
    """Validate a deployment mapping; every error names the field."""
    if not isinstance(data, dict):
        raise InputError("a deployment must be a YAML mapping (model:, gpu:, topology:, ...)", where=where)
    top = {f.name for f in fields(Deployment)} - {"extra"}
    _check_keys(data, top | EXTRA_SECTIONS, where)
    if "model" not in data:
        raise InputError("missing field 'model'", where=where)
    kw: dict[str, Any] = {}
    for key in ("model", "gpu", "engine"):
        if key in data:
            if not isinstance(data[key], str) or not data[key].strip():
                raise InputError(f"must be a name, got {data[key]!r}", where=f"{where}.{key}")
            kw[key] = data[key]
    for key in ("dtype", "kv_dtype"):
        if key in data and data[key] is not None:
            if data[key] not in DTYPES:
                raise InputError(f"must be one of {', '.join(DTYPES)}, got {data[key]!r}", where=f"{where}.{key}")
            kw[key] = data[key]
    topology = data.get("topology", "disagg" if "prefill" in data or "decode" in data else "agg")
    if topology not in TOPOLOGIES:
        raise InputError(f"must be agg or disagg, got {topology!r}", where=f"{where}.topology")
    kw["topology"] = topology
    if topology == "agg":
        if "prefill" in data or "decode" in data:
            raise InputError("an agg deployment has one 'workers:' pool, not prefill/decode", where=where)
        kw["workers"] = _parse_pool(data.get("workers", {}), f"{where}.workers")
    else:
        if "workers" in data:
            raise InputError("a disagg deployment has 'prefill:' and 'decode:' pools, not 'workers:'", where=where)
        for pool in ("prefill", "decode"):
            if pool not in data:
                raise InputError(f"missing field {pool!r} (a disagg deployment needs both pools)", where=where)
            kw[pool] = _parse_pool(data[pool], f"{where}.{pool}")
    if "kv_link" in data:
        link = data["kv_link"]
        if not isinstance(link, dict):
            raise InputError("must be a mapping like {bandwidth_gb_s: 50, latency_us: 10}", where=f"{where}.kv_link")
        _check_keys(link, {"bandwidth_gb_s", "latency_us", "placement"}, f"{where}.kv_link")
        lk: dict[str, Any] = {}
        if "bandwidth_gb_s" in link:
            lk["bandwidth_gb_s"] = _positive(link["bandwidth_gb_s"], f"{where}.kv_link.bandwidth_gb_s", float)
        if "latency_us" in link:
            v = link["latency_us"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
                raise InputError(f"must be a number >= 0, got {v!r}", where=f"{where}.kv_link.latency_us")
            lk["latency_us"] = float(v)
        if "placement" in link:
            if link["placement"] not in ("intra", "inter"):
                raise InputError("must be intra or inter", where=f"{where}.kv_link.placement")
            lk["placement"] = link["placement"]
        kw["kv_link"] = KVLinkSpec(**lk)
    if "router" in data:
        if data["router"] not in ROUTERS:
            raise InputError(f"must be one of {', '.join(ROUTERS)}, got {data['router']!r}", where=f"{where}.router")
        kw["router"] = data["router"]
    if "kv_block_tokens" in data:
        kw["kv_block_tokens"] = _positive(data["kv_block_tokens"], f"{where}.kv_block_tokens")
    if "gpu_memory_utilization" in data:
        u = _positive(data["gpu_memory_utilization"], f"{where}.gpu_memory_utilization", float)
        if u > 1:
            raise InputError(f"must be at most 1, got {u}", where=f"{where}.gpu_memory_utilization")
        kw["gpu_memory_utilization"] = u
    if "kv_event_delay_s" in data:
        v = data["kv_event_delay_s"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
            raise InputError(f"must be a number >= 0, got {v!r}", where=f"{where}.kv_event_delay_s")
        kw["kv_event_delay_s"] = float(v)
    kw["extra"] = {k: data[k] for k in EXTRA_SECTIONS if k in data}
    if "faults" in data or "retry" in data:  # checked here too, so that their errors name this file
        from simulator.fault_plan import fault_plan

        check_fault_targets(fault_plan(kw["extra"], where), {name: kw[name].replicas for name in
                                                             ("workers", "prefill", "decode") if kw.get(name)},
                            where=f"{where}.faults")
    if "autoscale" in data:
        from simulator.autoscale import parse_autoscale

        parse_autoscale(data["autoscale"], where=f"{where}.autoscale")
    from simulator.kv import check_kv_sections  # prefix_cache, router_weights, kv_tiers (issue 8)

    check_kv_sections(kw["extra"], where)
    for key, resolve in (("model", resolve_model), ("gpu", resolve_gpu)):  # an unknown name fails here, named
        try:
            resolve(kw[key]) if key in kw else None
        except InputError as e:
            raise InputError(str(e), where=f"{where}.{key}") from None
    return Deployment(**kw)


def check_fault_targets(plan, replicas: dict[str, int], where: str) -> None:
    """Every replica, pool and link a FaultPlan names exists in a deployment with these pools (pool -> replicas),
    as simulator/faults.py would say at simulate time, but naming ``where`` (the file, or the flag)."""
    have = ", ".join(f"{p}[0..{n - 1}]" for p, n in replicas.items())
    refs = ([(f.worker, "dies") for f in plan.deaths] + [(f.worker, "drains") for f in plan.drains]
            + [(g.link, "link") for g in plan.degradations if g.link])
    for (pool, i), what in refs:
        if i >= replicas.get(pool, 0):
            raise InputError(f"{pool}[{i}] {what}, but the deployment has {have}", where=where)
        if what == "link" and pool != "prefill":
            raise InputError("KV links belong to prefill replicas: name prefill[i], or no replica for all links",
                             where=where)
    for d in plan.drains:
        if d.migrate and d.worker[0] != "decode":
            raise InputError(f"only decode replicas migrate KV; {d.worker[0]}[{d.worker[1]}] drains by finishing",
                             where=where)
    for u in plan.scale_ups:
        if u.pool not in replicas:
            raise InputError(f"the deployment has no {u.pool} pool (it has {', '.join(replicas)})", where=where)


def load_deployment(path: str | Path) -> Deployment:
    return parse_deployment(read_yaml(path), where=str(path))
