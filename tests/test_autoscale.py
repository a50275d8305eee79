"""Autoscaling in the loop (simulator/autoscale.py) over a diurnal load (traces/diurnal.py), and GPU prices
(profiler/prices.py)."""

from __future__ import annotations

import numpy as np
import pytest

from profiler.errors import InputError
from profiler.prices import load_prices, usd_per_gpu_hour, usd_per_million_tokens
from simulator import SLO, simulate
from simulator.autoscale import attainment_over_time, forecast, parse_autoscale
from simulator.deployment import parse_deployment
from traces.diurnal import diurnal_workload
from traces.transforms import head

BASE = {"model": "llama-3.1-8b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg",
        "prefill": {"replicas": 1}, "decode": {"replicas": 1}, "router": "least_loaded"}
# the policies aim under the 500 ms TTFT SLO the runs are scored on: a reactive (load) policy that waits for the
# SLO itself to be missed scales too late to meet it
AUTO = {"ttft_ms": 300, "tpot_ms": 20, "interval_s": 20, "startup_s": 10, "window": 3}


@pytest.fixture(scope="module")
def day():  # its peak is more than one prefill and one decode replica hold (p90 TTFT 10 s static)
    return diurnal_workload(duration_s=300, mean_rate=30, isl=2000, osl=200, seed=3)


def test_forecasts_average_or_extend_the_line_and_never_go_negative():
    assert forecast([2.0, 4.0, 6.0], "rate") == pytest.approx(4.0)
    assert forecast([2.0, 4.0, 6.0], "trend") == pytest.approx(8.0)
    assert forecast([2.0, 4.0, 6.0], "trend", ahead=2.5) == pytest.approx(11.0)
    assert forecast([6.0, 3.0, 0.0], "trend") == 0.0
    assert forecast([], "trend") == 0.0


def test_a_diurnal_load_peaks_mid_period_and_is_reproducible(day):
    a = day.requests["arrival_s"].to_numpy()
    counts = np.histogram(a, bins=10, range=(0, 300))[0]
    assert counts[4:6].mean() > 2.5 * counts[[0, 9]].mean()  # peak/trough 4 (less a bin's averaging)
    assert len(a) == pytest.approx(30 * 300, rel=0.05)
    again = diurnal_workload(duration_s=300, mean_rate=30, isl=2000, osl=200, seed=3)
    assert again.requests.equals(day.requests)


# the forecast keeps up with the ramp; the reactive policy adds decode replicas after TPOT has risen (0.85 here)
@pytest.mark.parametrize("policy, attainment", [("trend", 0.9), ("load", 0.8)])
def test_the_autoscaler_follows_the_load_up_and_down_and_pays_for_less(day, policy, attainment):
    dep = parse_deployment({**BASE, "autoscale": {"policy": policy, **AUTO}})
    r = simulate(dep, day, slo=SLO(500, 20))
    ops = r.extra["ops"]
    acts = [a["action"] for a in ops["scaling"]]
    assert "add" in acts and "drain" in acts and "drained" in acts
    decisions = ops["autoscale"]["decisions"]
    most = max(d["replicas_prefill"] + d["replicas_decode"] for d in decisions)
    assert most >= 3 and decisions[-1]["replicas_prefill"] + decisions[-1]["replicas_decode"] < most
    assert (r.requests["outcome"] == "ok").all()  # a drain finishes what it holds
    assert ops["gpu_hours"] < most * r.end_s / 3600  # cheaper than holding the peak all day
    s = r.summary()
    assert s["cost"]["gpu_hours"] == pytest.approx(ops["gpu_hours"])
    assert s["slo_attainment"] >= attainment


def test_the_gpu_budget_caps_the_replicas(day):
    dep = parse_deployment({**BASE, "autoscale": {"policy": "trend", **AUTO, "gpu_budget": 3}})
    r = simulate(dep, day)
    assert max(d["replicas_prefill"] + d["replicas_decode"] for d in r.extra["ops"]["autoscale"]["decisions"]) <= 3


def test_attainment_over_time_buckets_by_arrival(day):
    first = head(day, 1500)
    r = simulate(parse_deployment(BASE), first)
    over = attainment_over_time(r.requests, 500, 20, 20)
    assert over["start_s"].tolist() == [0, 20, 40, 60, 80][:len(over)]
    assert over["requests"].sum() == len(first)
    assert ((over["attainment"] >= 0) & (over["attainment"] <= 1)).all()


def test_bad_autoscale_settings_name_the_field():
    with pytest.raises(InputError, match=r"autoscale: policy must be one of rate, trend, load"):
        parse_autoscale({"policy": "magic", "ttft_ms": 1, "tpot_ms": 1})
    with pytest.raises(InputError, match=r"needs tpot_ms"):
        parse_autoscale({"policy": "rate", "ttft_ms": 1})
    with pytest.raises(InputError, match=r"autoscale.interval_s: must be a positive number"):
        parse_autoscale({"policy": "rate", "ttft_ms": 1, "tpot_ms": 1, "interval_s": 0})


def test_prices_from_the_catalog_or_a_file_give_dollars_per_million_tokens(tmp_path):
    assert usd_per_gpu_hour("h200") == 3.5
    f = tmp_path / "p.yaml"
    f.write_text("H200: 2.0\nh100-sxm: 1.5\n")
    prices = load_prices(f)
    assert usd_per_gpu_hour("h200-sxm", prices) == 2.0 and usd_per_gpu_hour("a100", prices) == 1.8
    # 8 GPUs at $2/h making 10,000 tok/s: $16/h for 36M tokens
    assert usd_per_million_tokens(8, 2.0, 10_000) == pytest.approx(16 / 36)
    f.write_text("h200: -1\n")
    with pytest.raises(InputError, match="price must be"):
        load_prices(f)
    f.write_text("tpu-v9: 1\n")
    with pytest.raises(InputError, match="unknown GPU 'tpu-v9'"):
        load_prices(f)


def test_the_report_of_an_autoscaled_run_plots_its_scaling(day, tmp_path):
    from reports.requests import write_simulation_report

    dep = parse_deployment({**BASE, "autoscale": {"policy": "trend", **AUTO}})
    r = simulate(dep, head(day, 2500), slo=SLO(500, 20))
    html = write_simulation_report(r, "summary", tmp_path / "r.html").read_text()
    assert "Scaling over time" in html and "prefill replicas" in html and "SLO attainment (share)" in html
