"""Router: which replica of a pool serves a request. A policy is a function (router, workers, request) -> index;
``kv_aware`` (prefix overlap, issue 8) registers itself in POLICIES."""

from __future__ import annotations

from collections.abc import Callable, Sequence

ROUTERS = ("round_robin", "least_loaded", "kv_aware")  # what a deployment may name (kv_aware: simulator/kv_events.py)


def round_robin(router: Router, workers: Sequence, r: int) -> int:
    i = router.turn % len(workers)
    router.turn += 1
    return i


def least_loaded(router: Router, workers: Sequence, r: int) -> int:
    """Fewest outstanding requests; ties go to the lowest index (deterministic)."""
    loads = [w.load for w in workers]
    return loads.index(min(loads))


POLICIES: dict[str, Callable[[Router, Sequence, int], int]] = {
    "round_robin": round_robin,
    "least_loaded": least_loaded,
}


class Router:
    def __init__(self, policy: str):
        if policy not in POLICIES:
            from profiler.errors import InputError

            raise InputError(f"router {policy!r} is not simulated yet; known: {', '.join(POLICIES)}")
        self.policy = POLICIES[policy]
        self.turn = 0

    def pick(self, workers: Sequence, r: int):
        return workers[self.policy(self, workers, r)]
