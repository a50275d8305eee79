"""One question, one answer: the same inputs and seed give byte-identical JSON from `simulate`, `check` and
`plan`, in one process, across processes (with different hash seeds) and with `check --jobs`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from planner.cli import app, run_app
from traces.samples import sample_path

ROOT = Path(__file__).resolve().parents[1]
DISAGG = """model: llama-3.1-8b
gpu: h100-sxm
prefill: {replicas: 2, tp: 1, max_batch_tokens: 4096}
decode: {replicas: 2, tp: 1, max_seqs: 64}
kv_link: {bandwidth_gb_s: 25, latency_us: 10}
router: least_loaded
"""
AGG = "model: llama-3.1-8b\ngpu: h100-sxm\nworkers: {replicas: 3, max_seqs: 32}\nrouter: round_robin\n"
FAULTY = DISAGG + """faults:
  - prefill[0] dies at 2s, back after 3s
  - kv transfers lost with p=0.1
  - kv transfers slowed 4x with p=0.2
retry: {policy: retry, max_retries: 2, backoff_s: 0.2, kv_timeout_s: 1}
"""


def pdsim_in_new_process(args: list[str], hash_seed: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter; a different PYTHONHASHSEED reorders every set and str-keyed hash."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run([sys.executable, "-c", "from planner.cli import main; main()", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("deployment, workload", [
    (DISAGG, ["--trace", str(sample_path("mooncake.jsonl"))]),
    (AGG, ["--rate", "30", "--isl", "1800", "--osl", "150", "--requests", "300"]),
    (AGG, ["--concurrency", "24", "--isl", "1500", "--osl", "120", "--requests", "200", "--warmup", "24"]),
    (FAULTY, ["--rate", "25", "--isl", "1200", "--osl", "120", "--requests", "200"]),
], ids=["disagg-trace", "agg-poisson", "agg-closed-loop", "disagg-faults"])
def test_simulate_json_is_byte_identical_in_process_and_across_processes(tmp_path, deployment, workload):
    dep = tmp_path / "dep.yaml"
    dep.write_text(deployment)
    args = ["simulate", "--deployment", str(dep), *workload, "--ttft", "300", "--tpot", "30", "--seed", "7"]
    outs = [tmp_path / f"{name}.json" for name in ("a", "b", "c")]
    assert run_app(app, [*args, "--json", str(outs[0])]) == 0
    assert run_app(app, [*args, "--json", str(outs[1])]) == 0
    proc = pdsim_in_new_process([*args, "--json", str(outs[2])], hash_seed="12345")
    assert proc.returncode == 0, proc.stderr
    first = outs[0].read_bytes()
    summary = json.loads(first)
    assert summary["completed"] > 0
    if deployment is FAULTY:  # the faults did something, the same thing each time
        assert summary["outcomes"]["retried_ok"] > 0, summary["outcomes"]
    assert outs[1].read_bytes() == first and outs[2].read_bytes() == first
    # and the seed matters where there is randomness: another seed, other arrivals
    if "--rate" in workload:
        assert run_app(app, [*args[:-1], "8", "--json", str(tmp_path / "d.json")]) == 0
        assert (tmp_path / "d.json").read_bytes() != first


CHECK = """name: {name}
seed: {seed}
deployment: {{model: llama-3.1-8b, gpu: h100-sxm, workers: {{replicas: 2, max_seqs: 64}}, router: least_loaded}}
workload: {{requests: 150, isl: "uniform:100,2500", osl: 100, rate: {rate}}}
slo: {{ttft_ms: 400, tpot_ms: 40}}
"""

CHECK_SUMMARIES = """
import json, sys
from planner.check import run_checks
print(json.dumps([r.summary for r in run_checks(sys.argv[1:], jobs=2)], sort_keys=True))
"""


def test_check_summaries_are_byte_identical_serial_with_jobs_and_across_processes(tmp_path):
    paths = []
    for i, rate in enumerate((10, 25, 40)):
        paths.append(tmp_path / f"c{i}.check.yaml")
        paths[-1].write_text(CHECK.format(name=f"c{i}", seed=i, rate=rate))
    from planner.check import run_checks

    def dump(results):
        assert all(r.status != "error" for r in results), [r.reasons for r in results]
        return json.dumps([r.summary for r in results], sort_keys=True)

    serial = dump(run_checks(paths, jobs=1))
    assert dump(run_checks(paths, jobs=1)) == serial
    assert dump(run_checks(paths, jobs=3)) == serial
    proc = subprocess.run([sys.executable, "-c", CHECK_SUMMARIES, *map(str, paths)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONHASHSEED": "777"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == serial
    # the CLI's own outputs agree too: --jobs changes nothing in the markdown report
    md = [tmp_path / "serial.md", tmp_path / "jobs.md"]
    assert run_app(app, ["check", *map(str, paths), "--markdown", str(md[0])]) in (0, 1)
    assert run_app(app, ["check", *map(str, paths), "--jobs", "2", "--markdown", str(md[1])]) in (0, 1)
    assert md[0].read_bytes() == md[1].read_bytes()


PLAN = ["plan", "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "400", "--tpot", "25",
        "--gpus", "2", "--trials", "2", "--seed", "5", "--quiet"]


@pytest.mark.slow
def test_plan_json_is_byte_identical_in_process_and_across_processes(tmp_path):
    """plan.json is the answer; how the run went (wall times, worker pids) is run.json beside it."""
    a, b, c, d = tmp_path / "a", tmp_path / "b", tmp_path / "c", tmp_path / "d"
    assert run_app(app, [*PLAN, "--out", str(a), "--jobs", "1"]) in (0, 3)
    assert run_app(app, [*PLAN, "--out", str(b), "--jobs", "1"]) in (0, 3)
    proc = pdsim_in_new_process([*PLAN, "--out", str(c), "--jobs", "1"], hash_seed="4242")
    assert proc.returncode in (0, 3), proc.stderr
    assert run_app(app, [*PLAN, "--out", str(d), "--jobs", "2"]) in (0, 3)  # trials simulated side by side
    ja = (a / "plan.json").read_bytes()
    assert (b / "plan.json").read_bytes() == ja and (c / "plan.json").read_bytes() == ja
    assert (d / "plan.json").read_bytes() == ja
    assert len({u["worker_pid"] for u in json.loads((d / "run.json").read_text())["units"].values()}) == 2
    assert (a / "deployment.yaml").read_bytes() == (c / "deployment.yaml").read_bytes()
    plan = json.loads(ja)
    assert plan["evaluated"], "the plan simulated nothing"
    assert not re.search(rb'"(wall_s|sim_wall_s|worker_pid)"', ja)
    run = json.loads((a / "run.json").read_text())
    assert run["wall_s"] > 0 and set(run["units"]) == {r["key"] for r in plan["evaluated"]}
    assert {u["worker_pid"] for u in run["units"].values()} == {os.getpid()}
    assert all(u["sim_wall_s"] > 0 for u in run["units"].values())
