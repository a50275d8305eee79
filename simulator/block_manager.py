"""Paged KV cache of one replica: a count of fixed-size blocks. Which sequence holds how many lives in
``Sequences.blocks``. Cached prefix blocks no sequence holds count as free; the worker's PrefixCache
(prefix_cache.py) evicts them when an allocation needs their room."""

from __future__ import annotations


def blocks_for(tokens, block_tokens: int):
    """Blocks that hold ``tokens`` tokens (scalar or array)."""
    return (tokens + (block_tokens - 1)) // block_tokens


class BlockManager:
    def __init__(self, total_blocks: int, block_tokens: int):
        self.total = int(total_blocks)
        self.block_tokens = block_tokens
        self.free = self.total
        self.cache = None  # the worker's PrefixCache, when requests carry hash chains

    @property
    def used(self) -> int:
        return self.total - self.free

    def allocate(self, n: int, evict: bool = True) -> None:
        """Take ``n`` blocks; ``evict=False``: held for later (a decode run's steps), cached blocks stay for now."""
        assert 0 <= n <= self.free, (n, self.free)
        self.free -= int(n)
        if evict and self.cache is not None:
            self.cache.trim()

    def deallocate(self, n: int) -> None:
        self.free += int(n)
        assert self.free <= self.total, (self.free, self.total)

