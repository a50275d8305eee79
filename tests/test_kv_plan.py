"""`pdsim plan --router kv_aware --kv-tiers ...`: the recommendation carries the router, its tuned weights and
the tiers; the reasons say which weights won; the report shows the prefix cache over time."""

from __future__ import annotations

import json

import yaml

from planner.cli import app, run_app
from planner.plan import PlanRequest
from planner.router_weights import GRID
from traces.samples import sample_path


def test_plan_with_kv_aware_routing_tunes_the_router_weights(tmp_path, capsys):
    code = run_app(app, ["plan", "--model", "llama-3.1-8b", "--dtype", "fp8", "--ttft", "5000", "--tpot", "100",
                         "--gpus", "4", "--topology", "agg", "--objective", "min-gpus", "--trials", "4", "--quiet",
                         "--trace", str(sample_path("mooncake.jsonl")), "--router", "kv_aware",
                         "--kv-tiers", "host=64", "--out", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 0, out.err  # targets any deployment meets: the weights are tuned on a recommendation
    dep = yaml.safe_load((tmp_path / "deployment.yaml").read_text())
    assert dep["router"] == "kv_aware" and dep["kv_tiers"] == {"host": {"capacity_gb": 64.0}}
    assert set(dep["router_weights"]) == {"overlap", "load"}
    reasons = json.loads((tmp_path / "plan.json").read_text())["reasons"]
    line = next(r for r in reasons if r.startswith("kv_aware router weights"))
    assert f"overlap {dep['router_weights']['overlap']:g} : load {dep['router_weights']['load']:g}" in line
    assert f"best of {len(GRID)} tried" in line  # every ratio of the grid simulated, not only the default
    assert "Prefix cache and KV tiers over time" in (tmp_path / "report.html").read_text()


def test_default_router_keeps_the_study_names_of_before():
    req = PlanRequest(model="llama-3.1-8b", ttft_ms=300, tpot_ms=30, isl=1000, osl=100)
    assert "router" not in req.to_dict() and "kv_tiers" not in req.to_dict()
    kv = PlanRequest(model="llama-3.1-8b", ttft_ms=300, tpot_ms=30, isl=1000, osl=100, router="kv_aware")
    assert kv.study_name() != req.study_name()


def test_bad_router_or_tiers_are_one_line(tmp_path, capsys):
    base = ["plan", "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "400", "--tpot", "25",
            "--quiet", "--out", str(tmp_path)]
    for extra, message in ((["--router", "fastest"], "--router: must be one of"),
                           (["--kv-tiers", "ssd=100"], "--kv-tiers: expected TIER=GB"),
                           (["--kv-tiers", "host=lots"], "--kv-tiers: host: capacity must be a number")):
        assert run_app(app, base + extra) == 2
        assert message in capsys.readouterr().err
