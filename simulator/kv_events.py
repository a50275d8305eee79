"""KV events and the KV-aware router: workers publish which prefix entries they store in HBM or remove, the
router learns of them ``kv_event_delay_s`` later (Dynamo's and Mooncake's KV event streams), and routes on that
possibly stale view.

The cost of sending request r to worker w (lowest wins; ties: fewer outstanding requests, then lower index):

    cost(w) = overlap_weight * new_blocks(w) + load_weight * load_blocks(w)

- ``new_blocks(w)``: KV blocks of r's prompt that w must prefill, per the router's view of w's cache (the
  longest prefix of r's hash chain the view says w holds is skipped);
- ``load_blocks(w)``: KV blocks of work already on w: blocks its sequences hold now plus the blocks of the
  prompts waiting in its queue (what the engine reports as load; never stale).

Both terms are in KV blocks, so equal weights trade one block of prefill saved for one block of queue. With
``load_weight`` 0 the router chases the cache whatever the queue; with ``overlap_weight`` 0 it is least-loaded
by KV blocks. Routing where the view promised more than the worker holds counts as a stale route.

Fast-forward: a decode run's evictions are settled when the router looks (or the run ends), at that time; with
no delay the view is then exactly what stepping would show, with a delay the removed events of a long decode run
can reach the router later than stepping would send them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import simpy

from simulator.block_manager import blocks_for
from simulator.prefix_cache import unused_hold
from simulator.router import POLICIES, Router


class KVView:
    """The router's picture of each worker's cached entries, updated by delayed events."""

    def __init__(self, env: simpy.Environment, delay_s: float):
        self.env, self.delay_s = env, delay_s
        self.held: dict[int, set[int]] = {}
        self._batch: list | None = None  # events published at ``_batch_t``, delivered together
        self._batch_t = -1.0

    def add_worker(self, wid: int) -> None:
        self.held[wid] = set()

    def publish(self, wid: int, keys: list[int], stored: bool) -> None:
        """Worker ``wid`` stored (or removed) ``keys`` now; the router learns of it ``delay_s`` later."""
        if not self.delay_s:
            self._apply([(wid, keys, stored)])
            return
        if self._batch is None or self._batch_t != self.env.now:
            batch = self._batch = []
            self._batch_t = self.env.now
            self.env.timeout(self.delay_s).callbacks.append(lambda _ev: self._apply(batch))
        self._batch.append((wid, keys, stored))

    def _apply(self, events: list) -> None:
        for wid, keys, stored in events:
            if stored:
                self.held[wid].update(keys)
            else:
                self.held[wid].difference_update(keys)

    def overlap(self, wid: int, keys: list[int]) -> int:
        """Leading entries of ``keys`` the view says ``wid`` holds."""
        held, m = self.held[wid], 0
        for k in keys:
            if k not in held:
                break
            m += 1
        return m


def load_blocks(w) -> int:
    """KV blocks of work on worker ``w``: held by its sequences, plus its queued prompts' remaining tokens."""
    S, n = w.S, len(w.waiting)
    queued = 0
    if n:
        idx = np.fromiter(w.waiting, np.int64, n)
        queued = int(blocks_for(S.target[idx] - S.computed[idx], w.B).sum())
    return w.kv.used - unused_hold(w) + queued


def kv_aware(router: Router, workers: Sequence, r: int) -> int:
    """The worker of least ``cost`` (see the module docstring)."""
    kvm = getattr(router, "kv", None)
    w0 = workers[0]
    isl = int(w0.S.isl[r])
    ow, lw = router.weights
    best, best_key, promised = 0, None, 0
    if kvm is not None:
        for w in workers:  # evictions a fast-forwarded decode run still owes happen now, as stepping would
            w.cache.trim()
    for i, w in enumerate(workers):
        m, tokens = kvm.usable(r, kvm.view.overlap(w.wid, kvm.keys[r])) if kvm is not None else (0, 0)
        key = (ow * int(blocks_for(isl - tokens, w.B)) + lw * load_blocks(w), w.load, i)
        if best_key is None or key < best_key:
            best, best_key, promised = i, key, m
    if promised and workers[best].cache.hbm_entries(kvm.keys[r][:promised]) < promised:
        kvm.stale_routes += 1
    return best


POLICIES["kv_aware"] = kv_aware
