"""Synthetic shared prefixes (traces/prefixes.py): system prompts and multi-turn sessions with a reuse ratio."""

from __future__ import annotations

import numpy as np
import pytest

from profiler.errors import InputError
from simulator import simulate
from simulator.deployment import parse_deployment
from traces.synthetic import synthetic_workload

AGG = parse_deployment({"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "workers": {"replicas": 1}})


def wl(**kw):
    return synthetic_workload(requests=200, isl=(kw.pop("isl", 4000)), osl=20, rate=10, seed=1, **kw)


def test_no_options_no_hash_chains_and_fresh_blocks_share_nothing():
    assert "hash_ids" not in wl().requests
    from traces.prefixes import add_prefixes

    ids = add_prefixes(wl()).requests["hash_ids"]
    flat = [h for chain in ids for h in chain]
    assert len(flat) == len(set(flat)) == 200 * 8  # ceil(4000 / 512) blocks each, none repeated


def test_every_request_starts_with_one_of_the_system_prompts():
    ids = wl(system_prompts=3, system_tokens=2048).requests["hash_ids"]
    heads = {tuple(chain[:4]) for chain in ids}
    assert len(heads) == 3
    assert all(len(set(chain[4:]) & {h for head in heads for h in head}) == 0 for chain in ids)
    res = simulate(AGG, wl(system_prompts=3, system_tokens=2048)).summary()
    assert res["prefix_hit_rate"] == pytest.approx(2048 / 4000, abs=0.02)  # all but the first use of each


@pytest.mark.parametrize("reuse", [0.25, 0.5, 0.9])
def test_session_turns_repeat_the_chosen_share_of_their_prompt(reuse):
    w = wl(sessions=10, reuse=reuse, isl=5120)  # 10 hash blocks a prompt
    df = w.requests
    shared = []
    for _, turns in df.groupby("session_id"):
        chains = turns["hash_ids"].tolist()
        for prev, cur in zip(chains, chains[1:], strict=False):
            shared.append(next((i for i, (a, b) in enumerate(zip(prev, cur, strict=False)) if a != b), len(cur)))
    assert np.mean(shared) == int(reuse * 10)  # whole blocks of the previous turn
    hit = simulate(AGG, w).summary()["prefix_hit_rate"]
    assert hit == pytest.approx(int(reuse * 10) * 512 / 5120 * (200 - 10) / 200, abs=0.01)


@pytest.mark.parametrize("kw, message", [
    ({"system_prompts": 2}, "give both"),
    ({"reuse": 0.5}, "reuse needs sessions"),
    ({"sessions": 3, "reuse": 1.5}, "reuse must be a share"),
])
def test_bad_prefix_options_say_what_is_wrong(kw, message):
    with pytest.raises(InputError, match=message):
        wl(**kw)
