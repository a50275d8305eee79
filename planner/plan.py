"""`plan`: the request (model, traffic, targets), the search, the confirmed recommendation, plan.json.

The search scores units; the recommendation is the best unit scaled to the budget (or to the load) and
simulated again as a whole deployment, so every figure the user sees comes from a run of what they
would deploy.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from planner.decide import tie_break
from planner.engines import ENGINES
from planner.evaluate import Evaluator, Load
from planner.reasons import reasons
from planner.recommend import Confirmed, mean_e2e_s, recommend
from planner.screen import Screen
from planner.search import OBJECTIVES, RUN_ATTRS, Search
from planner.space import Space
from profiler.errors import InputError
from profiler.gpus import resolve_gpu
from profiler.models import dtype_bytes, published_dtype, resolve_model
from simulator import SLO
from simulator.deployment import Deployment
from simulator.kv_tiers import tiers_flag
from simulator.router import ROUTERS

PERCENTILES = (50, 90, 99, "mean")  # "mean": the targets bind mean TTFT and TPOT (AIConfigurator's)
# flags with an upper bound, so that no value runs forever: the search enumerates every unit of the budget (its
# disagg units grow as GPUs squared: 128 GPUs take ~20 s, 256 ~1 min and 2 GB), a trial is a goodput search of
# ~1 s, a closed loop simulates 8 requests per client, and Optuna's samplers take 32-bit seeds
LIMITS = {"gpus": 128, "trials": 1000, "concurrency": 100_000, "seed": 2**32 - 1}
MIN_RATE = 1e-4  # req/s: a confirmation run's 3,200 requests then end within the simulator's 1e9 s of time


@dataclass(frozen=True)
class PlanRequest:
    """Everything `plan` was asked; stored in the study so that workers rebuild the same search."""

    model: str
    ttft_ms: float
    tpot_ms: float
    isl: int | None = None
    osl: int | None = None
    gpu: str = "h200-sxm"
    gpus: int = 8
    dtype: str | None = None  # None: the precision the model's checkpoint is published in
    rate: float | None = None
    concurrency: int | None = None
    trace: str | None = None
    trace_format: str | None = None
    percentile: int | str = 90  # or "mean"
    attainment: float = 0.9
    profile: str | None = None
    calibration: str | None = None  # `pdsim calibrate` file: fitted roofline factors (not with profile)
    perf_db: str | None = None  # aiconfigurator[:BACKEND]: AIConfigurator's tables (not with profile/calibration)
    trials: int = 24
    seed: int = 0
    objective: str = "throughput-per-gpu"
    topologies: tuple[str, ...] = ("agg", "disagg")
    router: str = "least_loaded"  # kv_aware: its weights are tuned on the recommendation (router_weights.py)
    kv_tiers: str | None = None  # "host=256,disk=2000": KV tiers below HBM, GB per replica (issue 8)
    engine: str = "vllm"  # the serving engine: its scheduler, memory share and fitted factors (planner/engines.py)

    def __post_init__(self):
        if self.dtype is None:
            object.__setattr__(self, "dtype", published_dtype(self.model))
        # 300 and 300.0 ask the same question (and must name the same study)
        for name in ("ttft_ms", "tpot_ms", "attainment", "rate"):
            v = getattr(self, name)
            if isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, name, float(v))

    @property
    def fixed_load(self) -> bool:
        """A load to carry (rate, clients or trace), not the highest rate that meets the targets."""
        return self.rate is not None or self.concurrency is not None or self.trace is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["topologies"] = list(self.topologies)
        for key, default in (("router", "least_loaded"), ("kv_tiers", None), ("engine", "vllm")):  # same study names
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PlanRequest:
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        if "topologies" in kw:
            kw["topologies"] = tuple(kw["topologies"])
        return cls(**kw)

    def study_name(self) -> str:
        """Same question, same study: a hash of everything that shapes the search (not the trial budget)."""
        d = {k: v for k, v in self.to_dict().items() if k != "trials"}
        return "pdsim-" + hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("ttft_ms", "tpot_ms"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise InputError(f"--{name.split('_')[0]} must be a positive number of milliseconds, got {v!r}")
        loads = [x for x in (self.rate, self.concurrency, self.trace) if x is not None]
        if len(loads) > 1:
            raise InputError("give at most one of --rate, --concurrency, --trace")
        if self.trace is None and (self.isl is None or self.osl is None):
            raise InputError("give --isl and --osl (prompt and output tokens), or --trace FILE")
        for name in ("isl", "osl", "gpus", "trials", "concurrency"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise InputError(f"--{name} must be a whole number >= 1, got {v!r}")
        for name, limit in LIMITS.items():
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or not 0 <= v <= limit):
                raise InputError(f"--{name} must be a whole number up to {limit:,}, got {v!r}")
        if self.rate is not None and not (MIN_RATE <= self.rate and math.isfinite(self.rate)):
            raise InputError(f"--rate must be a number of requests per second >= {MIN_RATE:g}, got {self.rate!r}")
        if self.percentile not in PERCENTILES:
            raise InputError(f"--percentile must be one of {', '.join(map(str, PERCENTILES))}, got {self.percentile}")
        if not 0 < self.attainment <= 1:
            raise InputError(f"--attainment must be in (0, 1], got {self.attainment}")
        if sum(x is not None for x in (self.profile, self.calibration, self.perf_db)) > 1:
            raise InputError("give one cost source: --profile (measured costs), --calibration (fitted roofline) "
                             "or --perf-db (AIConfigurator's tables)")
        if self.engine not in ENGINES:
            raise InputError(f"must be one of {', '.join(ENGINES)} (or all), got {self.engine!r}", where="--engine")
        if self.router not in ROUTERS:
            raise InputError(f"must be one of {', '.join(ROUTERS)}, got {self.router!r}", where="--router")
        if self.kv_tiers is not None:
            tiers_flag(self.kv_tiers)
        if self.objective == "min-gpus" and not loads:
            raise InputError("--objective min-gpus needs a load to carry: --rate, --concurrency or --trace")
        dtype_bytes(self.dtype)


@dataclass
class Plan:
    request: PlanRequest
    rows: list[dict]  # every simulated unit (trial attributes), best first
    infeasible: list[dict]  # trials rejected before simulation, with the constraint that failed
    recommendation: Confirmed | None
    runner_up: Confirmed | None  # the other topology at the recommendation's load, within the budget
    reasons: list[str]
    closest: list[dict] = field(default_factory=list)  # when nothing meets the targets
    pareto: list[dict] = field(default_factory=list)
    confirmed: list[Confirmed] = field(default_factory=list)  # every whole-deployment run the choice rests on
    smaller: list[tuple[str, Confirmed]] = field(default_factory=list)  # fixed load: one step smaller, each missed
    trials: dict[str, int] = field(default_factory=dict)  # simulated units per topology
    sims: int = 0
    wall_s: float = 0.0
    study: str = ""
    compare: dict | None = None  # `--compare aiconfigurator`: its answer, its picks simulated (second_opinion.py)

    @property
    def met(self) -> bool:
        return self.recommendation is not None and self.recommendation.probe.met

    def to_dict(self) -> dict:
        """The answer (plan.json): the same question, seed and trial budget give the same bytes."""
        return {
            "request": self.request.to_dict(), "study": self.study, "met": self.met,
            "recommendation": self.recommendation.to_dict() if self.recommendation else None,
            "runner_up": self.runner_up.to_dict() if self.runner_up else None,
            "reasons": self.reasons, "tie_break": tie_break(self.request.fixed_load),
            "closest": self.closest, "pareto": self.pareto,
            "confirmed": [c.to_dict() for c in self.confirmed],
            "one_step_smaller": [{"change": what, **c.to_dict()} for what, c in self.smaller],
            "trials_by_topology": self.trials,
            "evaluated": [{"basis": "one unit carrying its share of the load",
                           **{k: v for k, v in r.items() if k not in RUN_ATTRS}} for r in self.rows],
            "infeasible": self.infeasible, "simulations": self.sims,
        } | ({"compare": self.compare} if self.compare is not None else {})

    def run_dict(self) -> dict:
        """How this run went (run.json): wall times and which process simulated each unit; differs every run."""
        return {"study": self.study, "wall_s": self.wall_s,
                "units": {r["key"]: {k: r[k] for k in RUN_ATTRS if k in r} for r in self.rows}}


# ---- building the pieces -------------------------------------------------------------------------
def slo_of(req: PlanRequest) -> SLO:
    return SLO(ttft_ms=req.ttft_ms, tpot_ms=req.tpot_ms, percentile=req.percentile, attainment=req.attainment)


def load_of(req: PlanRequest) -> Load:
    if req.trace is not None:
        from traces import load_trace  # noqa: PLC0415 (only with --trace)

        return Load(trace=load_trace(req.trace, req.trace_format))
    return Load(rate=req.rate, concurrency=req.concurrency)


def build(req: PlanRequest, profile=None) -> tuple[Space, Screen, Evaluator]:
    req.validate()
    model, gpu = resolve_model(req.model), resolve_gpu(req.gpu)
    load = load_of(req)
    if load.trace is not None:
        isl_mean = float(load.trace.requests["isl"].mean())
        osl_mean = float(load.trace.requests["osl"].mean())
        need = int(load.trace.requests["isl"].max() + load.trace.requests["osl"].max())
    else:
        isl_mean, osl_mean, need = float(req.isl), float(req.osl), req.isl + req.osl
    if need > model.max_context:
        raise InputError(f"isl + osl = {need} tokens exceeds {model.name}'s context of {model.max_context}")
    tiers = tiers_flag(req.kv_tiers) if req.kv_tiers else {}
    space = Space(model, gpu, req.model, req.gpu, req.gpus, req.dtype, min_kv_tokens=need, topologies=req.topologies,
                  router=req.router, kv_tiers=tuple((t, v["capacity_gb"]) for t, v in tiers.items()), engine=req.engine)
    eff = calibrated_efficiency(req, space)
    screen = Screen(space, isl_mean, osl_mean, req.ttft_ms * 1e-3, req.tpot_ms * 1e-3, req.percentile, profile,
                    efficiency=eff, perf_db=req.perf_db)
    evaluator = Evaluator(space, screen, slo_of(req), req.isl, req.osl, load, req.seed, profile, efficiency=eff,
                          perf_db=req.perf_db)
    return space, screen, evaluator


def make_search(req: PlanRequest, profile=None) -> Search:
    space, screen, evaluator = build(req, profile)
    return Search(space, screen, evaluator, req.objective, req.trials, req.seed)


def calibrated_efficiency(req: PlanRequest, space: Space):
    """The Efficiency of ``--calibration FILE``, refused unless fitted on this model, GPU, engine and dtype."""
    if req.calibration is None:
        return None
    from planner.calibrate import efficiency_for  # noqa: PLC0415

    return efficiency_for(Deployment(model=req.model, gpu=req.gpu, dtype=req.dtype, engine=space.engine),
                          req.calibration)


def load_profile(path: str | None):
    if path is None:
        return None
    from profiler.profile import load_profile as _load  # noqa: PLC0415 (only with --profile)

    return _load(path)


# ---- what the plan shows ---------------------------------------------------------------------------
def closeness(row: dict, slo: SLO) -> float:
    """How far a unit is from the targets: the worst ratio of its percentile latency to the target."""
    p = slo.stat
    s = row["summary"]
    ttft, tpot = (s.get("ttft_ms") or {}).get(p), (s.get("tpot_ms") or {}).get(p)
    return max(math.inf if ttft is None else ttft / slo.ttft_ms, 0.0 if tpot is None else tpot / slo.tpot_ms)


def pareto_front(rows: list[dict]) -> list[dict]:
    """Feasible units not beaten on both tokens/s/GPU and tokens/s/user."""
    pts = [r for r in rows if r["feasible"]]
    front = []
    for r in pts:
        x, y = r["summary"].get("tok_s_per_user") or 0.0, r["score"]
        if not any((o["summary"].get("tok_s_per_user") or 0.0) >= x and o["score"] >= y and
                   ((o["summary"].get("tok_s_per_user") or 0.0) > x or o["score"] > y) for o in pts):
            front.append({"key": r["key"], "topology": r["unit"]["topology"], "tok_s_per_gpu": y,
                          "tok_s_per_user": x})
    return sorted(front, key=lambda f: f["tok_s_per_user"])


# ---- the whole job --------------------------------------------------------------------------------
def open_study(req: PlanRequest, storage: str | None = None, study_name: str | None = None):
    """The search and its study (created, or loaded to resume); a stored study carries the request so that
    `pdsim plan-worker` processes can join it."""
    search = make_search(req, load_profile(req.profile))
    study = search.study(storage, study_name or req.study_name())
    if storage is not None:
        stored = study.user_attrs.get("request")
        if stored is None:
            study.set_user_attr("request", req.to_dict())
        elif PlanRequest.from_dict(stored).study_name() != req.study_name():
            now = req.to_dict()
            diff = ", ".join(f"{k} {v!r} (now {now[k]!r})" for k, v in PlanRequest.from_dict(stored).to_dict().items()
                             if k != "trials" and v != now[k])
            raise InputError(f"study {study.study_name!r} holds another question: {diff}; use another --study name "
                             "or the same flags", where=f"--storage {storage}")
    return search, study


def plan(req: PlanRequest, storage: str | None = None, study_name: str | None = None, progress=None,
         on_open=None, jobs: int = 1) -> Plan:
    """Search, choose, confirm, explain, simulating in up to ``jobs`` processes (the same answer whatever
    ``jobs`` is). ``on_open(search)`` is called once the question is checked (model, GPU, trace, storage),
    before the search; ``progress(done, total)`` after each simulated unit."""
    t0 = time.perf_counter()
    search, study = open_study(req, storage, study_name)
    if on_open is not None:
        on_open(search)
    if progress is not None:
        search.on_progress = lambda n: progress(min(n, req.trials), req.trials)
    search.run(study, jobs=jobs)
    return finish(req, search, study, t0, jobs)


def finish(req: PlanRequest, search: Search, study, t0: float, jobs: int = 1) -> Plan:
    import optuna  # noqa: PLC0415

    ev, space, slo = search.evaluator, search.space, search.evaluator.slo
    rows = sorted(search.known(study).values(), key=lambda r: (-r["score"], r["key"]))
    infeasible = [{"key": t.user_attrs.get("key"), "constraint": t.user_attrs["constraint"]}
                  for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
                  if "constraint" in t.user_attrs]
    plan_ = Plan(req, rows, _dedupe(infeasible), None, None, [], study=study.study_name,
                 trials={t: sum(r["unit"]["topology"] == t for r in rows) for t in space.topologies})
    sims = sum(r["sims"] for r in rows)
    choice = recommend(ev, space, rows, jobs)
    if choice.best is None:
        plan_.closest = [{"key": r["key"], "description": r["key"], "misses": r["constraint"],
                          "distance": closeness(r, slo)} for r in sorted(rows, key=lambda r: closeness(r, slo))[:3]]
        plan_.reasons = [f"no deployment within {req.gpus} GPUs meets both targets at any rate tried"
                         + (f"; the closest, {plan_.closest[0]['description']}, {plan_.closest[0]['misses']}"
                            if plan_.closest else "; no unit was worth simulating (see the rejected units)")]
        plan_.sims, plan_.wall_s = sims, time.perf_counter() - t0
        return plan_
    rec, sims = choice.best, sims + choice.sims
    weights_note = None
    if space.router == "kv_aware":  # tune the router's overlap/load weights on the whole deployment
        from planner.router_weights import tune_router_weights, weights_reason  # noqa: PLC0415

        tuned, tried, n = tune_router_weights(ev, rec, mean_e2e_s(rec.summary))
        sims += n
        weights_note = weights_reason(tried, tuned)
        choice.runs[choice.runs.index(rec)] = rec = tuned
    plan_.recommendation, plan_.runner_up = rec, choice.other
    plan_.confirmed, plan_.smaller = choice.runs, choice.smaller
    plan_.pareto = pareto_front(rows)
    other_rows = [r for r in rows if r["unit"]["topology"] != rec.deployment.topology]
    plan_.reasons = reasons(plan_, search, None if choice.other is not None or not other_rows
                            else min(other_rows, key=lambda r: closeness(r, slo)))
    if weights_note:
        plan_.reasons.append(weights_note)
    plan_.sims, plan_.wall_s = sims, time.perf_counter() - t0
    return plan_


def _dedupe(items: list[dict]) -> list[dict]:
    seen, out = set(), []
    for it in items:
        if it["key"] not in seen:
            seen.add(it["key"])
            out.append(it)
    return out


# ---- files ------------------------------------------------------------------------------------------
def write_outputs(p: Plan, out_dir: str | Path) -> list[Path]:
    """plan.json (the answer), run.json (timings, pids), deployment.yaml (the recommendation, re-simulatable)
    and report.html."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder ({e.strerror})", where=str(out)) from None
    paths = [out / "plan.json", out / "run.json"]
    paths[0].write_text(json.dumps(_jsonable(p.to_dict()), indent=1))
    paths[1].write_text(json.dumps(_jsonable(p.run_dict()), indent=1))
    if p.recommendation is not None:
        paths.append(out / "deployment.yaml")
        paths[-1].write_text(p.recommendation.deployment.to_yaml())
    from reports.plan_report import write_plan_report  # noqa: PLC0415 (plotly only when writing)

    paths.append(write_plan_report(p, out / "report.html"))
    return paths


def write_check(p: Plan, path: str | Path) -> Path:
    """A `pdsim check` file that guards the recommendation at its load, baseline from the same simulation
    the check will run."""
    from planner.check import load_check, simulate_check, write_check_file  # noqa: PLC0415

    req, rec = p.request, p.recommendation
    if req.trace is not None:
        workload = {"trace": str(Path(req.trace).resolve())}
        if req.trace_format:
            workload["format"] = req.trace_format
    elif req.concurrency is not None:
        workload = {"requests": rec.probe.requests, "isl": req.isl, "osl": req.osl, "concurrency": req.concurrency}
    else:
        workload = {"requests": rec.probe.requests, "isl": req.isl, "osl": req.osl, "rate": round(rec.rate_rps, 4)}
    slo = {"ttft_ms": req.ttft_ms, "tpot_ms": req.tpot_ms, "percentile": req.percentile, "attainment": req.attainment}
    name, comment = f"plan {p.study}", f"guards the recommendation of pdsim plan (study {p.study})"
    costs = {k: str(Path(v).resolve()) if Path(v).exists() else v  # a bare name may be a bundled profile
             for k, v in (("profile", req.profile), ("calibration", req.calibration)) if v}
    path = write_check_file(path, rec.deployment, workload, slo, seed=req.seed, name=name, comment=comment, **costs)
    summary = simulate_check(load_check(path))  # the check's own run: same workload, profile or calibration
    return write_check_file(path, rec.deployment, workload, slo, summary=summary, seed=req.seed, name=name,
                            comment=comment, **costs)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
