"""The rough edges a newcomer meets first: `plan --help`, errors before any banner, a 'did you mean' for a
misspelt model, the published precision as the default dtype, and a reason for every failed request."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from needs import TRACES

from planner.cli import app, plan_app, run_app
from planner.plan import PlanRequest
from planner.terminal import header
from profiler.errors import InputError
from profiler.models import published_dtype, resolve_model

TARGETS = ["--ttft", "500", "--tpot", "50", "--quiet"]


def test_plan_help_names_one_command(capsys):
    assert run_app(plan_app, ["--help"], prog_name="plan") == 0
    out = capsys.readouterr().out
    assert "Usage: plan [OPTIONS]" in out and "plan plan" not in out
    console = subprocess.run([sys.executable, "-c", "import sys; from planner.cli import plan_main; "
                              "sys.argv = ['plan', '--help']; plan_main()"], capture_output=True, text=True)
    assert "Usage: plan [OPTIONS]" in console.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "llama3-70b", "--isl", "100", "--osl", "10"], "did you mean llama-3.1-70b?"),
    (["--model", "llama-3.1-8b", "--trace", "no-such-trace.csv"], "no-such-trace.csv"),
    (["--model", "llama-3.1-8b", "--isl", "100", "--osl", "10", "--gpu", "h1000"], "h1000"),
])
def test_a_bad_question_is_refused_before_any_banner(capsys, tmp_path, args, message):
    assert run_app(app, ["plan", *args, *TARGETS, "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("pdsim: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_says_what_is_accepted():
    with pytest.raises(InputError) as e:
        resolve_model("llama3-70b")
    msg = str(e.value)
    assert "did you mean llama-3.1-70b?" in msg and "Hugging Face id" in msg and "config.json" in msg
    with pytest.raises(InputError) as e:
        resolve_model("frobnicator-9000")
    assert "did you mean" not in str(e.value)
    assert resolve_model("meta-llama/Llama-3.1-70B-Instruct").name == "llama-3.1-70b"


@pytest.mark.parametrize("model, dtype", [
    ("deepseek-ai/DeepSeek-R1", "fp8"), ("openai/gpt-oss-120b", "fp4"), ("meta-llama/Llama-3.1-70B-Instruct", "bf16"),
    ("nvidia/Llama-3.1-8B-Instruct-FP8", "fp8"), ("nvidia/DeepSeek-R1-0528-NVFP4", "fp4"), ("Qwen/Qwen3-32B", "bf16"),
])
def test_the_default_dtype_is_the_published_checkpoints(model, dtype):
    assert published_dtype(model) == dtype
    req = PlanRequest(model=model, ttft_ms=500, tpot_ms=50, isl=100, osl=10)
    assert req.dtype == dtype
    assert header(req).splitlines()[0].startswith(f"plan: {model} ({dtype}, as published")
    other = "bf16" if dtype != "bf16" else "fp8"
    assert f"({other}; published in {dtype}" in header(PlanRequest(model=model, ttft_ms=500, tpot_ms=50, isl=100,
                                                                    osl=10, dtype=other))


def test_a_config_json_gives_its_quantisation(tmp_path):
    cfg = {"hidden_size": 1024, "num_attention_heads": 8, "num_hidden_layers": 2, "intermediate_size": 2048,
           "vocab_size": 1000, "torch_dtype": "bfloat16"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert published_dtype(str(tmp_path)) == "bf16"
    cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert published_dtype(str(tmp_path / "config.json")) == "fp8"


def test_deepseek_r1_plans_on_8_gpus_in_its_published_fp8(capsys, tmp_path):
    code = run_app(app, ["plan", "--model", "deepseek-ai/DeepSeek-R1", "--isl", "1000", "--osl", "200", *TARGETS,
                         "--trials", "1", "--topology", "agg", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[0].startswith("plan: deepseek-ai/DeepSeek-R1 (fp8, as published) on up to 8 x h200-sxm")
    assert json.loads((tmp_path / "plan.json").read_text())["recommendation"]["deployment"]["dtype"] == "fp8"


def test_every_failed_request_has_its_reason_counted_in_the_summary(capsys, tmp_path):
    dep = tmp_path / "dep.yaml"
    dep.write_text("model: qwen3-32b\ngpu: h200-sxm\ndtype: fp8\nworkers: {replicas: 4, tp: 2}\n")
    out_json = tmp_path / "s.json"
    assert run_app(app, ["simulate", "--deployment", str(dep), "--trace", str(TRACES / "conversation_trace.jsonl"),
                         "--requests", "300", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    s = json.loads(out_json.read_text())
    why = "isl + osl exceeds the model's max context (40960 tokens)"
    assert s["failed"] > 0 and s["fail_reasons"] == {why: s["failed"]}
    assert f"failed x{s['failed']}: {why}" in out
    ok = json.loads(out_json.read_text())
    assert ok["outcomes"]["failed"] == s["failed"]
