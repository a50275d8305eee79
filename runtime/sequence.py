"""Sequence: one request's tokens, progress, block table and stage timestamps inside a worker."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(eq=False)  # identity: a sequence is compared as itself, never by value
class Sequence:
    rid: str  # the frontend's request id plus the attempt (``req-7.0``)
    token_ids: list[int]  # prompt, then every generated token
    num_prompt: int
    max_tokens: int  # tokens to generate in total, counting any generated before (a retry continues)
    temperature: float = 0.0
    seed: int = 0
    stop_ids: frozenset[int] = frozenset()
    prefill_only: bool = False  # a prefill worker stops after the first token and hands the KV off
    num_generated: int = 0
    num_cached: int = 0  # tokens whose K and V are in the cache
    block_table: list[int] = field(default_factory=list)
    preemptions: int = 0
    finish_reason: str | None = None  # length | stop | prefilled | abort
    times: dict[str, float] = field(default_factory=dict)  # stage -> time.time()
    generator: torch.Generator | None = None

    def __post_init__(self):
        if self.temperature > 0:
            self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def prefilling(self) -> bool:
        """More than one token is not cached yet: the next step computes a prompt chunk."""
        return self.num_tokens - self.num_cached > 1 or self.num_cached == 0

    def append(self, token: int) -> None:
        self.token_ids.append(token)
        self.num_generated += 1
        if token in self.stop_ids:
            self.finish_reason = "stop"
        elif self.num_generated >= self.max_tokens:
            self.finish_reason = "length"
        elif self.prefill_only:
            self.finish_reason = "prefilled"
