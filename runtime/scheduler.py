"""Scheduler: which sequences run in the next step, under the simulator's knobs (max_batch_tokens,
max_seqs, chunked prefill). Decode tokens first, then prompt chunks; a full cache preempts the newest
running sequence, which is later recomputed from scratch."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from runtime.block_manager import BlockManager
from runtime.sequence import Sequence


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int = 8192
    max_seqs: int = 256
    chunk_tokens: int = 8192  # most prompt tokens of one sequence per step
    chunked_prefill: bool = True


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, blocks: BlockManager):
        self.cfg, self.blocks = cfg, blocks
        self.waiting: deque[Sequence] = deque()  # prompt (or recompute) not fully cached
        self.running: deque[Sequence] = deque()  # decoding

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """(sequence, new tokens) for the next step, decode sequences first."""
        cfg, chunks = self.cfg, []
        budget = cfg.max_batch_tokens
        for seq in list(self.running):
            if budget <= 0:
                break
            if seq not in self.running:  # preempted below to make room for an earlier sequence
                continue
            while not self.blocks.can_grow(seq, seq.num_tokens):
                victim = self.running[-1]
                self.preempt(victim)
                if victim is seq:
                    break
            if seq in self.running:
                self.blocks.grow(seq, seq.num_tokens)
                chunks.append((seq, 1))
                budget -= 1
        # as the simulator: a prompt under way counts against max_seqs from its first chunk; it may shrink
        # its next chunk to the free blocks, while a new prompt waits until its whole chunk fits
        admitted = len(self.running) + sum(1 for s in self.waiting if s.block_table)
        for seq in self.waiting:
            if budget <= 0:
                break
            started = bool(seq.block_table)
            if not started and admitted >= cfg.max_seqs:
                break
            left = seq.num_tokens - seq.num_cached
            n = min(left, cfg.chunk_tokens, budget) if cfg.chunked_prefill else left
            if n > budget and chunks:  # an unchunked prompt runs whole, alone if it must
                break
            if not self.blocks.can_grow(seq, seq.num_cached + n):
                fits = (len(seq.block_table) + len(self.blocks.free_blocks)) * self.blocks.block_tokens
                n = fits - seq.num_cached
                if not (started and cfg.chunked_prefill and n > 0):
                    break
            self.blocks.grow(seq, seq.num_cached + n)
            chunks.append((seq, n))
            budget -= n
            admitted += not started
        holders = [s for s in self.waiting if s.block_table]
        if not chunks and holders:  # partial prompts hold every block: recompute the newest later
            self.blocks.free(holders[-1])
            return self.schedule()
        return chunks

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.preemptions += 1
        self.waiting.appendleft(seq)

    def postprocess(self, seq: Sequence, n: int) -> None:
        """After a step: ``n`` more tokens cached; a finished prompt moves to running."""
        seq.num_cached += n
        if seq.finish_reason is not None:
            (self.waiting if seq in self.waiting else self.running).remove(seq)
            self.blocks.free(seq)
        elif seq in self.waiting and seq.num_cached + 1 == seq.num_tokens:
            self.waiting.remove(seq)
            self.running.append(seq)

    def remove(self, seq: Sequence) -> None:
        for q in (self.waiting, self.running):
            if seq in q:
                q.remove(seq)
        self.blocks.free(seq)
