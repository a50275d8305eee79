"""PrefixCache: one worker's reusable prompt KV, keyed by block-hash chains, with LRU eviction.

A request's prompt is a chain of hash blocks (the trace's ``hash_ids``, ``hash_block_tokens`` = 512 tokens
each; a hash names its whole prefix, as Mooncake's and vLLM's chained hashes do). An *entry* is the
engine's KV blocks that end inside one full hash block: entry i ends at engine block
``(i + 1) * hash_block_tokens // block_tokens``, so any engine block size maps onto any trace block size.

Memory: an entry no running sequence holds is *idle*; idle entries count as free blocks (any allocation may
take them), and the cache keeps ``idle_blocks <= free blocks`` by evicting the least recently used idle entry
(``trim``, to the first KV tier or away) after every allocation and before every look. Blocks a fast-forwarded
decode run holds for steps it has not reached count as free, so the cache evicts what stepping would have.
An entry a sequence holds is *busy* (ref counted) and part of that sequence's blocks. Two running sequences
that share a busy entry both count its blocks (conservative: memory is never under-counted). A prompt's
entries are cached (busy) once its prefill ends, and idle when its sequence lets go of them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from simulator.kv import KVManager
    from simulator.kv_tiers import Tier
    from simulator.worker import Worker


def unused_hold(w: Worker) -> int:
    """Blocks ``w``'s fast-forwarded decode run holds for steps not started yet (stepping has not taken them)."""
    run = w.run
    return 0 if run is None else max(run.hold - run.growth(run.steps_by(w.env.now)), 0)


class PrefixCache:
    def __init__(self, kvm: KVManager, worker: Worker, tiers: list[Tier], entry_bytes_per_block: float):
        self.kvm, self.worker, self.wid, self.tiers = kvm, worker, worker.wid, tiers
        self.idle: OrderedDict[int, int] = OrderedDict()  # key -> blocks, least recently used first
        self.busy: dict[int, int] = {}  # key -> sequences holding it
        self.idle_blocks = 0
        self.held: dict[int, int] = {}  # request -> entries it acquired (its prompt's first ones)
        self.bytes_per_block = entry_bytes_per_block
        self.recall_s = 0.0  # recall time the next iteration pays
        self._match: tuple[int, int, int] = (-1, 0, 0)  # (request, entries, tokens) of the last match

    # ---- lookups -------------------------------------------------------------------------------
    def hbm_entries(self, keys: list[int]) -> int:
        """Leading entries of ``keys`` in HBM (what the router's view describes)."""
        self.trim()
        m = 0
        for k in keys:
            if k not in self.idle and k not in self.busy:
                break
            m += 1
        return m

    def match(self, r: int, tiers: bool = True) -> int:
        """Prompt tokens of ``r`` this worker can serve from cache (HBM, then its tiers); 0 if none."""
        self.trim()
        keys = self.kvm.keys[r]
        m = 0
        for k in keys:
            if k in self.idle or k in self.busy or (tiers and any(k in t.entries for t in self.tiers)):
                m += 1
            else:
                break
        m, tokens = self.kvm.usable(r, m)
        self._match = (r, m, tokens)
        return tokens

    def acquire(self, r: int, transfer: bool = False) -> None:
        """``r`` takes the entries its last ``match`` found (recalling those on lower tiers); ``transfer``: a
        disagg decode worker that need not receive them."""
        rr, m, tokens = self._match
        assert rr == r, (rr, r)
        self.kvm.hit(r, tokens, transfer)
        recalled, w = [], self.worker
        for k in self.kvm.keys[r][:m]:
            if k in self.busy:
                self.busy[k] += 1
                continue
            if k in self.idle:
                self.idle_blocks -= self.idle.pop(k)
            else:  # on a lower tier: back to HBM, paid by the next iteration
                tier = next(t for t in self.tiers if k in t.entries)
                self.recall_s += tier.take(k, w.env.now)
                recalled.append(k)
            self.busy[k] = 1
        self.held[r] = m
        if recalled:
            self.kvm.stored(self.wid, recalled)

    def computed(self, rs) -> None:
        """``rs`` finished their prompts: the entries they computed are cached (busy, held by them) from now on,
        up to the first one another sequence already put here (this copy is a duplicate)."""
        self.trim()
        kvm, busy, idle = self.kvm, self.busy, self.idle
        for r in rs.tolist():
            keys = kvm.keys[r]
            held = i = self.held.get(r, 0)
            done = kvm.entries_within(r, int(kvm.sim.seqs.computed[r]))
            while i < done and keys[i] not in busy and keys[i] not in idle:
                busy[keys[i]] = 1
                i += 1
            if i > held:
                self.held[r] = i
                kvm.stored(self.wid, keys[held:i])

    # ---- giving back ---------------------------------------------------------------------------
    def release(self, r: int, computed: int) -> None:
        """``r`` lets go of its KV (finished, handed off or preempted): the entries it acquired and the full
        ones it computed (``computed`` prompt tokens) stay cached, idle, the deepest evicted first."""
        self.trim()
        kvm = self.kvm
        keys = kvm.keys[r]
        held = self.held.pop(r, 0)
        done = min(kvm.entries_within(r, computed), len(keys))
        ends = kvm.entry_ends
        stored = []
        for i in range(max(done, held) - 1, -1, -1):  # root last: it becomes the most recently used
            k = keys[i]
            if i < held:
                n = self.busy[k] - 1
                if n:
                    self.busy[k] = n
                    continue
                del self.busy[k]
            elif k in self.busy:  # computed twice (another sequence holds it): this copy is freed
                continue
            elif k in self.idle:
                self.idle.move_to_end(k)
                continue
            else:
                stored.append(k)
            size = ends[i] - (ends[i - 1] if i else 0)
            self.idle[k] = size
            self.idle_blocks += size
        if stored:
            kvm.stored(self.wid, stored)

    def trim(self) -> None:
        """Evict least recently used idle entries until they fit in the free blocks (to the first tier)."""
        free = self.worker.kv.free
        if self.idle_blocks <= free:  # (a decode run's unused hold only adds to free)
            return
        free += unused_hold(self.worker)
        if self.idle_blocks <= free:
            return
        removed = []
        while self.idle_blocks > free:
            k, size = self.idle.popitem(last=False)
            self.idle_blocks -= size
            removed.append(k)
            if self.tiers:
                self.tiers[0].put(k, size * self.bytes_per_block, self.worker.env.now)
        self.kvm.removed(self.wid, removed)

    def clear(self) -> None:
        """The replica died: its HBM holds nothing (its KV tiers keep what they hold)."""
        gone = list(self.idle) + list(self.busy)
        self.idle.clear()
        self.busy.clear()
        self.held.clear()
        self.idle_blocks = 0
        self.recall_s = 0.0
        if gone:
            self.kvm.removed(self.wid, gone)

    def take_recall_s(self) -> float:
        s, self.recall_s = self.recall_s, 0.0
        return s
