"""GPU prices: US dollars per GPU-hour, from the GPU catalog's list prices or a price file, and what a
million output tokens costs at a given throughput.

A price file is YAML or JSON, GPU name -> $/hour: ``{h100-sxm: 2.1, h200-sxm: 3.0}``.
"""

from __future__ import annotations

import math
from pathlib import Path

from profiler.errors import InputError
from profiler.gpus import canonical_gpu_name, resolve_gpu
from profiler.yamlfile import read_yaml


def load_prices(path: str | Path) -> dict[str, float]:
    """A price file as {canonical GPU name: $/hour}."""
    path = Path(path)
    if not path.exists():  # name what is missing: a price file among the flags
        raise InputError("price file not found", where=str(path))
    data = read_yaml(path)
    if not isinstance(data, dict) or not data:
        raise InputError("must map GPU names to $/hour, like {h100-sxm: 2.1}", where=str(path))
    prices = {}
    for name, usd in data.items():
        key = canonical_gpu_name(str(name))
        if key is None:
            raise InputError(f"unknown GPU {name!r}", where=str(path))
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not usd >= 0 or math.isinf(usd):
            raise InputError(f"price must be $/hour >= 0, got {usd!r}", where=f"{path}: {name}")
        prices[key] = float(usd)
    return prices


def usd_per_gpu_hour(gpu: str, prices: dict[str, float] | None = None) -> float | None:
    """The price of one ``gpu`` for an hour: the price file's, else the catalog's; None where neither has one."""
    key = canonical_gpu_name(gpu)
    if prices and key in prices:
        return prices[key]
    price = resolve_gpu(gpu).price_per_hour
    return price if price > 0 else None


def usd_per_million_tokens(gpus: int, usd_per_gpu_hour: float | None, tok_s: float | None) -> float | None:
    """Dollars per million output tokens for ``gpus`` GPUs producing ``tok_s`` tokens per second."""
    if usd_per_gpu_hour is None or not tok_s or not tok_s > 0:
        return None
    return gpus * usd_per_gpu_hour / (tok_s * 3600.0) * 1e6
