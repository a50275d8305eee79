"""One request's story (`pdsim simulate --trace-requests IDS`): where the router sent it and why, how long it
queued, its prefill, KV transfer and decode, and every fault that hit it and what was done about it."""

from __future__ import annotations

import math

import pandas as pd

from profiler.errors import InputError


def parse_ids(text: str, n: int) -> list[int]:
    """``"3,17,40-42"`` -> [3, 17, 40, 41, 42]; every id must exist among ``n`` requests."""
    ids: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        lo, _, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise InputError(f"{part!r} is not a request id or range like 40-42", where="--trace-requests") from None
        if not 0 <= a <= b < n:
            raise InputError(f"{part!r}: request ids run from 0 to {n - 1}", where="--trace-requests")
        ids += range(a, b + 1)
    if not ids:
        raise InputError("give request ids like 3,17,40-42", where="--trace-requests")
    return ids


def request_timeline(result, r: int, router: str, disagg: bool) -> str:
    """The lines of request ``r``'s timeline, times in seconds from the start of the run."""
    df: pd.DataFrame = result.requests
    q = df.iloc[r]
    ms = lambda s: f"{s * 1e3:.1f} ms"  # noqa: E731
    ev: list[tuple[float, str]] = [(q.arrival_s, f"arrives: {q.isl} prompt tokens, {q.osl} to generate")]
    pool = "prefill" if disagg else "workers"
    if q.prefill_worker >= 0:
        ev.append((q.arrival_s, f"routed ({router}) to {pool} worker {q.prefill_worker}"))
    if not math.isnan(q.prefill_start_s):
        ev.append((q.prefill_start_s, f"prefill starts after {ms(q.prefill_start_s - q.arrival_s)} in the queue"))
        ev.append((q.prefill_end_s, f"prefill done ({ms(q.prefill_end_s - q.prefill_start_s)})"))
    if not math.isnan(q.transfer_start_s):
        ev.append((q.transfer_start_s, f"decode worker {q.decode_worker} has blocks: KV transfer starts"))
    if not math.isnan(q.transfer_end_s):
        ev.append((q.transfer_end_s, f"KV arrived ({ms(q.transfer_end_s - q.transfer_start_s)})"))
    if not math.isnan(q.first_token_s):
        ev.append((q.first_token_s, f"first token (TTFT {ms(q.ttft_s)})"))
    if q.preemptions:
        ev.append((q.first_token_s, f"preempted {q.preemptions} time(s) (KV recomputed)"))
    ops = result.extra.get("ops")
    for rr, t, what in (ops or {}).get("log", []):
        if rr == r:
            ev.append((t, what))
    if not math.isnan(q.last_token_s) and q.outcome != "failed":
        steps = q.osl - 1
        tpot = f", TPOT {ms(q.tpot_s)}" if steps else ""
        ev.append((q.last_token_s, f"last token after {steps} decode iterations{tpot}; E2E {ms(q.e2e_s)}"))
    end = f"outcome {q.outcome}" + (f" ({q.fail_reason})" if q.fail_reason else "")
    lines = [f"request {r} ({end})"]
    lines += [f"  {t:12.6f} s  {what}" for t, what in sorted(ev, key=lambda e: e[0])]
    return "\n".join(lines)
