"""What each serving engine runs with when nobody says otherwise: its scheduler's shape (chunked prefill,
prefill-first), its batch budget and the share of GPU memory its KV cache may use. Read by the replay of
measured benchmarks and by `plan --engine`."""

from __future__ import annotations

from dataclasses import dataclass

from profiler.gpus import GPUSpec, MiB
from profiler.memory import memory_fit


@dataclass(frozen=True)
class EngineDefaults:
    """What an engine runs with when the benchmark does not say: its documented serving defaults."""

    max_batch_tokens: int = 8192  # vLLM max_num_batched_tokens, SGLang chunked_prefill_size, TRT-LLM max_num_tokens
    chunked_prefill: bool = True  # TRT-LLM's PyTorch backend runs whole prompts unless told otherwise
    memory_fraction: float = 0.90  # vLLM gpu_memory_utilization (share of all HBM; SGLang: sglang_memory_defaults)
    of_free_memory: bool = False  # TRT-LLM: free_gpu_memory_fraction of what weights and activations leave
    prefill_first: bool = False  # SGLang: waiting prompts run in prefill-only iterations before the decodes


ENGINES: dict[str, EngineDefaults] = {
    "vllm": EngineDefaults(),
    "sglang": EngineDefaults(prefill_first=True),
    "trtllm": EngineDefaults(chunked_prefill=False, memory_fraction=0.90, of_free_memory=True),
}


def sglang_memory_defaults(gpu: GPUSpec, tp: int) -> tuple[int, float]:
    """SGLang's defaults on ``gpu`` (server_args._handle_gpu_memory_settings): (chunked_prefill_size,
    mem_fraction_static). The chunk and the CUDA-graph batch limit grow with the device's memory; the fraction is
    what is left after reserving 512 MiB of metadata, 1.5 MiB per chunk token of prefill activations, 2 MiB per
    CUDA-graph batch slot and 1 GiB per 8 GPUs of parallelism, at least 10 GiB on a GPU of over 60 GiB."""
    mem = gpu.hbm_bytes / MiB
    if mem < 20 * 1024:
        chunk, graph_bs = 2048, 8
    elif mem < 35 * 1024:
        chunk, graph_bs = 2048, 24 if tp < 4 else 80
    elif mem < 60 * 1024:
        chunk, graph_bs = 4096, 32 if tp < 4 else 160
    elif mem < 160 * 1024:
        chunk, graph_bs = 8192, 256 if tp < 4 else 512
    else:
        chunk, graph_bs = 16384, 512
    reserved = 512 + max(chunk, 2048) * 1.5 + graph_bs * 2 + tp / 8 * 1024
    if mem > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    return chunk, round((mem - reserved) / mem, 3)


def vllm_batch_defaults(gpu: GPUSpec) -> tuple[int, int]:
    """vLLM's API-server defaults on ``gpu`` (arg_utils, versions 0.8 to 0.27): (max_num_batched_tokens,
    max_num_seqs), 8192 and 1024 on a GPU of at least 70 GiB other than an A100, else 2048 and 256."""
    big = gpu.hbm_bytes >= 70 * 1024 * MiB and "a100" not in gpu.name
    return (8192, 1024) if big else (2048, 256)


# TRT-LLM runs whole prompts (no chunking) within max_num_tokens per iteration, and its scheduler stops at the
# first request that does not fit: with the library's 8192 a prompt of 8192 tokens would never join a running
# decode batch, yet such rows ran with TTFT near one prefill (Llama-3.1-70B, ISL 8192, on H200 and B200). The
# configs these benchmarks ran were written by aiconfigurator's generator, whose rule sizes the budget to the
# workload: the prompt, the decode batch and 1500 tokens of headroom, in whole KV blocks of 32 tokens.
TRTLLM_BUDGET_HEADROOM_TOKENS = 1500
TRTLLM_TOKENS_PER_BLOCK = 32


def trtllm_max_num_tokens(isl: int, seats: int) -> int:
    """The max_num_tokens a benchmarked TRT-LLM worker ran with: ``isl + seats + 1500`` rounded up to 32 tokens
    (a prefill worker: ``seats`` = 0)."""
    need = isl + seats + TRTLLM_BUDGET_HEADROOM_TOKENS
    return -(-need // TRTLLM_TOKENS_PER_BLOCK) * TRTLLM_TOKENS_PER_BLOCK


def engine_memory_utilization(engine: str, model, gpu: GPUSpec, tp: int, dtype: str, max_batch_tokens: int,
                              attn_dp: int = 1) -> float:
    """The share of HBM the engine's KV cache and everything else may use, as profiler.memory counts it
    (``tp``, ``attn_dp`` as memory_fit's)."""
    e = ENGINES.get(engine, EngineDefaults())
    if engine == "sglang":
        return sglang_memory_defaults(gpu, tp * attn_dp)[1]
    if not e.of_free_memory:
        return e.memory_fraction
    fit = memory_fit(model, gpu, tp, dtype, "bf16", max_batch_tokens, 1.0, attn_dp)  # weights, activations: as counted
    used = fit.weights_bytes + fit.activation_bytes + fit.reserve_bytes
    free = max(gpu.hbm_bytes - used, 0.0)
    return min((used + e.memory_fraction * free) / gpu.hbm_bytes, 0.98)
