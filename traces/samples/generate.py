"""Write the bundled sample traces (seeded, synthetic): `python -m traces.samples.generate [FOLDER]`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from traces.samples import SAMPLES_DIR
from traces.synthetic import synthetic_workload

BLOCK_TOKENS = 512


def _workload(n: int, rate: float, seed: int, cv: float = 1.0):
    """Conversation-like lengths (Azure conv: prompt mean ~1,150, output mean ~210)."""
    return synthetic_workload(requests=n, rate=rate, arrival="gamma", cv=cv, seed=seed,
                              isl="lognormal:1150,0.8", osl="lognormal:210,0.9").requests


def _azure(folder: Path, seed: int) -> None:
    r = _workload(240, 4.0, seed, cv=2.0)
    t0 = pd.Timestamp("2023-11-16 18:15:46")
    ts = t0 + pd.to_timedelta(np.round(r["arrival_s"].to_numpy(), 7), unit="s")
    stamps = [t.strftime("%Y-%m-%d %H:%M:%S.%f") + "0" for t in ts]  # 7 fractional digits, as Azure 2023
    pd.DataFrame({"TIMESTAMP": stamps, "ContextTokens": r["isl"], "GeneratedTokens": r["osl"]}).to_csv(
        folder / "azure_2023.csv", index=False)
    r = _workload(240, 4.0, seed + 1, cv=2.0)
    t0 = pd.Timestamp("2024-05-10 00:00:00", tz="UTC")
    whole = np.random.default_rng(seed).random(len(r)) < 0.2  # 2024 mixes stamps with and without fractions
    arrival = np.where(whole, np.floor(r["arrival_s"].to_numpy()), r["arrival_s"].to_numpy())
    ts = t0 + pd.to_timedelta(np.round(arrival, 6), unit="s")
    stamps = [t.isoformat(sep=" ", timespec="seconds" if w else "microseconds") for t, w in zip(ts, whole, strict=True)]
    df = pd.DataFrame({"TIMESTAMP": stamps, "ContextTokens": r["isl"], "GeneratedTokens": r["osl"]})
    df.sort_values("TIMESTAMP", kind="stable").to_csv(folder / "azure_2024.csv", index=False)


def _mooncake(folder: Path, seed: int) -> None:
    """Multi-turn chats: a follow-up's prompt is an earlier prompt + its answer + a new message, so the
    follow-up repeats the earlier prompt's full 512-token blocks (the prefix a KV-aware router can reuse)."""
    rng = np.random.default_rng(seed)
    r = _workload(150, 3.0, seed + 2)
    next_id, records = 0, []
    for arrival_s, isl, osl in zip(r["arrival_s"], r["isl"], r["osl"], strict=True):
        parent = records[rng.integers(len(records))] if records and rng.random() < 0.5 else None
        shared = parent["hash_ids"][: parent["input_length"] // BLOCK_TOKENS] if parent else []
        isl = int(isl) + (parent["input_length"] + parent["output_length"] if parent else 0)
        new = -(-isl // BLOCK_TOKENS) - len(shared)
        records.append({"timestamp": int(arrival_s // 3.0) * 3000, "input_length": isl, "output_length": int(osl),
                        "hash_ids": shared + list(range(next_id, next_id + new))})  # ms, quantised to 3 s ticks
        next_id += new
    with open(folder / "mooncake.jsonl", "w") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in records)


def _burstgpt(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    r = _workload(200, 2.0, seed + 3, cv=3.0)
    failed = rng.random(len(r)) < 0.05  # BurstGPT logs failed requests with 0 response tokens
    response = np.where(failed, 0, r["osl"])
    pd.DataFrame({
        "Timestamp": np.round(r["arrival_s"] + 5.0, 3), "Model": np.where(rng.random(len(r)) < 0.8, "ChatGPT", "GPT-4"),
        "Request tokens": r["isl"], "Response tokens": response, "Total tokens": r["isl"] + response,
        "Log Type": np.where(rng.random(len(r)) < 0.7, "Conversation log", "API log"),
    }).to_csv(folder / "burstgpt.csv", index=False)


def _vidur_and_lengths(folder: Path, seed: int) -> None:
    r = _workload(200, 5.0, seed + 4)
    pd.DataFrame({"arrived_at": np.round(r["arrival_s"], 6), "num_prefill_tokens": r["isl"],
                  "num_decode_tokens": r["osl"]}).to_csv(folder / "vidur.csv", index=False)
    r = _workload(300, 1.0, seed + 5)
    pd.DataFrame({"num_prefill_tokens": r["isl"], "num_decode_tokens": r["osl"],
                  "num_total_tokens": r["isl"] + r["osl"], "pd_ratio": r["isl"] / r["osl"]}).to_csv(
        folder / "lengths.csv", index=False)


def write_samples(folder: Path = SAMPLES_DIR, seed: int = 0) -> None:
    """(Re)write every sample into `folder`; the same seed writes the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    _azure(folder, seed)
    _mooncake(folder, seed)
    _burstgpt(folder, seed)
    _vidur_and_lengths(folder, seed)


if __name__ == "__main__":
    write_samples(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLES_DIR)
