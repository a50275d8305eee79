"""`pdsim validate`: the simulator checked against the live runtime on the same requests, on this machine.

1. Profile the deployment's model here, or reuse the cached profile of the same model, dtype, device
   and torch version (``~/.cache/pdsim/profiles`` or ``--profile-cache``).
2. Start the live runtime (``pdsim serve``) with the deployment and replay the workload with the open-loop
   HTTP streaming client (``runtime/replay_client.py``) at its arrival times, ``repeats`` times.
3. Simulate the same requests on the same deployment with the profile's cost model.
4. Compare TTFT, TPOT, ITL and E2E at p50/p90/p99: ``validate.json``, ``validate.html``, ``requests.csv``.

Rate rule: a trace is rescaled to the rate at which the simulated busiest pool is busy ``target_util``
(default 50 %) of the time, so that the machine carries it below saturation; then the first
``duration_s`` seconds of it are replayed. The simulation behind the rule runs on the costs of the run's
own simulation (below), so on what the live steps will really take. The live busy share of every worker
(from its step log) is reported beside the simulated one, so a run that saturated anyway shows it.

Modes. Raw: the workers compute as fast as the CPU lets them, so the error mixes cost-model error with
system dynamics and machine noise (``--repeats`` measures the noise). Paced: every worker step lasts
``pace_scale`` x the profile's prediction for its batch (``profiler/paced.py``) and the simulator uses the
same scaled cost model, so only the dynamics (batching, queueing, transfer, routing, HTTP) can differ;
``pace_scale`` must exceed the real compute's slowdown on this machine, and the share of steps whose
compute overran their pace is reported.

What a raw step costs. On a CPU the profile times every op in thread CPU time (``--clock cpu``), alone on a core, so it
does not carry the load of the moment the runtime runs. A burst on the unpaced runtime measures the rest from the step
log (``measure_slowdown``: requests spaced at about the replay's rate, then 16 short ones per worker at once that stream
together), and the rate rule runs on it; then rehearsals measure it again under the replay's own load (before each
measured replay, the next ``rehearsal_s`` seconds of the workload after the replayed slice: other requests, the same
rate; ``rehearsal_slices``), and the simulation of the run takes the rehearsals' figures, their steps taken together
(``--rehearsal 0``: the burst's). (b) The compute slowdown: the model forward's wall time over the profile's prediction
for its batch, per pool and by step size (the mean in each size: the expected step time), steps with prompt tokens by
their tokens and decode-only steps by their sequences (``slowdown_by_size``; over all steps ``model_slowdown``, their
median: the core share other processes took, and the caches and memory bus the live forward shares with the frontend,
the client and the other workers, which cost small steps more than large ones), and how steps of one size spread around
that (``step_spread``: each simulated step draws its factor from it, seeded, and the run is simulated once per live
repeat, the median taken as on the live side; a queue grows with the spread of its steps, not only their mean).
(a) The wall time a step takes beyond its model's forward, from the end of the step before (``step_overhead``:
``iteration_overhead_s`` + ``per_seq_overhead_s`` per sequence that samples): the runtime's own work around the model
(preparing the batch, sampling, postprocessing; between steps sending the tokens, the step log, messages) and the time
the worker waits for a core while the frontend and the client, on the same CPU, stream its tokens. Raw mode's
simulation, and the rate rule, take the profile's times x (b) + (a) through ``ScaledCostModel`` with the overheads in
its ``Efficiency``; ``validate.json`` reports them (``raw_step_costs``, where they were measured, the burst's and the
rehearsal's ``overhead`` with the worker's own CPU time split out) and the same fit on the live replay's own steps, to
set beside them. The slowdown by size calibrates the profile's level for each size of step; how cost varies with the
context stays the profile's, and the dynamics the simulator's.

Overhead. The live TTFT includes what no worker does: HTTP, the frontend, the hops to the first worker and
back. The rehearsal (or the burst) measures it (client TTFT minus the TTFT inside the workers, from the
request log) and the simulation of the run gets it through the simulator's own term for it
(``Efficiency.ttft_overhead_s``, carried by the cost model), so both sides count the same TTFT.

The error split (raw). The rehearsals are not the replays: the machine's speed drifts between them. So raw mode
simulates the run a second time on the costs measured in the replays themselves (``replay_cost_check``:
``sim_on_replay_costs`` in validate.json, a column of validate.html), a diagnosis and not a prediction: the error
left then is the simulator's (batching, queueing, transfer, cost within a size bucket), and its difference from the
main figures is what measuring the costs minutes apart cost.
"""

from __future__ import annotations

import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from profiler.costmodel import CostModel
from profiler.errors import InputError
from profiler.models import resolve_model
from profiler.paced import ScaledCostModel, bucket_scale
from simulator.deployment import Deployment, KVLinkSpec
from simulator.stats import PERCENTILES, stats_ms
from traces.transforms import rescale, time_window
from traces.workload import Workload

METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
# Issue 6's targets: |relative error| per percentile of TTFT and TPOT (raw: or within the repeat spread).
TARGETS = {"paced": {"p50": 0.05, "p90": 0.05, "p99": 0.10}, "raw": {"p50": 0.15, "p90": 0.15}}
# What raw mode's simulation adds to the profile, measured (burst, then rehearsal) unless given.
RAW_COSTS = ("ttft_overhead_s", "iteration_overhead_s", "per_seq_overhead_s", "compute_slowdown", "pool_slowdown",
             "pool_decode_slowdown", "pool_spread", "kv_handoff_s")
# slowdown_by_size: fewer steps of a size than this, a neighbouring size's slowdown stands in
MIN_BUCKET_STEPS, MIN_PROMPT_BUCKET_STEPS = 20, 5
PROMPT_BUCKET_TOKENS = 64  # slowdown_by_size: the smallest bucket of steps with prompt tokens
SPREAD_QUANTILES = 20  # step_spread: equally likely factors that describe steps' spread around their size's mean
MIN_SPREAD_STEPS = 20  # step_spread: fewer steps, none (every step of a size costs its mean)
MIN_REHEARSAL_REQUESTS = 10  # fewer finished rehearsal requests: raw mode keeps the burst's measurements
RUNTIME_KV_TOKENS = 32768  # the runtime's default KV cache per worker (runtime/serve.py)
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pdsim" / "profiles"


@dataclass(frozen=True)
class ValidateOptions:
    out_dir: Path
    duration_s: float = 120.0  # live replay length: the first this many seconds of the rescaled workload
    repeats: int = 1
    paced: bool = False
    pace_scale: float | None = None  # None: measured (pace_scale_for(measure_slowdown(...)))
    ttft_overhead_s: float | None = None  # the runtime's per-request overhead; None: measured (request_overhead_s)
    # Raw mode's step costs beyond the profile (None: measured in the burst before the replay, measure_slowdown):
    iteration_overhead_s: float | None = None  # a live step's time beyond its model's compute (step_overhead)
    per_seq_overhead_s: float | None = None  # ... and per sequence that samples
    compute_slowdown: float | None = None  # the model forward's wall time over the profile's (model_slowdown)
    # The same per pool where measured (over compute_slowdown), by step size (slowdown_by_size), for steps with
    # prompt tokens ({pool: [[max_tokens, slowdown], ...]}) and steps of decodes alone ({pool: [[max_seqs, ...]]}):
    pool_slowdown: dict | None = None
    pool_decode_slowdown: dict | None = None
    # How steps of one size spread around that size's slowdown, per pool (step_spread): {pool: {"prompt_steps":
    # [factor, ...], "decode_steps": [...]}}; each simulated step draws one (seeded). {}: none, every step its mean.
    pool_spread: dict | None = None
    kv_handoff_s: float | None = None  # disagg: a finished prompt's KV gathered and handed to the sender (kv_handoff_s)
    # Raw: seconds of the workload after the replayed slice replayed before each replay (other requests each
    # time: rehearsal_slices) to measure the costs above (and ttft_overhead_s) under the replay's load, in place of
    # the burst's (0: the burst's).
    rehearsal_s: float = 30.0
    target_util: float = 0.5  # rate rule: the simulated busiest pool's busy share
    rate: float | None = None  # a fixed arrival rate (req/s) instead of the rate rule
    profile: str | None = None  # a profile directory to use as it is
    profile_cache: Path = DEFAULT_CACHE
    full_profile: bool = False  # the profiler's full grid rather than --quick
    seed: int = 0
    ready_timeout_s: float = 180.0


Log = Callable[[str], None]


# ---- 1. the profile ------------------------------------------------------------------------------
def runtime_device(dep: Deployment) -> str:
    return "cpu" if dep.gpu == "cpu" else "cuda"


def check_runnable(dep: Deployment) -> None:
    """What the bundled runtime can run here: one device per replica; fp32 on a CPU."""
    for name, pool in dep.pools.items():
        if pool.tp > 1:
            raise InputError(f"tp={pool.tp}: the bundled runtime runs each replica on one device (tp: 1)",
                             where=f"deployment.{name}.tp")
    if dep.router == "kv_aware":
        raise InputError("the bundled runtime routes round_robin or least_loaded, not kv_aware",
                         where="deployment.router")
    if dep.gpu == "cpu" and dep.dtype != "fp32":
        raise InputError(f"the runtime computes in fp32 on a CPU; got dtype {dep.dtype!r} (use dtype: fp32)",
                         where="deployment.dtype")


def profile_clock(dep: Deployment) -> str:
    """On a CPU the profile times each op in this thread's CPU time (on a shared CPU, wall time also counts the
    other processes at the moment of the profile); the share of the core the workers get is measured separately,
    when the runtime runs (compute_slowdown)."""
    return "cpu" if runtime_device(dep) == "cpu" else "wall"


def profile_key(dep: Deployment, full: bool) -> str:
    """Cache key: model, dtype, device, torch version, clock and the runtime's revision (the profile holds for
    exactly these)."""
    from profiler.device import device_identity  # noqa: PLC0415
    from profiler.profiled import RUNTIME_REVISION  # noqa: PLC0415

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = "unknown"
    device = re.sub(r"[^a-z0-9]+", "-", str(device_identity(runtime_device(dep))["name"]).lower()).strip("-")
    clock = "-cpuclock" if profile_clock(dep) == "cpu" else ""
    return (f"{dep.model}-{dep.dtype}-{device}-torch{torch_version}-{'full' if full else 'quick'}{clock}"
            f"-r{RUNTIME_REVISION}")


def profile_for(dep: Deployment, opts: ValidateOptions, log: Log) -> Path:
    """The profile to use: ``opts.profile``, the cached one, or a new one made now (``pdsim profile``)."""
    if opts.profile:
        return Path(opts.profile)
    path = Path(opts.profile_cache) / profile_key(dep, opts.full_profile)
    if (path / "profile.json").exists():
        log(f"profile: cached {path}")
        return path
    log(f"profile: timing {dep.model} on this machine into {path} ...")
    cmd = [*pdsim_cmd(), "profile", "--model", dep.model, "--dtype", dep.dtype, "--device", runtime_device(dep),
           "--out", str(path), "--clock", profile_clock(dep), *([] if opts.full_profile else ["--quick"])]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pdsim profile failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return path


def pdsim_cmd() -> list[str]:
    return [sys.executable, "-c", "from planner.cli import main; main()"]


def cost_models(dep: Deployment, profile_dir: Path, opts: ValidateOptions, repeat: int = 0) -> dict:
    """The cost model of every pool, carrying the runtime's measured per-request overhead as the simulator's
    ``ttft_overhead_s`` term. Paced: the profile's times ``pace_scale`` (the paced steps follow that timeline,
    their time between steps included). Raw: what a live step costs, the profile's times the compute slowdown
    plus the time a step takes beyond its model's compute (``iteration_overhead_s`` + ``per_seq_overhead_s``
    for every sequence that samples), as measured in the rehearsal or the burst before the replay, each step's
    slowdown drawn from its pool's spread (``pool_spread``) with a seed of ``opts.seed``, ``repeat`` (the simulated
    repeat) and the pool's place."""
    from profiler.paced import overheads, paced_cost_model  # noqa: PLC0415

    base = paced_cost_model(str(profile_dir), dep.model, dep.dtype, dep.gpu)
    ttft_s = opts.ttft_overhead_s or 0.0
    if opts.paced:
        cm = ScaledCostModel(base, opts.pace_scale, overheads(ttft_s=ttft_s))
        return {name: cm for name in dep.pools}
    step = overheads(opts.iteration_overhead_s or 0.0, opts.per_seq_overhead_s or 0.0, ttft_s)
    prompt, decode = opts.pool_slowdown or {}, opts.pool_decode_slowdown or {}

    def buckets(given: dict, pool: str) -> tuple[tuple[int, float], ...]:
        return tuple((int(hi), float(x)) for hi, x in given.get(pool) or ())

    spread = opts.pool_spread or {}

    def factors(pool: str, kind: str) -> tuple[float, ...]:
        return tuple(float(x) for x in (spread.get(pool) or {}).get(kind) or ())

    return {name: ScaledCostModel(base, opts.compute_slowdown or 1.0, step, buckets(prompt, name),
                                  buckets(decode, name), factors(name, "prompt_steps"), factors(name, "decode_steps"),
                                  seed=(opts.seed, repeat, i))
            for i, name in enumerate(dep.pools)}


def sim_deployment(dep: Deployment, profile_dir: Path, handoff_s: float = 0.0) -> Deployment:
    """The deployment as the simulator should see it here: a disagg KV link with the bandwidth and latency
    the profile measured for a copy between two processes (the runtime's workers share one machine), the
    latency plus ``handoff_s``, the prefill worker's time from a prompt's last step to sending its KV (raw
    mode: measured, kv_handoff_s; the paced runtime's steps hold it in their pace)."""
    if dep.topology != "disagg":
        return dep
    from profiler.profile import load_profile  # noqa: PLC0415

    t = load_profile(profile_dir).table
    ipc = t[(t.op == "kv_copy") & (t.path == "ipc") & (t.model == dep.model)].sort_values("bytes")
    if ipc.empty:
        return dep
    big = ipc.iloc[-1]
    link = KVLinkSpec(bandwidth_gb_s=float(big.bytes / big.median_s / 1e9),
                      latency_us=float((ipc.iloc[0].median_s + handoff_s) * 1e6), placement="intra")
    return replace(dep, kv_link=link)


# ---- 2. the workload -----------------------------------------------------------------------------
def servable(w: Workload, dep: Deployment) -> tuple[Workload, int]:
    """The requests the runtime can hold (prompt plus output within the model's context and a worker's KV
    cache), and how many were dropped."""
    limit = min(resolve_model(dep.model).max_context, RUNTIME_KV_TOKENS)
    req = w.requests
    keep = (req["isl"] + req["osl"]).to_numpy() <= limit
    if not keep.any():
        raise InputError(f"no request fits the runtime (isl + osl <= {limit} tokens)", where=w.source)
    if keep.all():
        return w, 0
    kept = req[keep].reset_index(drop=True).copy()
    kept["request_id"] = np.arange(len(kept))
    return w.with_requests(kept, source=f"{w.source} [isl + osl <= {limit}]"), int((~keep).sum())


def _slice(w: Workload, rate: float, duration_s: float) -> Workload:
    return time_window(rescale(w, rate=rate), 0.0, duration_s)


def carryable_rate(w: Workload, dep: Deployment, cms: dict, target_util: float, duration_s: float,
                   log: Log) -> tuple[float, float]:
    """The rate rule: the arrival rate (req/s) at which the simulated busiest pool is busy ``target_util`` of the
    time over the first ``duration_s`` seconds. Steps by the ratio until the target is bracketed, then bisects
    (geometrically): a trace's slice is bursty, so the busy share can jump with the rate and the ratio step alone
    oscillates. Returns the simulated rate whose busy share came closest, and that share."""
    from simulator import simulate  # noqa: PLC0415

    tried: list[tuple[float, float]] = []
    lo = hi = None  # rates known to fall short of / exceed the target
    rate = 1.0
    for _ in range(12):
        util = max(simulate(dep, _slice(w, rate, duration_s), cost_models=cms).utilization.values())
        tried.append((rate, util))
        if util <= 0 or abs(util / target_util - 1) < 0.03:
            break
        if util < target_util:
            lo = rate
        else:
            hi = rate
        rate = math.sqrt(lo * hi) if lo and hi else rate * min(4.0, max(0.25, target_util / util))
    rate, util = min(tried, key=lambda t: abs(math.log(max(t[1], 1e-9) / target_util)))
    log(f"rate rule: {rate:.3g} req/s keeps the busiest simulated pool {util:.0%} busy (target {target_util:.0%})")
    return rate, util


# ---- 3. the live runtime -------------------------------------------------------------------------
@dataclass
class Runtime:
    proc: subprocess.Popen
    url: str
    run_dir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_runtime(dep: Deployment, run_dir: Path, profile_dir: Path, opts: ValidateOptions) -> Runtime:
    """``pdsim serve`` on a free loopback port, step logs on; returns once it says it is ready."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dep_path = run_dir / "deployment.yaml"
    dep_path.write_text(dep.to_yaml())
    cmd = [*pdsim_cmd(), "serve", "--deployment", str(dep_path), "--port", "0", "--seed", str(opts.seed),
           "--log", str(run_dir / "requests.jsonl"), "--step-log-dir", str(run_dir)]
    if opts.paced:
        cmd += ["--pace-profile", str(profile_dir), "--pace-scale", str(opts.pace_scale)]
    err = open(run_dir / "serve.stderr", "w")  # noqa: SIM115 - the server's, closed when it exits
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    err.close()
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + opts.ready_timeout_s
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=1.0):
                continue
            line = proc.stdout.readline()
            m = re.search(r"ready on (http://\S+)", line)
            if m:
                return Runtime(proc, m.group(1), run_dir)
            if not line:
                break
    finally:
        sel.close()
    Runtime(proc, "", run_dir).stop()
    why = (run_dir / "serve.stderr").read_text().strip().splitlines()
    raise RuntimeError(f"the runtime did not start: {why[-1] if why else 'no output'}")


def warm_up(rt: Runtime, dep: Deployment, model: str, rounds: int = 1, isl: tuple[int, ...] = (64, 512),
            osl: int | tuple[int, ...] = 4, id_prefix: str = "warmup", spacing_s: float = 0.05) -> dict:
    """A few requests on every worker, ``spacing_s`` apart (per worker): first calls pay one-off costs. Returns
    each round's replay by its request id prefix."""
    from runtime.replay_client import replay  # noqa: PLC0415
    from traces.workload import make_requests  # noqa: PLC0415

    replicas = max(p.replicas for p in dep.pools.values())
    n = len(isl) * replicas
    w = Workload(make_requests(np.arange(n) * spacing_s / replicas, np.resize(isl, n), np.resize(osl, n)),
                 source="warm-up")
    return {f"{id_prefix}{k}": replay(rt.url, w, model=model, id_prefix=f"{id_prefix}{k}") for k in range(rounds)}


def worker_ttft_s(attempt: dict) -> float | None:
    """A request's TTFT inside the workers (one attempt of the request log): from its first worker receiving it
    to its first token there (agg), or to its KV reaching the decode worker (disagg: the first token leaves
    then), the span the simulator models."""
    first = attempt.get("agg") or attempt.get("prefill")
    end = attempt.get("transfer", {}).get("received") if "decode" in attempt else (first or {}).get("first_token")
    return None if first is None or end is None else end - first["queued"]


def single_attempts(log_path: Path) -> dict[str, dict]:
    """The request log's requests that finished ok at their first attempt: ``{request_id: attempt}``."""
    recs = {}
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        rec = json.loads(line)
        if rec["outcome"] == "ok" and len(rec["attempts"]) == 1:
            recs[rec["request_id"]] = rec["attempts"][0]
    return recs


def request_overhead_s(replays: dict, log_path: Path) -> float | None:
    """The runtime's own per-request overhead: the median over requests of the client's TTFT (from sending)
    minus the TTFT inside the workers (``worker_ttft_s``): HTTP, the frontend, and the hops to the first worker
    and back with the first token, which the simulator's ``ttft_overhead_s`` stands for."""
    recs = single_attempts(log_path)
    d = []
    for prefix, r in replays.items():
        for row in r.requests[r.requests["outcome"] == "ok"].itertuples():
            inside = worker_ttft_s(recs.get(f"{prefix}-{row.request_id}", {}))
            if inside is not None:
                d.append(row.first_token_s - row.sent_s - inside)
    return float(np.median(d)) if d else None


def kv_handoff_s(log_path: Path, id_prefix: str | tuple[str, ...]) -> float | None:
    """Disagg: the median time from a prompt's last prefill step to its KV leaving the prefill worker (gathering
    the prompt's KV from the cache, handing it to the sender thread), over the requests of ``id_prefix`` in the
    request log: what the prefill worker spends on a transfer besides the copy the profile timed."""
    d = [a["transfer"]["send_start"] - a["prefill"]["first_token"] for rid, a in single_attempts(log_path).items()
         if rid.startswith(id_prefix) and a.get("transfer", {}).get("send_start")
         and a.get("prefill", {}).get("first_token")]
    return max(0.0, float(np.median(d))) if d else None


def pool_of(worker: str) -> str:
    """The pool a worker's step log belongs to (``prefill-0`` -> prefill, ``agg-1`` -> workers)."""
    return POOL_OF_ROLE[worker.rsplit("-", 1)[0]]


def read_steps(run_dir: Path, windows: list[tuple[float, float]]) -> dict[str, list[dict]]:
    """Each worker's step log rows that started in one of the wall windows [start, end)."""
    out = {}
    for path in sorted(run_dir.glob("steps-*.jsonl")):
        rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        out[path.stem.removeprefix("steps-")] = [r for r in rows if any(a <= r["start"] < b for a, b in windows)]
    return out


def predicted_s(rows: list[dict], cm) -> np.ndarray:
    """What ``cm`` predicts for each step's batch."""
    from profiler.costmodel import Batch  # noqa: PLC0415

    return np.asarray([cm.iteration_s(Batch(np.asarray(r["prefill_tokens"], np.int64),
                                             np.asarray(r["prefill_cached"], np.int64),
                                             np.asarray(r["decode_ctx"], np.int64))) for r in rows])


def slowdown(rows: list[dict], cm) -> np.ndarray:
    """Each step's real compute over what ``cm`` predicts for its batch."""
    return np.asarray([r["compute_s"] for r in rows]) / predicted_s(rows, cm)


def step_overhead(rows: list[dict], scale: float = 1.0) -> dict | None:
    """What a live step takes beyond its model's compute, from a step log, per sequence that samples: for every step
    that began while work was waiting (``gap_s`` logged), the wall time from the end of the step before to its own end
    (``gap_s + compute_s``) less its model's CPU time (``model_s`` at the step's CPU share) times ``scale`` (wall over
    CPU time, compute_slowdown: so, about the forward's wall time), fitted as ``iteration_s + per_seq_s x sequences`` by
    least squares (means: step times add up to TPOT and busy time; a negative slope counts as none). It holds the
    runtime's own work around the model (preparing the batch, sampling, postprocessing in the step; sending tokens, the
    step log, messages between steps: ``cpu_*``, the same fit on the worker thread's CPU time) and the time the worker
    waits for a core or the GIL while the frontend and the client, on the same CPU, stream its tokens (``wait_*``: the
    rest), which grows with the sequences streaming. The profile's ``iteration_overhead`` is inside the model forward
    and not counted here. None without such steps."""
    rows = [r for r in rows if r.get("gap_s") is not None and r.get("gap_cpu_s") is not None]
    if len(rows) < 2:
        return None
    col = {k: np.asarray([r[k] for r in rows], np.float64) for k in ("compute_s", "model_s", "gap_s", "gap_cpu_s")}
    share = np.minimum(1.0, np.asarray([r.get("cpu_s") or r["compute_s"] for r in rows]) / col["compute_s"])
    wall = col["gap_s"] + col["compute_s"] - scale * share * col["model_s"]
    own = share * (col["compute_s"] - col["model_s"]) + col["gap_cpu_s"]
    n = np.asarray([r.get("sampled", len(r["decode_ctx"]) + len(r["prefill_tokens"])) for r in rows], np.float64)

    def fit(o: np.ndarray) -> tuple[float, float]:
        per_seq = max(0.0, float(np.polyfit(n, o, 1)[0])) if np.ptp(n) > 0 else 0.0
        return max(0.0, float(np.mean(o - per_seq * n))), per_seq

    (it, ps), (cpu_it, cpu_ps) = fit(wall), fit(own)
    return {"iteration_s": it, "per_seq_s": ps, "cpu_iteration_s": cpu_it, "cpu_per_seq_s": cpu_ps,
            "wait_iteration_s": it - cpu_it, "wait_per_seq_s": ps - cpu_ps, "steps": len(rows),
            "max_seqs": int(n.max()), "wall_s": float(wall.mean()), "cpu_s": float(own.mean()),
            "gap_cpu_over_wall": float(col["gap_cpu_s"].sum() / max(col["gap_s"].sum(), 1e-12))}


def compute_slowdown(rows: list[dict]) -> float | None:
    """Wall over this thread's CPU time of the steps' compute, the median over steps (at least 1): how much longer
    the model's work took than on a core of its own, the share other processes took. The median: a burst of a
    few seconds must not take one long step that another process preempted for the share of a whole replay."""
    ratios = [r["compute_s"] / r["cpu_s"] for r in rows if r.get("cpu_s")]
    return max(1.0, float(np.median(ratios))) if ratios else None


def model_slowdown(rows: list[dict], cm: CostModel) -> float | None:
    """The steps' model forward (wall time, ``model_s``) over what ``cm`` predicts for their batch, the median
    over steps: the profile's op timings hold for the ops alone on an idle core, while a live forward shares the
    caches and the memory bus with the frontend, the client and the other workers (measured: a profile made
    again at 19:55 timed its GEMMs and attention within 4 % of the one from 17:48, while the live decode steps
    took 1.34x its CPU time at 19:50 and 1.01-1.03x at 18:50-19:25). None without such steps."""
    rows = [r for r in rows if r.get("model_s")]
    return float(np.median(np.asarray([r["model_s"] for r in rows]) / predicted_s(rows, cm))) if rows else None


def slowdown_by_size(rows: list[dict], cm: CostModel, prompts: bool) -> list[list] | None:
    """The steps' model forward over ``cm``'s prediction by step size, the mean in each size, for the steps with prompt
    tokens among ``rows`` (``prompts``; size: the step's tokens, buckets of up to 64, 128, 256, ...) or the decode-only
    ones (size: sequences, buckets of 1, 2, 3-4, 5-8, ...), up to the largest step: ``[[max_size, slowdown], ...]``
    (ScaledCostModel.prompt_scales and decode_scales). The mean, not the median: the simulation gives every step of a
    size one cost, and the one that keeps a worker as busy as the live one (the work its queue waits behind) is the
    expected step time. Live step times spread to the right (the disagg prefill worker's prompts in the three replays of
    2026-11-29 11:01: the mean 6-15 % over the median in six of seven sizes; its decode worker's 0-4 %), so the median
    under-charged the busy pools: re-simulated on the replays' own costs, disagg TTFT p50/p90 -18.4/-22.7 % with
    medians, -12.7/-12.9 % with means; agg -7.8/-8.4 % and -5.3/-5.6 %. A live step's slowdown depends on its size, and
    the rehearsal's mix of sizes is not the replay's, so one figure over its steps would carry the wrong mix (measured,
    21:46: the agg worker's decode steps of one sequence ran 1.26x the profile, of 3-4 1.17x, of 5-16 1.00x, of more
    0.92x; 22:24, the disagg prefill worker's prompts of up to 512 tokens 1.23-1.30x, of 513-2048 1.05-1.10x, longer
    0.88-0.94x). A bucket with fewer steps than MIN_BUCKET_STEPS (prompts: MIN_PROMPT_BUCKET_STEPS; a rehearsal holds a
    few dozen prompts) takes the nearest measured bucket's figure (the smaller on a tie). None without such steps."""
    rows, size, ratio = sized_slowdowns(rows, cm, prompts)
    return size_buckets(size, ratio, prompts) if rows else None


def sized_slowdowns(rows: list[dict], cm: CostModel, prompts: bool) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The steps with prompt tokens among ``rows`` (``prompts``) or the decode-only ones, with a model forward logged;
    their sizes as slowdown_by_size counts them (tokens, or sequences) and their forward over ``cm``'s prediction."""
    rows = [r for r in rows if r.get("model_s") and bool(r["prefill_tokens"]) == prompts]
    size = np.asarray([sum(r["prefill_tokens"]) + len(r["decode_ctx"]) if prompts else len(r["decode_ctx"])
                       for r in rows], dtype=np.int64)
    ratio = np.asarray([r["model_s"] for r in rows]) / predicted_s(rows, cm) if rows else np.zeros(0)
    return rows, size, ratio


def size_buckets(size: np.ndarray, ratio: np.ndarray, prompts: bool) -> list[list]:
    """slowdown_by_size's buckets of steps of these sizes and slowdowns (at least one step)."""
    edges = [PROMPT_BUCKET_TOKENS if prompts else 1]
    while edges[-1] < size.max():
        edges.append(edges[-1] * 2)
    lows = [1, *(hi + 1 for hi in edges[:-1])]
    least = MIN_PROMPT_BUCKET_STEPS if prompts else MIN_BUCKET_STEPS
    found = [float(np.mean(ratio[m])) if (m := (size >= lo) & (size <= hi)).sum() >= least else None
             for lo, hi in zip(lows, edges, strict=True)]
    known = [i for i, x in enumerate(found) if x is not None]
    if not known:  # too few steps of any one size: their mean over all sizes
        return [[edges[-1], float(np.mean(ratio))]]
    return [[hi, found[min(known, key=lambda k: (abs(k - i), k))]] for i, hi in enumerate(edges)]


def relative_slowdowns(rows: list[dict], cm: CostModel, prompts: bool) -> tuple[list[dict], np.ndarray]:
    """The steps with prompt tokens among ``rows`` (``prompts``) or the decode-only ones, and each one's model forward
    over ``cm``'s prediction over its size's slowdown (slowdown_by_size's table of these steps): how it ran against
    the steps of its size."""
    kept, size, ratio = sized_slowdowns(rows, cm, prompts)
    if not kept:
        return kept, ratio
    table = size_buckets(size, ratio, prompts)
    return kept, ratio / np.asarray([bucket_scale(table, s) for s in size])


def step_spread(rows: list[dict], cm: CostModel) -> dict | None:
    """How steps of one size spread around their size's slowdown (relative_slowdowns), as SPREAD_QUANTILES equally
    likely factors (the quantiles at the middle of each 1/SPREAD_QUANTILES of the steps, scaled to mean 1: the mean is
    the size's slowdown's), for steps with prompts and decode-only steps with at least MIN_SPREAD_STEPS steps:
    ``{"prompt_steps": [...], "decode_steps": [...]}`` (ScaledCostModel's prompt_spread, decode_spread), or None.
    Why: a simulation that gives every step of a size its mean keeps a worker as busy as the live one but draws no
    queue from the spread, and a queue grows with it (the live prefill worker's prompt steps ran 0.72-0.80x their
    size's mean at p10 and 1.22-1.35x at p90 in the disagg replays of 2026-11-29 12:27-13:12; its decode worker's
    0.79-0.86x and 1.16-1.29x). Re-simulated offline on those three disagg runs, each step drawing from the spread
    the rehearsals before them measured, three simulated repeats, the median: TTFT p50 -3.9 / -16.6 / +11.6 % ->
    -0.7 / -4.9 / +3.2 %, p90 -1.2 / -10.1 / +2.8 % -> -0.3 / -7.3 / +1.8 %, TPOT within 2.6 points of before; on
    the replays' own costs and spread (the error split) TTFT p50 -11.3 / -15.6 / +5.0 % -> -3.6 / -4.9 / -4.2 %; no
    cell of the agg runs of the same hours moved by more than 4.2 points."""
    out = {}
    for kind, prompts in (("prompt_steps", True), ("decode_steps", False)):
        rel = relative_slowdowns(rows, cm, prompts)[1]
        if len(rel) >= MIN_SPREAD_STEPS:
            q = np.quantile(rel, (np.arange(SPREAD_QUANTILES) + 0.5) / SPREAD_QUANTILES)
            out[kind] = [float(x) for x in q / q.mean()]
    return out or None


POOL_OF_ROLE = {"agg": "workers", "prefill": "prefill", "decode": "decode"}
CO_IDLE, CO_BUSY = 0.25, 0.75  # co_activity: the other workers busy for less / more than this share of a step


def busy_share(steps: list[dict], others: list[dict]) -> np.ndarray:
    """For each step of ``steps``, the share of its duration during which a step of ``others`` was running (the
    union of their spans)."""
    spans = sorted((r["start"], r["start"] + r["duration_s"]) for r in others)
    merged: list[list[float]] = []
    for a, b in spans:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    starts = np.asarray([m[0] for m in merged])
    ends = np.asarray([m[1] for m in merged])
    cum = np.concatenate([[0.0], np.cumsum(ends - starts)])

    def covered(t: float) -> float:  # busy seconds of the others before time t
        i = int(np.searchsorted(starts, t, side="right"))
        return float(cum[i - 1] + min(t, ends[i - 1]) - starts[i - 1]) if i else 0.0

    return np.asarray([(covered(r["start"] + r["duration_s"]) - covered(r["start"])) / r["duration_s"]
                       if r["duration_s"] > 0 else 0.0 for r in steps])


def co_activity(rows: list[dict], others: list[dict], cm: CostModel) -> dict | None:
    """How a worker's steps run while the run's other workers compute on the same CPU: each step's model forward over
    the profile (as slowdown_by_size), over its size's mean, and the median of that for the steps during which the
    others were busy less than CO_IDLE of the time (``others_idle``) and more than CO_BUSY (``others_busy``), for
    steps with prompts and decode-only steps (a diagnosis: the simulation takes each size's mean over both). None
    without other workers."""
    if not others:
        return None
    out = {}
    for kind, prompts in (("prompt_steps", True), ("decode_steps", False)):
        kept, rel = relative_slowdowns(rows, cm, prompts)
        if not kept:
            continue
        busy = busy_share(kept, others)
        idle, full = busy < CO_IDLE, busy > CO_BUSY
        out[kind] = {"others_idle": float(np.median(rel[idle])) if idle.any() else None,
                     "others_busy": float(np.median(rel[full])) if full.any() else None,
                     "steps_idle": int(idle.sum()), "steps_busy": int(full.sum())}
    return out or None


def step_stats(run_dir: Path, start_wall: float, end_wall: float, cms: dict, paced: bool,
               base: CostModel | None = None) -> dict:
    """Per worker over [start, end): busy share (sum of step durations / window); where the raw error comes from: median
    step compute over the profile's prediction (``base``), split into CPU time over prediction (the profile's own error;
    also for steps with and without a prompt chunk) and wall over CPU time (the share of the core other processes took);
    the live steps' overhead outside the model (step_overhead) and the model forward's slowdown by step size
    (slowdown_by_size), to set beside the rehearsals' or the burst's that the simulation used, and how the steps ran
    while the other workers computed (co_activity; raw only); when paced,
    the share of steps whose compute alone took longer than their pace."""
    out = {}
    by_worker = read_steps(run_dir, [(start_wall, end_wall)])
    for wid, rows in by_worker.items():
        stats = {"steps": len(rows), "busy_share": sum(r["duration_s"] for r in rows) / max(end_wall - start_wall,
                                                                                            1e-9)}
        if rows:
            cm = cms[POOL_OF_ROLE[wid.rsplit("-", 1)[0]]]
            if paced:
                stats["overrun_share"] = float((slowdown(rows, cm) > 1).mean())
            ratio = slowdown(rows, base or cm)
            wall = np.asarray([r["compute_s"] for r in rows])
            cpu = np.asarray([r.get("cpu_s", np.nan) for r in rows])
            prefill = np.asarray([len(r["prefill_tokens"]) > 0 for r in rows])
            stats["compute_over_profile"] = float(np.median(ratio))
            stats["cpu_over_profile"] = float(np.median(cpu / wall * ratio))
            for name, m in (("prefill", prefill), ("decode", ~prefill)):
                if m.any():
                    stats[f"cpu_over_profile_{name}_steps"] = float(np.median((cpu / wall * ratio)[m]))
            stats["wall_over_cpu"] = float(np.median(wall / cpu))
            if not paced and base is not None:  # as the rehearsals measured it for the simulation
                stats["slowdown_by_size"] = {"prompt_steps": slowdown_by_size(rows, base, True),
                                             "decode_steps": slowdown_by_size(rows, base, False)}
                stats["co_activity"] = co_activity(rows, [r for w, rs in by_worker.items() if w != wid for r in rs],
                                                   base)
            over = None if paced else step_overhead(rows, compute_slowdown(rows) or 1.0)
            if over:
                stats |= {"overhead_ms": over["iteration_s"] * 1e3, "per_seq_overhead_ms": over["per_seq_s"] * 1e3,
                          "own_overhead_ms": over["cpu_iteration_s"] * 1e3,
                          "own_per_seq_overhead_ms": over["cpu_per_seq_s"] * 1e3, "max_seqs": over["max_seqs"]}
        out[wid] = stats
    return out


def runtime_costs(run_dir: Path, low: list[tuple[float, float]], window: list[tuple[float, float]], replays: dict,
                  id_prefix: str | tuple[str, ...], cm: CostModel) -> dict:
    """What raw mode's simulation adds to the profile, from a run's step and request logs: the compute slowdown
    (model_slowdown, over all workers' steps and per pool and step size; wall over CPU time too) and the steps' slowdown
    against ``cm`` in the wall windows ``low``; the steps' overhead beyond their model (step_overhead) in ``window``;
    the per-request overhead (request_overhead_s) of the requests of ``replays`` (``{request id prefix: replay}``)
    and the disagg KV hand-off (kv_handoff_s) of those whose ids start with ``id_prefix``."""
    by_worker = {w: rows for w, rows in read_steps(run_dir, low).items() if rows}
    per_pool: dict[str, list[dict]] = {}
    for worker, rows in by_worker.items():
        per_pool.setdefault(pool_of(worker), []).extend(rows)
    steps = [r for rows in read_steps(run_dir, window).values() for r in rows]
    ratios = np.concatenate([slowdown(rows, cm) for rows in by_worker.values()] or [np.ones(1)])
    low_rows = [r for rows in by_worker.values() for r in rows]
    wall_over_cpu = compute_slowdown(low_rows) or 1.0
    over = step_overhead(steps, wall_over_cpu) or {"iteration_s": 0.0, "per_seq_s": 0.0}
    scale = model_slowdown(low_rows, cm) or wall_over_cpu
    return {"median": float(np.median(ratios)), "p95": float(np.percentile(ratios, 95)), "steps": len(ratios),
            "ttft_overhead_s": request_overhead_s(replays, run_dir / "requests.jsonl"),
            "wall_over_cpu": wall_over_cpu, "compute_slowdown": scale,
            "pool_slowdown": {p: x for p, rows in sorted(per_pool.items()) if (x := slowdown_by_size(rows, cm, True))},
            "pool_decode_slowdown": {p: x for p, rows in sorted(per_pool.items())
                                     if (x := slowdown_by_size(rows, cm, False))},
            "pool_spread": {p: x for p, rows in sorted(per_pool.items()) if (x := step_spread(rows, cm))},
            "kv_handoff_s": kv_handoff_s(run_dir / "requests.jsonl", id_prefix),
            "iteration_overhead_s": over["iteration_s"], "per_seq_overhead_s": over["per_seq_s"], "overhead": over}


def replay_cost_check(dep: Deployment, w: Workload, replays: list, windows: list[tuple[float, float]], run_dir: Path,
                      profile_dir: Path, opts: ValidateOptions, live: list[dict], base: CostModel) -> dict:
    """Raw mode's split of the error: the same simulation again, on the costs measured in the replays themselves
    (runtime_costs over their own steps and requests, in place of the rehearsals'), compared with the same live
    figures. What error is left then is the simulator's (batching, queueing, transfer, how cost varies within a
    size bucket), not the cost measurement's; the difference from the main figures is what the machine's drift
    between the rehearsals and the replays cost. A diagnosis only: the replays are what is predicted, so their own
    costs are not a prediction."""
    prefixes = [f"r{i}" for i in range(len(replays))]
    costs = runtime_costs(run_dir, windows, windows, dict(zip(prefixes, replays, strict=True)),
                          tuple(f"{p}-" for p in prefixes), base)
    found = {k: costs[k] for k in RAW_COSTS if costs[k] is not None}  # what the replays do not show stays as it was
    if "ttft_overhead_s" in found:
        found["ttft_overhead_s"] = max(0.0, found["ttft_overhead_s"])
    own = replace(opts, **found)
    cells = compare(live, [sim.summary() for sim in simulate_run(dep, w, profile_dir, own)], paced=False)
    return {"metrics": {m: {p: {k: c[k] for k in ("sim", "rel_error", "within_target") if k in c}
                            for p, c in cells[m].items()} for m in ("ttft_ms", "tpot_ms")},
            "costs": raw_costs_doc(own)}


def raw_costs_doc(opts: ValidateOptions) -> dict:
    """What raw mode's simulation adds to the profile, as validate.json reports it (``raw_step_costs``)."""
    return {"iteration_overhead_ms": opts.iteration_overhead_s * 1e3,
            "per_seq_overhead_ms": opts.per_seq_overhead_s * 1e3, "compute_slowdown": opts.compute_slowdown,
            "pool_slowdown": opts.pool_slowdown, "pool_decode_slowdown": opts.pool_decode_slowdown,
            "pool_spread": opts.pool_spread,
            "kv_handoff_ms": (opts.kv_handoff_s or 0.0) * 1e3, "ttft_overhead_ms": opts.ttft_overhead_s * 1e3}


def measure_slowdown(dep: Deployment, profile_dir: Path, opts: ValidateOptions, log: Log) -> dict:
    """How much slower than the profile's prediction the runtime's steps compute on this machine now: the
    median and 95th percentile of (real step compute / prediction), measured on the unpaced runtime under a
    short burst after its warm-up. Other processes on a shared CPU take their share, so this is often > 1.
    The same burst measures what raw mode's simulation adds to the profile: the runtime's per-request overhead
    (``ttft_overhead_s``, request_overhead_s), its own time around each step's model compute
    (``iteration_overhead_s``, ``per_seq_overhead_s``: step_overhead) and the compute slowdown (the model
    forward's wall time over the profile's prediction: model_slowdown), over the steps of all workers and per
    pool (runtime_costs)."""
    from profiler.paced import paced_cost_model  # noqa: PLC0415

    cm = paced_cost_model(str(profile_dir), dep.model, dep.dtype, dep.gpu)
    rt = start_runtime(dep, opts.out_dir / "slowdown", profile_dir, replace(opts, paced=False))
    replicas = max(p.replicas for p in dep.pools.values())
    try:
        warm_up(rt, dep, dep.model)
        t0 = time.time()
        # Spaced: one client (its connections reused, as in the replay) at about the rate the rule picks here
        # (2 req/s per worker): the slowdown, the per-request overhead, the step at low load. (A denser burst, 4
        # prompts in 0.15 s, measured the contention of its own arrivals: bench run at 17:52, the worker waited
        # 0.6 ms off CPU between steps, the replay after it 0.1 ms; wall/CPU 1.075 against 1.000; TTFT overhead
        # 8.2 ms, the replay ~2 ms less.)
        spaced = warm_up(rt, dep, dep.model, isl=(64, 512, 200, 1024) * 4, osl=32, id_prefix="burst", spacing_s=0.5)
        t1 = time.time()
        # Streaming: 16 short prompts per worker at once, ending 16 tokens apart, so that steps of 1 to 16
        # sequences stream their tokens through the frontend and the client as a loaded replay's do.
        warm_up(rt, dep, dep.model, isl=(64,) * 16, osl=(64, 48, 32, 16), id_prefix="stream", spacing_s=0.002)
        t2 = time.time()
    finally:
        rt.stop()
    out = runtime_costs(rt.run_dir, [(t0, t1)], [(t0, t2)], spaced, "burst", cm)
    over = out["overhead"]
    log(f"slowdown: real step compute is {out['median']:.2f}x the profile's prediction (p95 {out['p95']:.2f}x) "
        f"on this machine now, model forward {out['compute_slowdown']:.3f}x, wall/CPU {out['wall_over_cpu']:.3f}; "
        "a step takes "
        f"{over['iteration_s'] * 1e3:.3f} ms + {over['per_seq_s'] * 1e3:.4f} ms per sequence beyond its model's "
        "compute, of which the worker's own work "
        f"{over.get('cpu_iteration_s', 0) * 1e3:.3f} ms + {over.get('cpu_per_seq_s', 0) * 1e3:.4f} ms/seq "
        f"({replicas} worker(s) per pool, sequences up to {over.get('max_seqs', 0)})")
    return out


def pace_scale_for(slow: dict) -> float:
    """Paced mode's scale: 2 x the p95 slowdown (rounded up to a quarter), at least 1.5. Why 2: on a shared CPU
    a worker can get half a core for tens of seconds while another process runs (measured in a disagg replay:
    the decode worker's CPU time over wall fell from 1.0 to 0.5 for 30 s of 120, its median step slowdown from
    1.3 to 4.5 x; at 1.5 x p95 = 4.25 x, 6 % of its steps overran and four requests' TPOT rose 40 %); at 2 x p95 a
    step of the p95 shape still meets its pace on half a core. The rare step that stalls beyond that (3-7 x its
    pace when the OS takes the core) is made up by the steps after it (runtime/engine.py), from their slack."""
    return max(1.5, math.ceil(2 * slow["p95"] * 4) / 4)


def run_live(dep: Deployment, w: Workload, profile_dir: Path, opts: ValidateOptions, log: Log,
             rehearsals: list[Workload] | None = None) -> tuple[list, list[tuple[float, float]], Path, dict | None]:
    """Replay ``w`` on the live runtime ``opts.repeats`` times (one server, warmed up), each replay after the
    rehearsal of its index in ``rehearsals`` where there is one. Returns the replays, each replay's wall window
    (for step_stats), the run's folder, and what the rehearsals measured together (runtime_costs) or None."""
    from profiler.paced import paced_cost_model  # noqa: PLC0415
    from runtime.replay_client import replay  # noqa: PLC0415

    rehearsals = rehearsals or []
    rt = start_runtime(dep, opts.out_dir / "live", profile_dir, opts)
    replays, windows, rehearsed, rehearsed_runs = [], [], None, {}
    try:
        log(f"live: runtime ready at {rt.url}; warming up")
        warm_up(rt, dep, dep.model)
        for i in range(opts.repeats):
            if i < len(rehearsals):
                part = rehearsals[i]
                log(f"live: rehearsal {i + 1}/{len(rehearsals)}: {len(part)} other requests of the workload at the "
                    f"same rate over {part.duration_s:.0f} s, to measure the runtime's costs under the replay's load")
                rehearsed_runs[f"rehearsal{i}"] = replay(rt.url, part, model=dep.model, seed=opts.seed,
                                                         id_prefix=f"rehearsal{i}")
            log(f"live: replay {i + 1}/{opts.repeats}: {len(w)} requests over {w.duration_s:.0f} s")
            r = replay(rt.url, w, model=dep.model, seed=opts.seed, id_prefix=f"r{i}")
            windows.append((r.start_wall, _end_wall(r)))
            replays.append(r)
            bad = int((r.requests["outcome"] != "ok").sum())
            if bad:
                log(f"live: {bad} requests failed, e.g. {r.requests.loc[r.requests.outcome != 'ok', 'error'].iloc[0]}")
        ok = sum(int((r.requests["outcome"] == "ok").sum()) for r in rehearsed_runs.values())
        if rehearsed_runs and ok >= MIN_REHEARSAL_REQUESTS:
            cm = paced_cost_model(str(profile_dir), dep.model, dep.dtype, dep.gpu)
            spans = [(r.start_wall, _end_wall(r)) for r in rehearsed_runs.values()]
            rehearsed = runtime_costs(rt.run_dir, spans, spans, rehearsed_runs, "rehearsal", cm)
            rehearsed |= {"requests": ok, "parts": len(spans)}
        elif rehearsed_runs:
            log(f"live: only {ok} rehearsal requests finished; raw mode keeps the burst's costs")
    finally:
        rt.stop()
    return replays, windows, rt.run_dir, rehearsed


def _end_wall(r) -> float:
    """A replay's wall clock at its last token."""
    return r.start_wall + float(np.nanmax(r.requests["last_token_s"].to_numpy(), initial=0.0))


def rehearsal_slices(w: Workload, rate: float, opts: ValidateOptions) -> list[Workload]:
    """Raw mode's rehearsals, one before each replay: consecutive ``opts.rehearsal_s``-second windows of the
    rescaled workload right after the replayed slice (other requests, the same rate and burstiness), as many as
    there are repeats and the workload holds; none when off or paced. One before each replay rather than all
    at first: the machine's speed drifts over minutes (the disagg prefill worker in a rehearsal at 22:55 ran prompts
    of up to 256 tokens at 1.94x the profile and of 257-2048 at 1.29-1.35x; in the three replays after it 1.10-1.31x
    and 0.96-1.11x), and the rehearsals' steps taken together span the replays' time."""
    if opts.paced or opts.rehearsal_s <= 0:
        return []
    whole, out = rescale(w, rate=rate), []
    for i in range(opts.repeats):
        start = opts.duration_s + i * opts.rehearsal_s
        try:
            out.append(time_window(whole, start, start + opts.rehearsal_s))
        except InputError:
            break
    return out


def live_stats(r) -> dict:
    ok = r.requests[r.requests["outcome"] == "ok"]
    return {"ttft_ms": stats_ms(ok["ttft_s"].to_numpy()), "tpot_ms": stats_ms(ok["tpot_s"].to_numpy()),
            "itl_ms": stats_ms(np.concatenate([np.diff(r.token_s[i]) for i in ok["request_id"]] or [np.zeros(0)])),
            "e2e_ms": stats_ms(ok["e2e_s"].to_numpy())}


def simulate_run(dep: Deployment, w: Workload, profile_dir: Path, opts: ValidateOptions) -> list:
    """The run simulated as the live side ran it: raw with a measured step spread (``pool_spread``), once per live
    repeat, each drawing its steps' costs with a seed of its own (the live repeats differ by the machine's draws too);
    otherwise once (paced, or without a spread, the simulation is the same every time)."""
    from simulator import simulate  # noqa: PLC0415

    sim_dep = sim_deployment(dep, profile_dir, 0.0 if opts.paced else opts.kv_handoff_s or 0.0)
    n = opts.repeats if not opts.paced and opts.pool_spread else 1
    return [simulate(sim_dep, w, seed=opts.seed, cost_models=cost_models(dep, profile_dir, opts, i)) for i in range(n)]


def rel_error(sim: float | None, live: float | None) -> float | None:
    if sim is None or live is None or not live > 0:
        return None
    return (sim - live) / live


def compare(live: list[dict], sims: list[dict], paced: bool) -> dict:
    """``{metric: {pN: {live, sim, rel_error, live_repeats, repeat_spread, target, within_target}}}`` (and
    ``sim_repeats`` where more than one simulation is given).

    ``live`` is the median over the live repeats, ``sim`` over the simulated ones (summaries, simulate_run);
    ``repeat_spread`` is (max - min) / median of the live repeats."""
    targets = TARGETS["paced" if paced else "raw"]
    out: dict = {}
    for metric in METRICS:
        out[metric] = {}
        for q in PERCENTILES:
            p = f"p{q}"
            reps = [s[metric][p] for s in live if s[metric][p] is not None]
            lv = float(np.median(reps)) if reps else None
            sim_reps = [s[metric][p] for s in sims if s[metric][p] is not None]
            sv = float(np.median(sim_reps)) if sim_reps else None
            err = rel_error(sv, lv)
            spread = (max(reps) - min(reps)) / lv if len(reps) > 1 and lv else None
            cell = {"live": lv, "sim": sv, "rel_error": err, "live_repeats": reps, "repeat_spread": spread}
            if len(sim_reps) > 1:
                cell["sim_repeats"] = sim_reps
            target = targets.get(p) if metric in ("ttft_ms", "tpot_ms") else None
            if target is not None:
                bound = target if paced else max(target, spread or 0.0)
                cell["target"] = bound
                cell["within_target"] = err is not None and abs(err) <= bound
            out[metric][p] = cell
    return out


def per_request(replays: list, sim_requests: pd.DataFrame) -> pd.DataFrame:
    """One row per (repeat, request): live and simulated TTFT, TPOT, E2E in seconds."""
    cols = ["request_id", "ttft_s", "tpot_s", "e2e_s"]
    sim = sim_requests[[*cols, "isl", "osl"]].rename(columns={c: f"sim_{c}" for c in cols[1:]})
    frames = []
    for i, r in enumerate(replays):
        live = r.requests[[*cols, "outcome", "lag_s"]].rename(columns={c: f"live_{c}" for c in cols[1:]})
        frames.append(live.merge(sim, on="request_id").assign(repeat=i))
    return pd.concat(frames, ignore_index=True)


def per_request_diffs(rows: pd.DataFrame) -> dict:
    """Median and p90 over requests of live minus simulated TTFT and TPOT (ms): a constant offset (HTTP, the
    frontend hop, client lag) shows here where the percentiles blur it."""
    ok = rows[rows["outcome"] == "ok"]
    out = {}
    for m in ("ttft", "tpot"):
        d = (ok[f"live_{m}_s"] - ok[f"sim_{m}_s"]).dropna().to_numpy() * 1e3
        out[f"{m}_live_minus_sim_ms"] = {"p50": float(np.median(d)), "p90": float(np.percentile(d, 90))} \
            if len(d) else None
    return out


def _clean(x):
    """JSON-safe: NaN and infinity become null."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


# ---- the whole run -------------------------------------------------------------------------------
def validate(dep: Deployment, workload: Workload, opts: ValidateOptions, log: Log = lambda s: None) -> dict:
    """Profile, replay live, simulate, compare; writes validate.json, validate.html and requests.csv to
    ``opts.out_dir`` and returns the JSON document."""
    check_runnable(dep)
    if workload.closed_loop:
        raise InputError("validate replays an open-loop workload (arrival times); this one is closed-loop",
                         where=workload.source)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    profile_dir = profile_for(dep, opts, log)
    need_scale, need_rate = opts.paced and opts.pace_scale is None, opts.rate is None
    need_overhead = opts.ttft_overhead_s is None
    need_step = not opts.paced and None in (opts.iteration_overhead_s, opts.per_seq_overhead_s, opts.compute_slowdown)
    measured = [k for k in RAW_COSTS if getattr(opts, k) is None]  # what the burst (or rehearsal) sets
    slow = (measure_slowdown(dep, profile_dir, opts, log) if need_scale or need_rate or need_overhead or need_step
            else None)
    if need_scale:
        opts = replace(opts, pace_scale=pace_scale_for(slow))
        log(f"pace: every step lasts {opts.pace_scale:g} x the profile's prediction")
    if need_overhead:
        opts = replace(opts, ttft_overhead_s=max(0.0, slow["ttft_overhead_s"] or 0.0))
    if need_step:
        opts = replace(opts, **{k: slow[k] for k in measured if k != "ttft_overhead_s"})
    cms = cost_models(dep, profile_dir, opts)
    sim_dep = sim_deployment(dep, profile_dir, 0.0 if opts.paced else opts.kv_handoff_s or 0.0)
    w, dropped = servable(workload, dep)
    rate = opts.rate
    if rate is None:  # on the very costs the simulation of the run uses, so the live busy share is the target
        rate = carryable_rate(w, sim_dep, cms, opts.target_util, opts.duration_s, log)[0]
    rehearsals = rehearsal_slices(w, rate, opts) if measured else []
    w = _slice(w, rate, opts.duration_s)
    log(f"workload: {len(w)} requests at {rate:.3g} req/s over {w.duration_s:.0f} s ({dropped} too long dropped)")
    replays, windows, run_dir, rehearsed = run_live(dep, w, profile_dir, opts, log, rehearsals)
    costs_from = "burst" if slow else "given"
    if rehearsed:
        rehearsed["ttft_overhead_s"] = max(0.0, rehearsed["ttft_overhead_s"] or 0.0)
        opts = replace(opts, **{k: rehearsed[k] for k in measured if rehearsed[k] is not None})
        costs_from = "rehearsal"
        sim_dep = sim_deployment(dep, profile_dir, opts.kv_handoff_s or 0.0)  # the link validate.json reports
    log_costs(dep, opts, costs_from, log)
    sims = simulate_run(dep, w, profile_dir, opts)
    sim = sims[0]  # the one whose requests are set beside the live ones (requests.csv, the report's scatter)
    from profiler.paced import paced_cost_model  # noqa: PLC0415

    base = paced_cost_model(str(profile_dir), dep.model, dep.dtype, dep.gpu)
    workers = [step_stats(run_dir, a, b, cms, opts.paced, base) for a, b in windows]
    live = [live_stats(r) for r in replays]
    metrics = compare(live, [s.summary() for s in sims], opts.paced)
    check = None if opts.paced else replay_cost_check(dep, w, replays, windows, run_dir, profile_dir, opts, live, base)
    rows = per_request(replays, sim.requests)
    rows.to_csv(opts.out_dir / "requests.csv", index=False, float_format="%.6g")
    doc = _clean({
        "metrics": metrics,
        "mode": "paced" if opts.paced else "raw",
        "pace_scale": opts.pace_scale if opts.paced else None,
        "ttft_overhead_ms": opts.ttft_overhead_s * 1e3,
        "raw_step_costs": None if opts.paced else raw_costs_doc(opts),
        "sim_on_replay_costs": check,
        "repeats": opts.repeats,
        "deployment": dep.to_dict(),
        "simulated_kv_link": sim_dep.to_dict().get("kv_link"),
        "profile": str(profile_dir),
        "measured_slowdown": slow,
        "rehearsal": rehearsed and {"requests": rehearsed["requests"], "parts": rehearsed["parts"],
                                    "seconds_each": opts.rehearsal_s, "overhead": rehearsed["overhead"]},
        "costs_measured_in": costs_from,
        "workload": {"source": w.source, "requests": len(w), "rate_rps": rate, "duration_s": opts.duration_s,
                     "dropped_too_long": dropped, "rate_rule": None if opts.rate is not None
                     else f"busiest simulated pool {opts.target_util:.0%} busy"},
        "utilization": {"sim": sim.utilization, "live": workers},
        "live_failed": [int((r.requests["outcome"] != "ok").sum()) for r in replays],
        "client_lag_ms_p99": [float(np.percentile(r.requests["lag_s"], 99) * 1e3) for r in replays],
        "sim_preemptions": int(sim.requests["preemptions"].sum()),
        "per_request": per_request_diffs(rows),
    })
    (opts.out_dir / "validate.json").write_text(json.dumps(doc, indent=1) + "\n")
    from reports.validate import write_validate_report  # noqa: PLC0415

    write_validate_report(doc, rows, replays, sim, opts.out_dir / "validate.html")
    return doc


def log_costs(dep: Deployment, opts: ValidateOptions, source: str, log: Log) -> None:
    """What the simulation adds to the profile, and where it was measured."""
    log(f"overhead ({source}): the runtime adds {opts.ttft_overhead_s * 1e3:.1f} ms to each request's TTFT outside "
        "its workers (HTTP, frontend); the simulation adds it too (ttft_overhead_s)")
    if opts.paced:
        return
    pools = slowdown_text(opts.pool_slowdown, opts.pool_decode_slowdown)
    log(f"raw ({source}): a simulated step takes the profile's time x the live forward's slowdown over the profile "
        f"(by pool and step size: {pools or f'{opts.compute_slowdown:.3f} for all'}) + "
        f"{opts.iteration_overhead_s * 1e3:.3f} ms + "
        f"{opts.per_seq_overhead_s * 1e3:.4f} ms per sequence"
        + (f"; each step's slowdown drawn around its size's ({spread_text(opts.pool_spread)}), "
           f"{opts.repeats} simulated repeat(s)" if opts.pool_spread else "")
        + (f"; a KV transfer starts {opts.kv_handoff_s * 1e3:.2f} ms after its prompt's last step"
           if dep.topology == "disagg" and opts.kv_handoff_s else ""))


def slowdown_text(prompt: dict | None, decode: dict | None) -> str:
    """Slowdowns by step size (slowdown_by_size) of pools or workers as text, ``{name: buckets}`` for steps with
    prompts and for decode-only steps: ``prefill: steps with prompts <=64 tokens 1.30, <=128 1.30, ...; decode:
    decode-only steps <=1 seqs 1.20, <=2 1.32, ...``."""
    return "; ".join(
        f"{name}: {what} " + ", ".join(f"<={hi}{f' {unit}' if i == 0 else ''} {x:.2f}" for i, (hi, x) in enumerate(b))
        for what, unit, given in (("steps with prompts", "tokens", prompt), ("decode-only steps", "seqs", decode))
        for name, b in (given or {}).items() if b)


def spread_text(spread: dict | None) -> str:
    """Step spreads (step_spread) of pools as text, their 10th and 90th percentile factors: ``prefill: steps with
    prompts 0.80-1.27x, decode-only 0.83-1.19x``."""
    def span(f: list) -> str:
        return f"{np.percentile(f, 10):.2f}-{np.percentile(f, 90):.2f}x"

    return "; ".join(f"{pool}: " + ", ".join(f"{what} {span(f)}" for what, kind in
                                             (("steps with prompts", "prompt_steps"), ("decode-only", "decode_steps"))
                                             if (f := kinds.get(kind)))
                     for pool, kinds in (spread or {}).items())


def error_split_text(doc: dict) -> str | None:
    """Raw mode's error split (``sim_on_replay_costs``) as one line; None when paced."""
    check = doc.get("sim_on_replay_costs")
    if not check:
        return None
    cells = [(m, p, c) for m in ("ttft_ms", "tpot_ms") for p, c in check["metrics"][m].items() if "within_target" in c]
    return ("simulated again on the replays' own costs (the error left with the costs measured exactly): "
            + ", ".join(f"{m[:-3].upper()} {p} {c['rel_error']:+.1%}" for m, p, c in cells)
            + f" ({sum(c['within_target'] for *_, c in cells)}/{len(cells)} within target)")


def error_table(doc: dict) -> str:
    """The metrics as aligned lines: live, sim and error per metric and percentile."""

    def f(x, spec: str, width: int = 9) -> str:
        return f"{'-' if x is None else format(x, spec):>{width}}"

    lines = [f"{'':<6}{'':>4}{'live ms':>11}{'sim ms':>11}{'error':>9}{'spread':>9}{'target':>9}"]
    for metric, cells in doc["metrics"].items():
        for p, c in cells.items():
            mark = {True: "  ok", False: "  MISS"}.get(c.get("within_target"), "")
            lines.append(f"{metric[:-3].upper():<6}{p:>4}{f(c['live'], '.1f', 11)}{f(c['sim'], '.1f', 11)}"
                         f"{f(c['rel_error'], '+.1%')}{f(c['repeat_spread'], '.1%')}{f(c.get('target'), '.0%')}{mark}")
    return "\n".join(lines)
