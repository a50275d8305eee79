"""Emitted deploy artefacts describe exactly the plan's deployment: replicas, GPUs per replica, roles."""

import json
import re

import pytest
import yaml

from planner import emit
from planner.calibrate import pool_cost_models
from planner.cli import app, run_app
from planner.replay import simulate_benchmark
from profiler.errors import InputError
from simulator.deployment import parse_deployment

DISAGG = parse_deployment({
    "model": "llama-3.1-70b", "gpu": "h200-sxm", "dtype": "fp8", "topology": "disagg", "router": "kv_aware",
    "prefill": {"replicas": 3, "tp": 2, "max_batch_tokens": 8192, "max_seqs": 64},
    "decode": {"replicas": 2, "tp": 4, "max_seqs": 128, "max_batch_tokens": 512},
})
AGG = parse_deployment({"model": "llama-3.1-8b", "gpu": "h100-sxm", "topology": "agg", "engine": "sglang",
                        "workers": {"replicas": 4, "tp": 1, "max_seqs": 96, "chunk_size": 2048}})


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _workers(manifest: dict) -> dict[str, dict]:
    return {k: v for k, v in manifest["spec"]["services"].items() if v["componentType"] == "worker"}


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("dep", [DISAGG, AGG], ids=["disagg", "agg"])
def test_dynamo_manifest_has_the_plans_replicas_gpus_and_roles(dep, engine):
    text = emit.dynamo_yaml(dep, "plan.yaml", engine=engine)
    m = yaml.safe_load(text)
    assert m["kind"] == "DynamoGraphDeployment" and m["apiVersion"] == "nvidia.com/v1alpha1"
    assert m["spec"]["services"]["Frontend"]["componentType"] == "frontend"
    workers = _workers(m)
    want = {"prefill": dep.prefill, "decode": dep.decode} if dep.topology == "disagg" else {None: dep.workers}
    assert {w.get("subComponentType") for w in workers.values()} == set(want)
    tp_flag = "--tensor-parallel-size" if engine == "vllm" else "--tp"
    gpus = 0
    for svc in workers.values():
        pool = want[svc.get("subComponentType")]
        args = svc["extraPodSpec"]["mainContainer"]["args"]
        assert svc["replicas"] == pool.replicas
        assert int(svc["resources"]["limits"]["gpu"]) == pool.tp == int(_arg(args, tp_flag))
        assert svc["extraPodSpec"]["mainContainer"]["command"] == ["python3", "-m", f"dynamo.{engine}"]
        gpus += svc["replicas"] * int(svc["resources"]["limits"]["gpu"])
        role = svc.get("subComponentType")
        if engine == "vllm":
            assert int(_arg(args, "--max-num-seqs")) == pool.max_seqs
            assert ("--is-prefill-worker" in args) == (role == "prefill")
            assert ("--is-decode-worker" in args) == (role == "decode")
        else:
            assert int(_arg(args, "--max-running-requests")) == pool.max_seqs
            assert args.count("--disaggregation-mode") == (role is not None)
            if role:
                assert _arg(args, "--disaggregation-mode") == role
    assert gpus == dep.gpus
    assert m["metadata"]["annotations"]["pdsim/plan-id"] == emit.plan_id(dep)


def test_every_emitted_file_states_the_plan_it_came_from(tmp_path):
    pts = emit.bench_points(DISAGG, 4000, 500, rate=2.0, predict=lambda p: (0.25, 0.02))
    paths = emit.emit(DISAGG, list(emit.TARGETS), tmp_path, "plans/big.yaml", points=pts)
    assert {p.name for p in paths} == {"deployment.yaml", "dynamo-vllm.yaml", "launch-vllm.sh",
                                       "launch-sglang.sh", "bench-aiperf.sh"}
    for p in paths:
        text = p.read_text()
        assert f"plan {emit.plan_id(DISAGG)} (plans/big.yaml)" in text, p.name
        assert emit.plan_of(text) == DISAGG, p.name
    assert parse_deployment(yaml.safe_load((tmp_path / "deployment.yaml").read_text())) == DISAGG


def _launches(script: str, marker: str) -> list[tuple[str, list[str], str]]:
    """(role, CUDA_VISIBLE_DEVICES, command) of every engine launch in a script."""
    out = []
    for m in re.finditer(r"# (\w+) replica \d+: GPUs [\d,]+\n\s+CUDA_VISIBLE_DEVICES=([\d,]+) (.*)", script):
        if marker in m.group(3):
            out.append((m.group(1), m.group(2).split(","), m.group(3)))
    return out


@pytest.mark.parametrize("which", ["vllm", "sglang"])
def test_launch_scripts_start_one_engine_per_replica_on_its_own_gpus(which):
    script = (emit.vllm_script if which == "vllm" else emit.sglang_script)(DISAGG, "plan.yaml")
    launches = _launches(script, "vllm serve" if which == "vllm" else "sglang.launch_server")
    by_role = {r: [x for x in launches if x[0] == r] for r in ("prefill", "decode")}
    assert len(by_role["prefill"]) == 3 and len(by_role["decode"]) == 2
    tp_flag = "--tensor-parallel-size" if which == "vllm" else "--tp"
    for role, pool in (("prefill", DISAGG.prefill), ("decode", DISAGG.decode)):
        for _, gpus, cmd in by_role[role]:
            assert len(gpus) == pool.tp and f"{tp_flag} {pool.tp} " in cmd
    # no GPU is handed to two engines on the same node
    seen = set()
    for w in emit.placement(DISAGG):
        for g in w.gpus:
            assert (w.node, g) not in seen
            seen.add((w.node, g))
    assert len(seen) == DISAGG.gpus
    if which == "vllm":
        assert all("NixlConnector" in cmd for _, _, cmd in launches)
        assert "--prefiller-ports 8100 8101 8102" in script
    else:
        assert script.count("--prefill http://") == 3 and script.count("--decode http://") == 2
        assert "--pd-disaggregation" in script and "--policy cache_aware" in script


def test_agg_scripts_have_no_kv_transfer_and_keep_the_chunk_size():
    v = emit.vllm_script(AGG, "p")
    s = emit.sglang_script(AGG, "p")
    assert len(_launches(v, "vllm serve")) == len(_launches(s, "sglang.launch_server")) == 4
    assert "kv-transfer-config" not in v and "disaggregation" not in s
    assert "--long-prefill-token-threshold 2048" in v and "--chunked-prefill-size 2048" in s
    assert "--worker-urls" in s


def test_replicas_never_span_nodes_and_oversized_tp_is_refused():
    ws = emit.placement(DISAGG)  # 3x TP2 on node 0, then TP4 decode does not fit the 2 GPUs left
    assert [(w.role, w.node) for w in ws] == [("prefill", 0)] * 3 + [("decode", 1)] * 2
    wide = DISAGG.with_pool("decode", tp=16)
    with pytest.raises(InputError, match="TP=16 spans nodes"):
        emit.placement(wide)


def test_aiperf_commands_measure_what_was_predicted(tmp_path):
    pts = emit.bench_points(DISAGG, 4000, 500, rate=2.5, predict=lambda p: (0.1 * (p.concurrency or 1), 0.012))
    script = emit.aiperf_script(DISAGG, pts, "plan.yaml")
    cmds = [ln for ln in script.splitlines() if ln.startswith("aiperf profile")]
    assert len(cmds) == len(pts)
    levels = [int(re.search(r"--concurrency (\d+)", c).group(1)) for c in cmds if "--concurrency" in c]
    assert levels == emit.concurrency_sweep(DISAGG) and levels[0] == 1
    assert levels[-1] == DISAGG.decode.replicas * DISAGG.decode.max_seqs
    assert sum("--request-rate 2.5 " in c for c in cmds) == 1
    for c in cmds:
        assert "--streaming" in c and "--synthetic-input-tokens-mean 4000" in c and "--output-tokens-mean 500" in c
    # the forecast sits on the line above its command
    lines = script.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith("aiperf profile --") and "--concurrency 8 " in ln:
            assert lines[i - 1] == "# c8: predicted TTFT 800.0 ms, TPOT 12.0 ms"
    assert "pdsim calibrate --measured" in script


def test_cli_writes_the_simulators_forecast_of_each_aiperf_run(tmp_path, capsys):
    dep = parse_deployment({"model": "llama-3.1-8b", "gpu": "h100-sxm", "topology": "disagg",
                            "prefill": {"replicas": 1, "tp": 1}, "decode": {"replicas": 1, "tp": 1, "max_seqs": 8}})
    path = tmp_path / "dep.yaml"
    path.write_text(dep.to_yaml())
    assert run_app(app, ["emit", "--deployment", str(path), "--target", "aiperf,dynamo", "--isl", "512",
                         "--osl", "64", "--out", str(tmp_path / "out")]) == 0
    script = (tmp_path / "out" / "bench-aiperf.sh").read_text()
    assert "Predictions (mean TTFT / TPOT) by pdsim simulate" in script
    # c4 = 4 warm-up + 32 measured requests of 4 clients, exactly what its aiperf command sends
    assert "--concurrency 4 --request-count 32 --warmup-request-count 4 " in script
    # ... simulated as the replay of measured aiperf runs simulates one: its opening burst, then 7 rounds
    ttft, tpot = simulate_benchmark(dep, pool_cost_models(dep), 512, 64, 4, rounds=8)
    assert f"# c4: predicted TTFT {ttft * 1e3:.1f} ms, TPOT {tpot * 1e3:.1f} ms" in script
    burst, steady = (simulate_benchmark(dep, pool_cost_models(dep), 512, 64, 4, rounds=r) for r in (1, 10**9))
    assert burst[0] > steady[0] and ttft == pytest.approx(burst[0] / 8 + steady[0] * 7 / 8, rel=1e-6)
    assert run_app(app, ["emit", "--deployment", str(path), "--target", "aiperf", "--out", str(tmp_path)]) == 2
    assert "needs --isl and --osl" in capsys.readouterr().err


def test_unknown_target_and_engine_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="unknown emit target 'k8s'"):
        emit.emit(AGG, ["k8s"], tmp_path, "p")
    with pytest.raises(InputError, match="no launch arguments for engine 'trtllm'"):
        emit.dynamo_yaml(AGG, "p", engine="trtllm")


@pytest.mark.slow
def test_plan_emit_writes_the_recommendations_artefacts(tmp_path):
    out = tmp_path / "plan"
    code = run_app(app, ["plan", "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--ttft", "800",
                         "--tpot", "40", "--gpus", "2", "--trials", "3", "--quiet", "--out", str(out),
                         "--emit", "dynamo,aiperf"])
    assert code == 0
    rec = parse_deployment(yaml.safe_load((out / "deployment.yaml").read_text()))
    rate = json.loads((out / "plan.json").read_text())["recommendation"]["rate_rps"]
    manifest = (out / "deploy" / "dynamo-vllm.yaml").read_text()
    assert emit.plan_of(manifest) == rec and "pdsim plan, study pdsim-" in manifest
    workers = _workers(yaml.safe_load(manifest))
    assert sum(w["replicas"] * int(w["resources"]["limits"]["gpu"]) for w in workers.values()) == rec.gpus
    bench = (out / "deploy" / "bench-aiperf.sh").read_text()
    assert f"--request-rate {rate:g} " in bench and "--synthetic-input-tokens-mean 1000 " in bench
    assert "by pdsim simulate" in bench
