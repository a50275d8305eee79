"""Replay measured serving benchmarks (planner/benchmark_rows.py reads their rows) and score the prediction:
``replay`` simulates every case as its benchmark ran (``simulate_benchmark``) and ``summarize`` scores it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from planner.benchmark_rows import Case, length_range, row_case
from planner.calibrate import closed_loop_estimate, cost_models
from profiler.errors import InputError
from simulator.deployment import Deployment


# ---- scoring ------------------------------------------------------------------------------------
def ape(pred, meas) -> np.ndarray:
    """Absolute percentage error."""
    pred, meas = np.asarray(pred, dtype=float), np.asarray(meas, dtype=float)
    return np.abs(pred - meas) / meas * 100.0


def _err_stats(g: pd.DataFrame) -> dict:
    out = {"rows": int(len(g))}
    for m in ("ttft", "tpot"):
        e = ape(g[f"pred_{m}_ms"], g[f"silicon_{m}_ms"])
        out[f"{m}_median_ape"] = round(float(np.median(e)), 2) if len(e) else None
        out[f"{m}_p90_ape"] = round(float(np.percentile(e, 90)), 2) if len(e) else None
    return out


def summarize(rows: pd.DataFrame) -> dict:
    """Coverage, skip reasons and median/p90 APE of TTFT and TPOT, overall and per model, engine, mode and GPU."""
    done = rows[rows["skip_reason"] == ""]
    summary: dict = {"rows": int(len(rows)), "predicted": int(len(done)), "skipped": int(len(rows) - len(done)),
                     "skip_reasons": {k: int(v) for k, v in rows.loc[rows["skip_reason"] != "", "skip_reason"]
                                      .value_counts().items()},
                     "overall": _err_stats(done)}
    if "assumed" in done:
        summary["assumptions"] = {k: int(v) for k, v in done.loc[done["assumed"] != "", "assumed"]
                                  .value_counts().items()}
    for col, key in (("pdsim_model", "per_model"), ("backend", "per_engine"), ("mode", "per_mode"),
                     ("pdsim_gpu", "per_gpu"), ("client", "per_client")):
        if col in done:
            summary[key] = {str(k): _err_stats(g) for k, g in done.groupby(col)}
    return summary


def format_summary(s: dict) -> str:
    lines = [f"rows {s['rows']}: predicted {s['predicted']}, skipped {s['skipped']}"]
    lines += [f"  skipped {n:4d}: {why}" for why, n in s["skip_reasons"].items()]
    lines += [f"  assumed {n:4d}: {what}" for what, n in s.get("assumptions", {}).items()]
    head = f"{'':28s} {'rows':>5s} {'TTFT med':>9s} {'TTFT p90':>9s} {'TPOT med':>9s} {'TPOT p90':>9s}  (APE %)"
    lines.append(head)

    def line(name: str, e: dict) -> str:
        f = [e[k] for k in ("ttft_median_ape", "ttft_p90_ape", "tpot_median_ape", "tpot_p90_ape")]
        return f"{name:28s} {e['rows']:5d} " + " ".join(f"{v:9.1f}" if v is not None else f"{'-':>9s}" for v in f)

    lines.append(line("overall", s["overall"]))
    for key in ("per_model", "per_engine", "per_mode", "per_gpu", "per_client"):
        if key in ("per_gpu", "per_client") and len(s.get(key, {})) < 2:  # one of them: the overall line says it
            continue
        for name, e in s[key].items():
            lines.append(line(f"  {name}", e))
    return "\n".join(lines)


@dataclass
class Replay:
    # every input column, plus pdsim_model, pdsim_gpu, pred_ttft_ms, pred_tpot_ms, skip_reason, assumed, client
    rows: pd.DataFrame
    summary: dict = field(default_factory=dict)


# ---- simulation -------------------------------------------------------------------------------
REQUESTS_PER_CLIENT = 4  # steady state: the first round is warm-up; three measured rounds reach it
# Requests each client sends in the benchmark's measured phase (NVIDIA's aiperf / genai-perf recipes:
# --request-count 10 x concurrency after a warm-up of 2 x concurrency).
BENCHMARK_ROUNDS = 10


def simulate_case(case: Case, *, requests_per_client: int = REQUESTS_PER_CLIENT, rounds: int = BENCHMARK_ROUNDS,
                  stagger: bool = True, seed: int = 0, efficiency=None) -> tuple[float, float]:
    """Mean (TTFT s, TPOT s) over the benchmark's measured phase of a case's closed loop, simulated
    (``simulate_benchmark``) on the roofline with the engine's fitted factors, or ``efficiency`` in their place
    (what bench/calibrate.py varies)."""
    dep = case.deployment
    return simulate_benchmark(dep, cost_models(dep, efficiency), case.isl, case.osl, case.concurrency,
                              range_ratio=case.range_ratio, requests_per_client=requests_per_client, rounds=rounds,
                              stagger=stagger, seed=seed)


def simulate_benchmark(dep: Deployment, cms: dict, isl: int, osl: int, clients: int, *, range_ratio: float = 1.0,
                       requests_per_client: int = REQUESTS_PER_CLIENT, rounds: int = BENCHMARK_ROUNDS,
                       stagger: bool = True, seed: int = 0) -> tuple[float, float]:
    """Mean (TTFT s, TPOT s) of a closed-loop benchmark of ``clients`` over its measured phase, simulated with
    the pools' cost models ``cms``: how the replay predicts a row and emit an aiperf run.

    A client of varied lengths (InferenceMAX's, ``range_ratio`` < 1: uniform in [ratio x L, L]) is simulated as
    it ran: ``rounds`` x clients requests, every client starting at once; the mean over all.

    A fixed-length client (aiperf) waits for every warm-up request to finish before the measured phase, so that
    phase opens with all clients sending at once: a burst whose prompts queue behind each other. Each client
    then sends ``rounds - 1`` more; the mean over the phase is (burst + (rounds - 1) x steady state) / rounds,
    per request. The burst is simulated as it happens (all clients at t=0, the first request of each measured).
    The steady state: on an engine that runs decodes first (vLLM, TRT-LLM) the real clients drift partly out of
    step after the burst (arrival jitter splits the waves a deterministic model would keep), so with
    ``stagger`` they start one at a time, ``E2E / clients`` apart (E2E from the analytic steady state), and a
    prompt reaching a busy engine waits the cost model's ``ttft_wait_prefills`` of its own prefills (what
    remains of the waves). On a prefill-first engine (SGLang) every wave is prefilled before anyone decodes, so
    all finish together and the lock-step holds: there the burst is every round. The frontend time
    (``ttft_overhead_s``) is the simulator's, as for any caller.
    """
    from profiler.roofline import request_terms  # noqa: PLC0415
    from simulator import simulate  # noqa: PLC0415
    from traces.synthetic import synthetic_workload  # noqa: PLC0415

    c, metrics = clients, ("ttft_s", "tpot_s")
    if range_ratio < 1:
        def lengths(n: int) -> str:
            return "uniform:{},{}".format(*length_range(n, range_ratio))

        wl = synthetic_workload(requests=c * max(rounds, 1), isl=lengths(isl), osl=lengths(osl), concurrency=c,
                                seed=seed)
        r = simulate(dep, wl, seed=seed, cost_models=cms).requests
        r = r[r["outcome"] == "ok"]
        return (float("nan"), float("nan")) if r.empty else tuple(float(r[m].mean()) for m in metrics)

    def run(rounds_run: int, gap: float = 0.0, wait: float = 0.0) -> pd.DataFrame:
        wl = synthetic_workload(requests=c * rounds_run, isl=isl, osl=osl, concurrency=c, seed=seed)
        r = simulate(dep, wl, seed=seed, cost_models=cms, closed_loop_stagger_s=gap,
                     admission_wait_prefills=wait).requests
        return r.assign(client_round=np.arange(len(r)) // c)  # rows are sent in order, a round of c at a time

    lockstep = not stagger or c == 1 or any(p.prefill_first for p in dep.pools.values())
    wait = 0.0 if lockstep else max(request_terms(cm)[1] for cm in cms.values())
    together = run(requests_per_client if lockstep else 2, wait=wait)
    burst = together[(together["client_round"] == 0) & (together["outcome"] == "ok")]
    if lockstep:
        steady = together[(together["client_round"] > 0) & (together["outcome"] == "ok")]
    else:
        ttft, tpot = closed_loop_estimate(dep, cms, isl, osl, c)  # one client's cycle, E2E
        spread = run(requests_per_client, (ttft + (osl - 1) * tpot) / c, wait)
        steady = spread[(spread["client_round"] > 0) & (spread["outcome"] == "ok")]
    if burst.empty or steady.empty:
        return float("nan"), float("nan")
    w = 1.0 / max(rounds, 1)
    return tuple(float(w * burst[m].mean() + (1 - w) * steady[m].mean()) for m in metrics)


def _predict_one(args: tuple) -> tuple[int, float, float, str]:
    case, requests_per_client, rounds, stagger, efficiency = args
    try:
        eff = efficiency.get(case.engine) if isinstance(efficiency, dict) else efficiency
        ttft, tpot = simulate_case(case, requests_per_client=requests_per_client, rounds=rounds, stagger=stagger,
                                   efficiency=eff)
    except InputError as e:  # the simulator refused the deployment: a reason, never a crash
        return case.row, float("nan"), float("nan"), f"simulator: {e}"
    if not (np.isfinite(ttft) and np.isfinite(tpot)):
        return case.row, float("nan"), float("nan"), "simulator: no request finished"
    return case.row, ttft, tpot, ""


def predict_cases(cases: list[Case], *, requests_per_client: int = REQUESTS_PER_CLIENT,
                  rounds: int = BENCHMARK_ROUNDS, stagger: bool = True, efficiency=None,
                  jobs: int = 1, progress=None) -> dict[int, tuple[float, float, str]]:
    """Simulate every case that is not skipped: ``{row: (ttft_s, tpot_s, skip_reason)}``; ``jobs`` processes;
    ``progress(done, total)`` after each case."""
    todo = [(c, requests_per_client, rounds, stagger, efficiency) for c in cases if not c.skipped]
    out = []
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp  # noqa: PLC0415

        with mp.get_context("fork").Pool(jobs) as pool:
            for one in pool.imap_unordered(_predict_one, todo, chunksize=max(1, min(16, len(todo) // (4 * jobs)))):
                out.append(one)
                if progress is not None:
                    progress(len(out), len(todo))
    else:
        for t in todo:
            out.append(_predict_one(t))
            if progress is not None:
                progress(len(out), len(todo))
    return {row: (ttft, tpot, why) for row, ttft, tpot, why in out}


def replay(df: pd.DataFrame, *, gpu_name: str | None = None, requests_per_client: int = REQUESTS_PER_CLIENT,
           rounds: int = BENCHMARK_ROUNDS, stagger: bool = True, jobs: int = 1, progress=None) -> Replay:
    """Predict every row of a benchmark table (on ``gpu_name``, or each on the GPU its ``system`` column names);
    rows pdsim cannot express keep their skip reason. ``progress(done, total)`` after each simulated row."""
    df = df.reset_index(drop=True)
    cases = [row_case(r, i, gpu_name) for i, (_, r) in enumerate(df.iterrows())]
    pred = predict_cases(cases, requests_per_client=requests_per_client, rounds=rounds, stagger=stagger, jobs=jobs,
                         progress=progress)
    rows = df.copy()
    rows["pdsim_model"] = [c.model or "unknown" for c in cases]
    rows["pdsim_gpu"] = [c.deployment.gpu if c.deployment is not None else "" for c in cases]
    rows["pred_ttft_ms"] = [pred[c.row][0] * 1e3 if c.row in pred else np.nan for c in cases]
    rows["pred_tpot_ms"] = [pred[c.row][1] * 1e3 if c.row in pred else np.nan for c in cases]
    rows["skip_reason"] = [c.skip_reason or pred.get(c.row, (0, 0, ""))[2] for c in cases]
    rows["assumed"] = [c.assumed if not rows.at[c.row, "skip_reason"] else "" for c in cases]
    rows["client"] = [c.client for c in cases]
    return Replay(rows, summarize(rows))


def write_replay(result: Replay, out: str | Path, source: str = "") -> dict[str, Path]:
    """rows.csv (every input column plus predictions and skip_reason), summary.json and report.html in ``out``."""
    import json  # noqa: PLC0415

    from reports.replay import write_replay_report  # noqa: PLC0415

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"rows": out / "rows.csv", "summary": out / "summary.json", "report": out / "report.html"}
    result.rows.drop(columns=["pdsim_model", "pdsim_gpu"]).to_csv(paths["rows"], index=False)
    paths["summary"].write_text(json.dumps(result.summary, indent=2) + "\n")
    write_replay_report(result.rows, result.summary, paths["report"], source)
    return paths
