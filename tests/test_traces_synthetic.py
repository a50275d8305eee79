"""Synthetic workloads, length distributions and transforms: specifications of what they generate."""

import numpy as np
import pytest

from profiler.errors import InputError
from traces import load_trace
from traces.arrivals import arrival_times
from traces.info import burstiness, trace_info
from traces.lengths import LengthDist, parse_lengths
from traces.samples import sample_path
from traces.synthetic import synthetic_workload
from traces.transforms import head, rescale, time_window


def gaps(w):
    return np.diff(w.requests["arrival_s"].to_numpy())


def test_poisson_rate_and_cv_match_target():
    w = synthetic_workload(requests=20000, isl=100, osl=10, rate=10.0, seed=0)
    assert w.requests["arrival_s"].iloc[0] == 0.0 and w.format == "synthetic"
    assert w.rate == pytest.approx(10.0, rel=0.03)
    assert burstiness(w.requests["arrival_s"].to_numpy()) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_burstiness_matches_target_cv(cv):
    w = synthetic_workload(requests=50000, isl=100, osl=10, rate=5.0, arrival="gamma", cv=cv, seed=1)
    assert trace_info(w)["burstiness"] == pytest.approx(cv, rel=0.1)
    assert w.rate == pytest.approx(5.0, rel=0.05)


def test_constant_spacing_is_exact():
    w = synthetic_workload(requests=1000, isl=100, osl=10, rate=8.0, arrival="constant")
    np.testing.assert_allclose(gaps(w), 0.125, rtol=1e-12)
    assert trace_info(w)["burstiness"] == pytest.approx(0.0, abs=1e-9)


def test_closed_loop_sets_concurrency_and_no_arrivals():
    w = synthetic_workload(requests=64, isl=1000, osl=100, concurrency=8, warmup_requests=16)
    assert w.closed_loop and w.concurrency == 8 and w.warmup_requests == 16 and len(w) == 64
    assert w.requests["arrival_s"].isna().all() and (w.requests["isl"] == 1000).all()
    info = trace_info(w)
    assert info["concurrency"] == 8 and np.isnan(info["rate"])


def test_seed_reproduces_and_lengths_do_not_depend_on_rate():
    kw = dict(requests=500, isl="lognormal:1000,0.7", osl="uniform:10,300")
    a, b = synthetic_workload(rate=2.0, seed=5, **kw), synthetic_workload(rate=2.0, seed=5, **kw)
    assert a.requests.equals(b.requests)
    assert not a.requests.equals(synthetic_workload(rate=2.0, seed=6, **kw).requests)
    faster = synthetic_workload(rate=20.0, seed=5, **kw)  # a rate sweep replays the same requests
    assert faster.requests["isl"].equals(a.requests["isl"]) and faster.requests["osl"].equals(a.requests["osl"])
    closed = synthetic_workload(concurrency=4, seed=5, **kw)
    assert closed.requests["isl"].equals(a.requests["isl"])


def test_length_distributions():
    rng = np.random.default_rng(0)
    assert (parse_lengths("1000").sample(10, rng) == 1000).all() and parse_lengths(1000).kind == "fixed"
    x = parse_lengths("normal:1000,200").sample(50000, rng)
    assert x.mean() == pytest.approx(1000, rel=0.01) and x.std() == pytest.approx(200, rel=0.03)
    x = parse_lengths("uniform:100,2000").sample(50000, rng)
    assert x.min() == 100 and x.max() == 2000 and x.dtype == np.int64
    x = parse_lengths("lognormal:1000,0.5").sample(200000, rng)  # MEAN is the mean length in tokens
    assert x.mean() == pytest.approx(1000, rel=0.02) and np.std(np.log(x)) == pytest.approx(0.5, rel=0.03)
    assert parse_lengths("normal:1,100").sample(1000, rng).min() == 1  # clipped to >= 1
    assert str(parse_lengths("normal:1000,200")) == "normal:1000,200" and str(parse_lengths("7")) == "7"


@pytest.mark.parametrize("spec,message", [
    ("gauss:1,2", "unknown length distribution 'gauss'"), ("normal:1000", "normal takes 2 number(s)"),
    ("abc", "is not N, normal:MEAN,STD"), ("0", "must be >= 1 token"), ("uniform:50,10", "LO <= HI"),
    ("lognormal:100,-1", "spread must be >= 0"),
])
def test_bad_length_specs_say_what_is_accepted(spec, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_lengths(spec)


def test_lengths_from_a_file_keep_prompt_and_output_paired():
    path = sample_path("lengths.csv")
    rows = set(map(tuple, load_trace(path, rate=1.0).requests[["isl", "osl"]].to_numpy().tolist()))
    w = synthetic_workload(requests=2000, isl=str(path), osl=path, rate=3.0)
    assert set(map(tuple, w.requests[["isl", "osl"]].to_numpy().tolist())) <= rows
    assert len(set(w.requests["isl"])) > 100  # resampled, not a constant
    mixed = synthetic_workload(requests=100, isl=path, osl=50, rate=3.0)
    assert set(mixed.requests["isl"]) <= {r[0] for r in rows} and (mixed.requests["osl"] == 50).all()
    given = synthetic_workload(requests=10, isl=LengthDist("uniform", (5, 6)), osl=LengthDist("fixed", (3,)), rate=1.0)
    assert set(given.requests["isl"]) <= {5, 6} and (given.requests["osl"] == 3).all()


@pytest.mark.parametrize("kwargs,message", [
    (dict(), "exactly one of rate"), (dict(rate=1.0, concurrency=2), "exactly one of rate"),
    (dict(rate=-1.0), "rate must be a positive"), (dict(concurrency=0), "concurrency must be"),
    (dict(rate=1.0, arrival="weibull"), "unknown arrival process 'weibull'"),
    (dict(rate=1.0, cv=2.0), "cv=2.0 needs gamma arrivals"), (dict(rate=1.0, warmup_requests=10), "warmup_requests"),
    (dict(rate=1.0, isl="/no/such/file.csv"), "no such file"),
])
def test_synthetic_rejects_bad_input(kwargs, message):
    with pytest.raises(InputError, match=message):
        synthetic_workload(requests=10, **{"isl": 100, "osl": 10, **kwargs})


def test_arrival_times_edge_cases():
    assert len(arrival_times(0, 1.0)) == 0 and arrival_times(1, 1.0).tolist() == [0.0]


# --- transforms ---------------------------------------------------------------------------------------------


@pytest.fixture
def evenly():
    return synthetic_workload(requests=100, isl="uniform:1,1000", osl=10, rate=1.0, arrival="constant")  # 0..99 s


def test_time_window_keeps_half_open_interval_shifted_to_zero(evenly):
    w = time_window(evenly, 10, 20)
    assert len(w) == 10 and w.requests["arrival_s"].tolist() == [float(i) for i in range(10)]
    assert w.requests["isl"].tolist() == evenly.requests["isl"].iloc[10:20].tolist()
    assert w.requests["request_id"].tolist() == list(range(10))
    with pytest.raises(InputError, match=r"no requests in \[500, 600\)"):
        time_window(evenly, 500, 600)


def test_rescale_by_speedup_or_to_a_rate(evenly):
    assert rescale(evenly, speedup=2.0).requests["arrival_s"].iloc[-1] == pytest.approx(49.5)
    w = rescale(evenly, rate=4.0)
    assert w.rate == pytest.approx(4.0) and w.requests["isl"].equals(evenly.requests["isl"])
    with pytest.raises(InputError, match="exactly one"):
        rescale(evenly)


def test_head_and_closed_loop_guards(evenly):
    assert head(evenly, 5).requests["isl"].tolist() == evenly.requests["isl"].iloc[:5].tolist()
    assert len(head(evenly, 1000)) == 100
    closed = synthetic_workload(requests=10, isl=10, osl=10, concurrency=2)
    assert len(head(closed, 3)) == 3 and head(closed, 3).closed_loop
    with pytest.raises(InputError, match="closed-loop workload has none"):
        time_window(closed, 0, 1)


def test_load_trace_rate_rescales_a_timed_trace():
    w = load_trace(sample_path("vidur.csv"), rate=10.0)
    assert w.rate == pytest.approx(10.0) and len(w) == 200
