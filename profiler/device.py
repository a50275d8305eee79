"""Device identity: what a profile was measured on. pynvml on an NVIDIA GPU, the CPU otherwise.

pynvml missing, or present without a driver, is not an error: the machine is then described as a CPU.
"""

from __future__ import annotations

import os
import platform

from profiler.gpus import cpu_description


def nvidia_identity(index: int = 0) -> dict | None:
    """Name, memory, SM clock, driver and CUDA version of GPU ``index``; None without pynvml or a driver."""
    try:
        import pynvml  # noqa: PLC0415
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {
            "kind": "cuda",
            "name": name.decode() if isinstance(name, bytes) else name,
            "memory_bytes": int(mem.total),
            "free_bytes": int(mem.free),
            "sm_clock_mhz": int(pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)),
            "driver": driver.decode() if isinstance(driver, bytes) else driver,
            "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
            "gpus": int(pynvml.nvmlDeviceGetCount()),
        }
    except Exception:  # noqa: BLE001 - a GPU that cannot be queried is described as unknown fields
        return None
    finally:
        pynvml.nvmlShutdown()


def cpu_identity() -> dict:
    """Processor model, cores, memory, and the torch thread count when torch is already loaded."""
    pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    avail = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
    ident = {
        "kind": "cpu",
        "name": cpu_description(),
        "cores": os.cpu_count() or 1,
        "memory_bytes": int(pages * page),
        "free_bytes": int(avail * page),
        "machine": platform.machine(),
    }
    import sys  # noqa: PLC0415

    if "torch" in sys.modules:
        ident["torch_threads"] = sys.modules["torch"].get_num_threads()
    return ident


def device_identity(device: str = "cpu") -> dict:
    """Identity of the device timings are taken on: ``cuda`` (pynvml, falling back to torch) or ``cpu``."""
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        ident = nvidia_identity(index)
        if ident is None:
            import torch  # noqa: PLC0415 - only when asked to describe a CUDA device

            props = torch.cuda.get_device_properties(index)
            ident = {"kind": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                     "cuda": torch.version.cuda}
        ident["host"] = cpu_identity()["name"]
        return ident
    return cpu_identity()
