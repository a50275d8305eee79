"""GPUSpec: a GPU's published datasheet figures, and the local CPU.

FLOP/s are dense (no sparsity), per GPU. Interconnect bandwidths are per GPU, per direction. Memory is what the
device reports (nvidia-smi's MiB: an H200 has 143,771 MiB, 150.8 GB, where its datasheet says 141 GB), not the
marketing figure, since engines size their KV cache from the reported memory.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from profiler.errors import InputError

GiB = 1 << 30
MiB = 1 << 20
GB = 1e9
TB = 1e12


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_flops: float
    fp8_flops: float  # 0 where the GPU has no fp8 tensor cores
    fp4_flops: float  # 0 where the GPU has no fp4 tensor cores
    hbm_bytes: float
    hbm_bw_bytes_s: float
    nvlink_bw_bytes_s: float  # intra-node, per direction (PCIe where there is no NVLink)
    nvlink_latency_s: float
    internode_bw_bytes_s: float  # one RDMA NIC per GPU, per direction
    internode_latency_s: float
    price_per_hour: float = 0.0  # USD, on-demand cloud list price; override with a price table
    max_tp_per_node: int = 8

    def flops(self, dtype: str) -> float:
        """Peak dense FLOP/s for GEMMs whose weights are in ``dtype``. Weights in a format the GPU has no tensor
        cores for run weight-only (``weight_only``): the kernel dequantizes them to bf16 as it loads them (W8A16 or
        W4A16, as vLLM's Marlin and MXFP4 kernels do on Ampere and Hopper), so the GEMM reads the format's bytes
        at the bf16 rate."""
        if dtype == "fp4" and self.fp4_flops:
            return self.fp4_flops
        if dtype == "fp8" and self.fp8_flops:
            return self.fp8_flops
        if dtype == "fp32":
            return self.bf16_flops / 2  # tf32 tensor cores
        return self.bf16_flops

    def weight_only(self, dtype: str) -> bool:
        """Whether ``dtype`` weights run weight-only here: a quantized format without tensor cores of its own."""
        return (dtype == "fp8" and not self.fp8_flops) or (dtype == "fp4" and not self.fp4_flops)

    def to_dict(self) -> dict:
        return asdict(self)


CATALOG: dict[str, GPUSpec] = {
    g.name: g
    for g in [
        GPUSpec("a100-80g", bf16_flops=312 * TB, fp8_flops=0, fp4_flops=0, hbm_bytes=80 * GiB,
                hbm_bw_bytes_s=2039 * GB, nvlink_bw_bytes_s=300 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=25 * GB, internode_latency_s=5e-6, price_per_hour=1.8),
        GPUSpec("h100-sxm", bf16_flops=989 * TB, fp8_flops=1979 * TB, fp4_flops=0, hbm_bytes=80 * GiB,
                hbm_bw_bytes_s=3350 * GB, nvlink_bw_bytes_s=450 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=50 * GB, internode_latency_s=5e-6, price_per_hour=2.5),
        GPUSpec("h200-sxm", bf16_flops=989 * TB, fp8_flops=1979 * TB, fp4_flops=0, hbm_bytes=143771 * MiB,
                hbm_bw_bytes_s=4800 * GB, nvlink_bw_bytes_s=450 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=50 * GB, internode_latency_s=5e-6, price_per_hour=3.5),
        GPUSpec("b200", bf16_flops=2250 * TB, fp8_flops=4500 * TB, fp4_flops=9000 * TB, hbm_bytes=183359 * MiB,
                hbm_bw_bytes_s=8000 * GB, nvlink_bw_bytes_s=900 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=50 * GB, internode_latency_s=5e-6, price_per_hour=5.5),
        # Blackwell in NVL72 racks: one NVLink domain of 72 GPUs, so a TP group stays on NVLink up to 72
        GPUSpec("gb200", bf16_flops=2500 * TB, fp8_flops=5000 * TB, fp4_flops=10000 * TB, hbm_bytes=189471 * MiB,
                hbm_bw_bytes_s=8000 * GB, nvlink_bw_bytes_s=900 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=50 * GB, internode_latency_s=5e-6, max_tp_per_node=72),
        # Blackwell Ultra: fp4 up (HGX B300 13 PF dense, GB300 15 PF), 288 GB HBM3e, ConnectX-8 (800 Gb/s) per GPU
        GPUSpec("b300", bf16_flops=2250 * TB, fp8_flops=4500 * TB, fp4_flops=13000 * TB, hbm_bytes=275040 * MiB,
                hbm_bw_bytes_s=8000 * GB, nvlink_bw_bytes_s=900 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=100 * GB, internode_latency_s=5e-6),
        GPUSpec("gb300", bf16_flops=2500 * TB, fp8_flops=5000 * TB, fp4_flops=15000 * TB, hbm_bytes=284208 * MiB,
                hbm_bw_bytes_s=8000 * GB, nvlink_bw_bytes_s=900 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=100 * GB, internode_latency_s=5e-6, max_tp_per_node=72),
        # Hopper export parts: H20 (cut compute, 96 GB HBM3 at 4.0 TB/s), H800 (H100 compute, NVLink 400 GB/s)
        GPUSpec("h20", bf16_flops=148 * TB, fp8_flops=296 * TB, fp4_flops=0, hbm_bytes=97871 * MiB,
                hbm_bw_bytes_s=4000 * GB, nvlink_bw_bytes_s=450 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=50 * GB, internode_latency_s=5e-6),
        GPUSpec("h800", bf16_flops=989 * TB, fp8_flops=1979 * TB, fp4_flops=0, hbm_bytes=80 * GiB,
                hbm_bw_bytes_s=3350 * GB, nvlink_bw_bytes_s=200 * GB, nvlink_latency_s=3e-6,
                internode_bw_bytes_s=50 * GB, internode_latency_s=5e-6),
        GPUSpec("l40s", bf16_flops=181 * TB, fp8_flops=362 * TB, fp4_flops=0, hbm_bytes=48 * GB,
                hbm_bw_bytes_s=864 * GB, nvlink_bw_bytes_s=32 * GB, nvlink_latency_s=10e-6,
                internode_bw_bytes_s=12.5 * GB, internode_latency_s=10e-6, price_per_hour=1.0),
    ]
}

# Other names of the catalog's GPUs (canonical_gpu_name reads "_" as "-": h100_sxm, b200_sxm).
ALIASES = {
    "a100": "a100-80g", "a100-sxm": "a100-80g",
    "h100": "h100-sxm", "h100-sxm5": "h100-sxm",
    "h200": "h200-sxm",
    "b200-sxm": "b200",
    "gb200-sxm": "gb200", "gb200-nvl72": "gb200", "b300-sxm": "b300", "gb300-sxm": "gb300", "gb300-nvl72": "gb300",
    "h20-sxm": "h20", "h800-sxm": "h800",
    "l40s-48g": "l40s",
}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def local_cpu() -> GPUSpec:
    """This machine's processor as a 'GPU'. Nominal figures only: its real costs come from a profile."""
    cores = os.cpu_count() or 1
    # AVX2 FMA: 2 units x 8 fp32 lanes x 2 FLOPs at ~2.5 GHz; DRAM ~20 GB/s per socket share.
    flops = cores * 2.5e9 * 32
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 16 * GiB
    return GPUSpec("cpu", bf16_flops=flops / 4, fp8_flops=0, fp4_flops=0, hbm_bytes=float(mem),
                   hbm_bw_bytes_s=20 * GB, nvlink_bw_bytes_s=5 * GB, nvlink_latency_s=20e-6,
                   internode_bw_bytes_s=1 * GB, internode_latency_s=50e-6, max_tp_per_node=1)


def canonical_gpu_name(name: str) -> str | None:
    key = name.strip().lower().replace(" ", "-").replace("_", "-")
    if key in CATALOG or key == "cpu":
        return key
    return ALIASES.get(key)


def resolve_gpu(name: str) -> GPUSpec:
    key = canonical_gpu_name(name)
    if key == "cpu":
        return local_cpu()
    if key is None:
        raise InputError(f"unknown GPU {name!r}; known: {', '.join([*CATALOG, 'cpu'])}")
    return CATALOG[key]


def cpu_description() -> str:
    return f"{_cpu_name()} ({os.cpu_count()} cores)"
