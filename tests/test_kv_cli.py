"""`pdsim simulate --router kv_aware`: the prefix cache in the table and the JSON; bad overrides are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner.cli import app, run_app
from traces.samples import sample_path

DEPLOYMENT = """model: llama-3.1-8b
gpu: h200-sxm
dtype: fp8
topology: disagg
prefill: {replicas: 2, tp: 1}
decode: {replicas: 1, tp: 2}
router: round_robin
kv_tiers: {host: {capacity_gb: 64}}
"""


@pytest.fixture
def dep_file(tmp_path: Path) -> Path:
    p = tmp_path / "dep.yaml"
    p.write_text(DEPLOYMENT)
    return p


def simulate(capsys, *args: str) -> tuple[int, str, str]:
    code = run_app(app, ["simulate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_router_flag_overrides_the_file_and_the_json_has_the_hit_rate(capsys, dep_file, tmp_path):
    trace = str(sample_path("mooncake.jsonl"))  # its requests share hash blocks
    rates = {}
    for router in ("round_robin", "kv_aware"):
        js = tmp_path / f"{router}.json"
        code, out, err = simulate(capsys, "--deployment", str(dep_file), "--trace", trace, "--router", router,
                                  "--json", str(js))
        assert code == 0, err
        assert "prefix cache hit" in out and "host" in out
        s = json.loads(js.read_text())
        assert set(s["kv"]) >= {"prefill_tokens_saved", "stale_routes", "worker_hit_rate", "tiers"}
        rates[router] = s["prefix_hit_rate"]
    assert 0 < rates["round_robin"] < rates["kv_aware"]


@pytest.mark.parametrize("args, message", [
    (["--router", "kv_awre"], "--router: must be one of round_robin, least_loaded, kv_aware"),
    (["--kv-event-delay", "-2"], "--kv-event-delay: must be a number of seconds >= 0"),
])
def test_bad_overrides_are_one_line(capsys, dep_file, args, message):
    code, out, err = simulate(capsys, "--deployment", str(dep_file), "--rate", "5", "--isl", "100", "--osl", "10",
                              *args)
    assert code == 2 and err.strip().count("\n") == 0 and message in err


def test_a_bad_kv_section_in_the_file_is_one_line_naming_the_field(capsys, tmp_path):
    p = tmp_path / "dep.yaml"
    p.write_text(DEPLOYMENT.replace("capacity_gb: 64", "capacity_gb: -1"))
    code, out, err = simulate(capsys, "--deployment", str(p), "--rate", "5", "--isl", "100", "--osl", "10")
    assert code == 2 and f"{p}.kv_tiers.host.capacity_gb: must be >= 0" in err
