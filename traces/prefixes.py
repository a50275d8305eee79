"""Synthetic shared prefixes: hash chains (``hash_ids``, 512-token blocks as in Mooncake) for a workload's
prompts, so that the simulator's prefix caches have something to reuse.

- ``system_prompts`` prompts of ``system_tokens`` tokens each: every request starts with one (uniformly
  drawn), cut to its prompt length;
- ``sessions`` conversations: requests are dealt to sessions at random, and each turn after a session's first
  repeats ``reuse`` of its prompt from the session's previous turn (the earlier context), as far as that turn
  reached; the rest is new.

Only whole 512-token blocks are shared: a block that mixes shared and new tokens gets a fresh id. With
neither option every block is fresh (no sharing).
"""

from __future__ import annotations

import numpy as np

from profiler.errors import InputError
from traces.workload import Workload


def add_prefixes(w: Workload, *, system_prompts: int = 0, system_tokens: int = 0, sessions: int = 0,
                 reuse: float = 0.0, seed: int = 0) -> Workload:
    """``w`` with hash chains (and, with sessions, ``session_id``) as described in the module docstring."""
    if system_prompts < 0 or system_tokens < 0 or sessions < 0:
        raise InputError("system prompts, system tokens and sessions must be >= 0")
    if (system_prompts > 0) != (system_tokens > 0):
        raise InputError("give both the number of system prompts and their length in tokens, or neither")
    if not 0.0 <= reuse <= 1.0:
        raise InputError(f"reuse must be a share of the prompt in [0, 1], got {reuse}")
    if reuse > 0 and sessions < 1:
        raise InputError("reuse needs sessions >= 1 (the turns whose context is reused)")
    H = w.hash_block_tokens
    rng = np.random.default_rng(seed)
    isl = w.requests["isl"].to_numpy(np.int64)
    n = len(isl)
    system = rng.integers(0, system_prompts, n) if system_prompts else np.zeros(n, np.int64)
    session = rng.integers(0, sessions, n) if sessions else np.full(n, -1)
    fresh = system_prompts * (system_tokens // H)  # ids below are the system prompts' blocks
    last: dict[int, list[int]] = {}  # session -> its previous turn's chain
    chains = []
    for i in range(n):
        blocks = -(-int(isl[i]) // H)
        if session[i] in last:
            prev = last[session[i]]
            shared = min(int(reuse * isl[i]) // H, len(prev), int(isl[i]) // H)
            chain = prev[:shared]
        else:
            full = min(system_tokens, int(isl[i])) // H if system_prompts else 0
            start = system[i] * (system_tokens // H)
            chain = list(range(start, start + full))
        new = blocks - len(chain)
        chain = chain + list(range(fresh, fresh + new))
        fresh += new
        chains.append(chain)
        if session[i] >= 0:
            last[session[i]] = chain
    df = w.requests.copy()
    df["hash_ids"] = chains
    if sessions:
        df["session_id"] = session
    note = []
    if system_prompts:
        note.append(f"{system_prompts} system prompts of {system_tokens} tokens")
    if sessions:
        note.append(f"{sessions} sessions reusing {reuse:.0%} of each prompt")
    return w.with_requests(df, source=f"{w.source} [{', '.join(note) or 'no shared prefixes'}]")
