"""Soak, short CI variant of bench/soak.py: 64 concurrent streaming clients against `pdsim serve` on 127.0.0.1;
no request fails or comes up short, and once idle no KV block is still in use."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def load_soak():
    path = Path(__file__).resolve().parents[1] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("bench_soak", path)
    module = sys.modules["bench_soak"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


soak = load_soak()


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_64_streaming_clients_get_every_token_and_leave_no_kv_in_use(tmp_path):
    proc, url = soak.start_server(None, str(tmp_path / "requests.jsonl"))
    try:
        result = asyncio.run(soak.run_soak(url, clients=64, duration_s=6, isl=(16, 96), osl=(4, 24),
                                           request_timeout_s=90))
    finally:
        stop(proc)
    text = soak.report(result, windows=3)
    assert len({r["client"] for r in result.results}) == 64, text  # every client was served at least once
    assert soak.failures(result) == [], text
    assert max(k for _, k in result.kv_samples) > 0, text  # the load was real: KV was held ...
    assert not soak.leaked(result), text  # ... and all of it came back
    assert "when idle: KV blocks in use 0, requests in flight 0" in text
