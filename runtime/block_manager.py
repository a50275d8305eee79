"""BlockManager: fixed-size KV blocks, a free list, and the slots of a sequence's tokens."""

from __future__ import annotations

from collections import deque

import torch

from runtime.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_tokens: int):
        self.num_blocks, self.block_tokens = num_blocks, block_tokens
        self.free_blocks: deque[int] = deque(range(num_blocks))

    @property
    def used(self) -> int:
        return self.num_blocks - len(self.free_blocks)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def can_grow(self, seq: Sequence, tokens: int) -> bool:
        """Whether ``seq`` can hold ``tokens`` tokens in total."""
        return self.blocks_for(tokens) - len(seq.block_table) <= len(self.free_blocks)

    def grow(self, seq: Sequence, tokens: int) -> None:
        for _ in range(self.blocks_for(tokens) - len(seq.block_table)):
            seq.block_table.append(self.free_blocks.popleft())

    def free(self, seq: Sequence) -> None:
        self.free_blocks.extend(seq.block_table)
        seq.block_table = []
        seq.num_cached = 0

    def slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """Cache slots of token positions ``start .. end - 1`` of ``seq``."""
        pos = torch.arange(start, end)
        table = torch.tensor(seq.block_table)
        return table[pos // self.block_tokens] * self.block_tokens + pos % self.block_tokens
