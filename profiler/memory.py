"""Memory fit of one replica: weights / TP + activations + a reserve; the rest, times a utilisation
fraction, holds KV blocks."""

from __future__ import annotations

from dataclasses import dataclass

from profiler.errors import InputError
from profiler.gpus import GiB, GPUSpec
from profiler.models import ModelSpec, dtype_bytes

RESERVE_BYTES = 1.5 * GiB  # CUDA context, graphs, NCCL buffers, allocator slack
DEFAULT_UTILIZATION = 0.90  # share of HBM an engine claims (vLLM gpu_memory_utilization)


@dataclass(frozen=True)
class MemoryFit:
    """Per-GPU memory budget of a replica."""

    weights_bytes: float
    activation_bytes: float
    reserve_bytes: float
    kv_bytes: float  # bytes left for the KV cache (may be negative: does not fit)
    kv_bytes_per_token: float  # per GPU
    kv_tokens: int  # tokens of KV the replica can hold

    @property
    def fits(self) -> bool:
        return self.kv_tokens > 0


def activation_bytes(model: ModelSpec, tp: int, max_batch_tokens: int) -> float:
    """Peak activations of the largest iteration: hidden states, the MLP's widest tensor, logits."""
    widest = max(model.intermediate, model.moe_intermediate * max(model.active_experts, 1)) / tp
    per_token = (4 * model.hidden + 2 * widest) * 2.0
    logits = min(max_batch_tokens, 1024) * model.vocab / tp * 4.0
    return max_batch_tokens * per_token + logits


def rank_batch_tokens(max_batch_tokens: int, attn_dp: int = 1) -> int:
    """One attention-DP rank's share of a replica's per-iteration token budget (the budget itself without DP)."""
    return -(-max_batch_tokens // max(1, attn_dp))


def weight_bytes_per_gpu(model: ModelSpec, dtype: str, tp: int, attn_dp: int = 1) -> float:
    """Weights one GPU holds. With attention data parallelism (``attn_dp`` ranks of ``tp`` GPUs each) the
    attention, dense and embedding weights are split over ``tp`` and replicated per rank; routed experts
    are split over all ``tp x attn_dp`` GPUs (expert parallelism)."""
    total = model.param_bytes(dtype)
    if attn_dp <= 1 or not model.is_moe:
        return total / tp
    experts = model.moe_layers * model.experts * model.expert_params() * dtype_bytes(dtype)
    return (total - experts) / tp + experts / (tp * attn_dp)


def memory_fit(model: ModelSpec, gpu: GPUSpec, tp: int, dtype: str, kv_dtype: str, max_batch_tokens: int,
               utilization: float = DEFAULT_UTILIZATION, attn_dp: int = 1) -> MemoryFit:
    """Per-GPU budget of a replica of ``tp`` GPUs (``tp x attn_dp`` with attention data parallelism, where
    each rank keeps the KV of its own sequences: the replica holds ``attn_dp`` times a rank's tokens).
    ``max_batch_tokens`` is the replica's token budget per iteration; with attention DP each rank runs its own
    share of it, and a GPU holds the activations of its rank's share."""
    weights = weight_bytes_per_gpu(model, dtype, tp, attn_dp)
    act = activation_bytes(model, tp, rank_batch_tokens(max_batch_tokens, attn_dp))
    kv = gpu.hbm_bytes * utilization - weights - act - RESERVE_BYTES
    per_token = model.kv_bytes_per_token_per_gpu(kv_dtype, tp)
    return MemoryFit(weights, act, RESERVE_BYTES, kv, per_token, max(0, int(kv // per_token)) * max(1, attn_dp))


def require_fit(model: ModelSpec, gpu: GPUSpec, tp: int, dtype: str, kv_dtype: str, max_batch_tokens: int,
                utilization: float = DEFAULT_UTILIZATION, min_kv_tokens: int = 1, pool: str = "pool",
                attn_dp: int = 1) -> MemoryFit:
    """The fit, or an InputError that says what would fit instead (``tp``, ``attn_dp`` as memory_fit's)."""
    fit = memory_fit(model, gpu, tp, dtype, kv_dtype, max_batch_tokens, utilization, attn_dp)
    if fit.kv_tokens >= min_kv_tokens:
        return fit
    where, hint = f"TP={tp}", ""
    if attn_dp > 1:
        where = f"attention TP={tp} x DP={attn_dp}"
    else:
        smallest = next((t for t in (1, 2, 4, 8, 16, 32, 64)
                         if memory_fit(model, gpu, t, dtype, kv_dtype, max_batch_tokens, utilization).kv_tokens
                         >= min_kv_tokens), None)
        hint = (f"; TP={smallest} would fit" if smallest
                else "; no TP up to 64 fits; use a smaller dtype or a bigger GPU")
    raise InputError(
        f"{pool}: {model.name} in {dtype} does not fit on {gpu.name} at {where}: weights need "
        f"{fit.weights_bytes / GiB:.1f} GiB per GPU, activations {fit.activation_bytes / GiB:.1f} GiB, of "
        f"{gpu.hbm_bytes * utilization / GiB:.1f} GiB usable, leaving KV room for {fit.kv_tokens} tokens "
        f"(need {min_kv_tokens}){hint}"
    )
