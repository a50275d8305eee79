"""The real traces in data/traces load with the published counts and means (SOURCES.md) and auto-detect."""


import numpy as np
import pytest
from needs import TRACES

from traces import load_trace
from traces.info import trace_info

# file -> (format, rows, isl mean, osl mean, extra published figures); from data/SOURCES.md and the origin's own figures
PUBLISHED = {
    "AzureLLMInferenceTrace_code.csv": (
        "azure", 8819, 2048, 28,
        {"isl_p50": 1469, "isl_max": 7437, "osl_p50": 13, "osl_max": 1899, "duration_s": 3435.9}),
    "AzureLLMInferenceTrace_conv.csv": (
        "azure", 19366, 1155, 211,
        {"isl_p50": 1020, "isl_max": 14050, "osl_p50": 129, "osl_max": 1000, "duration_s": 3501.7}),
    "conversation_trace.jsonl": (
        "mooncake", 12031, 12035, 343, {"isl_max": 126195, "osl_max": 2000, "duration_s": 3537.0}),
    "sharegpt_8k_filtered_stats_llama2_tokenizer.csv": (
        "lengths", 30731, 2340, 439, {"isl_p50": 1730, "isl_max": 8141, "osl_max": 1024}),
    "bwb_stats_llama2_tokenizer_filtered_v2.csv": ("lengths", 33768, 1067, 1613, {"osl_max": 2858}),
    "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv": ("lengths", 28257, 2588, 291, {}),
}


@pytest.fixture(scope="module", params=sorted(PUBLISHED))
def loaded(request):
    name = request.param
    return name, trace_info(load_trace(TRACES / name, rate=5.0 if PUBLISHED[name][0] == "lengths" else None))


def test_count_means_and_format_match_published(loaded):
    name, info = loaded
    fmt, rows, isl_mean, osl_mean, extra = PUBLISHED[name]
    assert info["format"] == fmt  # auto-detected from the content
    assert info["requests"] == rows and info["dropped"] == 0
    assert round(info["isl"]["mean"]) == isl_mean and round(info["osl"]["mean"]) == osl_mean
    for key, want in extra.items():
        got = info["duration_s"] if key == "duration_s" else info[key[:3]][key[4:]]
        assert got == pytest.approx(want, abs=0.05), key


def test_azure_arrivals_start_at_zero_and_keep_the_file_order():
    w = load_trace(TRACES / "AzureLLMInferenceTrace_conv.csv")
    a = w.requests["arrival_s"].to_numpy()
    assert a[0] == 0.0 and np.all(np.diff(a) >= 0)
    assert w.rate == pytest.approx(5.53, abs=0.005)  # SOURCES.md: 3,501.7 s, 5.53 req/s
    assert w.requests[["isl", "osl"]].iloc[0].tolist() == [374, 44]  # first row of the file


def test_mooncake_blocks_ticks_and_spreading():
    w = load_trace(TRACES / "conversation_trace.jsonl")
    info = trace_info(w)
    assert info["hash_blocks"] == 288500 and info["unique_hash_blocks"] == 182790
    blocks = w.requests["hash_ids"].map(len).to_numpy()
    assert np.array_equal(blocks, -(-w.requests["isl"].to_numpy() // 512))  # 512-token blocks
    a = w.requests["arrival_s"].to_numpy()
    assert len(np.unique(a)) == 1180  # ~3 s ticks, kept as they are by default
    spread = load_trace(TRACES / "conversation_trace.jsonl", spread_ticks=True).requests["arrival_s"].to_numpy()
    assert len(np.unique(spread)) == len(spread) and spread.max() < a.max() + 3.1
    assert trace_info(load_trace(TRACES / "conversation_trace.jsonl", spread_ticks=True))["burstiness"] < 1.5


def test_lengths_file_with_rate_gets_that_rate():
    w = load_trace(TRACES / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv", rate=10.0, seed=1)
    assert len(w) == 30731 and w.rate == pytest.approx(10.0, rel=0.03)
