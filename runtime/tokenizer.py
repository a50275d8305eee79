"""Tokenizers: byte-level by default (no download ever), or a real model's BPE (runtime.smollm2).

Both give ``encode``, ``chat`` (apply the chat template), ``stop_ids`` and an incremental ``Detokenizer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class Tokenizer(Protocol):
    stop_ids: frozenset[int]  # tokens that end a completion (none for random weights)

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def chat(self, messages: list[dict]) -> list[int]: ...


class ByteTokenizer:
    """Ids 0-255 are bytes; 256+ are special. Random-weight models never stop on EOS (fixed output lengths).
    Output bytes decode one character each (latin-1): random weights write no meaningful UTF-8, and this
    way every streamed token is visible and the text maps back to the exact token ids."""

    BOS, IM_START, IM_END = 256, 257, 258
    stop_ids: frozenset[int] = frozenset()

    def encode(self, text: str) -> list[int]:
        return [self.BOS, *text.encode()]

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("latin-1")

    def chat(self, messages: list[dict]) -> list[int]:
        ids = [self.BOS]
        for m in messages:
            ids += [self.IM_START, *f"{m['role']}\n{m['content']}".encode(), self.IM_END]
        return ids + [self.IM_START, *b"assistant\n"]


@dataclass
class Detokenizer:
    """Text of a growing token list, released only when it is complete UTF-8."""

    tokenizer: Tokenizer
    ids: list[int] = field(default_factory=list)
    sent: int = 0  # characters already returned

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character is still incomplete
            return ""
        new, self.sent = text[self.sent:], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        new, self.sent = text[self.sent:], len(text)
        return new


def load_tokenizer(model: str) -> Tokenizer:
    """SmolLM2's BPE for ``smollm2-135m``, the byte tokenizer for every random-weight model."""
    from profiler.models import resolve_model

    if resolve_model(model).name == "smollm2-135m":
        import gguf

        from runtime.smollm2 import BPETokenizer, gguf_path

        return BPETokenizer(gguf.GGUFReader(gguf_path()))
    return ByteTokenizer()
