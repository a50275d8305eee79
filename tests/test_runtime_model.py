"""The runtime's model: paged prefill, chunked prefill and decode compute the same function."""

import pytest
import torch

from profiler.models import CATALOG
from runtime.model import KVCache, StepInput, build_model, decode_step, gather, keep_heap, prefill_step, torch_threads

SPEC = CATALOG["tiny"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):  # as the workers run; on a busy 2-core box more threads are slower
        yield


def _model_and_cache(blocks: int = 16, block_tokens: int = 4):
    model = build_model(SPEC, seed=1)
    return model, KVCache(SPEC, blocks, block_tokens, torch.float32)


def test_same_seed_same_weights_and_different_seed_differs():
    a, b, c = build_model(SPEC, seed=3), build_model(SPEC, seed=3), build_model(SPEC, seed=4)
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_decode_over_paged_cache_matches_full_prefill():
    tokens = list(range(10, 23))  # 13 tokens
    model, cache = _model_and_cache()
    # reference: the whole sequence prefilled at once, logits of every position
    full = prefill_step(tokens, torch.arange(13))
    full.logits_rows = None
    ref = model(full, cache)
    # paged: prompt of 9 into scattered blocks, then 4 decode steps
    model, cache = _model_and_cache()
    block_table = [7, 2, 11, 5]
    slots = torch.tensor([b * 4 + i for b in block_table for i in range(4)])
    model(prefill_step(tokens[:9], slots[:9]), cache)
    for n in range(9, 13):
        out = model(decode_step([tokens[n]], [slots[: n + 1]]), cache)
        torch.testing.assert_close(out[0], ref[n], rtol=1e-4, atol=1e-4)


def test_chunked_prefill_and_batched_decode_match_unbatched():
    model, cache = _model_and_cache(blocks=32)
    a, b = list(range(40, 51)), list(range(60, 66))
    sa, sb = torch.arange(0, 16), torch.arange(64, 80)
    ref_a = model(prefill_step(a, sa[:11]), cache)
    ref_b = model(prefill_step(b, sb[:6]), cache)
    # same prompts again into fresh slots: a in two chunks (6 then 5 with 6 cached), b whole in the same step
    ca, cb = torch.arange(16, 32), torch.arange(32, 48)
    model(prefill_step(a[:6], ca[:6]), cache)
    step = StepInput(token_ids=torch.tensor(a[6:] + b), positions=torch.tensor([*range(6, 11), *range(6)]),
                     slots=torch.cat((ca[6:11], cb[:6])), prefill=[(0, 5, 6, ca[:11]), (5, 6, 0, cb[:6])],
                     logits_rows=torch.tensor([4, 10]))
    out = model(step, cache)
    torch.testing.assert_close(out[0], ref_a[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], ref_b[0], rtol=1e-4, atol=1e-4)
    # one batched decode step of both equals two single ones
    both = model(decode_step([1, 2], [ca[:12], cb[:7]]), cache)
    one = model(decode_step([1], [sa[:12]]), cache)
    two = model(decode_step([2], [sb[:7]]), cache)
    torch.testing.assert_close(both[0], one[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(both[1], two[0], rtol=1e-4, atol=1e-4)


def test_kv_read_and_load_round_trip_moves_a_sequence():
    model, cache = _model_and_cache()
    tokens = list(range(5, 14))
    src = torch.arange(0, 9)
    model(prefill_step(tokens, src), cache)
    kv = cache.read(src)
    assert kv.shape == (2, SPEC.layers, 9, SPEC.kv_heads, SPEC.head_dim)
    assert kv.numel() * kv.element_size() == 9 * cache.bytes_per_token
    dst = torch.arange(40, 49)
    cache.load(dst, kv.clone())
    here = model(decode_step([3], [torch.cat((src, torch.tensor([9])))]), cache)
    there = model(decode_step([3], [torch.cat((dst, torch.tensor([49])))]), cache)
    torch.testing.assert_close(here, there)


def test_gather_is_advanced_indexing_by_index_select():
    cache = torch.randn(64, 2, 8)
    slots = torch.tensor([[5, 6, 7, 40], [1, 0, 63, 63]])
    assert torch.equal(gather(cache, slots), cache[slots])
    kv = KVCache(SPEC, 8, 4, torch.float32)
    kv.k.normal_()
    kv.v.normal_()
    flat = torch.tensor([3, 17, 9])
    assert torch.equal(kv.read(flat), torch.stack((kv.k[:, flat], kv.v[:, flat])))


def test_keep_heap_sets_glibcs_thresholds_on_linux():
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert keep_heap() is True
