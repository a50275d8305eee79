"""KV tiers below HBM: host memory, local disk and a remote store shared by every worker.

A prefix block evicted from HBM is offloaded to the first lower tier instead of dropped; a full tier
evicts its least recently used entry to the next one, the last tier drops it. A hit on a lower tier
moves the entry back to HBM (the tiers are exclusive) at that tier's bandwidth; the worker's next
iteration pays the recall time. Offload is write-behind (overlapped with compute, as LMCache and
Dynamo's KVBM do it) and costs no simulated time, only bytes.

```yaml
kv_tiers:                       # per replica; capacities in GB (1e9 bytes), bandwidths in GB/s
  host:   {}                                     # default 256 GB at 50 GB/s (PCIe 5 x16) per GPU
  disk:   {capacity_gb: 2000, bandwidth_gb_s: 6}  # default 2000 GB at 6 GB/s (one NVMe drive)
  remote: {capacity_gb: 10000}                   # one store all workers share (no default size); 12.5 GB/s
```
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from profiler.errors import InputError

TIERS = ("host", "disk", "remote")
# Typical hosts, per GPU (host: PCIe 5 x16 measured ~50 GB/s) or per replica (disk: one NVMe drive; remote: a
# 100 Gb/s NIC). A deployment file overrides them.
DEFAULT_BANDWIDTH_GB_S = {"host": 50.0, "disk": 6.0, "remote": 12.5}
# A DGX-class node: 2 TB of host memory for 8 GPUs, a few TB of local NVMe; a remote store has no typical size.
DEFAULT_CAPACITY_GB = {"host": 256.0, "disk": 2000.0}
PER_GPU = {"host"}  # bandwidth that grows with the replica's GPUs (each GPU has its own PCIe link)


@dataclass(frozen=True)
class TierSpec:
    name: str
    capacity_bytes: float
    bandwidth_bytes_s: float  # per replica (per GPU for host: multiplied by TP)


def parse_kv_tiers(data: Any, where: str = "kv_tiers") -> tuple[TierSpec, ...]:
    """``kv_tiers:`` of a deployment -> tier specs in order host, disk, remote; errors name the field."""
    if data is None:
        return ()
    if not isinstance(data, dict):
        raise InputError("must be a mapping like {host: {capacity_gb: 256}}", where=where)
    unknown = sorted(set(data) - set(TIERS))
    if unknown:
        raise InputError(f"unknown tier {unknown[0]!r} (known: {', '.join(TIERS)})", where=where)
    specs = []
    for name in TIERS:
        if name not in data:
            continue
        tier, at = data[name], f"{where}.{name}"
        if tier is None or tier is True:  # `host:` alone: the defaults
            tier = {}
        if not isinstance(tier, dict):
            raise InputError("must be a mapping like {capacity_gb: 256, bandwidth_gb_s: 50}", where=at)
        bad = sorted(set(tier) - {"capacity_gb", "bandwidth_gb_s"})
        if bad:
            raise InputError(f"unknown field {bad[0]!r} (known: bandwidth_gb_s, capacity_gb)", where=at)
        if "capacity_gb" not in tier and name not in DEFAULT_CAPACITY_GB:
            raise InputError("missing field 'capacity_gb' (a remote store has no default size)", where=at)
        cap = _number(tier.get("capacity_gb", DEFAULT_CAPACITY_GB.get(name)), f"{at}.capacity_gb", allow_zero=True)
        bw = _number(tier.get("bandwidth_gb_s", DEFAULT_BANDWIDTH_GB_S[name]), f"{at}.bandwidth_gb_s")
        if cap > 0:
            specs.append(TierSpec(name, cap * 1e9, bw * 1e9))
    return tuple(specs)


def tiers_flag(text: str, where: str = "--kv-tiers") -> dict:
    """``host=256,disk`` (capacities in GB, or the default; default bandwidths) -> a deployment's ``kv_tiers:``."""
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, gb = part.partition("=")
        name = name.strip()
        if not eq and name in DEFAULT_CAPACITY_GB:
            out[name] = {}
            continue
        if name not in TIERS or not gb:
            raise InputError(f"expected TIER=GB[,TIER=GB] with TIER one of {', '.join(TIERS)}, got {part!r}",
                             where=where)
        try:
            out[name] = {"capacity_gb": float(gb)}
        except ValueError:
            raise InputError(f"{name}: capacity must be a number of GB, got {gb!r}", where=where) from None
    parse_kv_tiers(out, where)
    return out


def _number(v: Any, where: str, allow_zero: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"),):
        raise InputError(f"must be a number, got {v!r}", where=where)
    if v < 0 or (v == 0 and not allow_zero):
        raise InputError(f"must be {'>= 0' if allow_zero else 'positive'}, got {v!r}", where=where)
    return float(v)


class Tier:
    """An LRU store of prefix entries (key -> bytes) under a byte capacity; counts its traffic."""

    def __init__(self, spec: TierSpec, tp: int = 1):
        self.name = spec.name
        self.capacity_bytes = spec.capacity_bytes
        self.bandwidth_bytes_s = spec.bandwidth_bytes_s * (tp if spec.name in PER_GPU else 1)
        self.entries: OrderedDict[int, float] = OrderedDict()
        self.used_bytes = 0.0
        self.lower: Tier | None = None
        self.offloaded_bytes = 0.0
        self.recalled_bytes = 0.0
        self.hits = 0  # entries recalled from here
        self.log: list[tuple[float, str, float]] = []  # (time_s, "offloaded" | "recalled", bytes)

    def put(self, key: int, nbytes: float, now: float) -> None:
        """Offload an entry here at ``now`` (or refresh it); what no longer fits moves down."""
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        if nbytes > self.capacity_bytes:
            return
        self.entries[key] = nbytes
        self.used_bytes += nbytes
        self.offloaded_bytes += nbytes
        self.log.append((now, "offloaded", nbytes))
        while self.used_bytes > self.capacity_bytes:
            k, b = self.entries.popitem(last=False)
            self.used_bytes -= b
            if self.lower is not None:
                self.lower.put(k, b, now)

    def take(self, key: int, now: float) -> float:
        """Recall an entry to HBM at ``now``: the seconds it takes."""
        nbytes = self.entries.pop(key)
        self.used_bytes -= nbytes
        self.recalled_bytes += nbytes
        self.log.append((now, "recalled", nbytes))
        self.hits += 1
        return nbytes / self.bandwidth_bytes_s


def build_tiers(specs: tuple[TierSpec, ...], tp: int, shared: dict[str, Tier]) -> list[Tier]:
    """One worker's tiers, chained top to bottom; ``remote`` is the one store in ``shared``."""
    tiers = []
    for spec in specs:
        if spec.name == "remote":
            tiers.append(shared.setdefault("remote", Tier(spec)))
        else:
            tiers.append(Tier(spec, tp))
    for upper, lower in zip(tiers, tiers[1:], strict=False):
        if upper.name != "remote":
            upper.lower = lower
    return tiers
