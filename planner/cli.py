"""`pdsim`: every verb of the tool. Heavy modules (torch, the simulator) load inside the command
that needs them so that `pdsim --help`, `simulate` and `plan` start fast.

Each command is a thin shell: parse flags, call the package function, print, exit. User errors are
`profiler.errors.InputError`, printed as one line (``pdsim: error: ...``) with exit code 2.
"""

from __future__ import annotations

import contextlib
import math
import sys

import typer

from profiler.errors import InputError

app = typer.Typer(
    name="pdsim",
    help="Plan LLM serving: aggregated or disaggregated, how many GPUs where, and what TTFT/TPOT users see.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
trace_app = typer.Typer(help="Inspect workload traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")

EXIT_INPUT_ERROR = 2


def fail(message: str, code: int = EXIT_INPUT_ERROR) -> None:
    typer.echo(f"pdsim: error: {message}", err=True)
    raise typer.Exit(code)


def run_app(application: typer.Typer, args: list[str] | None = None, prog_name: str | None = None) -> int:
    """Run a typer app; InputError and other expected failures become one line, never a traceback."""
    try:
        # without standalone mode click returns (not raises) the code of `raise typer.Exit(code)`
        code = application(args=args, standalone_mode=False, prog_name=prog_name)
    except typer.Exit as e:
        return e.exit_code
    except InputError as e:
        typer.echo(f"pdsim: error: {e}", err=True)
        return EXIT_INPUT_ERROR
    except typer.Abort:
        typer.echo("pdsim: aborted", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("pdsim: interrupted", err=True)
        return 130
    except OSError as e:  # an output path in a missing folder, a read-only file: the user's path, named
        if e.filename is None:
            raise
        typer.echo(f"pdsim: error: {e.filename}: {e.strerror}", err=True)
        return EXIT_INPUT_ERROR
    except Exception as e:  # noqa: BLE001
        # usage errors (bad flag value, unknown option or command) come from click or, in typer >= 0.2x, from
        # its vendored copy of click, whose classes are not click's: recognise both by their interface
        if not (hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int)):
            raise
        typer.echo(f"pdsim: error: {e.format_message()} (see --help)", err=True)
        return e.exit_code
    return code if isinstance(code, int) else 0


# ---- pdsim check (planner/check.py) -------------------------------------------------------------
@app.command()
def check(
    paths: list[str] = typer.Argument(..., help="Check files (*.check.yaml) or folders searched for them."),
    junit: str | None = typer.Option(None, "--junit", help="Write JUnit XML here (one testcase per check)."),
    markdown: str | None = typer.Option(None, "--markdown", help="Write a markdown summary table here."),
    update_baseline: bool = typer.Option(False, "--update-baseline",
                                         help="Rewrite each file's baseline from this run (keeps comments)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Run checks in this many processes."),
) -> None:
    """Simulate deployment checks and say PASS/FAIL with the reason. Exit 0 all pass, 1 any fails, 2 bad input."""
    from pathlib import Path

    from planner import check_report
    from planner.check import find_checks, judge, load_check, run_checks
    from planner.check import update_baseline as rewrite_baseline

    results = run_checks(find_checks(paths), jobs=jobs)
    if update_baseline:
        for i, r in enumerate(results):
            if r.status != "error":
                rewrite_baseline(r.path, r.summary)
                results[i] = judge(load_check(r.path), r.summary, r.wall_s)
                typer.echo(f"updated baseline: {r.path}")
    for r in results:
        typer.echo(check_report.format_result(r))
    typer.echo(check_report.totals(results))
    if junit:
        check_report.write_junit(results, junit)
    if markdown:
        Path(markdown).write_text(check_report.markdown(results))
    statuses = {r.status for r in results}
    raise typer.Exit(EXIT_INPUT_ERROR if "error" in statuses else 1 if "fail" in statuses else 0)


# ---- pdsim trace info (traces/info.py) ----------------------------------------------------------
@trace_app.command("info")
def trace_info_cmd(
    file: str = typer.Argument(..., help="Trace: Azure CSV, Mooncake JSONL, BurstGPT CSV, Vidur CSV, lengths CSV."),
    format: str | None = typer.Option(None, "--format", help="azure | mooncake | burstgpt | vidur | lengths "
                                      "(default: detected from the content)."),
    rate: float | None = typer.Option(None, "--rate", help="req/s: arrivals for a lengths-only file; "
                                      "a timed trace is rescaled to it."),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson | gamma | constant (with --rate)."),
    cv: float = typer.Option(1.0, "--cv", help="Burstiness of gamma arrivals (CV of the gaps)."),
    spread_ticks: bool = typer.Option(False, "--spread-ticks", help="Spread same-timestamp requests over the tick."),
    seed: int = typer.Option(0, "--seed", min=0),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Counts, rate, burstiness and ISL/OSL percentiles of a trace."""
    import json

    from traces.info import info_table, trace_info

    info = trace_info(file, format, rate=rate, arrival=arrival, cv=cv, seed=seed, spread_ticks=spread_ticks)
    if as_json:
        clean = json.loads(json.dumps(info), parse_constant=lambda _: None)  # NaN -> null
        typer.echo(json.dumps(clean, indent=2))
    else:
        typer.echo(info_table(info))


# ---- pdsim simulate (simulator/) ----------------------------------------------------------------
@app.command("simulate")
def simulate_cmd(
    deployment: str = typer.Option(..., "--deployment", help="Deployment YAML (model, gpu, topology, pools)."),
    trace: str | None = typer.Option(None, "--trace", help="Replay this trace (its own arrivals and lengths)."),
    trace_format: str | None = typer.Option(None, "--trace-format", help="Trace format (default: detected)."),
    rate: float | None = typer.Option(None, "--rate", help="Synthetic open loop: Poisson arrivals, req/s."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Synthetic closed loop: this many clients."),
    isl: int | None = typer.Option(None, "--isl", help="Prompt tokens per synthetic request."),
    osl: int | None = typer.Option(None, "--osl", help="Output tokens per synthetic request."),
    requests: int | None = typer.Option(None, "--requests", help="Synthetic requests (default 1000); with "
                                        "--trace, its first N."),
    warmup: int = typer.Option(0, "--warmup", help="Closed loop: first completions left out of the metrics."),
    ttft: float | None = typer.Option(None, "--ttft", help="TTFT target, ms (with --tpot)."),
    tpot: float | None = typer.Option(None, "--tpot", help="TPOT target, ms (with --ttft)."),
    percentile: float = typer.Option(90, "--percentile", help="Percentile the targets bind."),
    json_out: str | None = typer.Option(None, "--json", help="Write the summary JSON to this file."),
    seed: int = typer.Option(0, "--seed", min=0),
    profile: str | None = typer.Option(None, "--profile", help="Profile directory (measured costs)."),
    calibration: str | None = typer.Option(None, "--calibration", help="Calibration file (pdsim calibrate) for "
                                           "this deployment's model and GPU."),
    perf_db: str | None = typer.Option(None, "--perf-db", help="aiconfigurator[:BACKEND]: costs from "
                                       "AIConfigurator's measured operation tables (pip install 'pdsim\\[aic]')."),
    router: str | None = typer.Option(None, "--router", help="round_robin | least_loaded | kv_aware (default: the "
                                      "deployment's)."),
    kv_event_delay: float | None = typer.Option(None, "--kv-event-delay", help="Seconds KV events take to reach "
                                                "the kv_aware router (default: the deployment's)."),
    system_prompts: int = typer.Option(0, "--system-prompts", help="Synthetic: this many shared system prompts "
                                       "(with --system-tokens), one starts each request."),
    system_tokens: int = typer.Option(0, "--system-tokens", help="Synthetic: tokens of each system prompt."),
    sessions: int = typer.Option(0, "--sessions", help="Synthetic: multi-turn sessions the requests are dealt to."),
    reuse: float = typer.Option(0.0, "--reuse", help="Synthetic, with --sessions: share of each prompt repeated "
                                "from the session's previous turn."),
    fault: list[str] = typer.Option(None, "--fault", help="A fault or scaling event (repeatable), e.g. "
                                    "'prefill[0] dies at 120s, back after 30s' (simulator/faults.py)."),
    autoscale: str | None = typer.Option(None, "--autoscale", help="rate | trend | load: scale the pools in the "
                                         "loop to the --ttft/--tpot targets (simulator/autoscale.py)."),
    prices: str | None = typer.Option(None, "--prices", help="YAML/JSON GPU name -> $/hour (default: the catalog's "
                                      "list prices)."),
    trace_requests: str | None = typer.Option(None, "--trace-requests", help="Print the timeline of these "
                                              "requests, e.g. 3,17,40-42."),
    report: str | None = typer.Option(None, "--report", help="Write an HTML report here (summary, waterfall, "
                                      "pools over time, a searchable table of every request)."),
) -> None:
    """Simulate a deployment serving a trace or a synthetic load; print the summary (and write its JSON)."""
    import json
    from pathlib import Path

    from simulator import SLO, simulate, summary_table
    from simulator.deployment import load_deployment

    if sum(x is not None for x in (trace, rate, concurrency)) != 1:
        fail("give exactly one of --trace FILE, --rate R or --concurrency N")
    if (ttft is None) != (tpot is None):
        fail("give both --ttft and --tpot (ms), or neither")
    if ttft is not None and not (ttft > 0 and tpot > 0 and 0 < percentile <= 100):
        fail(f"--ttft/--tpot must be > 0 ms and --percentile in (0, 100]; got {ttft:g}, {tpot:g}, {percentile:g}")
    dep = load_deployment(deployment)
    if router is not None or kv_event_delay is not None:
        from simulator.kv import with_router

        dep = with_router(dep, router, kv_event_delay)
    if fault or autoscale is not None:
        from simulator.deployment import check_fault_targets
        from simulator.fault_plan import fault_plan, with_ops

        dep = with_ops(dep, fault, autoscale, ttft, tpot)
        if fault:  # a replica the deployment lacks: say --fault (not 'faults:', as the simulator would)
            check_fault_targets(fault_plan({"faults": fault}, "--fault"),
                                {name: p.replicas for name, p in dep.pools.items()}, where="--fault")
    if trace is not None:
        from traces import load_trace
        from traces.transforms import head

        workload = load_trace(trace, trace_format, seed=seed)
        if requests is not None:
            workload = head(workload, requests)
    else:
        from traces.synthetic import synthetic_workload

        if rate is not None and not rate > 0:
            fail(f"--rate must be > 0 req/s, got {rate:g}")
        if isl is None or osl is None:
            fail("--rate/--concurrency need --isl and --osl (tokens per request)")
        workload = synthetic_workload(requests=1000 if requests is None else requests, isl=isl, osl=osl, rate=rate,
                                      concurrency=concurrency, seed=seed, warmup_requests=warmup,
                                      system_prompts=system_prompts, system_tokens=system_tokens, sessions=sessions,
                                      reuse=reuse)
    prof = None
    if profile is not None:
        from profiler.profile import load_profile

        prof = load_profile(profile)
    slo = SLO(ttft, tpot, percentile) if ttft is not None else None
    cms = None
    if calibration is not None or perf_db is not None:
        from planner.calibrate import pool_cost_models

        cms = pool_cost_models(dep, calibration, perf_db)
    result = simulate(dep, workload, seed=seed, profile=prof, slo=slo, cost_models=cms)
    if prices is not None:
        from profiler.prices import load_prices, usd_per_gpu_hour

        result.extra["usd_per_gpu_hour"] = usd_per_gpu_hour(dep.gpu, load_prices(prices))
    summary = result.summary()
    typer.echo(summary_table(summary))
    from simulator.ops_summary import ops_table

    typer.echo(ops_table(summary))
    if trace_requests is not None:
        from simulator.timeline import parse_ids, request_timeline

        for r in parse_ids(trace_requests, len(workload)):
            typer.echo(request_timeline(result, r, dep.router, dep.topology == "disagg"))
    if report:
        from reports.requests import write_simulation_report

        text = summary_table(summary) + "\n" + ops_table(summary)
        typer.echo(f"wrote {write_simulation_report(result, text, report)}")
    if json_out:
        Path(json_out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        typer.echo(f"wrote {json_out}")


# ---- pdsim replay-benchmark (planner/replay.py) -------------------------------------------------
@app.command("replay-benchmark")
def replay_benchmark_cmd(
    file: str = typer.Argument(..., help="Measured results in aiconfigurator's silicon CSV format."),
    system: str | None = typer.Option(None, "--system", help="GPU the rows ran on (default: each row's system "
                                      "column, e.g. h100_sxm, b200_sxm)."),
    models: list[str] = typer.Option(None, "--models", help="Only rows of these models (repeatable)."),
    out: str = typer.Option("replay", "--out", help="Folder for rows.csv, summary.json and report.html."),
    requests_per_client: int = typer.Option(4, "--requests-per-client", min=2,
                                            help="Requests per client in the steady-state simulation; the first "
                                            "round is warm-up."),
    rounds: int = typer.Option(10, "--rounds", min=1, help="Requests per client in the benchmark's measured "
                               "phase, which opens with every client sending at once (aiperf --request-count / "
                               "concurrency; InferenceMAX --num-prompts / --max-concurrency)."),
    lockstep: bool = typer.Option(False, "--lockstep", help="Keep fixed-length clients in step after the opening "
                                  "burst, their waves simulated (default: out of step on decode-first engines, "
                                  "with the fitted admission wait of what remains of the waves)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Simulate rows in this many processes."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Simulate every row of a measured benchmark file and report the error of TTFT and TPOT."""
    from planner.benchmark_rows import load_benchmark, select_models
    from planner.replay import format_summary, replay, write_replay
    from profiler.gpus import canonical_gpu_name

    gpu = None if system is None else canonical_gpu_name(system)
    if system is not None and gpu is None:
        fail(f"--system: unknown GPU {system!r}")
    df = select_models(load_benchmark(file), models)
    if df.empty:
        fail(f"no rows of {', '.join(models)} in {file}")
    bar = None if quiet else typer.progressbar(length=len(df), label="simulating rows", file=sys.stderr,
                                               show_pos=True)
    done = [0]

    def progress(n: int, total: int) -> None:
        if bar is not None:
            if done[0] == 0:
                bar.length = total  # rows skipped before simulating do not count
            bar.update(n - done[0])
            done[0] = n

    with bar if bar is not None else contextlib.nullcontext():
        result = replay(df, gpu_name=gpu, requests_per_client=requests_per_client, rounds=rounds,
                        stagger=not lockstep, jobs=jobs, progress=progress)
    paths = write_replay(result, out, source=f"{file} on {gpu or 'the GPUs its rows name'}")
    typer.echo(format_summary(result.summary))
    typer.echo(f"wrote {paths['rows']}, {paths['summary']}, {paths['report']}")


# ---- pdsim emit / calibrate (planner/emit.py, planner/calibrate.py) ----------------------------
@app.command("emit")
def emit_cmd(
    deployment: str = typer.Option(..., "--deployment", help="Deployment YAML (e.g. a plan's recommendation)."),
    target: str = typer.Option("dynamo,vllm,sglang", "--target", help="Comma list of dynamo, vllm, sglang, aiperf."),
    out: str = typer.Option("deploy", "--out", help="Folder the artefacts are written into."),
    isl: int | None = typer.Option(None, "--isl", help="Prompt tokens the aiperf benchmark sends."),
    osl: int | None = typer.Option(None, "--osl", help="Output tokens the aiperf benchmark asks for."),
    rate: float | None = typer.Option(None, "--rate", help="Planned request rate (req/s) to benchmark too."),
    model_id: str | None = typer.Option(None, "--model-id", help="Checkpoint the engines load (default: the "
                                        "model's Hugging Face id)."),
    calibration: str | None = typer.Option(None, "--calibration", help="Calibration file (pdsim calibrate)."),
    perf_db: str | None = typer.Option(None, "--perf-db", help="aiconfigurator[:BACKEND]: predict with "
                                       "AIConfigurator's measured operation tables (pip install 'pdsim\\[aic]')."),
    predict_with: str = typer.Option("sim", "--predict", help="sim: simulate each aiperf run | estimate: "
                                     "closed-form steady state (faster)."),
) -> None:
    """Deploy artefacts for a deployment: Dynamo YAML, vLLM/SGLang launch scripts, aiperf benchmark."""
    from planner import emit as em
    from simulator.deployment import load_deployment

    dep = load_deployment(deployment)
    targets = [t.strip() for t in target.split(",") if t.strip()]
    if predict_with not in ("sim", "estimate"):
        fail(f"--predict must be sim or estimate, got {predict_with!r}")
    make = em.simulation_predictor if predict_with == "sim" else em.estimate_predictor
    predict, by = make(dep, calibration, perf_db)  # checks the flags whatever the targets
    points = None
    if "aiperf" in targets:
        if not isl or not osl:
            raise InputError("--target aiperf needs --isl and --osl (the lengths the plan was made for)")
        points = em.bench_points(dep, isl, osl, rate, predict)
    paths = em.emit(dep, targets, out, deployment, model_id, points, by)
    typer.echo(f"plan {em.plan_id(dep)}: {dep.describe()} -> {', '.join(str(p) for p in paths)}")
    if points:
        typer.echo(f"predicted by {by}:\n{em.predictions_table(points)}")


@app.command("calibrate")
def calibrate_cmd(
    measured: str = typer.Option(..., "--measured", help="Folder of aiperf runs (profile_export.jsonl / "
                                 "profile_export_aiperf.json) and/or silicon CSVs, or one such file."),
    deployment: str = typer.Option(..., "--deployment", help="The deployment the measurements ran on."),
    out: str = typer.Option("calib.yaml", "--out", help="Calibration file to write."),
    fit: str | None = typer.Option(None, "--fit", help="Comma list of Efficiency factors to fit (default: "
                                   "compute, memory and overhead factors)."),
    points: str | None = typer.Option(None, "--points", help="Also write every measured point with its "
                                      "predictions before and after the fit (CSV)."),
) -> None:
    """Fit the roofline's efficiency factors to measured TTFT/TPOT; write a --calibration file."""
    from planner import calibrate as cb
    from simulator.deployment import load_deployment

    dep = load_deployment(deployment)
    names = tuple(f.strip() for f in fit.split(",") if f.strip()) if fit else cb.FIT_DEFAULT
    cal, table, skipped = cb.calibrate(measured, dep, names)
    path = cb.save_calibration(cal, out)
    skip = "".join(f"; skipped {v} rows: {k}" for k, v in skipped.items())
    typer.echo(f"{cal.points} measured points of {cal.model} on {cal.gpu} ({cal.engine}, {cal.dtype}){skip}")
    typer.echo(f"{'mean abs error':<16}{'TTFT':>9}{'TPOT':>9}")
    for when, e in (("before", cal.error_before), ("after", cal.error_after)):
        typer.echo(f"{when:<16}{e['ttft_mape_pct']:>8.1f}%{e['tpot_mape_pct']:>8.1f}%")
    typer.echo("fitted: " + ", ".join(f"{k}={getattr(cal.efficiency, k):.4g}" for k in cal.fitted))
    typer.echo(f"wrote {path} (use with --calibration {path})")
    if points:
        table.to_csv(points, index=False)
        typer.echo(f"wrote {points}")


# ---- pdsim profile (profiler/measure.py, profiler/verify.py) ------------------------------------
@app.command("profile")
def profile_cmd(
    model: str | None = typer.Option(None, "--model", help="Catalog name or config.json to profile."),
    out: str | None = typer.Option(None, "--out", help="Profile directory to write (runs merge into it)."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    tp: int = typer.Option(1, "--tp", min=1, help="Time one rank of this tensor-parallel split."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16 | fp8 (default: fp32 on cpu, "
                                     "bf16 on cuda)."),
    quick: bool = typer.Option(False, "--quick", help="A coarser grid (tiny model on 2 CPU cores: seconds)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch CPU threads (1, as the runtime's workers)."),
    seed: int = typer.Option(0, "--seed", min=0),
    clock: str | None = typer.Option(None, "--clock", help="wall (default) | cpu: this thread's CPU time, "
                                     "immune to other processes on a shared CPU (cpu, one thread)."),
    verify: str | None = typer.Option(None, "--verify", help="Instead: time whole-model passes against this "
                                      "profile's per-op composition and print the error."),
) -> None:
    """Time the operations of a serving iteration on this machine, or --verify a profile against whole passes."""
    if verify is not None:
        from profiler.profile import load_profile

        prof = load_profile(verify)  # bad input fails before torch loads
        from profiler.verify import format_result, verify_profile

        typer.echo(format_result(verify_profile(prof, model_name=model, dtype=dtype, clock=clock)))
        return
    if model is None or out is None:
        fail("pdsim profile needs --model and --out (or --verify DIR)")
    from profiler.models import resolve_model

    spec = resolve_model(model)
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        fail(f"--device {device!r}: use cpu or cuda")
    import time

    from profiler.measure import profile_model

    started = time.perf_counter()

    def log(s: str) -> None:
        typer.echo(f"[{time.perf_counter() - started:6.1f}s] {s}", err=True)

    prof = profile_model(spec, device=device, tp=tp, dtype=dtype, quick=quick, threads=threads, seed=seed,
                         clock=clock, log=log)
    path = prof.save(out)
    run = prof.runs[0]
    typer.echo(f"profiled {spec.name} ({run['dtype']}, tp {tp}) on {run['device']['name']}: {len(prof.table)} "
               f"measurements in {run['duration_s']:.1f}s; wrote {path} (use with --profile {path})")


# ---- pdsim serve (runtime/) ---------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    deployment: str | None = typer.Option(None, "--deployment", help="Deployment YAML (default: 1 prefill + 1 "
                                          "decode worker, tiny model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (loopback unless you say)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="HTTP port (0: any free one)."),
    api_key: str | None = typer.Option(None, "--api-key", help="Require 'Authorization: Bearer KEY' on every "
                                       "endpoint but /health (or set PDSIM_API_KEY)."),
    log: str = typer.Option("pdsim-requests.jsonl", "--log", help="JSON-lines request log ('' to turn off)."),
    step_log_dir: str | None = typer.Option(None, "--step-log-dir", help="Write each worker's steps here."),
    kv_tokens: int | None = typer.Option(None, "--kv-tokens", min=1, help="KV cache per worker, in tokens."),
    kv_timeout_s: float = typer.Option(10.0, "--kv-timeout", min=0.01, help="Seconds a decode worker waits "
                                       "for KV before the request is re-prefilled."),
    seed: int = typer.Option(0, "--seed", min=0, help="Weights seed and default sampling seed."),
    pace_profile: str | None = typer.Option(None, "--pace-profile", help="Paced replay: every worker step lasts "
                                            "(at least) what this profile predicts for its batch."),
    pace_scale: float = typer.Option(1.0, "--pace-scale", min=0.01, help="With --pace-profile: times this."),
) -> None:
    """Run the live runtime: OpenAI-compatible HTTP frontend, router, prefill/decode (or agg) worker processes."""
    from runtime.serve import ServeOptions, default_deployment, serve
    from simulator.deployment import load_deployment

    dep = load_deployment(deployment) if deployment else None
    opts = ServeOptions(host=host, port=port, api_key=api_key, log_path=log or None, step_log_dir=step_log_dir,
                        seed=seed, kv_tokens=kv_tokens, kv_timeout_s=kv_timeout_s, pace_profile=pace_profile,
                        pace_scale=pace_scale)
    if pace_profile is not None:  # a profile that lacks the model fails here, in one line, not in every worker
        from profiler.paced import paced_cost_model

        paced = dep or default_deployment()
        paced_cost_model(pace_profile, paced.model, paced.dtype)
    try:
        serve(dep, opts)
    except RuntimeError as e:  # a worker that failed to start
        fail(str(e), code=1)


# ---- pdsim validate (planner/validate.py) --------------------------------------------------------
@app.command("validate")
def validate_cmd(
    deployment: str = typer.Option(..., "--deployment", help="Deployment YAML the runtime can run here "
                                   "(tp 1; gpu: cpu with dtype: fp32 on a CPU)."),
    trace: str | None = typer.Option(None, "--trace", help="Trace file to replay (any format pdsim reads)."),
    rate: float | None = typer.Option(None, "--rate", help="Arrival rate, req/s (default: the rate rule, "
                                      "--target-util)."),
    isl: int | None = typer.Option(None, "--isl", min=1, help="Without --trace: prompt tokens of every request."),
    osl: int | None = typer.Option(None, "--osl", min=1, help="Without --trace: output tokens of every request."),
    duration: float = typer.Option(120.0, "--duration", min=1.0, help="Seconds of the (rescaled) workload to "
                                   "replay."),
    start: float = typer.Option(0.0, "--start", min=0.0, help="Seconds into the trace where the slice begins."),
    out: str = typer.Option("pdsim-validate", "--out", help="Output folder (validate.json, validate.html)."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Live replays (their spread is the machine's noise); "
                                "raw mode simulates as many, each step's cost drawn from the spread measured live, "
                                "and compares medians."),
    paced: bool = typer.Option(False, "--paced", help="Each worker step lasts --pace-scale x the profile's "
                               "prediction; the simulator uses the same costs."),
    pace_scale: float | None = typer.Option(None, "--pace-scale", min=1.0, help="With --paced: times the "
                                            "profile (default: 2 x the p95 slowdown measured here now)."),
    target_util: float = typer.Option(0.5, "--target-util", min=0.01, max=0.95, help="Rate rule: the busiest "
                                      "simulated pool's busy share."),
    rehearsal: float = typer.Option(30.0, "--rehearsal", min=0.0, help="Raw mode: seconds of the workload after "
                                    "the slice replayed before each replay (the next such window each time) to "
                                    "measure the runtime's costs under the replay's load (0: measure them in a "
                                    "short burst only)."),
    profile: str | None = typer.Option(None, "--profile", help="Profile directory to use (default: cached or "
                                       "measured now)."),
    profile_cache: str | None = typer.Option(None, "--profile-cache", help="Where profiles are cached "
                                             "(default ~/.cache/pdsim/profiles)."),
    full_profile: bool = typer.Option(False, "--full-profile", help="Profile the full grid, not --quick."),
    seed: int = typer.Option(0, "--seed", min=0),
) -> None:
    """Replay a workload on the live runtime and in the simulator, and report the error per metric."""
    from pathlib import Path

    from planner.validate import DEFAULT_CACHE, ValidateOptions, error_split_text, error_table, validate
    from simulator.deployment import load_deployment
    from traces.transforms import time_window

    dep = load_deployment(deployment)
    if trace is not None:
        if isl is not None or osl is not None:
            fail("--isl/--osl describe a synthetic workload; a --trace has its own lengths")
        from traces.loader import load_trace

        workload = load_trace(trace)
        if start > 0:
            workload = time_window(workload, start, start + workload.duration_s + 1.0)
    else:
        if isl is None or osl is None:
            fail("pdsim validate needs --trace FILE, or --isl N and --osl N (with --rate R or the rate rule)")
        from traces.synthetic import synthetic_workload

        # enough for the rate rule to cut from, and for the rehearsals after the slice
        n = max(2, math.ceil((rate or 50.0) * (duration * 4 + repeats * rehearsal)))
        workload = synthetic_workload(requests=n, isl=isl, osl=osl, rate=rate or 1.0, seed=seed)
    opts = ValidateOptions(out_dir=Path(out), duration_s=duration, repeats=repeats, paced=paced,
                           pace_scale=pace_scale, target_util=target_util, rate=rate, profile=profile,
                           rehearsal_s=rehearsal,
                           profile_cache=Path(profile_cache) if profile_cache else DEFAULT_CACHE,
                           full_profile=full_profile, seed=seed)
    try:
        doc = validate(dep, workload, opts, log=lambda s: typer.echo(s, err=True))
    except RuntimeError as e:  # the runtime or the profiler failed to start
        fail(str(e), code=1)
    typer.echo(error_table(doc))
    if split := error_split_text(doc):
        typer.echo(split)
    typer.echo(f"wrote {Path(out) / 'validate.json'} and {Path(out) / 'validate.html'}")


# ---- pdsim plan / plan-worker (planner/plan.py, planner/search.py) ------------------------------
EXIT_NO_DEPLOYMENT = 3


@app.command("plan")
def plan_cmd(
    model: str = typer.Option(..., "--model", help="Catalog name, Hugging Face id or config.json."),
    ttft: float = typer.Option(..., "--ttft", help="TTFT target, ms, at --percentile."),
    tpot: float = typer.Option(..., "--tpot", help="TPOT target, ms, at --percentile."),
    isl: int | None = typer.Option(None, "--isl", help="Prompt tokens per request (not with --trace)."),
    osl: int | None = typer.Option(None, "--osl", help="Output tokens per request (not with --trace)."),
    gpu: str = typer.Option("h200-sxm", "--gpu", help="GPU type, a name of the catalog in profiler/gpus.py (h100-sxm, "
                            "h200-sxm, b200, gb200, b300, gb300, a100-80g, l40s, ...)."),
    gpus: int = typer.Option(8, "--gpus", help="GPU budget."),
    dtype: str | None = typer.Option(None, "--dtype", help="Weights: bf16 | fp8 | fp4 (default: the precision the "
                                     "model's checkpoint is published in, e.g. fp8 for DeepSeek-R1)."),
    rate: float | None = typer.Option(None, "--rate", help="Fixed load: Poisson req/s the deployment must carry."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Fixed load: closed-loop clients."),
    trace: str | None = typer.Option(None, "--trace", help="Fixed load: a trace file (ISL/OSL come from it)."),
    trace_format: str | None = typer.Option(None, "--trace-format", help="Trace format (default: detected)."),
    percentile: str = typer.Option("90", "--percentile", help="50 | 90 | 99: the percentile the targets bind; mean: "
                                   "the mean TTFT and TPOT, as AIConfigurator's targets (no share of requests asked)."),
    attainment: float = typer.Option(0.9, "--attainment", help="Share of requests that must meet both targets."),
    profile: str | None = typer.Option(None, "--profile", help="Profile directory (measured costs)."),
    calibration: str | None = typer.Option(None, "--calibration", help="Calibration file (pdsim calibrate) for "
                                           "this model, GPU and dtype: fitted roofline factors."),
    perf_db: str | None = typer.Option(None, "--perf-db", help="aiconfigurator[:BACKEND]: costs from "
                                       "AIConfigurator's measured operation tables (pip install 'pdsim\\[aic]')."),
    trials: int = typer.Option(24, "--trials", help="Units to simulate (each a goodput search)."),
    seed: int = typer.Option(0, "--seed", min=0),
    out: str | None = typer.Option(None, "--out", help="Output folder (default ./pdsim-plan-<timestamp>/)."),
    storage: str | None = typer.Option(None, "--storage", help="Optuna storage: sqlite:///study.db (resume) or "
                                       "postgresql://... (share with `pdsim plan-worker`)."),
    study: str | None = typer.Option(None, "--study", help="Study name (default: a hash of the question)."),
    objective: str = typer.Option("throughput-per-gpu", "--objective",
                                  help="throughput-per-gpu | min-gpus | pareto (NSGA-II: tok/s/GPU and tok/s/user) | "
                                  "cost ($ per million tokens)."),
    topology: str = typer.Option("both", "--topology", help="agg | disagg | both: which topologies to search."),
    engine: str = typer.Option("vllm", "--engine", help="vllm | sglang | trtllm: the engine the deployment runs (its "
                               "scheduler, memory share and fitted factors); all: plan for each and compare."),
    emit_check: str | None = typer.Option(None, "--emit-check", help="Also write a `pdsim check` file guarding "
                                          "the recommendation."),
    emit: str | None = typer.Option(None, "--emit", help="Also write the recommendation's deploy artefacts into "
                                    "<out>/deploy/: comma list of dynamo, vllm, sglang, aiperf."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", min=1, help="Simulate in this many processes (default: "
                                    "2, or 1 on a one-core machine); the answer is the same whatever it is."),
    router: str = typer.Option("least_loaded", "--router", help="round_robin | least_loaded | kv_aware (its "
                               "overlap/load weights are then tuned on the recommendation)."),
    kv_tiers: str | None = typer.Option(None, "--kv-tiers", help="KV tiers below HBM per replica, GB: "
                                        "host=256,disk=2000,remote=10000 (default bandwidths)."),
    compare: str | None = typer.Option(None, "--compare", help="aiconfigurator: also ask AIConfigurator the same "
                                       "question and simulate its top agg and disagg picks at its concurrency and "
                                       "its rate (pip install 'pdsim\\[aic]')."),
) -> None:
    """Recommend agg or disagg, pool sizes and settings that meet the TTFT/TPOT targets. Exit 3 if none does."""
    import time
    from pathlib import Path

    from planner.plan import PlanRequest, write_outputs
    from planner.terminal import render

    if topology not in ("agg", "disagg", "both"):
        fail(f"--topology must be agg, disagg or both, got {topology!r}")
    from planner.engines import ENGINES

    pct = "mean" if percentile == "mean" else int(percentile) if percentile.isdigit() else percentile
    engines = list(ENGINES) if engine == "all" else [engine]
    reqs = [PlanRequest(model=model, ttft_ms=ttft, tpot_ms=tpot, isl=isl, osl=osl, gpu=gpu, gpus=gpus, dtype=dtype,
                        rate=rate, concurrency=concurrency, trace=trace, trace_format=trace_format,
                        percentile=pct, attainment=attainment, profile=profile, calibration=calibration,
                        perf_db=perf_db, trials=trials, seed=seed, objective=objective,
                        topologies=("agg", "disagg") if topology == "both" else (topology,), router=router,
                        kv_tiers=kv_tiers, engine=e) for e in engines]
    for req in reqs:
        req.validate()
    checkpoints = {}
    if compare is not None:
        from planner.second_opinion import check

        checkpoints = {req.engine: check(req, compare) for req in reqs}
    if emit:
        from planner.emit import TARGETS

        if bad := [t.strip() for t in emit.split(",") if t.strip() not in TARGETS]:
            fail(f"--emit: unknown target {bad[0]!r}; known: {', '.join(TARGETS)}")
    if storage and len(reqs) > 1:
        fail("--engine all plans each engine in its own study: give --storage for one engine at a time")
    folder = Path(out or f"pdsim-plan-{time.strftime('%Y%m%d-%H%M%S')}")
    created = not folder.exists()
    try:  # before the search, so that an unwritable folder fails at once
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"{folder}: cannot create the output folder ({e.strerror})")
    results = []
    for req in reqs:
        where = folder / req.engine if len(reqs) > 1 else folder
        result = _plan_one(req, storage, study, quiet, jobs, folder if created else None)
        typer.echo(render(result))
        if compare is not None:
            from planner.parallel import default_jobs
            from planner.second_opinion import second_opinion
            from planner.terminal import second_opinion as second_opinion_lines

            result.compare = second_opinion(req, checkpoints[req.engine], jobs or default_jobs())
            typer.echo(second_opinion_lines(result))
        paths = write_outputs(result, where)
        if emit_check and result.recommendation is not None and len(reqs) == 1:
            from planner.plan import write_check

            paths.append(write_check(result, emit_check))
        if emit and result.recommendation is not None:
            paths += _emit_recommendation(result, emit, where)
        typer.echo("wrote " + ", ".join(str(p) for p in paths))
        results.append(result)
    if len(results) > 1:
        from planner.terminal import engines_compared

        typer.echo(engines_compared(results))
    if not any(r.met for r in results):
        raise typer.Exit(EXIT_NO_DEPLOYMENT)


def _plan_one(req, storage: str | None, study: str | None, quiet: bool, jobs: int | None, made_folder=None):
    """One plan with its banner (once the question holds) and progress bar; an empty output folder this run
    made is removed if the plan is refused or interrupted."""
    from planner.parallel import default_jobs
    from planner.plan import plan
    from planner.terminal import header

    try:
        with contextlib.ExitStack() as stack:
            bar, done = [], [0]

            def opened(_search) -> None:  # the question holds (model, GPU, trace, storage): say it, then search
                typer.echo(header(req))
                if storage:
                    name = study or req.study_name()
                    typer.echo(f"study {name}: more workers join with `pdsim plan-worker --storage {storage} "
                               f"--study {name}`")
                if not quiet:
                    bar.append(stack.enter_context(typer.progressbar(length=req.trials, label="searching",
                                                                     file=sys.stderr, show_pos=True)))

            def progress(n: int, _total: int) -> None:
                if bar and n > done[0]:
                    bar[0].update(n - done[0])
                    done[0] = n

            return plan(req, storage=storage, study_name=study, progress=progress, on_open=opened,
                        jobs=jobs or default_jobs())
    except BaseException:  # refused (a bad --storage) or interrupted before any output: leave no empty folder
        if made_folder is not None and made_folder.is_dir() and not any(made_folder.iterdir()):
            made_folder.rmdir()
        raise


def _emit_recommendation(result, targets: str, folder) -> list:
    """`plan --emit`: the recommendation's artefacts (planner/emit.py), aiperf forecasts from the simulator."""
    from planner import emit as em

    rec, req = result.recommendation, result.request
    names = [t.strip() for t in targets.split(",") if t.strip()]
    points = None
    if "aiperf" in names:
        r = rec.result.requests if rec.result is not None else None
        isl = req.isl or (round(float(r["isl"].mean())) if r is not None else None)
        osl = req.osl or (round(float(r["osl"].mean())) if r is not None else None)
        prof = None
        if req.profile:
            from profiler.profile import load_profile

            prof = load_profile(req.profile)
        predict, by = em.simulation_predictor(rec.deployment, req.calibration, req.perf_db, seed=req.seed,
                                              profile=prof)
        points = em.bench_points(rec.deployment, isl, osl, rec.rate_rps or None, predict)
    return em.emit(rec.deployment, names, folder / "deploy", f"pdsim plan, study {result.study}, {folder}",
                   points=points, predicted_by=by if points else "pdsim")


@app.command("plan-worker")
def plan_worker_cmd(
    storage: str = typer.Option(..., "--storage", help="The study's storage URL (sqlite:///... or postgresql://...)."),
    study: str = typer.Option(..., "--study", help="Study name, as `plan` printed it."),
    wait: float = typer.Option(60.0, "--wait", help="Seconds to wait for the study to appear."),
    units: int | None = typer.Option(None, "--units", min=1, help="Simulate at most this many units, then exit."),
) -> None:
    """Join a shared plan study and simulate trials until its budget is spent."""
    from planner.worker import join_study

    n = join_study(storage, study, wait_s=wait, max_units=units)
    typer.echo(f"plan-worker {study}: simulated {n} unit{'' if n == 1 else 's'}")


def main() -> None:
    sys.exit(run_app(app))


plan_app = typer.Typer(name="plan", add_completion=False, pretty_exceptions_enable=False)
plan_app.command(help=plan_cmd.__doc__)(plan_cmd)  # one command: `plan --help` reads "Usage: plan [OPTIONS]"


def plan_main() -> None:
    """`plan ...` is `pdsim plan ...`."""
    sys.exit(run_app(plan_app, sys.argv[1:], prog_name="plan"))
