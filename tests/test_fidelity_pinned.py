"""Accuracy pinned: a fixed sample of the measured H100 rows (every engine, agg and disagg, dense and MoE) is
replayed, and its median and p90 error of TTFT and TPOT, overall, per engine and per mode, must stay within
MARGIN points of the figures stored beside the fit. A change to the cost model, the simulator or the fit that
moves them fails here; one meant to move them rewrites the figures (bench/fidelity.py --write-figures) in the
same commit, with that script's output in the message."""

from __future__ import annotations

import json

import pytest
from needs import SILICON

from planner.benchmark_rows import fidelity_sample, load_benchmark
from planner.replay import replay
from profiler.calibration import FIGURES_FILE

MARGIN = 2.0  # points of absolute percentage error
METRICS = ("ttft_median_ape", "ttft_p90_ape", "tpot_median_ape", "tpot_p90_ape")


@pytest.fixture(scope="module")
def replayed() -> dict:
    return replay(fidelity_sample(load_benchmark(SILICON)), jobs=2).summary


def groups(figures: dict) -> dict[str, dict]:
    return {"overall": figures["overall"], **{f"engine {k}": v for k, v in figures["per_engine"].items()},
            **{f"mode {k}": v for k, v in figures["per_mode"].items()}}


@pytest.mark.slow
def test_the_sample_replays_within_two_points_of_the_stored_figures(replayed):
    stored = groups(json.loads(FIGURES_FILE.read_text())["ci_sample"])
    now = groups(replayed)
    assert set(now) == set(stored) and now["overall"]["rows"] == stored["overall"]["rows"]
    moved = [f"{g} {m}: {now[g][m]:.1f} % (stored {stored[g][m]:.1f} %)" for g in stored for m in METRICS
             if abs(now[g][m] - stored[g][m]) > MARGIN]
    assert not moved, ("fidelity moved (if meant, run .venv/bin/python bench/fidelity.py --write-figures and commit "
                       "profiler/calibration/h100_fidelity.json with its output):\n" + "\n".join(moved))


def test_the_sample_covers_every_engine_and_mode():
    sample = fidelity_sample(load_benchmark(SILICON))
    assert set(map(tuple, sample[["backend", "mode"]].drop_duplicates().to_numpy())) == {
        (e, m) for e in ("sglang", "trtllm", "vllm") for m in ("agg", "disagg")}
    assert sample.equals(fidelity_sample(load_benchmark(SILICON)))  # the same rows every time
