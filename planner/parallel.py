"""Independent simulations on several cores: ``calls(fn, args, jobs)`` returns ``[fn(*a) for a in args]``, in
order, computed by up to ``jobs`` forked processes. Each call must depend only on its arguments, so that the
answer is the same whatever ``jobs`` is."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_FN: Callable | None = None  # the function each forked worker runs (inherited, never pickled)


def default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _call(args: tuple) -> Any:
    return _FN(*args)


def calls(fn: Callable, args: Sequence[tuple], jobs: int = 1) -> list:
    """``[fn(*a) for a in args]``; with ``jobs`` > 1 and more than one call, in forked worker processes (they
    inherit ``fn`` and whatever it closes over; only the arguments and results cross)."""
    if jobs <= 1 or len(args) <= 1 or "fork" not in mp.get_all_start_methods():
        return [fn(*a) for a in args]
    global _FN
    _FN = fn
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(args)), mp_context=mp.get_context("fork")) as pool:
            return list(pool.map(_call, args))
    finally:
        _FN = None
