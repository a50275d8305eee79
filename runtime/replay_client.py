"""Open-loop replay client: every request of a Workload goes out at its arrival time, whatever the server's
state, as a user's would: an HTTP POST to ``/v1/completions`` with ``stream: true``, read as server-sent
events. What it records is what the user sees: when each token's event arrived.

Prompts are ``isl`` seeded random token ids and ``max_tokens = osl`` with ``ignore_eos``, so every request
asks for exactly the trace's lengths. TTFT counts from the scheduled arrival (a client that falls behind
is measured, not forgiven: ``lag_s`` says by how much it sent late). No torch here.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pandas as pd

from traces.workload import Workload


@dataclass
class Replay:
    """Per request (seconds from the replay's start): arrival_s (scheduled), sent_s, first_token_s,
    last_token_s, tokens, outcome (ok | error), error, ttft_s, tpot_s, e2e_s, lag_s; ``token_s`` every
    token's arrival per request; ``start_wall`` the replay's start in time.time()."""

    requests: pd.DataFrame
    token_s: dict[int, np.ndarray]
    start_wall: float

    @property
    def itl_s(self) -> np.ndarray:
        """Every gap between consecutive tokens of one request."""
        gaps = [np.diff(t) for t in self.token_s.values() if len(t) > 1]
        return np.concatenate(gaps) if gaps else np.zeros(0)


def prompt_ids(request_id: int, isl: int, seed: int, vocab: int = 256) -> list[int]:
    """``isl`` token ids, the same for the same (seed, request)."""
    return np.random.default_rng([seed, request_id]).integers(0, vocab, isl).tolist()


async def _one(client: httpx.AsyncClient, url: str, body: dict, headers: dict, t0: float) -> dict:
    times: list[float] = []
    error = None
    try:
        async with client.stream("POST", url, json=body, headers=headers) as resp:
            if resp.status_code != 200:
                error = f"HTTP {resp.status_code}: {(await resp.aread())[:300].decode(errors='replace')}"
            else:
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    now = time.perf_counter() - t0
                    data = line[6:]
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        error = event["error"].get("message", "error event")
                        break
                    if any(c.get("finish_reason") is None for c in event.get("choices", ())):
                        times.append(now)  # one event per token; the finish event carries none
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        error = f"{e.__class__.__name__}: {e}"
    return {"token_s": times, "error": error}


async def replay_async(url: str, workload: Workload, *, model: str = "tiny", api_key: str | None = None,
                       seed: int = 0, id_prefix: str = "replay", timeout_s: float = 600.0) -> Replay:
    """Send ``workload``'s requests to the server at ``url`` (``http://host:port``) at their arrival times."""
    req = workload.requests.sort_values("arrival_s", kind="stable")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    bodies = [{"model": model, "prompt": prompt_ids(int(r.request_id), int(r.isl), seed), "max_tokens": int(r.osl),
               "temperature": 0, "ignore_eos": True, "stream": True} for r in req.itertuples()]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits, trust_env=False) as client:
        t0, start_wall = time.perf_counter(), time.time()
        tasks, sent = [], []
        for r, body in zip(req.itertuples(), bodies, strict=True):
            wait = float(r.arrival_s) - (time.perf_counter() - t0)
            if wait > 0:
                await asyncio.sleep(wait)
            sent.append(time.perf_counter() - t0)
            h = {**headers, "x-request-id": f"{id_prefix}-{int(r.request_id)}"}
            tasks.append(asyncio.create_task(_one(client, f"{url}/v1/completions", body, h, t0)))
        results = await asyncio.gather(*tasks)
    rows, token_s = [], {}
    for r, s, res in zip(req.itertuples(), sent, results, strict=True):
        t = np.asarray(res["token_s"], dtype=np.float64)
        rid = int(r.request_id)
        token_s[rid] = t
        ok = res["error"] is None and len(t) == int(r.osl)
        error = res["error"] or (None if ok else f"{len(t)} of {int(r.osl)} tokens")
        first, last = (t[0], t[-1]) if len(t) else (np.nan, np.nan)
        rows.append({"request_id": rid, "arrival_s": float(r.arrival_s), "isl": int(r.isl), "osl": int(r.osl),
                     "sent_s": s, "lag_s": s - float(r.arrival_s), "first_token_s": first, "last_token_s": last,
                     "tokens": len(t), "outcome": "ok" if ok else "error", "error": error})
    df = pd.DataFrame(rows)
    df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
    df["tpot_s"] = np.where(df["tokens"] > 1, (df["last_token_s"] - df["first_token_s"])
                            / np.maximum(df["tokens"] - 1, 1), np.nan)
    df["e2e_s"] = df["last_token_s"] - df["arrival_s"]
    return Replay(df, token_s, start_wall)


def replay(url: str, workload: Workload, **kw) -> Replay:
    """``replay_async`` from synchronous code."""
    return asyncio.run(replay_async(url, workload, **kw))
