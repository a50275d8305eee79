"""The worker engine: continuous batching, chunked prefill, preemption and KV hand-off keep greedy output
identical to running each request alone."""

import pytest

from profiler.models import CATALOG
from runtime.block_manager import BlockManager
from runtime.engine import Engine
from runtime.model import build_model, torch_threads
from runtime.scheduler import Scheduler, SchedulerConfig
from runtime.sequence import Sequence

SPEC = CATALOG["tiny"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with torch_threads(1):  # as the workers run; on a busy 2-core box more threads are slower
        yield
MODEL = build_model(SPEC, seed=0)
PROMPTS = [list(range(1, 30)), list(range(50, 61)), list(range(100, 141)), [7]]


def run(engine: Engine, seqs: list[Sequence], max_steps: int = 2000) -> dict[str, list[int]]:
    for s in seqs:
        engine.add(s)
    for _ in range(max_steps):
        if not engine.has_work:
            break
        engine.step()
    assert not engine.has_work, "engine did not finish within max_steps"
    return {s.rid: s.token_ids[s.num_prompt:] for s in seqs}


def seqs(max_tokens: int = 12, **kw) -> list[Sequence]:
    return [Sequence(f"r{i}", list(p), len(p), max_tokens, **kw) for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def alone() -> dict[str, list[int]]:
    out = {}
    for s in seqs():
        out.update(run(Engine(MODEL, SchedulerConfig(), 64, 16), [s]))
    return out


def test_batched_and_chunked_output_equals_each_request_alone(alone):
    engine = Engine(MODEL, SchedulerConfig(max_batch_tokens=24, chunk_tokens=8), 64, 16)
    assert run(engine, seqs()) == alone
    assert all(len(v) == 12 for v in alone.values())
    assert engine.blocks.used == 0


def test_budget_and_max_seqs_bound_every_step():
    engine = Engine(MODEL, SchedulerConfig(max_batch_tokens=16, max_seqs=2, chunk_tokens=16), 64, 16)
    for s in seqs():
        engine.add(s)
    while engine.has_work:
        r = engine.step()
        assert r.batch.tokens <= 16
        assert len(r.batch.prefill_tokens) + len(r.batch.decode_ctx) <= 2
        sched = engine.scheduler  # as the simulator: a prompt under way holds one of the max_seqs places
        assert len(sched.running) + sum(1 for s in sched.waiting if s.block_table) <= 2


def test_prompt_under_way_shrinks_its_chunk_to_the_free_blocks():
    blocks = BlockManager(4, 8)
    sched = Scheduler(SchedulerConfig(max_batch_tokens=64, chunk_tokens=16), blocks)
    other = Sequence("other", [1] * 8, 8, 1)
    blocks.grow(other, 8)  # holds one block
    started = Sequence("started", [1] * 30, 30, 1)
    blocks.grow(started, 16)
    started.num_cached = 16  # its first chunk is cached; 14 tokens left, one free block (8 slots)
    new = Sequence("new", [1] * 4, 4, 1)
    sched.waiting.extend([started, new])
    assert sched.schedule() == [(started, 8)]  # shrunk to the free block; the new prompt waits for room
    assert blocks.used == 4


def test_unchunked_prompt_runs_whole():
    engine = Engine(MODEL, SchedulerConfig(max_batch_tokens=16, chunked_prefill=False), 64, 16)
    engine.add(seqs()[2])  # 41 tokens, more than the budget
    assert list(engine.step().batch.prefill_tokens) == [41]


def test_full_cache_preempts_and_recomputes_with_same_output(alone):
    engine = Engine(MODEL, SchedulerConfig(), 7, 8)  # 56 slots: not enough for all four at once
    batch = seqs()
    assert run(engine, batch) == alone
    assert sum(s.preemptions for s in batch) > 0
    assert engine.blocks.used == 0


def test_prefill_then_transferred_decode_equals_agg(alone):
    prefill = Engine(MODEL, SchedulerConfig(), 64, 16)
    decode = Engine(MODEL, SchedulerConfig(), 64, 16)
    firsts = seqs(prefill_only=True)
    for s in firsts:
        prefill.add(s)
    kv = {}
    while prefill.has_work:
        kv.update(prefill.step().kv)
    assert prefill.blocks.used == 0 and set(kv) == {s.rid for s in firsts}
    for s in firsts:
        assert kv[s.rid].shape[2] == s.num_prompt  # KV of the prompt, not of the sampled token
        d = Sequence(s.rid, list(s.token_ids), s.num_prompt, 12, num_generated=1, num_cached=s.num_prompt)
        decode.add_transferred(d, kv[s.rid])
    done = {}
    while decode.has_work:
        for seq, _ in decode.step().tokens:
            if seq.finish_reason:
                done[seq.rid] = seq.token_ids[seq.num_prompt:]
    assert done == alone


def test_abort_frees_blocks():
    engine = Engine(MODEL, SchedulerConfig(), 64, 16)
    s = seqs()[0]
    engine.add(s)
    engine.step()
    assert engine.blocks.used > 0
    assert engine.abort(s.rid)
    assert engine.blocks.used == 0 and not engine.has_work


def test_pace_stretches_each_step_to_the_predicted_duration():
    calls = []
    engine = Engine(MODEL, SchedulerConfig(), 64, 16, pace_s=lambda b: calls.append(b) or 0.05)
    engine.add(seqs()[3])
    r = engine.step()
    assert calls[0].tokens == 1 and r.duration_s >= 0.05


def test_temperature_sampling_is_seeded():
    a = run(Engine(MODEL, SchedulerConfig(), 64, 16), seqs(temperature=1.0, seed=5))
    b = run(Engine(MODEL, SchedulerConfig(), 64, 16), seqs(temperature=1.0, seed=5))
    c = run(Engine(MODEL, SchedulerConfig(), 64, 16), seqs(temperature=1.0, seed=6))
    assert a == b and a != c


def test_free_list_starts_in_a_seeded_random_order_and_hands_out_every_block_once():
    a, b = BlockManager(256, 16), BlockManager(256, 16)
    assert list(a.free_blocks) == list(b.free_blocks) != sorted(a.free_blocks)  # as after hours of serving
    assert sorted(a.free_blocks) == list(range(256)) and list(BlockManager(256, 16, seed=1).free_blocks) != list(
        a.free_blocks)
    seq = Sequence("s", [1] * 40, 40, 1)
    a.grow(seq, 40)
    assert len(set(seq.block_table)) == 3 and a.used == 3
    a.free(seq)
    assert a.used == 0 and sorted(a.free_blocks) == list(range(256))
