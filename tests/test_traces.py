"""Trace loaders on small files the tests write: every format, auto-detection, drops, line-precise errors."""

import numpy as np
import pytest

from profiler.errors import InputError
from traces import load_trace
from traces.samples import SAMPLES, sample_path
from traces.samples.generate import write_samples
from traces.transforms import spread_ticks

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
VIDUR_HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


def write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def error(path, **kw) -> str:
    with pytest.raises(InputError) as e:
        load_trace(path, **kw)
    return str(e.value)


def test_azure_2023_form_relative_sorted_arrivals(tmp_path):
    p = write(tmp_path, AZURE_HEADER + "2023-11-16 18:17:03.9799600,4808,10\n"
              "2023-11-16 18:17:04.0319600,3180,8\n2023-11-16 18:17:05.0000000,100,1\n")
    w = load_trace(p)
    assert w.format == "azure" and len(w) == 3 and w.dropped == 0
    np.testing.assert_allclose(w.requests["arrival_s"], [0.0, 0.052, 1.0200400], atol=1e-9)
    assert w.requests["isl"].tolist() == [4808, 3180, 100] and w.requests["osl"].tolist() == [10, 8, 1]
    assert w.requests["request_id"].tolist() == [0, 1, 2]


def test_azure_2024_form_offset_and_mixed_fractions(tmp_path):
    p = write(tmp_path, AZURE_HEADER + "2024-05-10 00:00:00+00:00,10,5\n2024-05-10 00:00:00.250000+00:00,20,6\n"
              "2024-05-10 00:00:02+00:00,30,7\n2024-05-10 00:00:01.5+00:00,40,8\n")
    w = load_trace(p)
    assert w.format == "azure"
    np.testing.assert_allclose(w.requests["arrival_s"], [0.0, 0.25, 1.5, 2.0])
    assert w.requests["isl"].tolist() == [10, 20, 40, 30]  # sorted by arrival


def test_burstgpt_drops_and_counts_failed_requests(tmp_path):
    p = write(tmp_path, "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
              "5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,0,1087,API log\n"
              "118,ChatGPT,417,276,693,Conversation log\n130,ChatGPT,300,0,300,Conversation log\n")
    w = load_trace(p)
    assert w.format == "burstgpt" and len(w) == 2
    assert w.dropped == 2 and "2 failed requests with 0 output tokens" in w.drop_reason
    np.testing.assert_allclose(w.requests["arrival_s"], [0.0, 113.0])
    assert w.requests["isl"].tolist() == [472, 417]


def test_burstgpt_session_ids_are_kept(tmp_path):
    p = write(tmp_path, "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type,Session ID\n"
              "0,ChatGPT,10,5,15,Conversation log,7\n1,ChatGPT,20,5,25,Conversation log,7\n")
    assert load_trace(p).requests["session_id"].tolist() == [7, 7]


def test_vidur_sorted_stably_and_relative(tmp_path):
    p = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n10.5,100,10\n10.0,200,20\n10.5,300,30\n")
    w = load_trace(p)
    assert w.format == "vidur"
    np.testing.assert_allclose(w.requests["arrival_s"], [0.0, 0.5, 0.5])
    assert w.requests["isl"].tolist() == [200, 100, 300]  # ties keep file order


def test_lengths_need_a_rate_and_get_arrivals(tmp_path):
    p = write(tmp_path, "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n"
              + "".join(f"{i + 1},{i + 2},{2 * i + 3},0.5\n" for i in range(100)))
    assert "pass a rate" in error(p)
    w = load_trace(p, rate=4.0, arrival="constant")
    assert w.format == "lengths" and len(w) == 100
    np.testing.assert_allclose(np.diff(w.requests["arrival_s"]), 0.25)
    assert w.requests["isl"].tolist() == list(range(1, 101))  # constant arrivals keep the file's order
    a, b = load_trace(p, rate=4.0, seed=3), load_trace(p, rate=4.0, seed=3)
    assert a.requests.equals(b.requests) and not a.requests.equals(load_trace(p, rate=4.0, seed=4).requests)


def test_mooncake_ms_timestamps_and_hash_ids(tmp_path):
    p = write(tmp_path, '{"timestamp": 3000, "input_length": 600, "output_length": 5, "hash_ids": [0, 1]}\n\n'
              '{"timestamp": 3000, "input_length": 100, "output_length": 7, "hash_ids": [0]}\n'
              '{"timestamp": 9500, "input_length": 1025, "output_length": 1, "hash_ids": [0, 2, 3]}\n', "m.jsonl")
    w = load_trace(p)
    assert w.format == "mooncake" and w.hash_block_tokens == 512
    np.testing.assert_allclose(w.requests["arrival_s"], [0.0, 0.0, 6.5])
    assert w.requests["hash_ids"].tolist() == [[0, 1], [0], [0, 2, 3]]


def test_spread_ticks_spreads_groups_within_their_tick_seeded(tmp_path):
    lines = [f'{{"timestamp": {t}, "input_length": 10, "output_length": 2}}\n' for t in [0] * 5 + [3000] * 4 + [6000]]
    p = write(tmp_path, "".join(lines), "m.jsonl")
    w = load_trace(p, spread_ticks=True, seed=1)
    a = w.requests["arrival_s"].to_numpy()
    assert len(w) == 10 and a[0] == 0.0 and len(np.unique(a)) == 10
    assert np.all(a[:5] < 3.0) and np.all((a[5:9] >= 3.0) & (a[5:9] < 6.0))  # groups stay in their tick
    assert load_trace(p, spread_ticks=True, seed=1).requests.equals(w.requests)
    assert not load_trace(p, spread_ticks=True, seed=2).requests.equals(w.requests)
    assert (load_trace(p).requests["arrival_s"] == np.repeat([0.0, 3.0, 6.0], [5, 4, 1])).all()  # default: as is
    assert spread_ticks(load_trace(p), seed=1).requests.equals(w.requests)


def test_detection_is_by_content_not_name(tmp_path):
    p = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n", "trace.jsonl")
    assert load_trace(p).format == "vidur"
    p = write(tmp_path, '{"timestamp": 0, "input_length": 1, "output_length": 1}\n', "azure.csv")
    assert load_trace(p).format == "mooncake"


def test_explicit_format_overrides_detection(tmp_path):
    p = write(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n5,2,2\n")
    w = load_trace(p, format="lengths", rate=1.0, arrival="constant")
    assert w.format == "lengths" and w.requests["arrival_s"].tolist() == [0.0, 1.0]
    assert "missing column(s) ['TIMESTAMP', 'ContextTokens', 'GeneratedTokens']" in error(p, format="azure")


def test_bom_crlf_and_quoted_headers(tmp_path):
    crlf = (AZURE_HEADER + "2023-11-16 18:17:03.9,48,10\n").replace("\n", "\r\n")
    p = write(tmp_path, b"\xef\xbb\xbf" + crlf.encode())
    assert load_trace(p).requests["isl"].tolist() == [48]
    p = write(tmp_path, '"Timestamp","Model","Request tokens","Response tokens","Total tokens","Log Type"\n'
              '1,"ChatGPT",3,4,7,"API log"\n')
    assert load_trace(p).format == "burstgpt"
    p = write(tmp_path, '{"timestamp": 0, "input_length": 2, "output_length": 1}\r\n', "m.jsonl")
    assert load_trace(p).requests["isl"].tolist() == [2]


def test_gzip_is_read_transparently(tmp_path):
    import gzip

    p = write(tmp_path, gzip.compress((AZURE_HEADER + "2023-11-16 18:17:03.9799600,4808,10\n").encode()), "t.bin")
    assert len(load_trace(p)) == 1


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_bundled_samples_load_as_their_format(name):
    w = load_trace(sample_path(name), rate=2.0 if SAMPLES[name] == "lengths" else None)
    assert w.format == SAMPLES[name] and len(w) >= 100
    assert (w.requests["isl"] >= 1).all() and (w.requests["osl"] >= 1).all()
    if name == "burstgpt.csv":
        assert w.dropped > 0


def test_samples_are_reproducible_from_their_seed(tmp_path):
    write_samples(tmp_path)
    for name in SAMPLES:
        assert (tmp_path / name).read_bytes() == sample_path(name).read_bytes(), name


# --- malformed files: the error names the file, the 1-based line and what is wrong ---------------------------

MALFORMED = [
    ("non-number", AZURE_HEADER + "2023-11-16 18:17:03.1,10,5\n2023-11-16 18:17:04.1,abc,5\n",
     "line 3: ContextTokens 'abc' is not a number"),
    ("negative", VIDUR_HEADER + "0,10,5\n1,10,5\n2,10,-3\n",
     "line 4: num_decode_tokens is negative (-3)"),
    ("NaN", VIDUR_HEADER + "0,10,5\n1,NaN,5\n", "line 3: num_prefill_tokens is missing"),
    ("empty cell", VIDUR_HEADER + "0,10,5\n1,10,5\n,10,5\n",
     "line 4: arrived_at is missing"),
    ("short row", VIDUR_HEADER + "0,10,5\n1,10\n", "line 3: num_decode_tokens is missing"),
    ("extra field", VIDUR_HEADER + "0,10,5\n1,10,5\n2,10,5,9\n",
     "line 4: malformed CSV row: Expected 3 fields in line 4, saw 4"),
    ("extra first field", VIDUR_HEADER + "0,10,5,7\n1,10,5\n",
     "line 2: malformed CSV row: 4 fields, but the header has 3"),
    ("fraction", VIDUR_HEADER + "0,10.5,5\n", "line 2: num_prefill_tokens is not a whole"),
    ("bad timestamp", AZURE_HEADER + "2023-11-16 18:17:03.1,10,5\n\n2023-13-45 99:17:04,10,5\n",
     "line 4: TIMESTAMP '2023-13-45 99:17:04' is not a date-time"),
    ("missing column", "arrived_at,num_prefill_tokens,decode\n0,1,1\n", "cannot tell the trace format"),
    ("empty file", "", "empty file"),
    ("header only", AZURE_HEADER, "no requests: the file has a header but no rows"),
    ("NUL bytes", VIDUR_HEADER.encode() + b"0,1,1\n\x00\x01\x02junk", "line 3: binary data"),
    ("not UTF-8", VIDUR_HEADER.encode() + b"0,1,1\n1,\xff\xfe,1\n", "line 3: not UTF-8"),
    ("all failed", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n0,ChatGPT,10,0,10,API log\n",
     "no requests left after dropping 1 failed requests"),
    ("bad JSON", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n\n{"timestamp": 1, "input_length": 1,\n',
     "line 3: not valid JSON"),
    ("missing key", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n{"timestamp": 1, "input_length": 1}\n',
     "line 2: output_length is missing"),
    ("not an object", '{"timestamp": 0, "input_length": 1, "output_length": 1}\n[1, 2]\n',
     "line 2: expected a JSON object"),
    ("json string tokens", '{"timestamp": 0, "input_length": "many", "output_length": 1}\n',
     "line 1: input_length 'many' is not a number"),
]


@pytest.mark.parametrize("case,text,message", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_file_names_file_line_and_fault(tmp_path, case, text, message):
    p = write(tmp_path, text)
    got = error(p)
    assert got.startswith(str(p)) and message in got, got


def test_bad_utf8_far_into_a_big_file_is_located(tmp_path):
    rows = "".join(f"{i},{i + 1},2\n" for i in range(20000))  # well past the sniffed head
    p = write(tmp_path, b"arrived_at,num_prefill_tokens,num_decode_tokens\n" + rows.encode() + b"20000,\xe9,1\n")
    assert "line 20002: not UTF-8" in error(p)


def test_unknown_format_and_missing_file(tmp_path):
    p = write(tmp_path, AZURE_HEADER + "2023-11-16 18:17:03.1,10,5\n")
    assert "unknown trace format 'splitwise'; use one of azure, mooncake, burstgpt, vidur, lengths" in error(
        p, format="splitwise")
    assert "no such file" in error(tmp_path / "nope.csv")
    assert "JSON-lines file, not a vidur CSV" in error(write(tmp_path, '{"a": 1}\n', "j"), format="vidur")
