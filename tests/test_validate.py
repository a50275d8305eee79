"""pdsim validate: the comparison's arithmetic, the paced engine's timeline, input errors, and short
end-to-end runs on the live runtime (tiny model; agg raw, disagg paced)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from planner.cli import app, run_app
from planner.validate import (
    compare,
    compute_slowdown,
    error_table,
    model_slowdown,
    pace_scale_for,
    rehearsal_slices,
    request_overhead_s,
    servable,
    step_overhead,
    worker_ttft_s,
)
from profiler.costmodel import Batch
from profiler.paced import ScaledCostModel, overheads
from runtime.replay_client import prompt_ids
from traces.workload import Workload, make_requests

AGG = {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "agg", "workers": {"replicas": 1}}
DISAGG = {"model": "tiny", "gpu": "cpu", "dtype": "fp32", "topology": "disagg", "prefill": {"replicas": 1},
          "decode": {"replicas": 1}}


def stats(ttft: float, tpot: float) -> dict:
    cell = {"mean": None, "p50": None, "p90": None, "p99": None}
    return {"ttft_ms": {**cell, "p50": ttft, "p90": 2 * ttft, "p99": 3 * ttft},
            "tpot_ms": {**cell, "p50": tpot, "p90": tpot, "p99": tpot}, "itl_ms": dict(cell), "e2e_ms": dict(cell)}


def test_compare_takes_the_median_repeat_and_judges_raw_errors_by_target_or_spread():
    live = [stats(100.0, 10.0), stats(140.0, 10.0), stats(120.0, 10.0)]
    m = compare(live, [stats(90.0, 11.0)], paced=False)
    c = m["ttft_ms"]["p50"]
    assert c["live"] == 120.0 and c["sim"] == 90.0
    assert c["rel_error"] == pytest.approx(-0.25)
    assert c["repeat_spread"] == pytest.approx(40 / 120)  # (max - min) / median
    assert c["within_target"]  # 25 % misses the 15 % target but is inside the measured spread
    assert m["tpot_ms"]["p50"]["rel_error"] == pytest.approx(0.1) and m["tpot_ms"]["p50"]["within_target"]
    assert "within_target" not in m["tpot_ms"]["p99"]  # raw mode has no p99 target
    assert m["itl_ms"]["p50"]["rel_error"] is None  # no values: no error, never a made-up one


def test_compare_paced_targets_are_5_and_10_percent_without_spread():
    m = compare([stats(100.0, 10.0)], [stats(104.0, 10.6)], paced=True)
    assert m["ttft_ms"]["p50"]["within_target"] and m["ttft_ms"]["p50"]["target"] == 0.05
    assert not m["tpot_ms"]["p50"]["within_target"]  # +6 %
    assert m["tpot_ms"]["p99"]["within_target"]  # +6 % within p99's 10 %
    assert m["ttft_ms"]["p50"]["repeat_spread"] is None
    assert "TTFT" in error_table({"metrics": m}) and "MISS" in error_table({"metrics": m})


def test_servable_drops_requests_longer_than_the_models_context_and_renumbers():
    w = Workload(make_requests([0.0, 1.0, 2.0], [100, 4000, 50], [10, 200, 5]))
    from simulator.deployment import parse_deployment

    kept, dropped = servable(w, parse_deployment(AGG))
    assert dropped == 1 and list(kept.requests["isl"]) == [100, 50]
    assert list(kept.requests["request_id"]) == [0, 1]


def test_pace_scale_is_above_the_p95_slowdown():
    assert pace_scale_for({"median": 2.0, "p95": 4.1}) == 8.25  # a step of the p95 shape on half a core
    assert pace_scale_for({"median": 0.9, "p95": 1.0}) == 2.0
    assert pace_scale_for({"median": 0.5, "p95": 0.6}) == 1.5


def test_prompts_are_seeded_token_ids_of_the_requested_length():
    a = prompt_ids(7, 300, seed=1)
    assert a == prompt_ids(7, 300, seed=1) and a != prompt_ids(8, 300, seed=1)
    assert len(a) == 300 and 0 <= min(a) and max(a) < 256


class Const:
    def iteration_s(self, batch: Batch) -> float:
        return 0.01 * batch.tokens

    def decode_steps_s(self, n_seqs: int, ctx_sum: int, steps: int, ctx_max: int | None = None) -> np.ndarray:
        return np.full(steps, 0.01 * n_seqs)

    def transfer_s(self, kv_bytes, link) -> float:
        return 1.0


def test_scaled_cost_model_scales_iterations_not_transfers():
    s = ScaledCostModel(Const(), 3.0)
    assert s.iteration_s(Batch.of(decode_ctx=[5, 6])) == pytest.approx(0.06)
    assert s.decode_steps_s(2, 11, 3) == pytest.approx([0.06] * 3)
    assert s.transfer_s(1e6, None) == 1.0
    # raw: decode-only iterations at their own measured slowdown, iterations with a prompt at the pool's
    d = ScaledCostModel(Const(), 1.0, None, decode_scales=((1, 2.0), (4, 1.5)))
    assert d.iteration_s(Batch.of(decode_ctx=[5, 6])) == pytest.approx(0.03)
    assert d.decode_steps_s(2, 11, 3) == pytest.approx([0.03] * 3)
    assert d.iteration_s(Batch.of(decode_ctx=[5])) == pytest.approx(0.02)  # one sequence: its own bucket
    assert d.decode_steps_s(8, 40, 1) == pytest.approx([0.12])  # beyond the last bucket: the last's
    assert d.iteration_s(Batch.of(prefill=[(10, 0)], decode_ctx=[5])) == pytest.approx(0.11)  # no prompt buckets
    # ... and iterations with a prompt by their tokens (prompt chunks plus decodes)
    p = ScaledCostModel(Const(), 1.0, None, prompt_scales=((64, 1.2), (128, 0.5)))
    assert p.iteration_s(Batch.of(prefill=[(10, 0)], decode_ctx=[5])) == pytest.approx(0.132)
    assert p.iteration_s(Batch.of(prefill=[(100, 0)])) == pytest.approx(0.5)
    assert p.iteration_s(Batch.of(decode_ctx=[5, 6])) == pytest.approx(0.02)  # decodes alone: ``scale``


def test_scaled_cost_model_draws_each_steps_factor_from_the_spread_seeded():
    spread = (0.5, 1.0, 1.5)
    s = ScaledCostModel(Const(), 2.0, None, prompt_spread=spread, decode_spread=spread, seed=(3, 0, 1))
    decode, prompt = Batch.of(decode_ctx=[5, 6]), Batch.of(prefill=[(10, 0)])
    got = [s.iteration_s(decode) for _ in range(300)]
    assert set(np.round(got, 9)) == {0.02, 0.04, 0.06}  # 2 x 0.02 x one of the factors
    assert np.mean(got) == pytest.approx(0.04, rel=0.1)  # the spread keeps the scale's mean
    steps = s.decode_steps_s(2, 11, 400)
    assert set(np.round(steps, 9)) == {0.02, 0.04, 0.06} and steps.mean() == pytest.approx(0.04, rel=0.1)
    assert {round(s.iteration_s(prompt), 9) for _ in range(50)} == {0.1, 0.2, 0.3}
    again = ScaledCostModel(Const(), 2.0, None, prompt_spread=spread, decode_spread=spread, seed=(3, 0, 1))
    assert [again.iteration_s(decode) for _ in range(300)] == got  # same seed, same calls: same costs
    other = ScaledCostModel(Const(), 2.0, None, prompt_spread=spread, decode_spread=spread, seed=(3, 1, 1))
    assert [other.iteration_s(decode) for _ in range(300)] != got
    # only prompt steps spread: decode-only steps cost their mean every time; overheads are not drawn
    p = ScaledCostModel(Const(), 1.0, overheads(iteration_s=0.001), prompt_spread=(0.5, 1.5), seed=1)
    assert {round(p.iteration_s(decode), 9) for _ in range(20)} == {0.021}
    assert {round(p.iteration_s(prompt), 9) for _ in range(50)} == {0.051, 0.151}


def test_step_spread_is_each_steps_slowdown_over_its_sizes_mean_as_quantiles_of_mean_one():
    from planner.validate import MIN_SPREAD_STEPS, SPREAD_QUANTILES, step_spread

    # Const predicts 0.01 s per token. Decode steps of 1 sequence at 1.0x or 2.0x the profile (mean 1.5x), of 4
    # at 0.8x or 1.2x (mean 1.0x): over their size's mean, a third of the steps at 0.667x and 1.333x, the rest
    # at 0.8x and 1.2x
    rows = [step_row(1, 0.0, None, model_s=0.01 * x) for x in (1.0, 2.0) * 20]
    rows += [step_row(4, 0.0, None, model_s=0.04 * x) for x in (0.8, 1.2) * 40]
    out = step_spread(rows, Const())
    f = np.asarray(out["decode_steps"])
    assert len(f) == SPREAD_QUANTILES and f.mean() == pytest.approx(1.0)
    assert f.min() == pytest.approx(2 / 3, rel=0.01) and f.max() == pytest.approx(4 / 3, rel=0.01)
    assert np.mean(np.isclose(f, 0.8, rtol=0.01) | np.isclose(f, 1.2, rtol=0.01)) == pytest.approx(2 / 3, abs=0.1)
    assert "prompt_steps" not in out  # no steps with prompts
    few = [step_row(1, 0.0, None, model_s=0.01 * x) for x in (1.0, 2.0) * (MIN_SPREAD_STEPS // 2 - 1)]
    assert step_spread(few, Const()) is None  # too few steps to tell a spread: none, never a guess


def test_runtime_costs_split_the_slowdown_of_steps_with_prompts_from_decode_only_steps(tmp_path):
    from planner.validate import runtime_costs

    # Const predicts 0.01 s per token: prompt steps (10 tokens) at 1.0x, decode-only steps (2 seqs) at 1.4x
    rows = [{**step_row(0, 0.0, None, model_s=0.1, prefill=(10,)), "start": 1.0 + i} for i in range(3)]
    rows += [{**step_row(2, 0.0, None, model_s=0.028), "start": 5.0 + i} for i in range(5)]
    (tmp_path / "steps-agg-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = runtime_costs(tmp_path, [(0.0, 20.0)], [(0.0, 20.0)], {}, "x", Const())
    assert out["pool_slowdown"] == {"workers": [[64, pytest.approx(1.0)]]}  # three 10-token prompts
    # five 2-sequence steps are too few for a size of their own: their mean over all sizes
    assert out["pool_decode_slowdown"] == {"workers": [[2, pytest.approx(1.4)]]}
    assert out["compute_slowdown"] == pytest.approx(1.4)  # the median step of all: a decode
    assert out["pool_spread"] == {}  # three prompt steps and five decode steps: too few to tell a spread


def test_slowdown_by_size_buckets_decode_steps_by_sequences_and_prompt_steps_by_tokens():
    from planner.validate import MIN_BUCKET_STEPS, MIN_PROMPT_BUCKET_STEPS, slowdown_by_size

    k = MIN_BUCKET_STEPS
    # Const predicts 0.01 s per sequence: 1 sequence at 1.3x, 3-4 at 1.1x, 5-8 too few (nearest: 3-4),
    # 9-16 at 0.9x; steps with a prompt are not decode-only steps
    rows = ([step_row(1, 0.0, None, model_s=0.013)] * k + [step_row(3, 0.0, None, model_s=0.033)] * k
            + [step_row(6, 0.0, None, model_s=0.01)] * (k - 1) + [step_row(12, 0.0, None, model_s=0.108)] * k
            + [step_row(2, 0.0, None, model_s=0.12, prefill=(10,))] * k)
    assert slowdown_by_size(rows, Const(), False) == [[1, pytest.approx(1.3)], [2, pytest.approx(1.3)],
                                                      [4, pytest.approx(1.1)], [8, pytest.approx(1.1)],
                                                      [16, pytest.approx(0.9)]]
    assert slowdown_by_size(rows[-k:], Const(), False) is None
    # the mean of a size's steps, not the median: the simulation charges each step the expected time (19 steps of one
    # sequence at 1.0x and one at 3.0x: a worker as busy as 1.1x keeps, where the median's 1.0x would under-charge it)
    skewed = [step_row(1, 0.0, None, model_s=0.01)] * (k - 1) + [step_row(1, 0.0, None, model_s=0.03)]
    assert slowdown_by_size(skewed, Const(), False) == [[1, pytest.approx(1.1)]]
    # steps with prompts by their tokens (prompt plus decodes): 12 at 1.0x (bucket <= 64), 300 at 1.2x (<= 512)
    p = MIN_PROMPT_BUCKET_STEPS
    prompts = ([step_row(2, 0.0, None, model_s=0.12, prefill=(10,))] * p
               + [step_row(0, 0.0, None, model_s=3.6, prefill=(300,))] * p)
    assert slowdown_by_size(prompts + rows, Const(), True) == [
        [64, pytest.approx(1.0)], [128, pytest.approx(1.0)], [256, pytest.approx(1.2)], [512, pytest.approx(1.2)]]


def step_row(n_decode: int, outside_s: float, gap_cpu_s: float | None, model_s: float = 0.004,
             cpu_share: float = 1.0, gap_wait_s: float = 0.0, prefill: tuple[int, ...] = ()) -> dict:
    """A step log row: ``outside_s`` of the step's own work outside the model; since the step before,
    ``gap_cpu_s`` of the worker's work and ``gap_wait_s`` of waiting off CPU (None: the worker was idle)."""
    compute_s = model_s + outside_s
    gap_s = None if gap_cpu_s is None else gap_cpu_s + gap_wait_s
    return {"start": 0.0, "duration_s": compute_s, "compute_s": compute_s, "model_s": model_s,
            "cpu_s": compute_s * cpu_share, "gap_s": gap_s, "gap_cpu_s": gap_cpu_s,
            "sampled": n_decode + len(prefill), "prefill_tokens": list(prefill), "prefill_cached": [0] * len(prefill),
            "decode_ctx": [100] * n_decode}


def test_step_overhead_is_the_time_beyond_the_models_compute_fitted_per_step_and_per_sequence():
    # the worker's own work outside the model: 0.3 ms + 0.02 ms per sequence, half in the step (prepare, sample)
    # and half between steps (tokens out, step log); between steps it also waits off CPU 0.1 ms per sequence
    # while the frontend and the client stream the tokens
    rows = [step_row(n, 0.5 * (0.3e-3 + 0.02e-3 * n), 0.5 * (0.3e-3 + 0.02e-3 * n), gap_wait_s=0.1e-3 * n)
            for n in (1, 2, 4, 8, 16) * 3]
    rows.append(step_row(1, 0.0, None, model_s=0.05))  # idle before: no gap; its model time is no overhead
    over = step_overhead(rows)
    assert over["iteration_s"] == pytest.approx(0.3e-3) and over["per_seq_s"] == pytest.approx(0.12e-3)
    assert over["cpu_iteration_s"] == pytest.approx(0.3e-3) and over["cpu_per_seq_s"] == pytest.approx(0.02e-3)
    assert over["wait_per_seq_s"] == pytest.approx(0.1e-3) and over["steps"] == 15 and over["max_seqs"] == 16
    flat = step_overhead([step_row(2, 0.1e-3, 0.2e-3), step_row(2, 0.3e-3, 0.2e-3)])
    assert flat["iteration_s"] == pytest.approx(0.4e-3) and flat["per_seq_s"] == 0.0  # one batch size: no slope
    assert step_overhead([step_row(1, 0.1e-3, None)] * 5) is None


def test_step_overhead_counts_model_compute_slower_than_the_simulated_slowdown():
    # half a core during the step: its model's 4 ms of CPU took 8 ms; at the simulation's slowdown 1.5 (6 ms),
    # the other 2 ms are the step's beyond the model; at 2.0 none are
    rows = [step_row(1, 0.0, 0.0, model_s=0.008, cpu_share=0.5)] * 3
    assert step_overhead(rows, scale=1.5)["iteration_s"] == pytest.approx(0.002)
    assert step_overhead(rows, scale=2.0)["iteration_s"] == pytest.approx(0.0, abs=1e-12)


def test_compute_slowdown_is_the_median_wall_over_cpu_time_of_the_steps_and_never_below_one():
    shares = (0.5, 0.8, 0.8, 1.0, 0.1)  # the last one preempted for long: one step, not the replay's share
    assert compute_slowdown([step_row(1, 0.0, None, 0.004, cpu_share=c) for c in shares]) == pytest.approx(1.25)
    assert compute_slowdown([step_row(1, 0.0, None, cpu_share=1.01)]) == 1.0  # clock granularity, not a faster core
    assert compute_slowdown([{**step_row(1, 0.0, None), "cpu_s": 0.0}]) is None


def test_model_slowdown_is_the_median_live_forward_over_the_profiles_prediction():
    # Const predicts 0.01 s per token: forwards of 1.2x, 1.3x and 1.5x (a preempted one) its prediction
    rows = [step_row(n, 0.002, None, model_s=0.01 * n * x) for n, x in ((1, 1.2), (4, 1.3), (2, 1.5))]
    assert model_slowdown(rows, Const()) == pytest.approx(1.3)
    assert model_slowdown([step_row(1, 0.0, None, model_s=0.009)], Const()) == pytest.approx(0.9)  # may be < 1
    assert model_slowdown([{**step_row(1, 0.0, None), "model_s": 0.0}], Const()) is None


def test_the_rehearsals_are_the_workload_right_after_the_replayed_slice_at_the_same_rate(tmp_path):
    from planner.validate import ValidateOptions, _slice

    w = Workload(make_requests(np.arange(100) * 1.0, np.arange(100) + 10, np.full(100, 5)), source="t")
    opts = ValidateOptions(out_dir=tmp_path, duration_s=10.0, rehearsal_s=5.0, repeats=2)
    parts, replayed = rehearsal_slices(w, 2.0, opts), _slice(w, 2.0, 10.0)
    # at 2 req/s: 20 requests in 10 s, then the next 10 in 5 s before the first replay, the 10 after before the second
    assert len(replayed) == 20 and [len(r) for r in parts] == [10, 10]
    assert parts[0].requests["isl"].tolist() == list(range(30, 40)) and parts[0].requests["arrival_s"].iloc[0] == 0.0
    assert parts[1].requests["isl"].tolist() == list(range(40, 50))
    assert len(rehearsal_slices(w, 2.0, replace(opts, repeats=9))) == 8  # as many as the workload holds (50 s)
    assert rehearsal_slices(w, 2.0, replace(opts, rehearsal_s=0.0)) == []
    assert rehearsal_slices(w, 2.0, replace(opts, paced=True)) == []  # a paced step holds its pace
    assert rehearsal_slices(w, 2.0, replace(opts, duration_s=60.0)) == []  # nothing left after the slice


def test_scaled_cost_model_adds_the_measured_overhead_per_step_and_per_sampling_sequence():
    s = ScaledCostModel(Const(), 2.0, overheads(iteration_s=0.001, per_seq_s=0.0002, ttft_s=0.5))
    assert s.iteration_s(Batch.of(decode_ctx=[5, 6, 7])) == pytest.approx(2 * 0.03 + 0.001 + 3 * 0.0002)
    chunked = Batch.of(prefill=[(100, 0), (50, 0)], decode_ctx=[5])
    chunked.prefill_last_chunks = 1  # one prompt finishes and samples; the other's chunk does not
    assert s.iteration_s(chunked) == pytest.approx(2 * 1.51 + 0.001 + 2 * 0.0002)
    assert s.iteration_s(Batch()) == 0.0
    assert s.decode_steps_s(4, 40, 3) == pytest.approx([2 * 0.04 + 0.001 + 4 * 0.0002] * 3)
    assert ScaledCostModel(Const(), 2.0, overheads(ttft_s=0.5)).iteration_s(Batch.of(decode_ctx=[5])) == 0.02


def test_the_rate_rule_counts_the_step_overhead_and_returns_a_rate_it_simulated():
    from planner.validate import _slice, carryable_rate
    from simulator import simulate
    from simulator.deployment import parse_deployment

    dep = parse_deployment(AGG)
    rng = np.random.default_rng(0)
    w = Workload(make_requests(np.sort(rng.uniform(0, 200, 400)), rng.integers(20, 200, 400), 20))
    rates = {}
    for over_s in (0.0, 0.01):  # 0.1 ms a token; 10 ms a step more
        cms = {"workers": ScaledCostModel(Const(), 0.01, overheads(iteration_s=over_s))}
        rate, util = carryable_rate(w, dep, cms, 0.5, 60.0, lambda s: None)
        assert util == pytest.approx(max(simulate(dep, _slice(w, rate, 60.0), cost_models=cms).utilization.values()))
        assert util == pytest.approx(0.5, abs=0.05)
        rates[over_s] = rate
    assert rates[0.01] < 0.8 * rates[0.0]  # steps that cost more than the profile: the machine carries less


def test_request_overhead_is_client_ttft_minus_the_ttft_inside_the_workers(tmp_path):
    from runtime.replay_client import Replay

    agg = {"agg": {"queued": 100.0, "first_token": 100.30}}
    disagg = {"prefill": {"queued": 200.0, "first_token": 200.1}, "decode": {"admitted": 200.5},
              "transfer": {"send_start": 200.15, "received": 200.40}}  # the user's first token leaves at 200.40
    assert worker_ttft_s(agg) == pytest.approx(0.30) and worker_ttft_s(disagg) == pytest.approx(0.40)
    log = tmp_path / "requests.jsonl"
    recs = [{"request_id": "b0-0", "outcome": "ok", "attempts": [agg]},
            {"request_id": "b0-1", "outcome": "ok", "attempts": [disagg]},
            {"request_id": "b0-2", "outcome": "ok", "attempts": [agg, agg]}]  # retried: not a clean sample
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    client = pd.DataFrame({"request_id": [0, 1, 2], "sent_s": [1.0, 2.0, 3.0], "first_token_s": [1.32, 2.44, 9.0],
                           "outcome": ["ok"] * 3})
    # 20 ms and 40 ms outside the workers: the median
    assert request_overhead_s({"b0": Replay(client, {}, 0.0)}, log) == pytest.approx(0.03)


def test_the_simulation_adds_the_measured_overhead_to_every_ttft():
    from simulator import simulate
    from simulator.deployment import parse_deployment

    dep = parse_deployment(AGG)
    w = Workload(make_requests(np.arange(5) * 10.0, 64, 8))  # far apart: no queueing
    ttft = {}
    for overhead_s in (0.0, 0.025):
        cm = ScaledCostModel(Const(), 2.0, overheads(ttft_s=overhead_s))
        ttft[overhead_s] = simulate(dep, w, cost_models={"workers": cm}).requests["ttft_s"].to_numpy()
    assert ttft[0.025] - ttft[0.0] == pytest.approx([0.025] * 5)


def test_paced_engine_steps_follow_the_cost_models_timeline():
    import torch

    from profiler.models import CATALOG
    from runtime.engine import Engine
    from runtime.model import build_model
    from runtime.scheduler import SchedulerConfig
    from runtime.sequence import Sequence
    pace_s = 0.05
    engine = Engine(build_model(CATALOG["tiny"], seed=0), SchedulerConfig(), 64, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: on a busy 2-core box more threads are slower, not faster
    try:
        engine.add(Sequence("warm-up", list(range(20)), 20, 3))  # first calls pay one-off costs: unpaced
        while engine.has_work:
            engine.step()
        engine.pace_s = lambda b: pace_s
        engine.add(Sequence("a", list(range(20)), 20, 8))
        t0 = time.perf_counter()
        durations = [engine.step().duration_s for _ in range(8)]  # 1 prefill + 7 decode steps, back to back
        total = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert not engine.has_work
    assert min(durations) >= 0.75 * pace_s  # a step makes up at most a quarter of its pace for a late wake-up
    assert total == pytest.approx(8 * pace_s, rel=0.25)  # (the compute is far below the pace on any machine)


def test_engine_logs_the_time_between_steps_while_work_waits_and_not_across_idle_spells():
    import torch

    from profiler.models import CATALOG
    from runtime.engine import Engine
    from runtime.model import build_model
    from runtime.scheduler import SchedulerConfig
    from runtime.sequence import Sequence
    engine = Engine(build_model(CATALOG["tiny"], seed=0), SchedulerConfig(), 64, 16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine.add(Sequence("a", list(range(20)), 20, 3))
        first = engine.step()
        time.sleep(0.02)  # the worker's own time between steps (tokens out, step log) while "a" still decodes
        second = engine.step()
        third = engine.step()  # "a" is done: the engine idles
        time.sleep(0.02)
        engine.add(Sequence("b", list(range(20)), 20, 2))
        after_idle = engine.step()
    finally:
        torch.set_num_threads(threads)
    assert first.gap_s is None and after_idle.gap_s is None  # waiting for work is not overhead
    assert 0.02 <= second.gap_s < 0.1 and second.gap_cpu_s < 0.01  # asleep: wall time, little CPU
    assert 0 <= third.gap_s < 0.01 and len(second.tokens) == 1


def test_paced_engine_makes_up_a_stall_from_the_slack_of_the_steps_after_it():
    import torch

    from profiler.models import CATALOG
    from runtime.engine import Engine
    from runtime.model import build_model
    from runtime.scheduler import SchedulerConfig
    from runtime.sequence import Sequence
    pace_s, stall_s, steps = 0.04, 0.25, 24
    engine = Engine(build_model(CATALOG["tiny"], seed=0), SchedulerConfig(), 64, 16)
    model, calls = engine.model, []

    def stalling(*args):  # the CPU taken away for a while in the third step, as another process does
        calls.append(1)
        if len(calls) == 3:
            time.sleep(stall_s)
        return model(*args)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine.model, engine.pace_s = stalling, lambda b: pace_s
        engine.add(Sequence("a", list(range(20)), 20, steps))
        t0 = time.perf_counter()
        durations = [engine.step().duration_s for _ in range(steps)]
        total = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert durations[2] >= stall_s and min(durations) >= 0.75 * pace_s
    # the stall's 0.21 s behind the timeline is made up a quarter pace a step over the next 21 steps: the run
    # ends where the cost model says, not 0.2 s late (the debt used to be dropped after one step)
    assert total == pytest.approx(steps * pace_s, abs=0.05)


@pytest.mark.parametrize("dep, message", [
    ({**AGG, "workers": {"replicas": 1, "tp": 2}}, "tp=2"),
    ({**AGG, "dtype": "bf16"}, "fp32"),
    ({**AGG, "router": "kv_aware"}, "kv_aware"),
])
def test_deployments_the_runtime_cannot_run_are_one_line_errors(tmp_path, capsys, dep, message):
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump(dep))
    code = run_app(app, ["validate", "--deployment", str(path), "--isl", "64", "--osl", "8", "--rate", "1",
                         "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_workload_is_required(tmp_path, capsys):
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump(AGG))
    assert run_app(app, ["validate", "--deployment", str(path)]) == 2
    assert "--trace" in capsys.readouterr().err


def test_validates_simulation_carries_the_overhead_in_the_simulators_own_term(tmp_path, tiny_profile):
    from planner.validate import ValidateOptions, cost_models
    from profiler.paced import paced_cost_model
    from profiler.roofline import request_terms
    from simulator.deployment import parse_deployment

    base = paced_cost_model(str(tiny_profile), "tiny", "fp32")
    b = Batch.of(prefill=[(64, 0)], decode_ctx=[100, 200])
    for paced in (False, True):
        opts = ValidateOptions(out_dir=tmp_path, paced=paced, pace_scale=3.0, ttft_overhead_s=0.02,
                               iteration_overhead_s=0.0004, per_seq_overhead_s=0.00003, compute_slowdown=1.25)
        cms = cost_models(parse_deployment(DISAGG), tiny_profile, opts)
        assert [request_terms(c)[0] for c in cms.values()] == [0.02, 0.02]
        if paced:  # the pace alone: the paced runtime's steps follow the cost model's timeline, gaps included
            assert cms["decode"].iteration_s(b) == pytest.approx(3.0 * base.iteration_s(b))
        else:  # raw: the measured compute slowdown and the runtime's own time per step and per sampling sequence
            assert cms["decode"].iteration_s(b) == pytest.approx(1.25 * base.iteration_s(b) + 0.0004 + 3 * 0.00003)


def test_raw_simulation_takes_each_pools_measured_slowdown_and_the_kv_handoff(tmp_path, tiny_profile):
    from planner.validate import ValidateOptions, cost_models, sim_deployment
    from profiler.paced import paced_cost_model
    from simulator.deployment import parse_deployment

    dep = parse_deployment(DISAGG)
    base = paced_cost_model(str(tiny_profile), "tiny", "fp32")
    b = Batch.of(prefill=[(64, 0)])
    opts = ValidateOptions(out_dir=tmp_path, ttft_overhead_s=0.0, iteration_overhead_s=0.0, per_seq_overhead_s=0.0,
                           compute_slowdown=1.1, pool_slowdown={"prefill": [[64, 1.3], [128, 1.2]]},
                           pool_decode_slowdown={"decode": [[1, 1.4]]})
    cms = cost_models(dep, tiny_profile, opts)
    assert cms["prefill"].iteration_s(b) == pytest.approx(1.3 * base.iteration_s(b))
    b100 = Batch.of(prefill=[(100, 0)])
    assert cms["prefill"].iteration_s(b100) == pytest.approx(1.2 * base.iteration_s(b100))
    assert cms["decode"].iteration_s(b) == pytest.approx(1.1 * base.iteration_s(b))  # not measured: the overall
    one = Batch.of(decode_ctx=[100])
    assert cms["decode"].iteration_s(one) == pytest.approx(1.4 * base.iteration_s(one))
    plain, handed = sim_deployment(dep, tiny_profile), sim_deployment(dep, tiny_profile, 0.002)
    assert handed.kv_link.latency_s == pytest.approx(plain.kv_link.latency_s + 0.002)
    assert handed.kv_link.bandwidth_bytes_s == plain.kv_link.bandwidth_bytes_s


def test_raw_runs_with_a_spread_are_simulated_once_per_live_repeat_each_drawing_its_own(tmp_path, tiny_profile):
    from planner.validate import ValidateOptions, simulate_run
    from simulator.deployment import parse_deployment

    dep = parse_deployment(AGG)
    w = Workload(make_requests(list(np.arange(30) * 0.05), 200, 20), source="t")
    spread = {"workers": {"prompt_steps": [0.5, 1.0, 1.5], "decode_steps": [0.8, 1.2]}}
    opts = ValidateOptions(out_dir=tmp_path, repeats=3, ttft_overhead_s=0.0, iteration_overhead_s=0.0,
                           per_seq_overhead_s=0.0, compute_slowdown=1.0, pool_spread=spread)
    sims = simulate_run(dep, w, tiny_profile, opts)
    ttfts = [tuple(s.requests["ttft_s"]) for s in sims]
    assert len(sims) == 3 and len(set(ttfts)) == 3  # each repeat draws its own steps
    assert [tuple(s.requests["ttft_s"]) for s in simulate_run(dep, w, tiny_profile, opts)] == ttfts  # seeded
    m = compare([stats(100.0, 10.0)], [s.summary() for s in sims], paced=False)["ttft_ms"]["p50"]
    assert m["sim"] == pytest.approx(np.median(m["sim_repeats"])) and len(m["sim_repeats"]) == 3
    plain = simulate_run(dep, w, tiny_profile, replace(opts, pool_spread={}))  # no spread: one simulation
    assert len(plain) == 1 and "sim_repeats" not in compare([stats(100.0, 10.0)], [plain[0].summary()],
                                                             paced=False)["ttft_ms"]["p50"]
    assert len(simulate_run(dep, w, tiny_profile, replace(opts, paced=True, pace_scale=2.0))) == 1


def test_the_error_split_simulates_again_on_the_replays_own_costs(tmp_path, tiny_profile):
    from types import SimpleNamespace

    from planner.validate import ValidateOptions, replay_cost_check
    from profiler.paced import paced_cost_model
    from simulator.deployment import parse_deployment

    dep = parse_deployment(AGG)
    base = paced_cost_model(str(tiny_profile), "tiny", "fp32")
    one = base.iteration_s(Batch.of(decode_ctx=[100]))
    # the replay's decode steps of one sequence ran 2x the profile; the rehearsals had measured 1x
    rows = [{**step_row(1, 0.0, None, model_s=2.0 * one), "start": 10.0 + 0.1 * i} for i in range(40)]
    rows += [{**step_row(1, 0.0, None, model_s=one), "start": 1.0 + 0.1 * i} for i in range(40)]  # a rehearsal's
    (tmp_path / "steps-agg-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = ValidateOptions(out_dir=tmp_path, ttft_overhead_s=0.005, iteration_overhead_s=0.0, per_seq_overhead_s=0.0,
                           compute_slowdown=1.0, pool_decode_slowdown={"workers": [[1, 1.0]]})
    w = Workload(make_requests([0.0, 5.0], 32, 40), source="t")
    replay = SimpleNamespace(requests=pd.DataFrame(columns=["request_id", "outcome", "first_token_s", "sent_s"]))
    live = [stats(20.0, 4.0)]
    out = replay_cost_check(dep, w, [replay], [(10.0, 15.0)], tmp_path, tiny_profile, opts, live, base)
    assert out["costs"]["pool_decode_slowdown"] == {"workers": [[1, pytest.approx(2.0)]]}  # the replay's steps only
    assert out["costs"]["ttft_overhead_ms"] == pytest.approx(5.0)  # not in the replay's log: as it was
    tpot = out["metrics"]["tpot_ms"]["p50"]
    assert tpot["rel_error"] == pytest.approx((tpot["sim"] - 4.0) / 4.0)
    # one request at a time: every decode step holds one sequence, at the replay's 2x the profile
    assert tpot["sim"] == pytest.approx(2.0 * one * 1e3, rel=0.05)
    assert set(out["metrics"]) == {"ttft_ms", "tpot_ms"} and "within_target" in tpot


def test_the_reports_error_table_adds_the_error_on_the_replays_own_costs_for_raw_runs():
    from reports.validate import error_rows

    metrics = compare([stats(100.0, 10.0)], [stats(110.0, 9.0)], paced=False)
    own = compare([stats(100.0, 10.0)], [stats(104.0, 10.5)], paced=False)
    raw = error_rows({"metrics": metrics, "sim_on_replay_costs": {"metrics": own}})
    ttft50 = next(r for r in raw if r["metric"] == "TTFT" and r["percentile"] == "p50")
    assert ttft50["error"] == pytest.approx(10.0) and ttft50["own_costs_error"] == pytest.approx(4.0)
    paced = error_rows({"metrics": metrics, "sim_on_replay_costs": None})
    assert all(r["own_costs_error"] is None for r in paced)


def test_busy_share_is_the_part_of_each_step_the_other_workers_computed():
    from planner.validate import busy_share

    def span(start, dur):
        return {"start": start, "duration_s": dur}

    others = [span(0.0, 1.0), span(0.5, 1.0), span(3.0, 1.0)]  # busy over [0, 1.5) and [3, 4)
    steps = [span(1.0, 1.0), span(2.0, 1.0), span(3.5, 0.25), span(5.0, 0.0)]
    assert busy_share(steps, others) == pytest.approx([0.5, 0.0, 1.0, 0.0])


def test_co_activity_splits_each_sizes_slowdown_by_whether_the_other_workers_computed():
    from planner.validate import co_activity

    # Const predicts 0.01 s per token: one-sequence decode steps alone at 1.0x, beside the other worker's steps 1.5x
    alone = [{**step_row(1, 0.0, None, model_s=0.010), "start": 100.0 + i} for i in range(30)]
    beside = [{**step_row(1, 0.0, None, model_s=0.015), "start": 200.0 + i} for i in range(30)]
    others = [{"start": 200.0 + i - 0.001, "duration_s": 0.02} for i in range(30)]
    out = co_activity(alone + beside, others, Const())
    d = out["decode_steps"]
    assert d["steps_idle"] == 30 and d["steps_busy"] == 30 and "prompt_steps" not in out
    # over the size's median (the simulation's figure, 1.25x here): below it alone, above it beside the other
    assert d["others_idle"] == pytest.approx(1.0 / 1.25) and d["others_busy"] == pytest.approx(1.5 / 1.25)
    assert co_activity(alone, [], Const()) is None  # one worker: nothing beside it


def test_kv_handoff_is_the_median_time_from_the_last_prefill_step_to_sending(tmp_path):
    from planner.validate import kv_handoff_s, pool_of

    def rec(rid, done, sent, outcome="ok"):
        return json.dumps({"request_id": rid, "outcome": outcome, "attempts": [
            {"prefill": {"first_token": done}, "transfer": {"send_start": sent}}]})

    log = tmp_path / "requests.jsonl"
    log.write_text("\n".join([rec("burst0-0", 1.0, 1.001), rec("burst0-1", 2.0, 2.003), rec("burst0-2", 3.0, 3.002),
                              rec("warmup0-0", 4.0, 4.5), rec("burst0-3", 5.0, 5.9, "failed")]) + "\n")
    assert kv_handoff_s(log, "burst") == pytest.approx(0.002)
    assert kv_handoff_s(tmp_path / "none.jsonl", "burst") is None
    assert [pool_of(w) for w in ("agg-0", "prefill-1", "decode-12")] == ["workers", "prefill", "decode"]


def test_the_runtimes_cost_model_has_the_runtimes_measured_iteration_overhead(tiny_profile):
    from profiler.paced import paced_cost_model

    cm = paced_cost_model(str(tiny_profile), "tiny", "fp32")
    # not vllm's overhead fitted on H100 serving results (ms), which a calibration refit changes
    assert cm.overhead_s == cm.measured_overhead_s > 0


# ---- end to end on the live runtime --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory) -> Path:
    """A coarse profile of the tiny model on this machine (seconds): the grid the short runs stay inside."""
    from profiler.measure import Grid, profile_model
    from profiler.models import CATALOG

    grid = Grid(tokens=(1, 4, 16, 64, 256, 1024), prefill_batch=(1, 2), prefill_len=(16, 64, 256),
                decode_batch=(1, 4, 16), decode_ctx=(16, 64, 256), kv_bytes=(1 << 16, 1 << 20), repeats=5,
                budget_s=0.02)
    return profile_model(CATALOG["tiny"], grid=grid).save(tmp_path_factory.mktemp("profile"))


def run_validate(tmp_path: Path, dep: dict, profile: Path, *extra: str) -> dict:
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump(dep))
    out = tmp_path / "out"
    code = run_app(app, ["validate", "--deployment", str(path), "--isl", "96", "--osl", "12", "--duration", "6",
                         "--profile", str(profile), "--out", str(out), *extra])
    assert code == 0
    doc = json.loads((out / "validate.json").read_text())
    assert set(doc["metrics"]) == {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}
    for metric in doc["metrics"].values():
        assert set(metric) == {"p50", "p90", "p99"}
        for cell in metric.values():
            assert cell["live"] > 0 and cell["sim"] > 0 and np.isfinite(cell["rel_error"])
            assert cell["rel_error"] == pytest.approx((cell["sim"] - cell["live"]) / cell["live"])
    assert doc["live_failed"] == [0] * doc["repeats"]
    assert np.isfinite(doc["per_request"]["ttft_live_minus_sim_ms"]["p50"])
    assert 0 < doc["ttft_overhead_ms"] < 200  # measured in the burst before the replay, given to the simulation
    assert (out / "validate.html").read_text().count("plotly") > 3
    rows = (out / "requests.csv").read_text().splitlines()
    assert len(rows) == 1 + doc["workload"]["requests"] * doc["repeats"] and doc["workload"]["requests"] >= 5
    return doc


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_agg_raw_end_to_end(tmp_path, tiny_profile):
    # the rate rule picks the rate; rehearsals of the 6 s after the slice, then the 6 s after those, one before each
    # replay, measure the costs under its load
    doc = run_validate(tmp_path, AGG, tiny_profile, "--repeats", "2", "--rehearsal", "6")
    assert doc["mode"] == "raw" and len(doc["metrics"]["ttft_ms"]["p50"]["live_repeats"]) == 2
    assert doc["measured_slowdown"]["steps"] > 10 and doc["workload"]["rate_rule"]
    # what a live step costs beyond the profile, measured in the rehearsal and given to the simulation
    assert doc["costs_measured_in"] == "rehearsal" and doc["rehearsal"]["requests"] >= 10
    assert doc["rehearsal"]["parts"] == 2
    log = [json.loads(x) for x in (tmp_path / "out" / "live" / "requests.jsonl").read_text().splitlines()]
    order = [r["request_id"].split("-")[0] for r in sorted(log, key=lambda r: r["arrival_s"])]
    firsts = [p for i, p in enumerate(order) if i == 0 or order[i - 1] != p]
    assert firsts[-4:] == ["rehearsal0", "r0", "rehearsal1", "r1"]
    costs = doc["raw_step_costs"]
    assert 0 < costs["iteration_overhead_ms"] < 20 and costs["per_seq_overhead_ms"] >= 0
    assert 0.3 < costs["compute_slowdown"] < 10  # the live forward over the profile, on a shared CPU
    assert all(s["own_overhead_ms"] > 0 for s in doc["utilization"]["live"][0].values())  # the replay's, beside it
    assert all(s["slowdown_by_size"]["decode_steps"][0][1] > 0 for s in doc["utilization"]["live"][0].values())
    # the medians within 25 %, or twice what the live repeats themselves spread (a shared CPU): the rehearsal's
    # measured costs carry the live slowdown into the simulation
    for m in ("ttft_ms", "tpot_ms"):
        cell = doc["metrics"][m]["p50"]
        assert abs(cell["rel_error"]) <= max(0.25, 2 * cell["repeat_spread"]), (m, cell)
    # the error split: the same simulation on the replays' own costs, beside the rehearsals'
    check = doc["sim_on_replay_costs"]
    assert check["costs"]["pool_decode_slowdown"]["workers"] != costs["pool_decode_slowdown"]["workers"]
    for m in ("ttft_ms", "tpot_ms"):
        cell = check["metrics"][m]["p50"]
        assert cell["rel_error"] == pytest.approx((cell["sim"] - doc["metrics"][m]["p50"]["live"])
                                                  / doc["metrics"][m]["p50"]["live"])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_disagg_paced_end_to_end(tmp_path, tiny_profile):
    # a pace far above the real compute even on a crowded 2-core box, so that only the dynamics differ
    doc = run_validate(tmp_path, DISAGG, tiny_profile, "--paced", "--pace-scale", "20", "--rate", "1.5")
    assert doc["mode"] == "paced" and doc["pace_scale"] == 20 and doc["measured_slowdown"]["ttft_overhead_s"] > 0
    assert doc["simulated_kv_link"]["bandwidth_gb_s"] > 0  # the profile's measured copy between processes
    assert doc["sim_on_replay_costs"] is None  # raw mode's error split: the paced steps follow the profile
    for m in ("ttft_ms", "tpot_ms"):  # a loose bound for a short run
        assert abs(doc["metrics"][m]["p50"]["rel_error"]) < 0.25


def test_the_error_split_is_one_line_for_raw_runs_and_none_when_paced():
    from planner.validate import error_split_text

    own = compare([stats(100.0, 10.0)], [stats(104.0, 12.0)], paced=False)
    line = error_split_text({"sim_on_replay_costs": {"metrics": own}})
    assert "TTFT p50 +4.0%" in line and "TPOT p50 +20.0%" in line and "(2/4 within target)" in line
    assert error_split_text({"sim_on_replay_costs": None}) is None


def test_the_report_tables_how_workers_ran_beside_each_other():
    from reports.validate import co_activity_rows

    c = {"others_idle": 0.9, "others_busy": 1.1, "steps_idle": 50, "steps_busy": 60}
    doc = {"utilization": {"live": [{"prefill-0": {"co_activity": {"prompt_steps": c}}, "decode-0": {}}]}}
    assert co_activity_rows(doc) == [{"repeat": 1, "worker": "prefill-0", "steps": "prompt", "idle": 0.9,
                                      "busy": 1.1, "n_idle": 50, "n_busy": 60}]
    assert co_activity_rows({"utilization": {"live": [{"agg-0": {"co_activity": None}}]}}) == []
