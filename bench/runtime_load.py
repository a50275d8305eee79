"""Poisson load against the live runtime: prints TTFT / ITL percentiles, tokens/s and KV transfer figures.

    .venv/bin/python bench/runtime_load.py                      # starts `pdsim serve` (1 prefill + 1 decode, tiny)
    .venv/bin/python bench/runtime_load.py --duration 10 --rate 4 --isl 128 --osl 64
    .venv/bin/python bench/runtime_load.py --url http://127.0.0.1:8000 --log pdsim-requests.jsonl

Arrivals are open loop (exponential gaps, seeded); prompts are token-id lists of exactly --isl tokens,
so the server does no tokenizing guesswork; every request asks for --osl tokens (the tiny model never
stops early). Latencies are measured by this client; the transfer figures come from the server's log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def start_server(deployment: str | None, log: str, *args: str) -> tuple[subprocess.Popen, str]:
    """`pdsim serve` on a free loopback port (extra ``args`` passed on); returns once it says ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from planner.cli import main; main()", "serve", "--port", str(port), "--log", log]
    if deployment:
        cmd += ["--deployment", deployment]
    cmd += args
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        print(line.rstrip(), file=sys.stderr)
        if "ready on" in line or time.monotonic() > deadline:
            break
    if proc.poll() is not None:
        sys.exit("server failed to start")
    return proc, f"http://127.0.0.1:{port}"


async def one(http: httpx.AsyncClient, isl: int, osl: int, rng: np.random.Generator) -> dict:
    prompt = rng.integers(0, 256, isl).tolist()
    body = {"prompt": prompt, "max_tokens": osl, "temperature": 0, "stream": True}
    sent = time.perf_counter()
    times: list[float] = []
    error = None
    async with http.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = chunk["error"]["message"]
            elif chunk["choices"][0]["finish_reason"] is None:
                times.append(time.perf_counter())
    return {"sent": sent, "times": times, "error": error}


async def run(url: str, rate: float, duration_s: float, isl: int, osl: int, seed: int, api_key: str | None):
    rng = np.random.default_rng(seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as http:
        tasks, t0 = [], time.perf_counter()
        next_s = rng.exponential(1 / rate)
        while next_s < duration_s:
            await asyncio.sleep(max(0.0, t0 + next_s - time.perf_counter()))
            tasks.append(asyncio.create_task(one(http, isl, osl, rng)))
            next_s += rng.exponential(1 / rate)
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - t0


def pct(values: list[float], unit: float = 1e3) -> str:
    if not values:
        return "n/a"
    p = np.percentile(values, [50, 90, 99]) * unit
    return f"p50 {p[0]:8.2f}  p90 {p[1]:8.2f}  p99 {p[2]:8.2f}  mean {np.mean(values) * unit:8.2f}"


def report(results: list[dict], wall_s: float, log: str | None, since: float) -> None:
    ok = [r for r in results if r["error"] is None and r["times"]]
    ttft = [r["times"][0] - r["sent"] for r in ok]
    itl = [b - a for r in ok for a, b in zip(r["times"], r["times"][1:], strict=False)]
    tokens = sum(len(r["times"]) for r in results)
    print(f"requests {len(results)} sent, {len(ok)} ok, {len(results) - len(ok)} failed; wall {wall_s:.1f} s")
    print(f"TTFT ms  {pct(ttft)}")
    print(f"ITL  ms  {pct(itl)}")
    print(f"output tokens/s {tokens / wall_s:.1f}   requests/s {len(ok) / wall_s:.2f}")
    if log and os.path.exists(log):
        recs = [json.loads(line) for line in open(log)]
        tr = [a["transfer"] for r in recs if r["arrival_s"] >= since for a in r["attempts"] if "transfer" in a]
        tr = [t for t in tr if "duration_s" in t and "bytes" in t]
        stages = {"prefill queue": [], "prefill": [], "to transfer": [], "transfer": [], "decode admit": []}
        for r in recs:
            if r["arrival_s"] < since:
                continue
            a = r["attempts"][-1]
            p, t, d = a.get("prefill", {}), a.get("transfer", {}), a.get("decode", {})
            if "scheduled" in p and "first_token" in p:
                stages["prefill queue"].append(p["scheduled"] - p["queued"])
                stages["prefill"].append(p["first_token"] - p["scheduled"])
            if "send_start" in t and "first_token" in p:
                stages["to transfer"].append(t["send_start"] - p["first_token"])
            if "duration_s" in t:
                stages["transfer"].append(t["duration_s"])
            if "admitted" in d:
                stages["decode admit"].append(d["admitted"] - max(d["queued"], d["kv_received"]))
        for name, v in stages.items():
            print(f"  {name:<14} ms {pct(v)}")
        if tr:
            kb = [t["bytes"] / 1e3 for t in tr]
            dur = [t["duration_s"] for t in tr]
            gbs = sum(t["bytes"] for t in tr) / sum(dur) / 1e9
            print(f"KV transfer: {len(tr)} transfers, {np.mean(kb):.1f} kB each, duration ms {pct(dur)}, "
                  f"{gbs:.2f} GB/s while in flight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="A running server (default: start one).")
    ap.add_argument("--deployment", help="Deployment YAML for the server this script starts.")
    ap.add_argument("--log", help="The server's request log (default: a temporary file when this script starts it).")
    ap.add_argument("--api-key", default=os.environ.get("PDSIM_API_KEY"))
    ap.add_argument("--rate", type=float, default=4.0, help="Requests per second (Poisson).")
    ap.add_argument("--duration", type=float, default=60.0, help="Seconds of arrivals.")
    ap.add_argument("--isl", type=int, default=128)
    ap.add_argument("--osl", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    proc, log = None, args.log
    if args.url is None:
        log = log or os.path.join(tempfile.mkdtemp(prefix="pdsim-bench-"), "requests.jsonl")
        proc, url = start_server(args.deployment, log)
    else:
        url = args.url
    since = time.time()
    print(f"load: Poisson {args.rate} req/s for {args.duration} s, ISL {args.isl}, OSL {args.osl}, seed {args.seed}")
    try:
        results, wall_s = asyncio.run(run(url, args.rate, args.duration, args.isl, args.osl, args.seed, args.api_key))
        report(results, wall_s, log, since)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
