"""ModelSpec: the shapes of a transformer and what they imply (parameter bytes, FLOPs, KV bytes per token).

Built from a Hugging Face ``config.json`` or from the bundled catalog. Catalog figures are the
published configs of each model (layers, hidden size, heads, experts); nothing here is fitted.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from profiler.errors import InputError

# Bytes per element of each storage format. fp4 formats carry one scale per 16-32 values (~6 %).
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.53}


def dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of a decoder-only transformer. Counts are per model, not per GPU."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # dense MLP width (also the width of MoE models' dense layers)
    vocab: int
    tie_embeddings: bool = False
    # MoE: experts per MoE layer, experts each token visits, width of one expert, always-on experts
    experts: int = 0
    active_experts: int = 0
    moe_intermediate: int = 0
    shared_experts: int = 0
    first_dense_layers: int = 0  # leading layers with a dense MLP (DeepSeek: 3)
    # MLA (DeepSeek-style latent attention); kv_lora_rank > 0 switches it on
    q_lora_rank: int = 0
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    qk_nope_head_dim: int = 0
    v_head_dim: int = 0
    # Sliding-window attention on a share of layers (gpt-oss: every other layer, 128 tokens)
    sliding_window: int = 0
    sliding_layers: int = 0
    max_context: int = 131072

    # ---- structure -------------------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.first_dense_layers if self.is_moe else 0

    @property
    def dense_layers(self) -> int:
        return self.layers - self.moe_layers

    # ---- parameters (elements) -------------------------------------------------------------
    def attn_params_per_layer(self) -> int:
        if self.is_mla:
            qk_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
            q = (
                self.hidden * self.q_lora_rank + self.q_lora_rank * self.heads * qk_dim
                if self.q_lora_rank
                else self.hidden * self.heads * qk_dim
            )
            kv_a = self.hidden * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * self.heads * (self.qk_nope_head_dim + self.v_head_dim)
            o = self.heads * self.v_head_dim * self.hidden
            return q + kv_a + kv_b + o
        q = self.hidden * self.heads * self.head_dim
        kv = 2 * self.hidden * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * self.hidden
        return q + kv + o

    def dense_mlp_params(self) -> int:
        return 3 * self.hidden * self.intermediate

    def expert_params(self) -> int:
        """One routed expert (gate, up, down)."""
        return 3 * self.hidden * self.moe_intermediate

    def moe_mlp_params(self) -> int:
        """All experts of one MoE layer plus its router."""
        return (self.experts + self.shared_experts) * self.expert_params() + self.hidden * self.experts

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tie_embeddings else 2)

    def total_params(self) -> int:
        layer_attn = self.layers * self.attn_params_per_layer()
        mlp = self.dense_layers * self.dense_mlp_params() + self.moe_layers * self.moe_mlp_params()
        return layer_attn + mlp + self.embedding_params()

    def active_params_per_token(self) -> int:
        """Parameters a token multiplies through (without the embedding lookup, with the LM head)."""
        mlp = self.dense_layers * self.dense_mlp_params() + self.moe_layers * (
            (self.active_experts + self.shared_experts) * self.expert_params() + self.hidden * self.experts
        )
        return self.layers * self.attn_params_per_layer() + mlp + self.vocab * self.hidden

    def param_bytes(self, dtype: str) -> float:
        """Weight bytes. Embeddings, norms and attention stay bf16 when the MLP is fp4 (as shipped)."""
        if dtype == "fp4":
            mlp = self.dense_layers * self.dense_mlp_params() + self.moe_layers * self.moe_mlp_params()
            rest = self.total_params() - mlp
            return mlp * dtype_bytes("fp4") + rest * dtype_bytes("bf16")
        return self.total_params() * dtype_bytes(dtype)

    def flops_per_token(self) -> float:
        """Linear-layer FLOPs of one token (2 per multiply-add); attention scores come on top."""
        return 2.0 * self.active_params_per_token()

    # ---- KV cache --------------------------------------------------------------------------
    def kv_elements_per_token_per_layer(self) -> int:
        if self.is_mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_heads * self.head_dim

    def kv_bytes_per_token(self, kv_dtype: str = "bf16") -> float:
        """KV cache bytes one token occupies across all layers (whole model, all TP ranks together)."""
        return self.layers * self.kv_elements_per_token_per_layer() * dtype_bytes(kv_dtype)

    def kv_bytes_per_token_per_gpu(self, kv_dtype: str, tp: int) -> float:
        """KV bytes per token on one rank: heads split over TP, never below one head; MLA is replicated."""
        if self.is_mla:
            return self.kv_bytes_per_token(kv_dtype)
        kv_heads_per_rank = max(1.0, self.kv_heads / tp)
        return self.layers * 2 * kv_heads_per_rank * self.head_dim * dtype_bytes(kv_dtype)

    def to_dict(self) -> dict:
        return asdict(self)


# ---- catalog ---------------------------------------------------------------------------------
# Figures from each model's published config.json.
CATALOG: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec("tiny", layers=4, hidden=256, heads=4, kv_heads=2, head_dim=64, intermediate=688,
                  vocab=320, max_context=4096),
        ModelSpec("smollm2-135m", layers=30, hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536,
                  vocab=49152, tie_embeddings=True, max_context=8192),
        ModelSpec("llama-3.1-8b", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                  vocab=128256),
        ModelSpec("llama-3.1-70b", layers=80, hidden=8192, heads=64, kv_heads=8, head_dim=128, intermediate=28672,
                  vocab=128256),
        ModelSpec("qwen3-32b", layers=64, hidden=5120, heads=64, kv_heads=8, head_dim=128, intermediate=25600,
                  vocab=151936, max_context=40960),
        ModelSpec("qwen3-235b-a22b", layers=94, hidden=4096, heads=64, kv_heads=4, head_dim=128, intermediate=12288,
                  vocab=151936, experts=128, active_experts=8, moe_intermediate=1536, max_context=40960),
        ModelSpec("mixtral-8x7b", layers=32, hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                  vocab=32000, experts=8, active_experts=2, moe_intermediate=14336, max_context=32768),
        ModelSpec("deepseek-v3", layers=61, hidden=7168, heads=128, kv_heads=128, head_dim=192, intermediate=18432,
                  vocab=129280, experts=256, active_experts=8, moe_intermediate=2048, shared_experts=1,
                  first_dense_layers=3, q_lora_rank=1536, kv_lora_rank=512, qk_rope_head_dim=64,
                  qk_nope_head_dim=128, v_head_dim=128, max_context=163840),
        ModelSpec("gpt-oss-120b", layers=36, hidden=2880, heads=64, kv_heads=8, head_dim=64, intermediate=2880,
                  vocab=201088, experts=128, active_experts=4, moe_intermediate=2880, sliding_window=128,
                  sliding_layers=18),
        ModelSpec("minimax-m2.5", layers=62, hidden=3072, heads=48, kv_heads=8, head_dim=128, intermediate=1536,
                  vocab=200064, experts=256, active_experts=8, moe_intermediate=1536, max_context=196608),
    ]
}

# Other names users (and benchmark files) give the catalog's models.
ALIASES: dict[str, str] = {
    "llama-3.1-8b-instruct": "llama-3.1-8b",
    "meta-llama-3.1-8b": "llama-3.1-8b",
    "llama-3.1-70b-instruct": "llama-3.1-70b",
    "llama-3.3-70b": "llama-3.1-70b",
    "meta-llama-3.1-70b": "llama-3.1-70b",
    "qwen3-235b": "qwen3-235b-a22b",
    "deepseek-r1": "deepseek-v3",
    "deepseek-v3.1": "deepseek-v3",
    "deepseek-r1-0528": "deepseek-v3",
    "mixtral-8x7b-instruct": "mixtral-8x7b",
    "mixtral-8x7b-instruct-v0.1": "mixtral-8x7b",
    "minimax-m2": "minimax-m2.5",
    "minimax-m2.1": "minimax-m2.5",  # same architecture as M2 and M2.5
    "smollm2-135m-instruct": "smollm2-135m",
}

# A suffix that names a quantised, tuned or dated variant of the same architecture (stripped one at a
# time, so that ``DeepSeek-V3-0324`` stops at ``deepseek-v3``).
_VARIANT_SUFFIX = re.compile(
    r"-(instruct|chat|base|hf|fp8|fp4|nvfp4|mxfp4|awq|gptq|int4|int8|w4a16|w8a8|dynamic|kv|v\d+(\.\d+)?|\d{4})$"
)


def canonical_model_name(name: str) -> str | None:
    """Map a user or Hugging Face name (``nvidia/Llama-3.1-8B-Instruct-FP8``) to a catalog key."""
    candidate = name.strip().split("/")[-1].lower().replace("_", "-")
    candidate = candidate.replace("meta-llama-3", "llama-3")
    while True:
        if candidate in CATALOG:
            return candidate
        if candidate in ALIASES:
            return ALIASES[candidate]
        stripped = _VARIANT_SUFFIX.sub("", candidate)
        if stripped == candidate:
            return None
        candidate = stripped


def from_hf_config(path: str | Path) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json``."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("file not found", where=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not a JSON config ({e})", where=str(path)) from None
    if not isinstance(cfg, dict):
        raise InputError("config.json must hold a JSON object", where=str(path))
    cfg = cfg.get("text_config", cfg)

    def need(key: str, *alts: str) -> int:
        for k in (key, *alts):
            if k in cfg and cfg[k] is not None:
                return int(cfg[k])
        raise InputError(f"missing field {key!r}", where=str(path))

    hidden = need("hidden_size", "n_embd", "d_model")
    heads = need("num_attention_heads", "n_head")
    experts = int(cfg.get("n_routed_experts") or cfg.get("num_local_experts") or cfg.get("num_experts") or 0)
    first_dense = int(cfg.get("first_k_dense_replace") or 0)
    layer_types = cfg.get("layer_types") or []
    sliding = sum(1 for t in layer_types if "sliding" in str(t))
    return ModelSpec(
        name=str(cfg.get("_name_or_path") or path.parent.name or path.stem),
        layers=need("num_hidden_layers", "n_layer"),
        hidden=hidden,
        heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or hidden // heads),
        intermediate=need("intermediate_size", "ffn_dim") if "moe_intermediate_size" not in cfg or first_dense
        else int(cfg.get("intermediate_size") or cfg["moe_intermediate_size"]),
        vocab=need("vocab_size"),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        experts=experts,
        active_experts=int(cfg.get("num_experts_per_tok") or cfg.get("num_experts_per_token") or 0)
        if experts else 0,
        moe_intermediate=int(cfg.get("moe_intermediate_size") or cfg.get("intermediate_size") or 0)
        if experts else 0,
        shared_experts=int(cfg.get("n_shared_experts") or 0),
        first_dense_layers=first_dense,
        q_lora_rank=int(cfg.get("q_lora_rank") or 0),
        kv_lora_rank=int(cfg.get("kv_lora_rank") or 0),
        qk_rope_head_dim=int(cfg.get("qk_rope_head_dim") or 0),
        qk_nope_head_dim=int(cfg.get("qk_nope_head_dim") or 0),
        v_head_dim=int(cfg.get("v_head_dim") or 0),
        sliding_window=int(cfg.get("sliding_window") or 0) if sliding else 0,
        sliding_layers=sliding,
        max_context=int(cfg.get("max_position_embeddings") or 131072),
    )


def _config_path(name_or_path: str) -> Path | None:
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    return path if path.suffix == ".json" or path.exists() else None


def resolve_model(name_or_path: str) -> ModelSpec:
    """A catalog name (or an alias / Hugging Face id of one) or a path to a ``config.json``."""
    key = canonical_model_name(name_or_path)
    if key is not None:
        return CATALOG[key]
    path = _config_path(name_or_path)
    if path is not None:
        return from_hf_config(path)
    near = close_model_names(name_or_path)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    raise InputError(
        f"unknown model {name_or_path!r}{hint}: give a catalog name ({', '.join(n for n in CATALOG if n != 'tiny')}), "
        "a Hugging Face id of one of them (meta-llama/Llama-3.1-70B-Instruct, deepseek-ai/DeepSeek-R1, ...) "
        "or a path to a config.json"
    )


def close_model_names(name: str, n: int = 2) -> list[str]:
    """Catalog names that look like ``name`` (punctuation and case ignored): the 'did you mean' of an error."""
    squash = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())  # noqa: E731
    names = {squash(k): k for k in CATALOG} | {squash(a): k for a, k in ALIASES.items()}
    given = squash(name.split("/")[-1])
    score = {k: max(difflib.SequenceMatcher(None, given, s).ratio() for s, v in names.items() if v == k)
             for k in set(names.values())}
    best = max(score.values())
    return sorted((k for k, v in score.items() if v >= max(0.75, best - 0.03)), key=lambda k: -score[k])[:n]


# The precision each catalog model's checkpoint is published in, where it is not bf16.
PUBLISHED_DTYPE = {"deepseek-v3": "fp8", "minimax-m2.5": "fp8", "gpt-oss-120b": "fp4"}
_QUANT_DTYPE = {"fp8": "fp8", "mxfp4": "fp4", "nvfp4": "fp4", "fp4": "fp4"}


def published_dtype(name_or_path: str) -> str:
    """The weights' precision as published: a variant suffix (-FP8, -NVFP4), the catalog, or a config.json's
    ``quantization_config`` and ``torch_dtype``; what `plan` assumes without ``--dtype``."""
    for part in reversed(name_or_path.strip().split("/")[-1].lower().replace("_", "-").split("-")):
        if part in _QUANT_DTYPE:
            return _QUANT_DTYPE[part]
    key = canonical_model_name(name_or_path)
    if key is not None:
        return PUBLISHED_DTYPE.get(key, "bf16")
    path = _config_path(name_or_path)
    try:
        cfg = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        cfg = {}
    cfg = cfg if isinstance(cfg, dict) else {}
    quant = cfg.get("quantization_config") or {}
    method = str(quant.get("quant_algo") or quant.get("quant_method") or "").lower() if isinstance(quant, dict) else ""
    if method in _QUANT_DTYPE:
        return _QUANT_DTYPE[method]
    return "fp16" if str(cfg.get("torch_dtype") or cfg.get("dtype")) == "float16" else "bf16"


def with_name(spec: ModelSpec, name: str) -> ModelSpec:
    return replace(spec, name=name)
