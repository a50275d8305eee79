"""`plan --compare aiconfigurator`: AIConfigurator's own answer to the same question (its `cli default`
search, run in process), and its top agg and disagg picks simulated by pdsim at the loads it states for them:
its concurrency as closed-loop clients and its request rate as Poisson arrivals."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from planner import reasons
from planner.benchmark_rows import row_case
from planner.parallel import calls
from planner.plan import PlanRequest, build
from planner.recommend import CONFIRM_E2E, Confirmed
from planner.space import scale
from profiler.errors import InputError
from profiler.models import canonical_model_name, published_dtype
from profiler.perfdb import SYSTEMS
from simulator import SLO

TOOLS = ("aiconfigurator",)
INSTALL = "pip install 'pdsim[aic]'"
WHERE = "--compare aiconfigurator"
STATS = ("mean", "p90")  # AIConfigurator's targets are means; pdsim's default binds the p90
# AIConfigurator's columns -> aiconfigurator's benchmark columns (planner/replay.py reads those)
AGG_COLUMNS = {"bs": "batch_size", "tp": "tp_size", "pp": "pp_size", "dp": "attention_dp_size",
               "moe_tp": "moe_tp_size", "moe_ep": "moe_ep_size", "gemm": "gemm_quant_mode"}
POOL_COLUMNS = {"bs": "batch_size", "workers": "num_workers", "tp": "tp_size", "pp": "pp_size",
                "dp": "attention_dp_size", "moe_tp": "moe_tp_size", "moe_ep": "moe_ep_size", "gemm": "gemm_quant_mode"}


@dataclass
class Pick:
    """One of AIConfigurator's top configurations, as the deployment pdsim simulates and what it claims."""

    topology: str
    chosen: bool
    case: object  # planner.benchmark_rows.Case: the deployment, as aiconfigurator's generator would write it
    clients: int  # its concurrency over the budget's copies of the configuration
    rate_rps: float
    claims: dict


def check(req: PlanRequest, tool: str) -> str:
    """The checkpoint AIConfigurator knows for the request, or an InputError of one line: the tool unknown or not
    installed, a trace instead of fixed lengths, a GPU or model it has no data for."""
    if tool not in TOOLS:
        raise InputError(f"must be {' or '.join(TOOLS)}, got {tool!r}", where="--compare")
    try:
        import aiconfigurator.cli.api  # noqa: F401, PLC0415 (optional extra)
        import aiconfigurator_core  # noqa: PLC0415
    except ImportError:
        raise InputError(f"AIConfigurator is not installed: {INSTALL}", where=WHERE) from None
    if req.trace is not None or req.isl is None:
        raise InputError("AIConfigurator answers for fixed lengths: give --isl and --osl, not --trace", where=WHERE)
    if req.gpu not in SYSTEMS:
        raise InputError(f"AIConfigurator has no data for {req.gpu}; it has {', '.join(SYSTEMS)}", where=WHERE)
    configs = Path(aiconfigurator_core.__file__).parent / "model_configs"
    names = sorted(p.name.removesuffix("_config.json").replace("--", "/", 1) for p in configs.glob("*_config.json")
                   if not p.name.endswith("hf_quant_config.json"))
    model = canonical_model_name(req.model)
    mine = [n for n in names if model is not None and canonical_model_name(n) == model]
    fit = [n for n in mine if published_dtype(n) == req.dtype]
    if not fit:
        have = ", ".join(f"{n} ({published_dtype(n)})" for n in mine) or "none"
        raise InputError(f"AIConfigurator has no {req.dtype} checkpoint of {req.model} (it has: {have})", where=WHERE)
    return min(fit, key=len)  # the plain checkpoint before its variants


@contextlib.contextmanager
def _quiet():
    """AIConfigurator logs and prints its progress: kept off pdsim's output."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()),
              warnings.catch_warnings()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def as_row(pick: pd.Series, topology: str, path: str, req: PlanRequest) -> pd.Series:
    """A pick in aiconfigurator's benchmark columns, so that planner/replay.py builds its deployment."""
    row = {"model_path": path, "backend": req.engine, "mode": topology, "isl": req.isl, "osl": req.osl,
           "system": SYSTEMS[req.gpu], "silicon_data_source": f"silicon_concurrency={int(pick['concurrency'])}"}
    if topology == "agg":
        row |= {ours: pick[theirs] for theirs, ours in AGG_COLUMNS.items()}
    else:
        for side, prefix in (("(p)", "prefill_"), ("(d)", "decode_")):
            row |= {prefix + ours: pick[side + theirs] for theirs, ours in POOL_COLUMNS.items()}
        row["gemm_quant_mode"] = pick["(p)gemm"]
    return pd.Series(row)


def pick_of(top: pd.Series, topology: str, chosen: bool, path: str, req: PlanRequest) -> Pick:
    """One of AIConfigurator's result rows as the deployment it stands for: the configuration copied as many
    times as the budget holds (its tokens/s/gpu_cluster), clients and rate with it."""
    copies = max(1, req.gpus // int(top["num_total_gpus"]))
    case = row_case(as_row(top, topology, path, req), 0, req.gpu)
    if not case.skipped:
        case = replace(case, deployment=scale(case.deployment, copies))
    batch = top["bs"] if topology == "agg" else top["(d)bs"]
    return Pick(topology, chosen, case, int(top["concurrency"]) * copies, float(top["request_rate"]) * copies,
                {"ttft_ms": float(top["ttft"]), "tpot_ms": float(top["tpot"]),
                 "tok_s_per_gpu": float(top["tokens/s/gpu_cluster"]), "tok_s_per_user": float(top["tokens/s/user"]),
                 "batch": float(batch), "request_latency_ms": float(top["request_latency"])})


def ask(req: PlanRequest, path: str) -> tuple[str, list[Pick], str]:
    """(AIConfigurator's version, its top agg and disagg picks, why it found none or '')."""
    from importlib.metadata import version  # noqa: PLC0415

    from aiconfigurator.cli.api import cli_default  # noqa: PLC0415 (optional extra)

    try:
        with _quiet():
            result = cli_default(model_path=path, total_gpus=req.gpus, system=SYSTEMS[req.gpu], backend=req.engine,
                                 isl=req.isl, osl=req.osl, ttft=req.ttft_ms, tpot=req.tpot_ms, top_n=1)
    except Exception as e:  # noqa: BLE001 (its own errors: no feasible configuration, no data for the backend)
        return version("aiconfigurator"), [], f"{type(e).__name__}: {e}"
    picks = [pick_of(df.iloc[0], topology, result.chosen_exp == topology, path, req)
             for topology in ("disagg", "agg") if (df := result.best_configs.get(topology)) is not None and len(df)]
    return version("aiconfigurator"), picks, ""


def held(summary: dict, slo: SLO, stat: str) -> list[str]:
    """What ``summary`` misses of the targets read at ``stat`` ([] when both hold)."""
    out = []
    for name, target in (("TTFT", slo.ttft_ms), ("TPOT", slo.tpot_ms)):
        got = (summary.get(f"{name.lower()}_ms") or {}).get(stat)
        if got is None or got > target:
            out.append(f"{stat} {name} {'-' if got is None else f'{got:.1f}'} > {target:g} ms")
    return out


def causes(c: Confirmed, slo: SLO, screen, batch: float) -> list[str]:
    """Measured reasons a pick's latencies exceed what AIConfigurator claims: queueing before prefill, waiting
    for a decode seat, KV transfer, prefill interference, a batch larger than its own."""
    out = [why for why in (reasons.queueing(c, slo), reasons.interference(c, slo, screen), reasons.kv_transfer(c, slo))
           if why]
    r, w = reasons.measured_requests(c.result), c.result.workers
    if c.deployment.topology == "disagg" and "transfer_start_s" in r:
        seat = (r["transfer_start_s"] - r["prefill_end_s"]).to_numpy(dtype=float) * 1e3
        if np.isfinite(seat).any() and np.nanmean(seat) >= 1.0:
            out.append(f"waiting for a decode seat after prefill: mean {np.nanmean(seat):.1f} ms")
    pool = "decode" if c.deployment.topology == "disagg" else "workers"
    busy = w[(w["pool"] == pool) & (w["batch_size"] > 0)] if len(w) and "pool" in w else w
    if len(busy) and np.isfinite(batch):
        b = busy["batch_size"].to_numpy(dtype=float)
        out.append(f"{pool} batch: mean {b.mean():.1f}, p90 {np.percentile(b, 90):.0f} sequences a replica "
                   f"(AIConfigurator: {batch:g})")
    return out


def decode_step_ms(dep, screen, batch: float) -> float | None:
    """One decode-only step of AIConfigurator's batch at the mean context, in pdsim's cost model: where the two
    models differ before any queueing."""
    if not np.isfinite(batch) or batch < 1:
        return None
    pool = dep.decode if dep.topology == "disagg" else dep.workers
    n = int(batch)
    ctx = int(screen.isl + screen.osl / 2)
    return float(screen.cost_model(pool.tp).decode_steps_s(n, n * ctx, 1)[0]) * 1e3


def second_opinion(req: PlanRequest, path: str, jobs: int = 1) -> dict:
    """AIConfigurator's answer and pdsim's simulation of its picks, as plan.json's ``compare`` holds it."""
    found, picks, why_none = ask(req, path)
    _, screen, ev = build(req)
    runs = []
    for p in picks:
        if p.case.skipped:
            continue
        e2e_s = p.claims["request_latency_ms"] * 1e-3
        n = int(np.clip(p.rate_rps * CONFIRM_E2E * e2e_s, 3 * ev.min_requests, 4 * ev.max_requests))
        # the clients' first round (an opening burst AIConfigurator's steady state has not) is warm-up
        closed = ev.workload(concurrency=p.clients, requests=max(ev.min_requests, 8 * p.clients), warmup=p.clients)
        runs += [(p.case.deployment, closed, None), (p.case.deployment, ev.workload(rate=p.rate_rps, requests=n),
                                                      p.rate_rps)]

    def run(dep, workload, rate):
        try:
            return ev.run(dep, workload, rate=rate, stop_when_missed=False)
        except InputError as e:  # AIConfigurator's memory model let it run; pdsim's does not
            return f"does not run in pdsim's memory model: {e}"

    done = iter(calls(run, runs, jobs))
    out = []
    for p in picks:
        d = {"topology": p.topology, "chosen": p.chosen, "claims": p.claims, "clients": p.clients,
             "rate_rps": p.rate_rps}
        if p.case.skipped:
            out.append(d | {"skipped": p.case.skip_reason})
            continue
        dep = p.case.deployment
        d |= {"description": dep.describe(), "gpus": dep.gpus, "deployment": dep.to_dict(), "assumed": p.case.assumed,
              "decode_step_ms": decode_step_ms(dep, screen, p.claims["batch"])}
        for load in ("closed_loop", "poisson"):
            ran = next(done)
            if isinstance(ran, str):
                d["skipped"] = ran
                continue
            probe, result = ran
            conf = Confirmed(dep, probe.rate_rps, probe, result)
            s = probe.summary
            d[load] = {"rate_rps": probe.rate_rps, "requests": probe.requests,
                       **{k: {st: (s.get(k) or {}).get(st) for st in STATS} for k in ("ttft_ms", "tpot_ms")},
                       "tok_s_per_gpu": (s.get("throughput_tok_s") or 0.0) / dep.gpus,
                       "misses": {st: held(s, ev.slo, st) for st in STATS},
                       "why": causes(conf, ev.slo, screen, p.claims["batch"])}
        out.append(d)
    return {"tool": f"aiconfigurator {found}", "model_path": path, "backend": req.engine,
            "system": SYSTEMS[req.gpu], "picks": out, "none": why_none}
