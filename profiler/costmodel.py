"""The CostModel contract: what one engine iteration and one KV transfer cost, in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class Batch:
    """One engine iteration's work.

    Prefill chunks: new tokens computed this iteration and the tokens of the same sequence already
    cached. Decode sequences: each produces one token and attends over its context (including it).
    """

    prefill_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    prefill_cached: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    decode_ctx: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # Chunks that finish their prompt this iteration and so need the LM head (None: all of them).
    prefill_last_chunks: int | None = None

    @classmethod
    def of(cls, prefill: list[tuple[int, int]] = (), decode_ctx: list[int] | np.ndarray = ()) -> Batch:
        """``Batch.of(prefill=[(tokens, cached), ...], decode_ctx=[ctx, ...])``."""
        p = np.asarray(list(prefill), dtype=np.int64).reshape(-1, 2)
        return cls(p[:, 0].copy(), p[:, 1].copy(), np.asarray(decode_ctx, dtype=np.int64))

    @property
    def tokens(self) -> int:
        return int(self.prefill_tokens.sum()) + len(self.decode_ctx)

    @property
    def empty(self) -> bool:
        return self.tokens == 0


@dataclass(frozen=True)
class LinkSpec:
    """A KV link: per-direction bandwidth and one-way latency."""

    bandwidth_bytes_s: float
    latency_s: float = 10e-6
    placement: str = "intra"  # intra (NVLink) | inter (RDMA)


@runtime_checkable
class CostModel(Protocol):
    """Time of engine iterations and KV transfers for one pool (one model, GPU, TP and dtype)."""

    def iteration_s(self, batch: Batch) -> float:
        """Seconds one iteration over ``batch`` takes."""
        ...

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int, ctx_max: int | None = None) -> np.ndarray:
        """Seconds of each of ``steps`` pure-decode iterations of ``n_seqs`` sequences whose contexts
        sum to ``ctx_sum`` at the first step and grow by one token per sequence per step; ``ctx_max`` is the
        longest of them at the first step, for an engine that pads its batch to it (None: not known)."""
        ...

    def transfer_s(self, kv_bytes: float, link: LinkSpec) -> float:
        """Seconds to move ``kv_bytes`` over an otherwise idle ``link``."""
        ...


def transfer_s(kv_bytes: float, link: LinkSpec) -> float:
    """Latency plus serialisation time: the one formula every cost model shares for an idle link."""
    return link.latency_s + kv_bytes / link.bandwidth_bytes_s
