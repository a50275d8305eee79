"""RooflineCostModel: iteration time from FLOPs and bytes over a GPU's datasheet, with named efficiencies.

Each operation costs max(FLOPs / (peak x compute efficiency), bytes / (bandwidth x memory efficiency)).
An iteration is the sum over layers of its projections, MLP or MoE experts, prefill and decode
attention and TP all-reduces, plus the LM head and an engine overhead that does not depend on the
batch. The efficiencies are a few physical factors per engine, fitted once (bench/calibrate.py),
never per case.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from profiler.costmodel import Batch, LinkSpec, transfer_s
from profiler.gpus import GPUSpec
from profiler.models import ModelSpec, dtype_bytes

ACT_BYTES = 2.0  # activations travel in bf16 whatever the weight format


@dataclass(frozen=True)
class Efficiency:
    """Shares of datasheet peaks an engine reaches, and its fixed costs."""

    gemm_compute: float = 0.70  # of dense tensor FLOP/s in projections (and experts, unless moe_compute)
    # Of dense tensor FLOP/s in the routed experts' grouped GEMMs (fused-MoE kernels run far below a dense GEMM's
    # share: many small per-expert problems, routing and permutation); 0: as gemm_compute.
    moe_compute: float = 0.0
    gemm_memory: float = 0.85  # of HBM bandwidth when reading weights
    attn_compute: float = 0.50  # of dense FLOP/s in prefill attention
    attn_memory: float = 0.75  # of HBM bandwidth when decode attention reads KV
    comm: float = 0.70  # of NVLink bandwidth in all-reduce
    # Per all-reduce call beyond the link's own latency, whatever its size: the collective's launch and
    # synchronisation across the GPUs (what a decode step's small all-reduces cost; bandwidth prices large ones).
    allreduce_latency_s: float = 0.0
    iteration_overhead_s: float = 2.0e-3  # scheduling, launch, sampling per iteration
    # Per layer per iteration, whatever the batch: kernel launches and the small kernels (norms, RoPE, residuals)
    # a layer costs (its all-reduces' own: allreduce_latency_s); what separates a 64-layer model's decode step from
    # a 32-layer one's.
    layer_overhead_s: float = 0.0
    per_seq_overhead_s: float = 0.0  # per-sequence bookkeeping per iteration
    # Per request, outside any iteration: HTTP, tokenisation, routing, the first token's trip back. The
    # simulator delivers a request to its worker this long after it arrives (simulator/sim.py).
    ttft_overhead_s: float = 0.0
    # Of a benchmark, not of the engine: in a closed loop of fixed-length clients, how long a new request waits
    # before an aggregated worker admits its prompt, in prompts' worth of prefill (this many times its own
    # prompt's prefill run alone). Such clients stay partly in step (requests that finish together come back
    # together and queue behind each other's prompts); clients out of step, or of varied lengths, have no such
    # wait. Measured TTFT at fixed concurrency scales with the prompt's prefill time, not with the decode step,
    # and does not move with OSL (bench/calibrate.py fits it). Only the replay of such a benchmark
    # (planner/replay.py -> simulate(admission_wait_prefills=...)) and the closed-loop estimate of one
    # (planner/calibrate.py) apply it: traces and open-loop arrivals queue in the simulator as they come.
    ttft_wait_prefills: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# Per-engine defaults. Replaced by fitted values where a calibration exists (profiler/calibration/).
ENGINE_EFFICIENCY: dict[str, Efficiency] = {
    "vllm": Efficiency(),
    "sglang": Efficiency(iteration_overhead_s=1.8e-3),
    "trtllm": Efficiency(iteration_overhead_s=1.2e-3),
    "pdsim-runtime": Efficiency(),
}


def engine_efficiency(engine: str) -> Efficiency:
    """The engine's factors as fitted on measured serving results (profiler/calibration/), over its defaults."""
    from profiler.calibration import fitted_factors  # noqa: PLC0415 (reads a small JSON once)

    base = ENGINE_EFFICIENCY.get(engine, Efficiency())
    known = {k: v for k, v in fitted_factors(engine).items() if k in Efficiency.__dataclass_fields__}
    return replace(base, **known)


def request_terms(cost) -> tuple[float, float]:
    """(ttft_overhead_s, ttft_wait_prefills) of a pool's cost model: its Efficiency's, or zero for a cost
    model without one (a measured profile). The one place they are read (the simulator reads the first; a
    benchmark's replay and closed-loop estimate the second)."""
    eff = getattr(cost, "eff", None)
    return (eff.ttft_overhead_s, eff.ttft_wait_prefills) if isinstance(eff, Efficiency) else (0.0, 0.0)


class RooflineCostModel:
    """Cost of one pool's iterations from ModelSpec over GPUSpec; TP divides work and adds all-reduce.

    ``attn_dp`` > 1: attention data parallelism. The replica's ``tp`` GPUs form ``attn_dp`` groups of
    ``tp / attn_dp``; each group runs the attention (and the dense layers and LM head) of its own share of the
    batch, its weights split over the group only, and keeps those sequences' KV; the routed experts span all
    ``tp`` GPUs (expert parallelism), each token sent to its experts' GPUs and back (two all-to-alls per MoE
    layer). The batch is taken as evenly shared by the groups."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, dtype: str = "bf16",
                 kv_dtype: str | None = None, efficiency: Efficiency | None = None, attn_dp: int = 1):
        if attn_dp < 1 or tp % attn_dp:
            raise ValueError(f"attention DP {attn_dp} must divide TP {tp}")
        self.model, self.gpu, self.tp, self.dtype = model, gpu, tp, dtype
        self.attn_dp = attn_dp
        at = tp // attn_dp  # GPUs of one attention group
        self._at = at
        self.kv_dtype = kv_dtype or ("bf16" if dtype in ("bf16", "fp16", "fp32") else "fp8")
        self.eff = efficiency or Efficiency()
        m = model
        wb = dtype_bytes(dtype)
        self._peak = gpu.flops(dtype)
        self._attn_peak = gpu.flops("bf16") if dtype == "fp4" else gpu.flops(dtype)
        self._bw = gpu.hbm_bw_bytes_s
        # Per-GPU weight elements of each layer's op groups.
        self._attn_w = m.attn_params_per_layer() / at
        self._dense_w = m.dense_mlp_params() / at
        self._expert_w = m.expert_params() / tp  # experts are sharded over TP (or EP) as well
        self._wb_attn = wb if dtype != "fp4" else dtype_bytes("bf16")
        self._wb_mlp = wb
        self._lm_w = m.vocab * m.hidden / at
        self._wb_lm = dtype_bytes("bf16")
        heads = max(1.0, m.heads / at)
        if m.is_mla:
            # Prefill runs MLA expanded (qk 192, v 128); decode absorbs the up-projections and
            # attends over the latent (kv_lora + rope for scores, kv_lora for values).
            self._pf_attn_flops_per_pair = 2.0 * heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
            self._dec_attn_flops_per_ctx = 2.0 * heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim)
        else:
            self._pf_attn_flops_per_pair = 4.0 * heads * m.head_dim
            self._dec_attn_flops_per_ctx = 4.0 * heads * m.head_dim
        self._kv_bytes_layer = m.kv_bytes_per_token_per_gpu(self.kv_dtype, at) / m.layers
        # Sliding-window layers read at most the window; approximated on the mean context.
        self._full_layers = m.layers - m.sliding_layers

    # ---- pieces ------------------------------------------------------------------------------
    # ``mx``/``mn``: builtin max/min when every argument is a plain float (iteration_s: ~10x cheaper than
    # numpy on scalars), np.maximum/np.minimum for arrays (decode_steps_s, mixed_steps_s). Same arithmetic.
    def _linear_s(self, tokens, weight_elems: float, wbytes: float, in_out: float, mx=np.maximum):
        flops = 2.0 * tokens * weight_elems
        bytes_ = weight_elems * wbytes + tokens * in_out * ACT_BYTES
        return mx(flops / (self._peak * self.eff.gemm_compute), bytes_ / (self._bw * self.eff.gemm_memory))

    def _moe_s(self, tokens, mx=np.maximum):
        m = self.model
        touched = m.experts * (1.0 - (1.0 - m.active_experts / m.experts) ** mx(tokens, 0.0))
        weight_bytes = (touched + m.shared_experts * (tokens > 0)) * self._expert_w * self._wb_mlp
        flops = 2.0 * tokens * (m.active_experts + m.shared_experts) * self._expert_w
        share = self.eff.moe_compute or self.eff.gemm_compute
        return mx(flops / (self._peak * share), weight_bytes / (self._bw * self.eff.gemm_memory))

    def _attn_layers_s(self, pairs, pf_ctx_read, n_dec, dec_ctx_sum, mx=np.maximum, mn=np.minimum):
        """Attention of all layers: prefill over causal token pairs, decode over the contexts read (one attention
        group's share of them)."""
        m = self.model
        e = self.eff
        if self.attn_dp > 1:
            d = float(self.attn_dp)
            pairs, pf_ctx_read, n_dec, dec_ctx_sum = pairs / d, pf_ctx_read / d, n_dec / d, dec_ctx_sum / d
        total = 0.0
        for layers, window in ((self._full_layers, 0), (m.sliding_layers, m.sliding_window)):
            if layers == 0:
                continue
            d_ctx = dec_ctx_sum
            if window:
                d_ctx = mn(dec_ctx_sum, n_dec * window)
            pf = mx(self._pf_attn_flops_per_pair * pairs / (self._attn_peak * e.attn_compute),
                    self._kv_bytes_layer * pf_ctx_read / (self._bw * e.attn_memory))
            dec = mx(self._dec_attn_flops_per_ctx * d_ctx / (self._attn_peak * e.attn_compute),
                     self._kv_bytes_layer * d_ctx / (self._bw * e.attn_memory))
            total = total + layers * (pf + dec)
        return total

    def _allreduce_s(self, tokens):
        """All-reduces of every layer within an attention group (the whole replica without attention DP) over
        ``tokens``, the group's share of the iteration's tokens."""
        if self._at == 1:
            return 0.0 * tokens
        bytes_ = tokens * self.model.hidden * ACT_BYTES
        g = self.gpu
        local = min(self._at, g.max_tp_per_node)  # GPUs of the ring inside one node
        one = (2.0 * (local - 1) / local * bytes_ / (g.nvlink_bw_bytes_s * self.eff.comm) + g.nvlink_latency_s
               + self.eff.allreduce_latency_s)
        nodes = -(-self._at // local)
        if nodes > 1:  # hierarchical: each GPU carries its 1/local share between nodes over its own NIC
            one = one + (2.0 * (nodes - 1) / nodes * bytes_ / local / (g.internode_bw_bytes_s * self.eff.comm)
                         + g.internode_latency_s)
        return 2.0 * self.model.layers * one

    def _dispatch_s(self, tokens):
        """Attention DP: each MoE layer sends every token to the GPUs of its experts and back, two all-to-alls
        over the replica; a GPU moves its share of its group's tokens, each to up to ``active_experts`` GPUs."""
        m, g = self.model, self.gpu
        copies = min(m.active_experts, self.tp) * (self.tp - 1) / self.tp
        bytes_ = tokens / self.tp * m.hidden * ACT_BYTES * copies  # tp = groups x GPUs of a group
        inter = self.tp > g.max_tp_per_node
        bw = g.internode_bw_bytes_s if inter else g.nvlink_bw_bytes_s
        lat = g.internode_latency_s if inter else g.nvlink_latency_s
        return 2.0 * m.moe_layers * (bytes_ / (bw * self.eff.comm) + lat)

    def _time(self, tokens, pairs, pf_ctx_read, n_dec, dec_ctx_sum, n_logits, mx=np.maximum, mn=np.minimum):
        m = self.model
        h = m.hidden
        own = tokens / self.attn_dp if self.attn_dp > 1 else tokens  # an attention group's tokens
        t = self._linear_s(own, self._attn_w, self._wb_attn, 2.0 * h, mx) * m.layers
        if m.dense_layers:
            mlp_io = h + m.intermediate / self._at
            t = t + self._linear_s(own, self._dense_w, self._wb_mlp, mlp_io, mx) * m.dense_layers
        if m.moe_layers:
            t = t + self._moe_s(tokens, mx) * m.moe_layers
            if self.attn_dp > 1:
                t = t + self._dispatch_s(tokens)
        t = t + self._attn_layers_s(pairs, pf_ctx_read, n_dec, dec_ctx_sum, mx, mn)
        t = t + self._allreduce_s(own)
        own_logits = n_logits / self.attn_dp if self.attn_dp > 1 else n_logits  # each group samples its own
        t = t + self._linear_s(own_logits, self._lm_w, self._wb_lm, h, mx)
        e = self.eff
        # every attention group's scheduler runs beside the others: the per-sequence cost is of one group's share
        return t + e.iteration_overhead_s + e.layer_overhead_s * m.layers + e.per_seq_overhead_s * own_logits

    # ---- CostModel ---------------------------------------------------------------------------
    def iteration_s(self, batch: Batch) -> float:
        n_dec = len(batch.decode_ctx)
        if len(batch.prefill_tokens):
            c = batch.prefill_tokens.astype(np.float64)
            p = batch.prefill_cached.astype(np.float64)
            pf_tokens = float(c.sum())
            pairs = float((c * p + c * (c + 1) / 2).sum())
            pf_read = pf_tokens + float(p.sum())
            n_last = len(c) if batch.prefill_last_chunks is None else batch.prefill_last_chunks
        else:
            pf_tokens = pairs = pf_read = 0.0
            n_last = 0
        if pf_tokens + n_dec == 0:
            return 0.0
        return float(self._time(pf_tokens + n_dec, pairs, pf_read, float(n_dec), float(batch.decode_ctx.sum()),
                                float(n_dec + n_last), max, min))

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int, ctx_max: int | None = None) -> np.ndarray:
        # the first step on floats, then only decode attention changes (it reads a longer context each step)
        n, c0 = float(n_seqs), float(ctx_sum)
        first = self._time(n, 0.0, 0.0, n, c0, n, max, min)
        if steps == 1:
            return np.array([first])
        ctx = c0 + n * np.arange(steps, dtype=np.float64)
        return first + (self._attn_layers_s(0.0, 0.0, n, ctx) - self._attn_layers_s(0.0, 0.0, n, c0, max, min))

    def mixed_steps_s(self, n_dec, ctx: float, chunk, cached) -> np.ndarray:
        """Seconds of iterations of ``n_dec`` decodes at context ``ctx`` plus one prefill chunk of ``chunk``
        tokens after ``cached`` (0: none), element-wise over arrays; ``n_dec`` may be fractional (a mean)."""
        n_dec = np.asarray(n_dec, dtype=float)
        chunk = np.asarray(chunk, dtype=float) * np.ones_like(n_dec)
        cached = np.asarray(cached, dtype=float) * np.ones_like(n_dec)
        pairs = chunk * cached + chunk * (chunk + 1) / 2
        return self._time(n_dec + chunk, pairs, chunk + cached, n_dec, n_dec * ctx, n_dec + (chunk > 0))

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        return transfer_s(kv_bytes, link)

    def with_efficiency(self, **changes) -> RooflineCostModel:
        return RooflineCostModel(self.model, self.gpu, self.tp, self.dtype, self.kv_dtype,
                                 replace(self.eff, **changes), self.attn_dp)
