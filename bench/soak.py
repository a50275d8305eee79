"""Soak: N concurrent streaming clients hold `pdsim serve` busy for a while; prints errors, TTFT/ITL percentiles
per time window, and the KV blocks still in use once the load stops (must be 0: nothing leaked).

    .venv/bin/python bench/soak.py                          # starts `pdsim serve` (1 prefill + 1 decode, tiny)
    .venv/bin/python bench/soak.py --duration 30 --clients 64 --deployment dep.yaml
    .venv/bin/python bench/soak.py --url http://127.0.0.1:8000   # a running server (loopback only)

Closed loop: each client sends its next request as soon as its last one ended, with prompt and output
lengths drawn (seeded) per request. Every loop is bounded in time and count; every request has a deadline.
Exit code 1 if any request failed or KV blocks stay in use when idle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from runtime_load import one, pct, start_server  # noqa: E402 (bench/ is not a package)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Soak:
    results: list[dict] = field(default_factory=list)  # one per request: sent, times, error, isl, osl, client
    kv_samples: list[tuple[float, float]] = field(default_factory=list)  # (s since start, KV blocks in use)
    t0: float = 0.0
    wall_s: float = 0.0
    idle: dict = field(default_factory=dict)  # /metrics once the load stopped and the server went idle


def parse_metrics(text: str) -> dict[str, float]:
    """/metrics summed per name over workers that are up (a dead worker's last report is not KV in use)."""
    lines = text.splitlines()
    down = {line.split('worker="')[1].split('"')[0] for line in lines
            if line.startswith("pdsim_worker_up{") and line.endswith(" 0")}
    out: dict[str, float] = {}
    for line in lines:
        if not line or line.startswith("#"):
            continue
        name = line.split("{")[0].split()[0]
        if 'worker="' in line and line.split('worker="')[1].split('"')[0] in down:
            continue
        out[name] = out.get(name, 0.0) + float(line.split()[-1])
    return out


def read_metrics(url: str, headers: dict) -> dict[str, float]:
    return parse_metrics(httpx.get(url + "/metrics", headers=headers, timeout=10).text)


def wait_idle(url: str, headers: dict, timeout_s: float = 20.0) -> dict[str, float]:
    """Poll /metrics until nothing is in flight and no live worker holds KV, twice a stats period apart."""
    deadline, zeros, m = time.monotonic() + timeout_s, 0, {}
    while time.monotonic() < deadline and zeros < 2:
        m = read_metrics(url, headers)
        idle = m.get("pdsim_requests_inflight", 0) == 0 and m.get("pdsim_worker_kv_blocks_used", 0) == 0
        zeros = zeros + 1 if idle else 0
        time.sleep(0.3)
    return m


async def run_soak(url: str, clients: int = 64, duration_s: float = 300.0, isl: tuple[int, int] = (16, 512),
                   osl: tuple[int, int] = (8, 128), seed: int = 0, api_key: str | None = None,
                   request_timeout_s: float = 120.0, on_start=None) -> Soak:
    """``clients`` closed-loop streaming clients for ``duration_s``; ``on_start(soak)`` runs once the load is on
    (a kill test's hook). Requests in flight at the end run to completion (each within ``request_timeout_s``)."""
    host = urlparse(url).hostname
    if host not in LOOPBACK:
        raise ValueError(f"soak talks to loopback servers only, not {host}")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    soak = Soak(t0=time.perf_counter())
    end = soak.t0 + duration_s
    max_requests = int(duration_s * 1000) + 1  # per client: a hard bound besides the clock

    async def client(http: httpx.AsyncClient, i: int) -> None:
        rng = np.random.default_rng([seed, i])
        for _ in range(max_requests):
            if time.perf_counter() >= end:
                return
            n_in, n_out = int(rng.integers(isl[0], isl[1] + 1)), int(rng.integers(osl[0], osl[1] + 1))
            sent = time.perf_counter()
            try:
                r = await asyncio.wait_for(one(http, n_in, n_out, rng), request_timeout_s)
            except (TimeoutError, httpx.HTTPError) as e:
                r = {"sent": sent, "times": [], "error": f"{type(e).__name__}: {e}"}
            soak.results.append({**r, "isl": n_in, "osl": n_out, "client": i})

    async def sample_kv(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < end:
            m = parse_metrics((await http.get("/metrics")).text)
            soak.kv_samples.append((time.perf_counter() - soak.t0, m.get("pdsim_worker_kv_blocks_used", 0.0)))
            await asyncio.sleep(min(2.0, max(0.2, duration_s / 50)))

    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=clients + 8)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=request_timeout_s, limits=limits) as http:
        tasks = [asyncio.create_task(client(http, i)) for i in range(clients)]
        sampler = asyncio.create_task(sample_kv(http))
        if on_start is not None:
            await on_start(soak)
        await asyncio.wait_for(asyncio.gather(*tasks, sampler), duration_s + request_timeout_s + 30)
    soak.wall_s = time.perf_counter() - soak.t0
    soak.idle = wait_idle(url, headers)
    return soak


def failures(soak: Soak) -> list[dict]:
    """Requests that errored or ended short of the tokens they asked for (the tiny model never stops early)."""
    return [r for r in soak.results if r["error"] is not None or len(r["times"]) != r["osl"]]


def report(soak: Soak, windows: int = 10) -> str:
    rs = soak.results
    lines = [f"{len(rs)} requests by {len({r['client'] for r in rs})} clients in {soak.wall_s:.1f} s; "
             f"{len(failures(soak))} failed; {sum(len(r['times']) for r in rs) / max(soak.wall_s, 1e-9):.1f} "
             "output tokens/s", f"{'window':>13} {'done':>5} {'err':>4}  TTFT ms (p50 p90 p99 mean)"
             f"{'':>16}ITL ms (p50 p90 p99 mean)"]
    edges = np.linspace(0, max(soak.wall_s, 1e-9), windows + 1)
    for lo, hi in zip(edges, edges[1:], strict=False):
        win = [r for r in rs if lo <= (r["times"][-1] if r["times"] else r["sent"]) - soak.t0 < hi]
        ok = [r for r in win if r["error"] is None and r["times"]]
        ttft = [r["times"][0] - r["sent"] for r in ok]
        itl = [b - a for r in ok for a, b in zip(r["times"], r["times"][1:], strict=False)]
        lines.append(f"{lo:5.0f}-{hi:5.0f} s {len(win):5d} {len(win) - len(ok):4d}  {pct(ttft)}   {pct(itl)}")
    if soak.kv_samples:
        kv = [k for _, k in soak.kv_samples]
        lines.append(f"KV blocks in use under load: mean {np.mean(kv):.0f}, max {max(kv):.0f} "
                     f"({len(kv)} samples of /metrics)")
    m = soak.idle
    lines.append(f"when idle: KV blocks in use {m.get('pdsim_worker_kv_blocks_used', float('nan')):.0f}, "
                 f"requests in flight {m.get('pdsim_requests_inflight', float('nan')):.0f}, "
                 f"retries {m.get('pdsim_retries_total', 0):.0f}")
    for r in failures(soak)[:5]:
        lines.append(f"  failed: client {r['client']}, {len(r['times'])}/{r['osl']} tokens: {r['error']}")
    return "\n".join(lines)


def leaked(soak: Soak) -> bool:
    return soak.idle.get("pdsim_worker_kv_blocks_used", 1) != 0 or soak.idle.get("pdsim_requests_inflight", 1) != 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="A running server on 127.0.0.1 (default: start one).")
    ap.add_argument("--deployment", help="Deployment YAML for the server this script starts.")
    ap.add_argument("--api-key", default=os.environ.get("PDSIM_API_KEY"))
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=300.0, help="Seconds of load.")
    ap.add_argument("--isl", type=int, nargs=2, default=(16, 512), metavar=("LO", "HI"))
    ap.add_argument("--osl", type=int, nargs=2, default=(8, 128), metavar=("LO", "HI"))
    ap.add_argument("--windows", type=int, default=10, help="Time windows in the report.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    proc, url = None, args.url
    if url is not None and urlparse(url).hostname not in LOOPBACK:
        sys.exit(f"soak: --url must be a loopback server (127.0.0.1, localhost, ::1), not {url}")
    if url is None:
        proc, url = start_server(args.deployment, os.path.join(tempfile.mkdtemp(prefix="pdsim-soak-"), "log.jsonl"))
    print(f"soak: {args.clients} streaming clients for {args.duration:g} s against {url}, ISL {args.isl}, "
          f"OSL {args.osl}, seed {args.seed}", flush=True)
    try:
        soak = asyncio.run(run_soak(url, args.clients, args.duration, tuple(args.isl), tuple(args.osl), args.seed,
                                    args.api_key))
        print(report(soak, args.windows))
        code = 1 if failures(soak) or leaked(soak) else 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    sys.exit(code)


if __name__ == "__main__":
    main()
