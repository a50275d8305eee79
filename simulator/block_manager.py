"""Paged KV cache of one replica: a count of fixed-size blocks. Which sequence holds how many lives in
``Sequences.blocks``; prefix sharing (issue 8) will add hashes here."""

from __future__ import annotations


def blocks_for(tokens, block_tokens: int):
    """Blocks that hold ``tokens`` tokens (scalar or array)."""
    return (tokens + (block_tokens - 1)) // block_tokens


class BlockManager:
    def __init__(self, total_blocks: int, block_tokens: int):
        self.total = int(total_blocks)
        self.block_tokens = block_tokens
        self.free = self.total

    @property
    def used(self) -> int:
        return self.total - self.free

    def allocate(self, n: int) -> None:
        assert 0 <= n <= self.free, (n, self.free)
        self.free -= int(n)

    def deallocate(self, n: int) -> None:
        self.free += int(n)
        assert self.free <= self.total, (self.free, self.total)

