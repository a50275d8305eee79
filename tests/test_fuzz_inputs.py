"""Malformed user input, through the CLI: exit 2 and ONE stderr line naming the file, the place and the fault.

Explicit cases (parametrised, each id one distinct malformed input) cover every trace format, the deployment
YAML, check files and CLI flags; hypothesis then mutates valid files at random (truncation, a cell replaced by
junk, random bytes, random YAML values) and asserts the same contract: never a traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cli import app, run_app

# CI replays the same few dozen examples per property (derandomize); PDSIM_FUZZ_EXAMPLES=2000 explores afresh
FUZZ = settings(max_examples=int(os.environ.get("PDSIM_FUZZ_EXAMPLES", 25)), deadline=None,
                derandomize="PDSIM_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def cli(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = run_app(app, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, out: str, err: str, *parts: str) -> str:
    """Assert the CLI refused the input the way users should see it; return the line."""
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (code, out, err)
    assert lines[0].startswith("pdsim: error: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


# ---- traces: every format, every column, every kind of bad value -------------------------------------------
# format -> (header, row(t, isl, osl) -> fields, index of each role in the row); rows are lines 2, 3, 4
CSV = {
    "azure": ("TIMESTAMP,ContextTokens,GeneratedTokens",
              lambda t, i, o: [f"2023-11-16 18:17:{t:02d}.50", i, o], {"arrival": 0, "isl": 1, "osl": 2}),
    "burstgpt": ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
                 lambda t, i, o: [t, "ChatGPT", i, o, 7, "Conversation log"], {"arrival": 0, "isl": 2, "osl": 3}),
    "vidur": ("arrived_at,num_prefill_tokens,num_decode_tokens",
              lambda t, i, o: [f"{t}.25", i, o], {"arrival": 0, "isl": 1, "osl": 2}),
    "lengths": ("num_prefill_tokens,num_decode_tokens", lambda t, i, o: [i, o], {"isl": 0, "osl": 1}),
}
NAMES = {"azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
         "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
         "vidur": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
         "lengths": (None, "num_prefill_tokens", "num_decode_tokens")}
BAD_TOKENS = [("word", "abc", "'abc' is not a number"), ("negative", "-5", "is negative (-5)"),
              ("nan", "NaN", "is missing"), ("empty", "", "is missing"), ("inf", "inf", "is infinite"),
              ("huge", "1e30", "is 1e+30 tokens, more than 1,000,000,000"),
              ("fraction", "2.5", "is not a whole number"),
              ("hex", "0x10", "'0x10' is not a number"), ("bool", "True", "'True' is not a number")]
BAD_ARRIVAL = [("word", "abc", "'abc' is not a number"), ("empty", "", "is missing"), ("inf", "inf", "is infinite")]
BAD_AZURE_TIME = [("word", "yesterday", "'yesterday' is not a date-time"), ("empty", "", "is missing"),
                  ("month13", "2023-13-45 99:17:04", "'2023-13-45 99:17:04' is not a date-time"),
                  ("epoch", "1700000000", "'1700000000' is not a date-time")]


def csv_text(fmt: str, rows: list[list]) -> str:
    return CSV[fmt][0] + "\n" + "".join(",".join(str(x) for x in r) + "\n" for r in rows)


def valid_rows(fmt: str) -> list[list]:
    return [CSV[fmt][1](t, 100 * (t + 1), 10 + t) for t in range(3)]


def trace_cases():
    """(id, file bytes, place, fault): a bad value in each column of line 4, then whole-row and file faults."""
    for fmt, (_, _, roles) in CSV.items():
        for role, bad_values in (("isl", BAD_TOKENS), ("osl", BAD_TOKENS),
                                 ("arrival", BAD_AZURE_TIME if fmt == "azure" else BAD_ARRIVAL)):
            if role not in roles:
                continue
            for name, value, fault in bad_values:
                rows = valid_rows(fmt)
                rows[2][roles[role]] = value
                column = NAMES[fmt][("arrival", "isl", "osl").index(role)]
                yield f"{fmt}-{role}-{name}", csv_text(fmt, rows), "line 4", f"{column} {fault}"
        rows = valid_rows(fmt)
        cut = [",".join(str(x) for x in r) for r in rows]
        cut[2] = ",".join(str(x) for x in rows[2][: roles["isl"] + 1])  # a truncated line: osl and after gone
        yield f"{fmt}-truncated-line", CSV[fmt][0] + "\n" + "\n".join(cut) + "\n", "line 4", "is missing"
        rows = valid_rows(fmt)
        rows[1].append(99)
        yield f"{fmt}-extra-field", csv_text(fmt, rows), "line 3", "malformed CSV row"
        yield f"{fmt}-header-only", CSV[fmt][0] + "\n", None, "no requests: the file has a header but no rows"
        header = CSV[fmt][0].split(",")
        yield (f"{fmt}-missing-column", ",".join(header[:-1] if fmt != "burstgpt" else header[:3]) + "\n1,2\n", None,
               "cannot tell the trace format")
        yield f"{fmt}-all-zero-output", csv_text(fmt, [CSV[fmt][1](0, 5, 0)]), None, "no requests left after dropping"
    line = {"timestamp": 0, "input_length": 100, "output_length": 10}
    for key in line:
        bad_values = [("string", "abc", "'abc' is not a number"), ("null", None, "is missing"),
                      ("true", True, "is true/false"), ("list", [1], "[1] is not a number"),
                      ("object", {"a": 1}, "{'a': 1} is not a number")]
        if key != "timestamp":
            bad_values.append(("huge", 1e300, "is 1e+300 tokens, more than 1,000,000,000"))
        for name, value, fault in bad_values:
            bad = dict(line, **{key: value})
            yield f"mooncake-{key}-{name}", mooncake([line, line, bad]), "line 3", f"{key} {fault}"
        for name, value, fault in [("negative", -5, "is negative"), ("fraction", 2.5, "not a whole number")]:
            if key != "timestamp":
                yield f"mooncake-{key}-{name}", mooncake([line, dict(line, **{key: value})]), "line 2", fault
        yield f"mooncake-missing-{key}", mooncake([{k: v for k, v in line.items() if k != key}]), "line 1", key
    text = mooncake([line, line])
    yield "mooncake-truncated", text[: len(text) - 9], "line 2", "not valid JSON"
    yield "mooncake-not-object", mooncake([line]) + "[1, 2]\n", "line 2", "expected a JSON object"
    yield "mooncake-hash-ids-string", mooncake([dict(line, hash_ids="1,2")]), "line 1", "hash_ids is not a list"
    yield "mooncake-deep-nesting", mooncake([line]) + "[" * 100_000 + "\n", "line 2", "nested too deeply"
    yield "mooncake-trailing-garbage", mooncake([line]) + "}{\n", "line 2", "not valid JSON"
    vidur = CSV["vidur"][0] + "\n"
    yield "empty-file", "", None, "empty file"
    yield "blank-lines-only", "\n\n \n", None, "empty file"
    yield "nul-bytes", (vidur + "0,1,1\n").encode() + b"\x00\x01junk", "line 3", "binary data"
    yield "utf16", (vidur + "0,1,1\n").encode("utf-16"), "line 1", "binary data"
    yield "latin1", vidur.encode() + "0,1,1\n1,\xe9,1\n".encode("latin-1"), "line 3", "not UTF-8"
    yield "bom-only", b"\xef\xbb\xbf", None, "cannot tell the trace format"
    yield "random-binary", bytes(range(1, 256)) * 4, None, "not UTF-8"
    yield "gzip-junk", b"\x1f\x8bnot really gzip", None, "cannot read the file"
    body = (vidur + "".join(f"{t},{(t * 7919) % 100003 + 1},{t % 97 + 1}\n" for t in range(4000))).encode()
    yield "gzip-truncated", gzip.compress(body)[:3000], None, "cannot read the file"
    yield "semicolons", vidur.replace(",", ";") + "0;1;1\n", None, "cannot tell the trace format"
    yield "tabs", vidur.replace(",", "\t") + "0\t1\t1\n", None, "cannot tell the trace format"
    yield "unclosed-quote", vidur + '0,"1,1\n2,3,4\n', None, "malformed CSV row"
    yield "json-line-in-csv", vidur + "0,1,1\n" + '{"a": 1}\n', "line 3", "is not a number"
    yield "float-range-span", vidur + "1e308,1,1\n-1e308,1,1\n", None, "span more than a float"


def mooncake(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


TRACE_CASES = list(trace_cases())


@pytest.mark.parametrize("text, place, fault", [c[1:] for c in TRACE_CASES], ids=[c[0] for c in TRACE_CASES])
def test_malformed_trace_is_one_line_naming_file_place_and_fault(tmp_path, capsys, text, place, fault):
    path = tmp_path / "trace.data"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = one_line_error(*cli(capsys, "trace", "info", path, "--rate", "2"), str(path), fault)
    if place:
        assert f"{path}, {place}" in line or f"{path}: {place}" in line, line


def test_trace_paths_that_are_not_files(tmp_path, capsys):
    one_line_error(*cli(capsys, "trace", "info", tmp_path / "absent.csv"), "absent.csv", "no such file")
    one_line_error(*cli(capsys, "trace", "info", tmp_path), str(tmp_path), "not a file")


# valid edge cases: these must load, not be refused
@pytest.mark.parametrize("fmt", sorted(CSV))
def test_a_single_request_trace_loads_in_every_format(tmp_path, capsys, fmt):
    path = tmp_path / "one.csv"
    path.write_text(csv_text(fmt, [CSV[fmt][1](3, 1, 1)]))
    rate = ["--rate", "1"] if fmt == "lengths" else []  # a lengths file has no times; one timed request has no rate
    code, out, err = cli(capsys, "trace", "info", path, *rate, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["format"] == fmt and info["requests"] == 1 and info["isl"]["max"] == 1


def test_unsorted_and_duplicate_timestamps_are_sorted_not_refused(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text(csv_text("vidur", [[5, 10, 1], [1, 20, 2], [5, 30, 3], [1, 40, 4]]))
    code, out, _ = cli(capsys, "trace", "info", path, "--json")
    info = json.loads(out)
    assert code == 0 and info["requests"] == 4 and info["duration_s"] == 4.0


def test_zero_output_rows_are_dropped_and_counted(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text(mooncake([{"timestamp": 0, "input_length": 5, "output_length": 0},
                              {"timestamp": 9, "input_length": 5, "output_length": 1}]))
    code, out, _ = cli(capsys, "trace", "info", path, "--json")
    info = json.loads(out)
    assert code == 0 and (info["requests"], info["dropped"]) == (1, 1) and "0 output tokens" in info["drop_reason"]


# ---- hypothesis: random damage to valid files ------------------------------------------------------------------
def valid_file(fmt: str) -> str:
    if fmt == "mooncake":
        return mooncake([{"timestamp": 1000 * t, "input_length": 50 + t, "output_length": 5 + t} for t in range(6)])
    return csv_text(fmt, [CSV[fmt][1](t, 50 + t, 5 + t) for t in range(6)])


def refused_or_loaded(code: int, out: str, err: str, path) -> None:
    assert "Traceback" not in out + err
    if code != 0:
        one_line_error(code, out, err, str(path))


@FUZZ
@given(fmt=st.sampled_from([*CSV, "mooncake"]), cut=st.floats(0, 1))
def test_a_trace_cut_anywhere_loads_or_is_refused_in_one_line(tmp_path, capsys, fmt, cut):
    data = valid_file(fmt).encode()
    path = tmp_path / "cut.txt"
    path.write_bytes(data[: int(len(data) * cut)])
    refused_or_loaded(*cli(capsys, "trace", "info", path, "--rate", "1"), path)


CELL = st.text(alphabet=st.characters(exclude_characters=',\n\r"', exclude_categories=("Cs",)), max_size=12)


@FUZZ
@given(fmt=st.sampled_from(sorted(CSV)), row=st.integers(0, 5), column=st.integers(0, 5), junk=CELL)
def test_a_junk_cell_is_refused_at_its_line_or_loads(tmp_path, capsys, fmt, row, column, junk):
    rows = [CSV[fmt][1](t, 50 + t, 5 + t) for t in range(6)]
    column %= len(rows[0])
    rows[row][column] = junk
    path = tmp_path / "junk.csv"
    path.write_text(csv_text(fmt, rows))
    code, out, err = cli(capsys, "trace", "info", path, "--rate", "1")
    refused_or_loaded(code, out, err, path)
    if code and "line " in err and "no requests left" not in err:
        assert f"line {row + 2}" in err, err  # the fault is on the damaged line, never elsewhere


@FUZZ
@given(key=st.sampled_from(["timestamp", "input_length", "output_length"]),
       value=st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                          lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=3), v, max_size=3),
                          max_leaves=5))
def test_any_json_value_in_a_mooncake_field_loads_or_is_refused_at_its_line(tmp_path, capsys, key, value):
    lines = [{"timestamp": 1000 * t, "input_length": 50, "output_length": 5} for t in range(3)]
    lines[1][key] = value
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r, allow_nan=True) + "\n" for r in lines))
    code, out, err = cli(capsys, "trace", "info", path)
    refused_or_loaded(code, out, err, path)
    if code and "no requests left" not in err:
        assert "line 2" in err, err


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_never_crash_the_trace_loader(tmp_path, capsys, data):
    path = tmp_path / "random.bin"
    path.write_bytes(data)
    refused_or_loaded(*cli(capsys, "trace", "info", path, "--rate", "1"), path)


# ---- deployment YAML -------------------------------------------------------------------------------------------
AGG = "model: llama-3.1-8b\ngpu: h200-sxm\n"
DISAGG = AGG + "prefill: {replicas: 1}\ndecode: {replicas: 1}\n"
DEPLOYMENT_CASES = [
    ("empty", "", None, "must be a YAML mapping"),
    ("list", "- model\n- gpu\n", None, "must be a YAML mapping"),
    ("scalar", "llama-3.1-8b\n", None, "must be a YAML mapping"),
    ("no-model", "gpu: h200-sxm\n", None, "missing field 'model'"),
    ("unknown-key", AGG + "replica: 2\n", None, "unknown field 'replica'"),
    ("pool-not-mapping", AGG + "workers: 3\n", "workers", "must be a mapping"),
    ("pool-unknown-key", AGG + "workers: {replica: 2}\n", "workers", "unknown field 'replica'"),
    ("pool-nested-wrong", AGG + "workers: {replicas: {n: 1}}\n", "workers.replicas", "must be a number"),
    ("replicas-zero", AGG + "workers: {replicas: 0}\n", "workers.replicas", "must be positive"),
    ("replicas-negative", AGG + "workers: {replicas: -1}\n", "workers.replicas", "must be positive"),
    ("replicas-nan", AGG + "workers: {replicas: .nan}\n", "workers.replicas", "must be positive"),
    ("max-seqs-inf", AGG + "workers: {max_seqs: .inf}\n", "workers.max_seqs", "must be positive"),
    ("replicas-huge", AGG + "workers: {replicas: 99999999999999999999999999}\n", "workers.replicas", "at most"),
    ("replicas-fraction", AGG + "workers: {replicas: 1.5}\n", "workers.replicas", "whole number"),
    ("tp-word", AGG + "workers: {tp: two}\n", "workers.tp", "must be a number"),
    ("tp-bool", AGG + "workers: {tp: true}\n", "workers.tp", "must be a number"),
    ("batch-tokens-string-number", AGG + "workers: {max_batch_tokens: '8192'}\n", "workers.max_batch_tokens",
     "must be a number"),
    ("chunk-size-bool", AGG + "workers: {chunk_size: true}\n", "workers.chunk_size", "must be a number"),
    ("chunked-prefill-string", AGG + "workers: {chunked_prefill: 'yes'}\n", "workers.chunked_prefill",
     "true or false"),
    ("topology-unknown", AGG + "topology: mesh\n", "topology", "must be agg or disagg"),
    ("topology-number", AGG + "topology: 1\n", "topology", "must be agg or disagg"),
    ("agg-with-prefill", AGG + "topology: agg\nprefill: {}\n", None, "one 'workers:' pool"),
    ("disagg-with-workers", DISAGG + "workers: {}\n", None, "not 'workers:'"),
    ("disagg-no-decode", AGG + "topology: disagg\nprefill: {}\n", None, "missing field 'decode'"),
    ("kv-link-not-mapping", DISAGG + "kv_link: fast\n", "kv_link", "must be a mapping"),
    ("kv-link-unknown-key", DISAGG + "kv_link: {bw: 1}\n", "kv_link", "unknown field 'bw'"),
    ("kv-link-zero-bandwidth", DISAGG + "kv_link: {bandwidth_gb_s: 0}\n", "kv_link.bandwidth_gb_s", "positive"),
    ("kv-link-negative-latency", DISAGG + "kv_link: {latency_us: -1}\n", "kv_link.latency_us", ">= 0"),
    ("kv-link-placement", DISAGG + "kv_link: {placement: moon}\n", "kv_link.placement", "intra or inter"),
    ("router-unknown", AGG + "router: random\n", "router", "must be one of"),
    ("router-list", AGG + "router: [round_robin]\n", "router", "must be one of"),
    ("dtype-unknown", AGG + "dtype: int3\n", "dtype", "must be one of"),
    ("kv-dtype-list", AGG + "kv_dtype: [fp8]\n", "kv_dtype", "must be one of"),
    ("utilization-above-1", AGG + "gpu_memory_utilization: 1.5\n", "gpu_memory_utilization", "at most 1"),
    ("kv-block-fraction", AGG + "kv_block_tokens: 16.5\n", "kv_block_tokens", "whole number"),
    ("kv-event-delay-negative", AGG + "kv_event_delay_s: -2\n", "kv_event_delay_s", ">= 0"),
    ("model-list", "model: [1, 2]\n", "model", "must be a name"),
    ("model-empty", "model:\n", "model", "must be a name"),
    ("model-unknown", "model: gpt-17\n", "model", "unknown model 'gpt-17'"),
    ("gpu-unknown", "model: llama-3.1-8b\ngpu: tpu9\n", "gpu", "unknown GPU 'tpu9'"),
    ("gpu-number", "model: llama-3.1-8b\ngpu: 100\n", "gpu", "must be a name"),
    ("yaml-unclosed-bracket", "model: [llama\n", "line 2", "not valid YAML"),
    ("yaml-tab-indent", AGG + "\tworkers: {}\n", "line 3", "not valid YAML"),
    ("yaml-python-tag", "model: !!python/object/apply:os.system ['true']\n", "line 1", "not valid YAML"),
    ("yaml-anchor-bomb", "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nmodel: *b\n", None, "unknown field 'a'"),
    ("yaml-duplicate-key", AGG + "workers: {replicas: 1}\nworkers: {replicas: 4}\n", "line 4",
     'found duplicate key "workers" (first on line 3)'),
    ("yaml-duplicate-nested-key", AGG + "workers:\n  replicas: 1\n  tp: 1\n  replicas: 4\n", "line 6",
     'found duplicate key "replicas" (first on line 4)'),
    ("faults-not-list", DISAGG + "faults: 3\n", "faults", "must be a list"),
    ("faults-gibberish", DISAGG + "faults: ['prefill[0] explodes at 3s']\n", "faults[0]", "cannot read"),
    ("faults-no-such-replica", DISAGG + "faults: ['prefill[5] dies at 3s']\n", "faults", "prefill[5] dies, but"),
    ("faults-no-such-pool", AGG + "faults: ['decode[0] drains at 3s']\n", "faults", "decode[0] drains, but"),
    ("faults-scale-up-no-such-pool", DISAGG + "faults: ['workers adds 1 at 2s']\n", "faults",
     "no workers pool (it has prefill, decode)"),
    ("faults-prefill-migrates", DISAGG + "faults: ['prefill[0] drains at 2s, migrating']\n", "faults",
     "only decode replicas migrate"),
    ("faults-probability-2", DISAGG + "faults: ['kv transfers lost with p=2']\n", "faults[0]", "probability"),
    ("faults-mapping-unknown-key", DISAGG + "faults: [{worker: 'prefill[0]', dies_at_s: 3, when: now}]\n",
     "faults[0]", "unknown field 'when'"),
    ("faults-negative-time", DISAGG + "faults: [{worker: 'prefill[0]', dies_at_s: -3}]\n", "faults[0].dies_at_s",
     ">= 0"),
    ("faults-degrade-zero", DISAGG + "faults: [{link: 'prefill[0]', degrade_at_s: 1, for_s: 2, factor: 0}]\n",
     "faults[0].factor", "(0, 1]"),
    ("faults-not-string-or-mapping", DISAGG + "faults: [[1, 2]]\n", "faults[0]", "a sentence"),
    ("retry-policy-unknown", DISAGG + "retry: {policy: maybe}\n", "retry.policy", "retry or fail"),
    ("autoscale-policy-unknown", DISAGG + "autoscale: {policy: magic}\n", "autoscale", "policy must be one of"),
    ("autoscale-not-mapping", DISAGG + "autoscale: trend\n", "autoscale", "must be a mapping"),
    ("kv-tiers-not-mapping", AGG + "kv_tiers: 3\n", "kv_tiers", "must be a mapping"),
    ("prefix-cache-unknown-key", AGG + "prefix_cache: {x: 1}\n", "prefix_cache", "unknown field 'x'"),
    ("router-weights-list", AGG + "router_weights: [1]\n", "router_weights", "must be a mapping"),
    ("binary", b"\x00\x01\x02\xff\xfe", None, "cannot read"),
    ("latin1", "model: llam\xe9\n".encode("latin-1"), None, "cannot read"),
    ("utf16", AGG.encode("utf-16"), None, "cannot read"),
]


@pytest.mark.parametrize("text, field, fault", [c[1:] for c in DEPLOYMENT_CASES], ids=[c[0] for c in DEPLOYMENT_CASES])
def test_malformed_deployment_is_one_line_naming_file_field_and_fault(tmp_path, capsys, text, field, fault):
    path = tmp_path / "dep.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = one_line_error(*cli(capsys, "simulate", "--deployment", path, "--rate", "1", "--isl", "8", "--osl", "4",
                               "--requests", "2"), str(path), fault)
    if field:
        assert f"{path}.{field}:" in line or f"{path}: {field}:" in line, line


def test_deployment_path_that_is_a_folder_or_absent(tmp_path, capsys):
    for path, fault in ((tmp_path, "cannot read"), (tmp_path / "absent.yaml", "file not found")):
        one_line_error(*cli(capsys, "simulate", "--deployment", path, "--rate", "1", "--isl", "8", "--osl", "4"),
                       str(path), fault)


SCALARS = st.none() | st.booleans() | st.integers(-3, 10**30) | st.floats() | st.text(max_size=6)


@FUZZ
@given(pool=st.dictionaries(st.sampled_from(["replicas", "tp", "max_batch_tokens", "max_seqs", "chunk_size",
                                             "chunked_prefill", "extra"]), SCALARS, max_size=4),
       top=st.dictionaries(st.sampled_from(["router", "dtype", "kv_block_tokens", "gpu_memory_utilization",
                                            "kv_event_delay_s", "topology", "gpu"]), SCALARS, max_size=3))
def test_random_deployment_values_parse_or_are_refused_naming_the_file(tmp_path, capsys, pool, top):
    path = tmp_path / "dep.yaml"
    path.write_text(yaml.safe_dump({"model": "tiny", **top, "workers": pool}))
    code, out, err = cli(capsys, "emit", "--deployment", path, "--out", tmp_path / "out", "--target", "vllm")
    refused_or_loaded(code, out, err, path)


# ---- check files (pdsim check reports a bad file as an ERROR result naming file:line: field) ------------------
CHECK_OK = ("deployment: {model: llama-3.1-8b}\nworkload: {requests: 10, isl: 5, osl: 5, rate: 1}\n"
            "slo: {ttft_ms: 500, tpot_ms: 50}\n")
CHECK_CASES = [
    ("not-a-mapping", "- a\n- b\n", ":", "mapping"),
    ("no-deployment", "workload: {requests: 10, isl: 5, osl: 5, rate: 1}\nslo: {ttft_ms: 1}\n", ":", "deployment"),
    ("requests-zero", CHECK_OK.replace("requests: 10", "requests: 0"), ":2: workload.requests", ""),
    ("isl-word", CHECK_OK.replace("isl: 5", "isl: five"), ":2: workload.isl", ""),
    ("rate-nan", CHECK_OK.replace("rate: 1", "rate: .nan"), ":2: workload.rate", ""),
    ("rate-and-concurrency", CHECK_OK.replace("rate: 1", "rate: 1, concurrency: 2"), ":2: workload", "exactly one"),
    ("slo-negative", CHECK_OK.replace("ttft_ms: 500", "ttft_ms: -5"), ":3: slo.ttft_ms", ""),
    ("slo-list", CHECK_OK.replace("slo: {ttft_ms: 500, tpot_ms: 50}", "slo: [500, 50]"), ":3: slo", "mapping"),
    ("unknown-top-key", CHECK_OK + "slos: {}\n", ":", "unknown field 'slos'"),
    ("deployment-bad-pool", CHECK_OK.replace("{model: llama-3.1-8b}", "{model: llama-3.1-8b, workers: 4}"),
     ":1: deployment.workers", "mapping"),
    ("deployment-unknown-model", CHECK_OK.replace("llama-3.1-8b", "gpt-17"), ":1: deployment.model", "gpt-17"),
    ("seed-string", "seed: abc\n" + CHECK_OK, ":1: seed", ""),
    ("requests-inf", CHECK_OK.replace("requests: 10", "requests: .inf"), ":2: workload.requests", "must be a number"),
    ("requests-huge", CHECK_OK.replace("requests: 10", "requests: 100000000000000000000"), ":",
     "from 1 to 100,000,000"),
    ("rate-inf", CHECK_OK.replace("rate: 1", "rate: .inf"), ":2: workload.rate", "must be a number"),
    ("bad-yaml", "deployment: {model: llama-3.1-8b\n", ":", "YAML"),
    ("duplicate-key", "name: a\nname: b\n" + CHECK_OK, ":", 'line 2: not valid YAML (found duplicate key "name"'),
    ("binary", "\x00\x01\x02", ":", ""),
]


@pytest.mark.parametrize("text, field, fault", [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES])
def test_malformed_check_file_is_an_error_result_naming_file_line_and_field(tmp_path, capsys, text, field, fault):
    path = tmp_path / "bad.check.yaml"
    path.write_text(text)
    code, out, err = cli(capsys, "check", path)
    assert code == 2 and "Traceback" not in out + err, (out, err)
    where = [line.strip() for line in out.splitlines() if line.strip().startswith(str(path))]
    assert len(where) == 1 and where[0].startswith(f"{path}{field}") and fault in where[0], out


JUNK = st.sampled_from([None, True, "ten", [], {}, 2.5, -1, 0, float("nan"), float("inf"), "uniform:1,0", "x:y"])


@FUZZ
@given(workload=st.fixed_dictionaries(
    {"requests": st.integers(-3, 30) | JUNK, "isl": st.integers(-3, 3000) | JUNK | st.just("uniform:10,900"),
     "osl": st.integers(-3, 300) | JUNK | st.just("lognormal:50,0.5")},
    optional={"rate": st.floats(-1, 50) | JUNK, "concurrency": st.integers(-1, 8) | JUNK,
              "cv": st.floats(-1, 4) | JUNK, "arrival": st.sampled_from(["poisson", "gamma", "constant", "weird"]),
              "warmup_requests": st.integers(-2, 5) | JUNK}),
       slo=st.dictionaries(st.sampled_from(["ttft_ms", "tpot_ms", "percentile", "attainment"]),
                           st.floats(-5, 500) | JUNK | st.sampled_from([50, 90, 99]), max_size=4))
def test_any_check_file_values_pass_fail_or_error_naming_the_file(tmp_path, capsys, workload, slo):
    path = tmp_path / "fuzz.check.yaml"
    doc = {"deployment": {"model": "llama-3.1-8b", "workers": {"replicas": 1}}, "workload": workload, "slo": slo}
    path.write_text(yaml.safe_dump(doc))
    code, out, err = cli(capsys, "check", path)
    assert code in (0, 1, 2) and "Traceback" not in out + err, (code, out, err)
    if code == 2:
        assert f"{path}:" in out, out


# ---- CLI flags with bad values -----------------------------------------------------------------------------------
def flag_cases():
    trace = ["trace", "info", "{vidur}"]
    sim = ["simulate", "--deployment", "{dep}", "--requests", "3"]
    synth = [*sim, "--rate", "1", "--isl", "8", "--osl", "4"]
    plan = ["plan", "--model", "llama-3.1-8b", "--ttft", "300", "--tpot", "30", "--isl", "500", "--osl", "50",
            "--gpus", "2", "--trials", "1", "--quiet", "--out", "{tmp}/plan"]
    return [
        ("trace-rate-word", [*trace, "--rate", "abc"], "'--rate'"),
        ("trace-rate-negative", [*trace, "--rate", "-1"], "rate must be > 0"),
        ("trace-rate-zero", [*trace, "--rate", "0"], "rate must be > 0"),
        ("trace-rate-nan", [*trace, "--rate", "nan"], "rate must be > 0"),
        ("trace-format-unknown", [*trace, "--format", "parquet"], "unknown trace format 'parquet'"),
        ("trace-format-mooncake-on-csv", [*trace, "--format", "mooncake"], "expects JSON lines"),
        ("trace-seed-word", [*trace, "--seed", "x"], "'--seed'"),
        ("trace-unknown-option", [*trace, "--bogus"], "No such option: --bogus"),
        ("trace-missing-file-arg", ["trace", "info"], "Missing argument"),
        ("unknown-command", ["simulat"], "No such command"),
        ("sim-rate-negative", [*sim, "--rate", "-1", "--isl", "8", "--osl", "4"], "--rate must be > 0"),
        ("sim-isl-zero", [*sim, "--rate", "1", "--isl", "0", "--osl", "4"], ">= 1"),
        ("sim-osl-negative", [*sim, "--rate", "1", "--isl", "8", "--osl", "-4"], ">= 1"),
        ("sim-isl-float", [*sim, "--rate", "1", "--isl", "1e30", "--osl", "4"], "'--isl'"),
        ("sim-requests-zero", [*synth[:-6], "--requests", "0", *synth[-6:]], "requests must be a whole number"),
        ("sim-requests-huge", [*synth[:-6], "--requests", "100000000000", *synth[-6:]], "from 1 to 100,000,000"),
        ("sim-concurrency-zero", [*sim, "--concurrency", "0", "--isl", "8", "--osl", "4"], ">= 1"),
        ("sim-two-workloads", [*synth, "--concurrency", "2"], "exactly one of"),
        ("sim-no-workload", [*sim], "exactly one of"),
        ("sim-no-lengths", [*sim, "--rate", "1"], "need --isl and --osl"),
        ("sim-ttft-only", [*synth, "--ttft", "100"], "both --ttft and --tpot"),
        ("sim-ttft-negative", [*synth, "--ttft", "-1", "--tpot", "5"], "must be > 0"),
        ("sim-percentile-150", [*synth, "--ttft", "100", "--tpot", "5", "--percentile", "150"], "(0, 100]"),
        ("sim-warmup-negative", [*synth, "--warmup", "-1"], "warmup"),
        ("sim-seed-negative", [*synth, "--seed", "-1"], "'--seed'"),
        ("sim-json-missing-folder", [*synth, "--json", "{tmp}/no/such/dir/s.json"], "No such file or directory"),
        ("sim-trace-absent", [*sim, "--trace", "{tmp}/absent.csv"], "no such file"),
        ("sim-system-prompts-negative", [*synth, "--system-prompts", "-1"], ">= 0"),
        ("sim-reuse-above-1", [*synth, "--sessions", "3", "--reuse", "1.5"], "in [0, 1]"),
        ("sim-autoscale-unknown", [*synth, "--autoscale", "magic"], "--autoscale"),
        ("sim-fault-gibberish", [*synth, "--fault", "everything breaks"], "--fault"),
        ("sim-fault-no-such-replica", [*synth, "--fault", "workers[3] dies at 1s"],
         "--fault: workers[3] dies, but the deployment has workers[0..0]"),
        ("sim-fault-no-such-pool", [*synth, "--fault", "prefill adds 1 at 1s"],
         "--fault: the deployment has no prefill"),
        ("sim-fault-link-of-worker", [*synth, "--fault", "link workers[0] degrades to 25% at 1s for 1s"],
         "--fault: KV links belong to prefill replicas"),
        ("sim-prices-absent", [*synth, "--prices", "{tmp}/absent.yaml"], "price file not found"),
        ("sim-trace-requests-word", [*synth, "--trace-requests", "abc"], "--trace-requests"),
        ("sim-trace-requests-out-of-range", [*synth, "--trace-requests", "999"], "request ids run from 0"),
        ("sim-kv-event-delay-nan", [*synth, "--kv-event-delay", "nan"], "--kv-event-delay"),
        ("sim-router-unknown", [*synth, "--router", "random"], "--router"),
        ("sim-trace-format-unknown", [*sim, "--trace", "{vidur}", "--trace-format", "nope"], "unknown trace format"),
        ("check-jobs-zero", ["check", "--jobs", "0", "{tmp}"], "'--jobs'"),
        ("check-no-paths", ["check"], "Missing argument"),
        ("emit-target-unknown", ["emit", "--deployment", "{dep}", "--target", "k8s", "--out", "{tmp}/o"], "k8s"),
        ("serve-port-out-of-range", ["serve", "--port", "70000"], "'--port'"),
        ("serve-seed-negative", ["serve", "--seed", "-1"], "'--seed'"),
        ("trace-seed-negative", ["trace", "info", "{vidur}", "--format", "lengths", "--rate", "1", "--seed", "-1"],
         "'--seed'"),
        ("trace-cv-huge", [*trace, "--format", "lengths", "--rate", "1", "--arrival", "gamma", "--cv", "1e300"],
         "cv (burstiness) must be in [0.001, 100]"),  # gamma's shape 1/cv^2 underflowed to 0 (a traceback)
        ("trace-cv-tiny", [*trace, "--format", "lengths", "--rate", "1", "--arrival", "gamma", "--cv", "1e-300"],
         "cv (burstiness) must be in [0.001, 100]"),  # and overflowed
        # arrivals beyond 1e9 s: a decode step rounded away in float seconds (TPOT 0, and a divide-by-zero warning)
        ("sim-rate-1e-300", [*synth[:-6], "--rate", "1e-300", *synth[-4:]], "simulated time keeps microseconds"),
        ("plan-rate-1e-300", [*plan, "--rate", "1e-300"], "--rate must be a number of requests per second >= 0.0001"),
        ("plan-seed-negative", [*plan, "--seed", "-1"], "'--seed'"),
        ("plan-gpus-zero", [*plan, "--gpus", "0"], "--gpus"),
        ("plan-trials-zero", [*plan, "--trials", "0"], "--trials"),
        ("plan-percentile-95", [*plan, "--percentile", "95"], "one of 50, 90, 99"),
        ("plan-attainment-2", [*plan, "--attainment", "2"], "--attainment"),
        ("plan-tpot-nan", [*plan, "--tpot", "nan"], "--tpot"),
        ("plan-objective-unknown", [*plan, "--objective", "fastest"], "--objective"),
        ("plan-topology-unknown", [*plan, "--topology", "mesh"], "--topology"),
        ("plan-gpu-unknown", [*plan, "--gpu", "tpu9"], "unknown GPU 'tpu9'"),
        ("plan-dtype-unknown", [*plan, "--dtype", "int3"], "unknown dtype 'int3'"),
        ("plan-storage-bogus", [*plan, "--storage", "bogus://x"], "--storage bogus://x"),
        ("plan-emit-unknown", [*plan, "--emit", "k8s"], "unknown target 'k8s'"),
        ("plan-calibration-absent", [*plan, "--calibration", "{tmp}/absent.yaml"], "absent.yaml"),
        # values that ran forever (the disagg units of a budget grow as its square) or crashed Optuna's seeding
        ("plan-gpus-billion", [*plan, "--gpus", "1000000000"], "--gpus must be a whole number up to 128,"),
        ("plan-trials-billion", [*plan, "--trials", "1000000000"], "--trials must be a whole number up to 1,000,"),
        ("plan-concurrency-billion", [*plan, "--concurrency", "1000000000"], "--concurrency must be a whole number "
         "up to 100,000,"),
        ("plan-seed-above-32-bits", [*plan, "--seed", str(2**32)], "--seed must be a whole number up to 4,294,967,295"),
        ("worker-wait-nan", ["plan-worker", "--storage", "sqlite:///{tmp}/s.db", "--study", "x", "--wait", "nan"],
         "--wait: must be between 0 and 86400 seconds"),
        ("worker-wait-year", ["plan-worker", "--storage", "sqlite:///{tmp}/s.db", "--study", "x", "--wait", "3e7"],
         "--wait: must be between 0 and 86400 seconds"),
    ]


FLAG_CASES = flag_cases()


@pytest.mark.parametrize("args, fault", [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_bad_flag_value_is_one_line_naming_the_flag(tmp_path, capsys, args, fault):
    (tmp_path / "v.csv").write_text(csv_text("vidur", valid_rows("vidur")))
    (tmp_path / "d.yaml").write_text("model: tiny\ngpu: h200-sxm\nworkers: {replicas: 1}\n")
    subs = {"{vidur}": str(tmp_path / "v.csv"), "{dep}": str(tmp_path / "d.yaml"), "{tmp}": str(tmp_path)}
    args = [subs.get(a, a.replace("{tmp}", str(tmp_path))) for a in args]
    one_line_error(*cli(capsys, *args), fault)


# ---- the other files users hand over: calibration, profile, measured benchmark runs -----------------------------
CALIBRATION = ("pdsim_calibration: 1\nmodel: tiny\ngpu: h200-sxm\nengine: vllm\ndtype: bf16\n"
               "efficiency: {gemm_compute: 0.5}\n")
SIM = ["simulate", "--deployment", "{dep}", "--rate", "1", "--isl", "8", "--osl", "4", "--requests", "2"]
OTHER_FILE_CASES = [
    ("calibration-bad-yaml", {"cal.yaml": "garbage: [\n"}, [*SIM, "--calibration", "{tmp}/cal.yaml"], "not valid YAML"),
    ("calibration-list", {"cal.yaml": "- 1\n"}, [*SIM, "--calibration", "{tmp}/cal.yaml"], "not a pdsim calibration"),
    ("calibration-foreign", {"cal.yaml": "model: tiny\nefficiency: {gemm_compute: -1}\n"},
     [*SIM, "--calibration", "{tmp}/cal.yaml"], "not a pdsim calibration"),
    ("calibration-binary", {"cal.yaml": b"\x00\xff\xfe"}, [*SIM, "--calibration", "{tmp}/cal.yaml"], "cannot read"),
    ("calibration-efficiency-scalar", {"cal.yaml": CALIBRATION.replace("{gemm_compute: 0.5}", "3")},
     [*SIM, "--calibration", "{tmp}/cal.yaml"], "efficiency must be a mapping"),
    ("calibration-efficiency-unknown", {"cal.yaml": CALIBRATION.replace("gemm_compute", "magic")},
     [*SIM, "--calibration", "{tmp}/cal.yaml"], "unknown factor 'magic'"),
    ("calibration-efficiency-negative", {"cal.yaml": CALIBRATION.replace("0.5", "-0.5")},
     [*SIM, "--calibration", "{tmp}/cal.yaml"], "efficiency.gemm_compute must be a number >= 0"),
    ("profile-json-truncated", {"prof/profile.json": '{"a":', "prof/profile.csv": "op,tokens\nx,1\n"},
     [*SIM, "--profile", "{tmp}/prof"], "not valid JSON"),
    ("profile-files-missing", {"prof/notes.txt": "x"}, [*SIM, "--profile", "{tmp}/prof"], "not a profile directory"),
    ("profile-absent", {}, [*SIM, "--profile", "{tmp}/none"], "no profile directory"),
    ("perf-db-unknown", {}, [*SIM, "--perf-db", "nonsense"], "unknown source 'nonsense'"),
    ("measured-absent", {}, ["calibrate", "--measured", "{tmp}/none", "--deployment", "{dep}"], "not found"),
    ("measured-not-json", {"m/profile_export_aiperf.json": b"\x00\x01"},
     ["calibrate", "--measured", "{tmp}/m", "--deployment", "{dep}", "--out", "{tmp}/c.yaml"], "not JSON"),
    ("silicon-csv-wrong-columns", {"s.csv": "a,b\n1,2\n"}, ["replay-benchmark", "{tmp}/s.csv", "--out", "{tmp}/r"],
     "missing columns"),
    ("silicon-csv-empty", {"s.csv": ""}, ["replay-benchmark", "{tmp}/s.csv", "--out", "{tmp}/r"], "s.csv"),
]


@pytest.mark.parametrize("files, args, fault", [c[1:] for c in OTHER_FILE_CASES],
                         ids=[c[0] for c in OTHER_FILE_CASES])
def test_malformed_calibration_profile_and_measurement_files_are_one_line(tmp_path, capsys, files, args, fault):
    (tmp_path / "d.yaml").write_text("model: tiny\ngpu: h200-sxm\nworkers: {replicas: 1}\n")
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    args = [a.replace("{dep}", str(tmp_path / "d.yaml")).replace("{tmp}", str(tmp_path)) for a in args]
    one_line_error(*cli(capsys, *args), fault)


@FUZZ
@given(flag=st.sampled_from(["--rate", "--isl", "--osl", "--requests", "--seed", "--warmup", "--percentile"]),
       value=st.text(alphabet=string.printable.strip(), min_size=1, max_size=8).filter(lambda v: v[0] != "-"))
def test_any_flag_value_runs_or_is_refused_in_one_line(tmp_path, capsys, flag, value):
    dep = tmp_path / "d.yaml"
    dep.write_text("model: tiny\ngpu: h200-sxm\nworkers: {replicas: 1}\n")
    args = {"--rate": "1", "--isl": "8", "--osl": "4", "--requests": "3", flag: value}
    code, out, err = cli(capsys, "simulate", "--deployment", dep, *[x for kv in args.items() for x in kv])
    assert "Traceback" not in out + err
    if code:
        one_line_error(code, out, err)


def test_the_suite_has_at_least_100_distinct_malformed_cases():
    ids = [(parser, c[0]) for parser, cases in (("trace", TRACE_CASES), ("deployment", DEPLOYMENT_CASES),
                                                ("check", CHECK_CASES), ("flag", FLAG_CASES),
                                                ("file", OTHER_FILE_CASES)) for c in cases]
    assert len(set(ids)) == len(ids) >= 100, len(ids)
