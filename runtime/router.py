"""Router: picks the worker of a pool for the next request (round robin or least loaded)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field


@dataclass
class WorkerHandle:
    """The frontend's view of one worker process."""

    id: str
    role: str  # prefill | decode | agg
    port: int
    pid: int
    alive: bool = False  # until its ``ready``
    inflight: set[str] = field(default_factory=set)  # attempt ids it holds
    stats: dict = field(default_factory=dict)
    writer: object = None  # asyncio.StreamWriter


class NoWorker(RuntimeError):
    pass


class Router:
    """``least_loaded`` counts requests in flight per worker; ``kv_aware`` is not in the runtime and
    routes as ``least_loaded``."""

    def __init__(self, policy: str = "round_robin"):
        self.policy = policy
        self.turns: dict[str, itertools.count] = {}  # one round-robin position per pool

    def pick(self, workers: list[WorkerHandle], avoid: set[str] = frozenset()) -> WorkerHandle:
        live = [w for w in workers if w.alive]
        if not live:
            raise NoWorker(f"no live {workers[0].role if workers else ''} worker")
        preferred = [w for w in live if w.id not in avoid] or live
        if self.policy == "round_robin":
            turn = self.turns.setdefault(workers[0].role, itertools.count())
            return preferred[next(turn) % len(preferred)]
        return min(preferred, key=lambda w: len(w.inflight))
