"""Calibration from the user's own measurements: read benchmark results, fit the roofline's named
efficiency factors (profiler.roofline.Efficiency) to them, and write a calibration file that
`simulate`, `plan` and `check` accept with ``--calibration``.

Measurements come as aiperf runs (a folder with ``profile_export.jsonl`` per-request records and/or the
aggregate ``profile_export_aiperf.json``) or as rows of the silicon CSV format (data/calibration).
Each becomes one point: a deployment, fixed ISL/OSL, a client concurrency (closed loop) and the measured
mean TTFT and TPOT. The prediction of a point is a closed-form steady state of N clients over the
deployment's cost models (``closed_loop_estimate``); the fit is least squares on log errors.

A calibration names the model, GPU, engine and dtype it was fitted on and refuses any other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from profiler.costmodel import Batch, CostModel, LinkSpec
from profiler.errors import InputError
from profiler.factory import make_cost_model
from profiler.gpus import canonical_gpu_name, resolve_gpu
from profiler.memory import memory_fit
from profiler.models import canonical_model_name, resolve_model
from profiler.roofline import Efficiency, engine_efficiency, request_terms
from profiler.yamlfile import read_yaml
from simulator.deployment import Deployment, PoolSpec

FIT_DEFAULT = ("gemm_compute", "gemm_memory", "attn_compute", "attn_memory", "iteration_overhead_s", "ttft_overhead_s")
BOUNDS = {"iteration_overhead_s": (1e-5, 0.05), "per_seq_overhead_s": (1e-7, 1e-3), "layer_overhead_s": (1e-7, 2e-4),
          "allreduce_latency_s": (1e-7, 1e-4), "ttft_overhead_s": (1e-4, 1.0),
          "ttft_wait_prefills": (1e-2, 20.0)}  # others (shares of a peak): (0.02, 1.0)
PRIOR_WEIGHT = 0.01  # pulls factors the data cannot see back to their defaults, barely moves the rest
POINT_COLUMNS = ("source", "topology", "tp", "replicas", "prefill_tp", "prefill_replicas", "decode_tp",
                 "decode_replicas", "isl", "osl", "concurrency", "ttft_s", "tpot_s", "requests")


# ---- identity --------------------------------------------------------------------------------
def identity(dep: Deployment) -> dict[str, str]:
    """What a calibration is tied to."""
    return {"model": canonical_model_name(dep.model) or dep.model, "gpu": canonical_gpu_name(dep.gpu) or dep.gpu,
            "engine": dep.engine, "dtype": dep.dtype}


# ---- readers ---------------------------------------------------------------------------------
def _find_key(obj, key: str):
    """First value of ``key`` anywhere in a nested mapping (aiperf moves its config fields between versions)."""
    if isinstance(obj, dict):
        if obj.get(key) is not None:
            return obj[key]
        for v in obj.values():
            found = _find_key(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = _find_key(v, key)
            if found is not None:
                return found
    return None


def _metric(rec: dict, name: str) -> float:
    m = (rec.get("metrics") or {}).get(name)
    if not isinstance(m, dict) or m.get("value") is None:
        return float("nan")
    v = m["value"]
    unit = m.get("unit", "")
    scale = {"ms": 1e-3, "us": 1e-6, "ns": 1e-9, "s": 1.0, "sec": 1.0}.get(unit, 1.0)
    return float(v) * scale


def read_aiperf_records(path: Path) -> pd.DataFrame:
    """Per-request rows (start_s, end_s, isl, osl, ttft_s, tpot_s) of a ``profile_export.jsonl``; failed,
    cancelled and warm-up requests are left out."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"line {n}: not JSON ({e.msg})", where=str(path)) from None
        meta = rec.get("metadata") or {}
        if rec.get("error") or meta.get("was_cancelled") or meta.get("benchmark_phase", "profiling") != "profiling":
            continue
        rows.append({
            "start_s": (meta.get("request_start_ns") or 0) * 1e-9, "end_s": (meta.get("request_end_ns") or 0) * 1e-9,
            "isl": _metric(rec, "input_sequence_length"), "osl": _metric(rec, "output_sequence_length"),
            "ttft_s": _metric(rec, "time_to_first_token"), "tpot_s": _metric(rec, "inter_token_latency"),
        })
    return pd.DataFrame(rows, columns=["start_s", "end_s", "isl", "osl", "ttft_s", "tpot_s"])


def _agg_avg(agg: dict, name: str) -> float:
    m = agg.get(name)
    if not isinstance(m, dict) or m.get("avg") is None:
        return float("nan")
    return float(m["avg"]) * {"ms": 1e-3, "us": 1e-6, "ns": 1e-9}.get(m.get("unit", ""), 1.0)


GPU_FAMILIES = ("a100", "h100", "h200", "b200", "b300", "gb200", "l40s")


def _gpu_family(name: str) -> str | None:
    low = name.lower()
    return next((f for f in GPU_FAMILIES if f in low), None)


def _check_measured_identity(agg: dict, dep: Deployment, where: Path) -> None:
    """Refuse a run that says it measured another model (``model_names``) or GPU (GPU telemetry)."""
    names = _find_key(agg.get("input_config", {}), "model_names") or []
    measured = canonical_model_name(str(names[0])) if names else None
    if measured is not None and measured != identity(dep)["model"]:
        raise InputError(f"the run measured {names[0]} ({measured}) but the deployment is {dep.model}; calibrate "
                         "each model with its own runs", where=str(where))
    gpu_name = _find_key(agg.get("telemetry_data", {}), "gpu_name")
    mine = _gpu_family(dep.gpu)
    if gpu_name and _gpu_family(str(gpu_name)) and mine and _gpu_family(str(gpu_name)) != mine:
        raise InputError(f"the run's GPU telemetry says {gpu_name} but the deployment is on {dep.gpu}; calibrate "
                         "each GPU with its own runs", where=str(where))


def read_aiperf_run(folder: Path, dep: Deployment) -> dict:
    """One measured point from an aiperf artifact folder (records preferred, aggregate as fallback)."""
    jsonl, agg_path = folder / "profile_export.jsonl", folder / "profile_export_aiperf.json"
    agg = {}
    if agg_path.exists():
        try:
            agg = json.loads(agg_path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"not JSON ({e.msg})", where=str(agg_path)) from None
    _check_measured_identity(agg, dep, agg_path)
    conc = _find_key(agg.get("input_config", {}), "concurrency")
    cli = _find_key(agg.get("run_info", {}), "cli_command") or ""
    if conc is None and (m := re.search(r"--concurrency[ =](\d+)", cli)):
        conc = int(m.group(1))
    point = {"source": str(folder)}
    if jsonl.exists():
        r = read_aiperf_records(jsonl)
        if r.empty:
            raise InputError("no successful profiling records", where=str(jsonl))
        if conc is None:  # requests in flight, averaged over the measured window
            span = r.end_s.max() - r.start_s.min()
            conc = max(1, round(float((r.end_s - r.start_s).sum() / span))) if span > 0 else 1
        point |= {"isl": int(r.isl.median()), "osl": int(r.osl.median()), "ttft_s": float(r.ttft_s.mean()),
                  "tpot_s": float(r.tpot_s.mean()), "requests": len(r)}
    elif agg:
        point |= {"isl": int(round(_agg_avg(agg, "input_sequence_length"))),
                  "osl": int(round(_agg_avg(agg, "output_sequence_length"))),
                  "ttft_s": _agg_avg(agg, "time_to_first_token"), "tpot_s": _agg_avg(agg, "inter_token_latency"),
                  "requests": int(_agg_avg(agg, "request_count") or 0)}
    else:
        raise InputError("neither profile_export.jsonl nor profile_export_aiperf.json here", where=str(folder))
    if conc is None:
        raise InputError("cannot tell the client concurrency (no input_config.concurrency in "
                         "profile_export_aiperf.json and no per-request records)", where=str(folder))
    if not np.isfinite(point["ttft_s"]) or not np.isfinite(point["tpot_s"]):
        raise InputError("no time_to_first_token / inter_token_latency (was the run streaming?)", where=str(folder))
    return point | _pools_of(dep) | {"concurrency": int(conc)}


def _pools_of(dep: Deployment) -> dict:
    if dep.topology == "agg":
        return {"topology": "agg", "tp": dep.workers.tp, "replicas": dep.workers.replicas}
    return {"topology": "disagg", "prefill_tp": dep.prefill.tp, "prefill_replicas": dep.prefill.replicas,
            "decode_tp": dep.decode.tp, "decode_replicas": dep.decode.replicas}


def read_silicon(path: Path, dep: Deployment) -> tuple[list[dict], dict[str, int]]:
    """Rows of a silicon CSV for the deployment's model, GPU, engine and dtype (read as the replay reads them,
    planner.benchmark_rows.row_case); skipped rows counted by reason."""
    from planner.benchmark_rows import load_benchmark, row_case  # noqa: PLC0415 (only for silicon rows)

    df = load_benchmark(path)
    if "system" not in df.columns:
        raise InputError("missing silicon columns ['system']", where=str(path))
    me = identity(dep)
    points, skipped = [], {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    for i, (_, row) in enumerate(df.iterrows()):
        if (canonical_model_name(str(row.model_path)) != me["model"] or canonical_gpu_name(str(row.system)) != me["gpu"]
                or str(row.backend).lower() != me["engine"]):
            skip("other model/GPU/engine/dtype")
            continue
        case = row_case(row, i, me["gpu"])
        if case.dtype and case.dtype != me["dtype"]:
            skip("other model/GPU/engine/dtype")
            continue
        if case.skipped:
            skip(case.skip_reason)
            continue
        points.append({"source": f"{path}:{i + 2}", "isl": case.isl, "osl": case.osl,
                       "ttft_s": row.silicon_ttft_ms * 1e-3, "tpot_s": row.silicon_tpot_ms * 1e-3, "requests": 0,
                       "concurrency": case.concurrency} | _pools_of(case.deployment))
    return points, skipped


def read_measured(folder: str | Path, dep: Deployment) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every measured point under ``folder``: aiperf runs (any depth) and silicon CSVs."""
    root = Path(folder)
    if not root.exists():
        raise InputError("folder not found", where=str(root))
    files = [root] if root.is_file() else sorted(root.rglob("*"))
    points, skipped = [], {}
    runs = sorted({f.parent for f in files if f.name in ("profile_export.jsonl", "profile_export_aiperf.json")})
    points += [read_aiperf_run(r, dep) for r in runs]
    for f in files:
        if f.suffix == ".csv" and f.is_file() and "silicon_ttft_ms" in f.open().readline():
            pts, sk = read_silicon(f, dep)
            points += pts
            for k, v in sk.items():
                skipped[k] = skipped.get(k, 0) + v
    if not points:
        what = f" ({', '.join(f'{v} {k}' for k, v in skipped.items())})" if skipped else ""
        raise InputError(f"no measurements of {dep.model} on {dep.gpu} ({dep.engine}, {dep.dtype}) found: expected "
                         f"aiperf folders (profile_export.jsonl) or silicon CSV rows{what}", where=str(root))
    return pd.DataFrame(points).reindex(columns=list(POINT_COLUMNS)), skipped


# ---- the prediction of one point ---------------------------------------------------------------
def point_deployment(dep: Deployment, p: dict | pd.Series) -> Deployment:
    """The deployment a measured point ran on: the given one, with the point's pools."""
    if p["topology"] == "agg":
        pool = dep.workers or dep.decode or PoolSpec()
        return replace(dep, topology="agg", prefill=None, decode=None,
                       workers=replace(pool, tp=int(p["tp"]), replicas=int(p["replicas"])))
    pf, dc = dep.prefill or dep.workers or PoolSpec(), dep.decode or dep.workers or PoolSpec()
    return replace(dep, topology="disagg", workers=None,
                   prefill=replace(pf, tp=int(p["prefill_tp"]), replicas=int(p["prefill_replicas"])),
                   decode=replace(dc, tp=int(p["decode_tp"]), replicas=int(p["decode_replicas"])))


def _chunks(isl: int, pool: PoolSpec) -> list[tuple[int, int]]:
    size = pool.prefill_chunk_tokens if pool.chunked_prefill else isl
    return [(min(size, isl - s), s) for s in range(0, isl, size)]


def kv_slots(dep: Deployment, pool: PoolSpec, tokens_per_seq: int) -> int:
    """Sequences of ``tokens_per_seq`` whose KV one replica of ``pool`` holds at once (at least one)."""
    fit = memory_fit(resolve_model(dep.model), resolve_gpu(dep.gpu), pool.attention_tp, dep.dtype,
                     dep.resolved_kv_dtype, pool.max_batch_tokens, dep.gpu_memory_utilization, pool.attention_dp)
    return max(1, fit.kv_tokens // max(tokens_per_seq, 1))


def _decode_s(cm: CostModel, n: int, ctx: int) -> float:
    return cm.iteration_s(Batch.of(decode_ctx=[ctx] * n)) if n > 0 else 0.0


def ttft_extra_s(cms: dict[str, CostModel], isl: int, agg: bool = True, in_step: bool = True) -> float:
    """What a request's TTFT holds besides the engine's iterations, as the simulator models it: the frontend
    time (``ttft_overhead_s``) and, for fixed-length closed-loop clients (``in_step``) of an aggregated engine,
    ``ttft_wait_prefills`` times its prompt's prefill run alone before the prompt is admitted
    (profiler.roofline.request_terms; 0 for cost models without them)."""
    out = 0.0
    for cm in cms.values():
        overhead_s, wait = request_terms(cm)
        wait = wait if in_step else 0.0
        solo_s = cm.iteration_s(Batch.of(prefill=[(isl, 0)])) if agg and wait else 0.0
        out = max(out, overhead_s + wait * solo_s)
    return out


def _steps_s(cm: CostModel, n_dec: np.ndarray, ctx: float, chunk: np.ndarray, cached: np.ndarray) -> np.ndarray:
    """Seconds of iterations with ``n_dec`` decodes at context ``ctx`` and one prefill chunk of ``chunk`` tokens
    after ``cached`` ones, element-wise (the roofline's vectorised form where the cost model has one)."""
    if hasattr(cm, "mixed_steps_s"):
        return cm.mixed_steps_s(n_dec, ctx, chunk, cached)
    return np.array([cm.iteration_s(Batch.of(prefill=[(int(c), int(k))] if c > 0 else [],
                                             decode_ctx=[int(ctx)] * int(round(n))))
                     for n, c, k in zip(n_dec, chunk, cached, strict=True)])


def agg_steady_state(cm: CostModel, pool: PoolSpec, isl: int, osl: int, clients: float, seats: int,
                     grid: int = 64) -> tuple[float, float]:
    """Mean (TTFT s, TPOT s) of ``clients`` closed-loop clients of one continuous-batching replica, in steady
    state, clients out of step, with ``seats`` sequences it can hold at once (max_seqs, KV room).

    Fluid model at throughput X req/s: ``X (osl-1) TPOT`` sequences decode; a prompt takes ``k`` iterations of
    at most ``max_batch_tokens - decodes`` tokens (one whole iteration when prefill is not chunked); those
    mixed iterations cost ``t_m``, plain ones ``t_d``, so TPOT = t_d / (1 - X k (t_m - t_d)). TTFT = half an
    iteration + M/D/1 wait for the prefill share + the prompt's own iterations, both as the other clients
    load the engine (arrival theorem: one client alone finds it idle). X is where ``X x E2E`` equals
    the clients in service (Little's law); clients beyond the seats queue for one.
    """
    seats = int(max(1, min(clients, seats)))
    ctx = isl + osl / 2
    budget = pool.max_batch_tokens
    one, zero = np.ones(1), np.zeros(1)
    t_full = float(_steps_s(cm, seats * one, ctx, zero, zero)[0])
    t_pf = float(_steps_s(cm, zero, 0, isl * one, zero)[0])
    x = seats / (max(osl - 1, 1) * t_full + t_pf) * np.geomspace(1e-3, 1.0, grid)
    tpot = np.full(grid, t_full)
    for _ in range(5):
        n_dec = np.clip(x * (osl - 1) * tpot, 1.0, seats)
        chunk = np.clip(budget - n_dec, 1.0, isl) if pool.chunked_prefill else np.full(grid, float(isl))
        k = np.ceil(isl / chunk)
        t_d = _steps_s(cm, n_dec, ctx, np.zeros(grid), np.zeros(grid))
        t_m = _steps_s(cm, n_dec, ctx, chunk, (isl - chunk) / 2)
        free = 1.0 - x * k * (t_m - t_d)
        tpot = np.where(free > 0, t_d / np.maximum(free, 1e-9), np.inf)
    service = k * t_m
    # arrival theorem: a request of a closed loop finds the engine as the other seats - 1 clients keep it
    others = (seats - 1) / seats
    rho = x * service * others
    wait = np.where(rho < 1, rho / (2 * np.maximum(1 - rho, 1e-9)) * service, np.inf)
    ttft = others * tpot / 2 + wait + service
    in_service = x * (ttft + (osl - 1) * tpot)
    i = int(np.searchsorted(in_service, seats))  # in_service rises with x
    if i == 0:
        ttft_s, tpot_s, x_s = ttft[0], tpot[0], x[0]
    else:
        i = min(i, grid - 1)
        lo, hi = in_service[i - 1], in_service[i]
        w = 1.0 if not np.isfinite(hi) else float(np.clip((seats - lo) / (hi - lo), 0.0, 1.0))
        pick = (lambda a: a[i - 1] + w * (a[i] - a[i - 1])) if np.isfinite(hi) else (lambda a: a[i - 1])
        ttft_s, tpot_s, x_s = pick(ttft), pick(tpot), pick(x)
    if clients > seats:  # the rest wait for a seat: Little's law on the queue
        ttft_s += (clients - seats) / x_s
    return float(ttft_s), float(tpot_s)


def closed_loop_estimate(dep: Deployment, cms: dict[str, CostModel], isl: int, osl: int,
                         concurrency: int, kv_seats: dict[str, int] | None = None,
                         in_step: bool = True) -> tuple[float, float]:
    """Mean (TTFT, TPOT) in seconds of ``concurrency`` clients, each sending its next request (fixed
    ISL/OSL) when the last finishes, in steady state with clients out of phase: the one analytic estimate
    (calibration fits, emit's predictions, the replay's client stagger). Agg: ``agg_steady_state`` per
    replica. Disagg: prefills queue on the prefill pool (M/D/c-like wait), KV crosses the link, decode
    batches hold the rest. TTFT includes the frontend time and, for fixed-length clients partly in step
    (``in_step``: a benchmark's), the admission wait the replay of one simulates. ``kv_seats``: sequences of
    isl + osl a replica of each pool holds (computed when not given)."""
    ctx = isl + osl // 2
    steps = max(osl - 1, 1)
    seats = kv_seats or {name: kv_slots(dep, p, isl + osl) for name, p in dep.pools.items()}
    if dep.topology == "agg":
        pool, cm = dep.workers, cms["workers"]
        ttft, tpot = agg_steady_state(cm, pool, isl, osl, concurrency / pool.replicas,
                                      min(pool.max_seqs, seats["workers"]))
        return ttft + ttft_extra_s(cms, isl, in_step=in_step), tpot
    pf, dc = dep.prefill, dep.decode
    pcm, dcm = cms["prefill"], cms["decode"]
    service = sum(pcm.iteration_s(Batch.of(prefill=[c])) for c in _chunks(isl, pf))
    link = LinkSpec(dep.kv_link.bandwidth_bytes_s, dep.kv_link.latency_s, dep.kv_link.placement)
    kv = resolve_model(dep.model).kv_bytes_per_token(dep.resolved_kv_dtype) * isl / pf.tp
    transfer = pcm.transfer_s(kv, link)
    n = concurrency / dc.replicas
    b = max(1, min(round(n), dc.max_seqs, seats["decode"]))
    tpot = _decode_s(dcm, b, ctx)
    decode_wait = (n - b) * steps * tpot / b if n > b else 0.0
    fixed = transfer + tpot + decode_wait + ttft_extra_s(cms, isl, agg=False)
    ttft = service + fixed
    for _ in range(30):  # fixed point: the arrival rate of a closed loop depends on its own latency
        cycle = ttft + steps * tpot
        rho = concurrency / cycle * service / pf.replicas
        if rho >= 0.999:  # prefill-bound: the pool's throughput sets the cycle
            cycle = max(cycle, concurrency * service / pf.replicas)
            ttft = cycle - steps * tpot
            break
        ttft = 0.5 * ttft + 0.5 * (service + rho * service / (2 * (1 - rho)) + fixed)
    return ttft, tpot


def open_loop_estimate(dep: Deployment, cms: dict[str, CostModel], isl: int, osl: int,
                       rate: float) -> tuple[float, float]:
    """Mean (TTFT, TPOT) at ``rate`` requests/s: the closed-loop estimate at the concurrency Little's law
    gives (requests in flight = rate x latency), found by fixed point; arrivals are not in step (no admission
    wait)."""
    ttft, tpot = closed_loop_estimate(dep, cms, isl, osl, 1, in_step=False)
    for _ in range(30):
        c = max(1, round(rate * (ttft + max(osl - 1, 1) * tpot)))
        ttft, tpot = closed_loop_estimate(dep, cms, isl, osl, c, in_step=False)
    return ttft, tpot


def cost_models(dep: Deployment, eff: Efficiency | None = None, perf_db: str | None = None,
                profile=None) -> dict[str, CostModel]:
    """Each pool's cost model (profiler.factory.make_cost_model): the roofline at ``eff`` (default: the engine's
    fitted factors), ``perf_db`` tables, or a loaded ``profile``'s measurements."""
    model, gpu = resolve_model(dep.model), resolve_gpu(dep.gpu)
    return {name: make_cost_model(model, gpu, pool.tp, dep.dtype, dep.kv_dtype, dep.engine, profile, efficiency=eff,
                                  perf_db=perf_db, attn_dp=pool.attention_dp) for name, pool in dep.pools.items()}


def pool_cost_models(dep: Deployment, calibration: str | Path | None = None,
                     perf_db: str | None = None) -> dict[str, CostModel]:
    """Each pool's cost model as a command's ``--calibration FILE`` / ``--perf-db SOURCE`` ask (neither: the
    roofline at the engine's efficiencies)."""
    if calibration is not None and perf_db is not None:
        raise InputError("--calibration fits roofline factors and does not apply to --perf-db tables; give one "
                         "or the other")
    return cost_models(dep, efficiency_for(dep, calibration), perf_db)


def predict_points(dep: Deployment, points: pd.DataFrame, eff: Efficiency | None = None,
                   models: Callable[[Deployment], dict[str, CostModel]] | None = None) -> np.ndarray:
    """(n, 2) predicted mean TTFT and TPOT of every point, with roofline cost models at ``eff`` (or the
    cost models ``models(deployment)`` builds)."""
    out = np.empty((len(points), 2))
    for i, (_, p) in enumerate(points.iterrows()):
        d = point_deployment(dep, p)
        cms = models(d) if models else cost_models(d, eff)
        out[i] = closed_loop_estimate(d, cms, int(p.isl), int(p.osl), int(p.concurrency))
    return out


# ---- fit -------------------------------------------------------------------------------------
def errors(pred: np.ndarray, points: pd.DataFrame) -> dict[str, float]:
    """Mean absolute percentage error of TTFT and TPOT."""
    meas = points[["ttft_s", "tpot_s"]].to_numpy(float)
    ape = np.abs(pred - meas) / meas * 100
    return {"ttft_mape_pct": round(float(ape[:, 0].mean()), 2), "tpot_mape_pct": round(float(ape[:, 1].mean()), 2)}


def fit_efficiency(dep: Deployment, points: pd.DataFrame, start: Efficiency | None = None,
                   names: tuple[str, ...] = FIT_DEFAULT) -> Efficiency:
    """Robust (soft L1) least squares on log(predicted / measured) of TTFT and TPOT over the named factors
    (log-space, bounded), with a weak pull toward ``start`` for factors the data cannot constrain."""
    from scipy.optimize import least_squares  # noqa: PLC0415

    start = start or engine_efficiency(dep.engine)
    known = {f.name for f in fields(Efficiency)}
    if bad := [n for n in names if n not in known]:
        raise InputError(f"unknown efficiency factor {bad[0]!r}; known: {', '.join(sorted(known))}")
    lo = np.log([BOUNDS.get(n, (0.02, 1.0))[0] for n in names])
    hi = np.log([BOUNDS.get(n, (0.02, 1.0))[1] for n in names])
    x0 = np.clip(np.log([max(getattr(start, n), BOUNDS.get(n, (0.02, 1.0))[0]) for n in names]), lo + 1e-9, hi - 1e-9)
    meas = np.log(points[["ttft_s", "tpot_s"]].to_numpy(float))

    def eff_at(x) -> Efficiency:
        return replace(start, **{n: float(v) for n, v in zip(names, np.exp(x), strict=True)})

    def residuals(x):
        return np.concatenate([(np.log(predict_points(dep, points, eff_at(x))) - meas).ravel(),
                               PRIOR_WEIGHT * (x - x0)])

    # plain least squares finds the basin (soft L1 from a far start stalls on the estimate's kinks), then soft
    # L1: a few points the steady-state model cannot explain (overload, lock-step) do not drag the rest
    x = least_squares(residuals, x0, bounds=(lo, hi), xtol=1e-9, ftol=1e-9, max_nfev=60).x
    return eff_at(least_squares(residuals, x, bounds=(lo, hi), loss="soft_l1", f_scale=0.2, xtol=1e-9, ftol=1e-9,
                                max_nfev=40).x)


# ---- calibration file ------------------------------------------------------------------------
@dataclass(frozen=True)
class Calibration:
    model: str
    gpu: str
    engine: str
    dtype: str
    efficiency: Efficiency
    fitted: tuple[str, ...] = ()
    points: int = 0
    error_before: dict = field(default_factory=dict)
    error_after: dict = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    created: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"pdsim_calibration": 1, **d, "fitted": list(self.fitted), "sources": list(self.sources)}


def save_calibration(cal: Calibration, path: str | Path) -> Path:
    path = Path(path)
    path.write_text("# pdsim calibration: roofline efficiency factors fitted on measurements.\n"
                    f"# Valid only for {cal.model} on {cal.gpu} ({cal.engine}, {cal.dtype}).\n"
                    + yaml.safe_dump(cal.to_dict(), sort_keys=False))
    return path


def load_calibration(path: str | Path) -> Calibration:
    path = Path(path)
    data = read_yaml(path)
    if not isinstance(data, dict) or data.get("pdsim_calibration") != 1:
        raise InputError("not a pdsim calibration file (no 'pdsim_calibration: 1'); make one with pdsim calibrate",
                         where=str(path))
    for key in ("model", "gpu", "engine", "dtype", "efficiency"):
        if key not in data:
            raise InputError(f"missing field {key!r}", where=str(path))
    eff = data["efficiency"]
    known = {f.name for f in fields(Efficiency)}
    if not isinstance(eff, dict):
        raise InputError(f"efficiency must be a mapping of factor: value, got {eff!r}", where=str(path))
    if bad := sorted(set(eff) - known):
        raise InputError(f"efficiency: unknown factor {bad[0]!r}", where=str(path))
    for k, v in eff.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
            raise InputError(f"efficiency.{k} must be a number >= 0, got {v!r}", where=str(path))
    return Calibration(str(data["model"]), str(data["gpu"]), str(data["engine"]), str(data["dtype"]),
                       Efficiency(**{k: float(v) for k, v in eff.items()}), tuple(data.get("fitted") or ()),
                       int(data.get("points") or 0), data.get("error_before") or {}, data.get("error_after") or {},
                       tuple(data.get("sources") or ()), str(data.get("created") or ""))


def calibrated_efficiency(cal: Calibration, dep: Deployment, where: str = "calibration") -> Efficiency:
    """The calibration's factors for ``dep``, or an InputError if it was fitted on anything else."""
    mine = {"model": cal.model, "gpu": cal.gpu, "engine": cal.engine, "dtype": cal.dtype}
    theirs = identity(dep)
    if diff := [k for k in mine if mine[k] != theirs[k]]:
        verb = "differ" if len(diff) > 1 else "differs"
        raise InputError(
            f"fitted for {cal.model} on {cal.gpu} ({cal.engine}, {cal.dtype}) but the deployment is "
            f"{theirs['model']} on {theirs['gpu']} ({theirs['engine']}, {theirs['dtype']}): {' and '.join(diff)} "
            f"{verb}. A calibration never carries over to another GPU or model; measure this one and run "
            "`pdsim calibrate`, or drop --calibration", where=where)
    return cal.efficiency


def efficiency_for(dep: Deployment, calibration: str | Path | None) -> Efficiency | None:
    """What a command's ``--calibration FILE`` means for ``dep`` (None without the flag)."""
    return None if calibration is None else calibrated_efficiency(load_calibration(calibration), dep, str(calibration))


def calibrate(measured: str | Path, dep: Deployment, names: tuple[str, ...] = FIT_DEFAULT,
              start: Efficiency | None = None) -> tuple[Calibration, pd.DataFrame, dict[str, int]]:
    """Read, fit, and report: the calibration, the points with predictions before/after, skipped rows."""
    points, skipped = read_measured(measured, dep)
    if len(points) < len(names):
        raise InputError(f"{len(points)} measured points cannot pin {len(names)} factors ({', '.join(names)}); "
                         "measure more points (e.g. the emitted aiperf sweep) or fit fewer with --fit",
                         where=str(measured))
    start = start or engine_efficiency(dep.engine)
    before = predict_points(dep, points, start)
    eff = fit_efficiency(dep, points, start, names)
    after = predict_points(dep, points, eff)
    table = points.assign(pred_ttft_before_s=before[:, 0], pred_tpot_before_s=before[:, 1],
                          pred_ttft_after_s=after[:, 0], pred_tpot_after_s=after[:, 1])
    me = identity(dep)
    cal = Calibration(me["model"], me["gpu"], me["engine"], me["dtype"], eff, tuple(names), len(points),
                      errors(before, points), errors(after, points),
                      tuple(sorted({str(s).rsplit(":", 1)[0] for s in points.source})),
                      datetime.now(UTC).isoformat(timespec="seconds"))
    return cal, table, skipped
