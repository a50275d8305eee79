"""The Optuna study over units: TPE (seeded) for one objective, NSGA-II for two; the analytic screen
seeds it with its best guesses and prunes what it cannot believe in; every completed trial is a real
simulation. The study lives in memory, in SQLite (resume) or in PostgreSQL (many workers, one study)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import zip_longest

import optuna

from planner.evaluate import Evaluation, Evaluator
from planner.parallel import calls
from planner.screen import Estimate, Screen
from planner.space import (
    Space,
    agg_unit,
    disagg_unit,
    enumerate_units,
    infeasible_reason,
    unit_key,
)
from profiler.errors import InputError
from simulator.deployment import Deployment

OBJECTIVES = ("throughput-per-gpu", "min-gpus", "pareto", "cost")  # cost: $ per million tokens (one GPU type: the
# fewest GPU-seconds per token, so throughput-per-gpu without a fixed load and min-gpus with one)
SCREEN_KEEP = 0.5  # simulate only units the screen puts within this share of its best of the same topology
SEEDED_PER_TOPOLOGY = 3  # the screen's best units of each topology, tried first
MAX_IDLE_TRIALS = 150  # consecutive trials that simulate nothing new end the search (space exhausted)
BATCH = 2  # trials proposed together, their units simulated side by side (the same whatever --jobs is)
RUN_ATTRS = ("sim_wall_s", "worker_pid")  # facts of the run, not of the answer: kept out of plan.json


def storage_url(url: str | None) -> str | None:
    """Optuna's RDB URL. ``postgresql://`` means whichever PostgreSQL driver is installed (SQLAlchemy 2.1
    would insist on psycopg 3; the dev extra ships psycopg2)."""
    if url is None or not url.startswith(("postgresql://", "postgres://")):
        return url
    import importlib.util  # noqa: PLC0415

    rest = url.split("://", 1)[1]
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise InputError("PostgreSQL storage needs a driver: pip install psycopg2-binary", where=f"--storage {url}")


def suggest(trial: optuna.Trial, space: Space) -> Deployment:
    """A unit from Optuna's parameters (conditional on the topology)."""
    tps = space.tps()
    topology = trial.suggest_categorical("topology", list(space.topologies))
    if topology == "agg":
        return agg_unit(space, trial.suggest_categorical("tp", tps),
                        trial.suggest_categorical("max_batch_tokens", space.agg_batch_tokens),
                        trial.suggest_categorical("max_seqs", space.max_seqs))
    n = space.budget_gpus
    return disagg_unit(space, trial.suggest_categorical("prefill_tp", tps), trial.suggest_int("prefill_replicas", 1, n),
                       trial.suggest_categorical("prefill_batch_tokens", space.prefill_batch_tokens),
                       trial.suggest_categorical("decode_tp", tps), trial.suggest_int("decode_replicas", 1, n),
                       trial.suggest_categorical("decode_max_seqs", space.max_seqs))


def params(dep: Deployment) -> dict:
    """Optuna's parameters of a unit (inverse of ``suggest``), for enqueueing."""
    if dep.topology == "agg":
        w = dep.workers
        return {"topology": "agg", "tp": w.tp, "max_batch_tokens": w.max_batch_tokens, "max_seqs": w.max_seqs}
    p, d = dep.prefill, dep.decode
    return {"topology": "disagg", "prefill_tp": p.tp, "prefill_replicas": p.replicas,
            "prefill_batch_tokens": p.max_batch_tokens, "decode_tp": d.tp, "decode_replicas": d.replicas,
            "decode_max_seqs": d.max_seqs}


@dataclass
class Search:
    """One study: the screen's table, the evaluator, and the evaluations made so far."""

    space: Space
    screen: Screen
    evaluator: Evaluator
    objective: str = "throughput-per-gpu"
    trials: int = 24  # simulated units (each a goodput bisection or a copies search)
    seed: int = 0
    evaluations: dict[str, Evaluation] = field(default_factory=dict)
    table: list[tuple[Deployment, Estimate]] = field(default_factory=list)
    on_progress: Callable[[int], None] | None = None  # called with the study's simulated units as they grow

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        self.table = [(u, self.screen.estimate(u)) for u in enumerate_units(self.space)]
        if not self.table:
            raise InputError(f"{self.space.model.name} does not fit on {self.space.gpu.name} at any TP up to "
                             f"{self.space.budget_gpus} GPUs with room for one request's KV; raise --gpus or "
                             "use a smaller --dtype")
        self.best_screen = {t: max((self.screen_score(e, u) for u, e in self.table if u.topology == t), default=0.0)
                            for t in self.space.topologies}
        self.admissible = {unit_key(u) for u, e in self.table if self.promising(u, e)}

    # ---- the screen's view ------------------------------------------------------------------------
    def screen_score(self, est: Estimate, unit: Deployment) -> float:
        """Higher is better, in the objective's terms: tokens/s/GPU, or (fixed load) 1 / GPUs needed."""
        rate = self.evaluator.offered_rps(est) if self.evaluator.load.fixed else None
        if rate is None:
            return est.tok_s_per_gpu
        if est.goodput_rps <= 0:
            return 0.0
        return 1.0 / (unit.gpus * max(1.0, math.ceil(rate / est.goodput_rps)))

    def promising(self, unit: Deployment, est: Estimate) -> bool:
        best = self.best_screen.get(unit.topology, 0.0)
        hopeless = est.goodput_rps == 0 and ("alone" in est.limit or "one decode step" in est.limit)
        return not hopeless and (best <= 0 or self.screen_score(est, unit) >= SCREEN_KEEP * best)

    def seeds(self) -> list[Deployment]:
        """The screen's best units of each topology, interleaved by rank (best agg, best disagg, ...): one per pool
        shape (TP, replicas) and batch budget, max_seqs aside (it rarely binds); with a fixed load, one per pool
        shape, the smallest deployments the screen expects to carry the load."""
        per_topology, fixed = [], self.evaluator.load.fixed
        for t in self.space.topologies:
            ranked = sorted((x for x in self.table if x[0].topology == t), key=lambda x: -self.screen_score(x[1], x[0]))
            shapes: dict[tuple, Deployment] = {}
            for u, _ in ranked:
                shapes.setdefault(tuple((n, p.replicas, p.tp, None if fixed else p.max_batch_tokens)
                                        for n, p in u.pools.items()), u)
                if len(shapes) == SEEDED_PER_TOPOLOGY:
                    break
            per_topology.append(list(shapes.values()))
        return [u for rank in zip_longest(*per_topology) for u in rank if u is not None]

    # ---- the study --------------------------------------------------------------------------------
    def study(self, storage: str | None, name: str, sampler_seed: int | None = None) -> optuna.Study:
        """Create or load the study. Workers that join pass their own ``sampler_seed`` so that they do not
        all propose the same units."""
        seed = self.seed if sampler_seed is None else sampler_seed
        # ERROR: a trial that raises (an InputError) is re-raised and said in one line; Optuna's 'Trial failed'
        # warning would add its own lines to stderr
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        logging.getLogger("optuna").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if self.objective == "pareto":
            sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
            directions = ["maximize", "maximize"]
        else:
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=6)
            directions = ["maximize"]
        try:
            study = optuna.create_study(storage=storage_url(storage), study_name=name, directions=directions,
                                        sampler=sampler, load_if_exists=True)
        except InputError:
            raise
        except Exception as e:  # noqa: BLE001 - SQLAlchemy and drivers raise many kinds; all mean a bad URL/server
            raise InputError(f"cannot open study storage ({e.__class__.__name__}: {str(e).splitlines()[0]})",
                             where=f"--storage {storage}") from None
        if not study.trials:
            for unit in self.seeds():
                study.enqueue_trial(params(unit), skip_if_exists=True)
        return study

    def known(self, study: optuna.Study) -> dict[str, dict]:
        """Evaluations any worker has stored in the study, by unit key."""
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return {t.user_attrs["key"]: t.user_attrs for t in done if t.user_attrs.get("simulated")}

    def claimed_elsewhere(self, study: optuna.Study, trial: optuna.Trial, key: str) -> bool:
        """Another running trial (another worker) is simulating the same unit right now."""
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        return any(t.number < trial.number and t.user_attrs.get("key") == key for t in running)

    def simulated(self, study: optuna.Study) -> int:
        return len(self.known(study))

    def values(self, ev: Evaluation) -> float | tuple[float, float]:
        if self.objective == "pareto":
            return ev.score, float(ev.summary.get("tok_s_per_user", 0.0)) if ev.feasible else 0.0
        return ev.score

    def bounds(self, known: dict[str, dict]) -> dict[str, int]:
        """A fixed load, one objective: the fewest GPUs that carried it per topology so far. A unit of that
        topology needing more cannot win (nor be its topology's best), so its copies stop there."""
        if not self.evaluator.load.fixed or self.objective == "pareto":
            return {}
        out: dict[str, int] = {}
        for a in known.values():
            if a["feasible"]:
                t, g = a["unit"]["topology"], a["copies"] * unit_gpus(a["unit"])
                out[t] = min(out.get(t, g), g)
        return out

    def prepare(self, study: optuna.Study, trial: optuna.Trial):
        """A proposed unit: ``(unit, estimate)`` to simulate, or the trial's answer without simulating: its
        stored values (simulated already, or a unit that behaves the same) or TrialPruned (cannot run, screened
        out, being simulated by another worker)."""
        unit = suggest(trial, self.space)
        key = unit_key(unit)
        trial.set_user_attr("key", key)
        reason = infeasible_reason(self.space, unit)
        if reason:
            trial.set_user_attr("constraint", reason)
            return optuna.TrialPruned(reason)
        est = self.screen.estimate(unit)
        if not self.promising(unit, est):
            trial.set_user_attr("constraint", f"screened out: {est.limit or 'low estimate'}")
            return optuna.TrialPruned("screened out")
        if self.claimed_elsewhere(study, trial, key):
            trial.set_user_attr("constraint", "being simulated by another worker")
            return optuna.TrialPruned("duplicate")
        known = self.known(study)
        bound = self.bounds(known).get(unit.topology)
        if bound is not None and unit.gpus > bound and key not in known:
            trial.set_user_attr("constraint", f"needs {unit.gpus} GPUs a copy, more than the {bound} of the best "
                                f"{unit.topology} deployment found")
            return optuna.TrialPruned("cannot win")
        stored = known.get(key)
        if stored is None:  # a unit whose only difference is a max_seqs it would never reach behaves the same
            stored = next((a for a in known.values() if same_behaviour(a, unit)), None)
            if stored is not None:
                trial.set_user_attr("equivalent_to", stored["key"])
        if stored is not None:  # another trial (or worker) simulated this unit, or one that behaves as it
            trial.set_user_attr("duplicate_of", stored["key"])
            v = stored["values"]
            return tuple(v) if self.objective == "pareto" else v[0]
        return unit, est

    def evaluate(self, unit: Deployment, est: Estimate, calibration: dict, max_gpus: int | None) -> Evaluation:
        """One unit's simulations, from the state the batch started with (so any process gives the same)."""
        self.evaluator.calibration = {k: list(v) for k, v in calibration.items()}
        ev = self.evaluator.evaluate(unit, est, max_gpus)
        ev.pid = os.getpid()
        return ev

    def run(self, study: optuna.Study, max_units: int | None = None, jobs: int = 1) -> None:
        """Run trials until the study holds ``trials`` simulated units (counting every worker's), this process
        has simulated ``max_units``, or the space the screen admits is exhausted. Trials are proposed BATCH at a
        time and their units simulated side by side in up to ``jobs`` processes; the proposals and results do
        not depend on ``jobs``."""
        idle = 0
        seen = self.simulated(study)
        while True:
            known = self.known(study)
            n, mine = len(known), len(self.evaluations)
            if n > seen and self.on_progress:
                self.on_progress(n)
            idle, seen = (0 if n > seen else idle), n
            room = self.trials - n if max_units is None else min(self.trials - n, max_units - mine)
            if room <= 0 or idle >= MAX_IDLE_TRIALS or self.admissible <= set(known):
                return
            todo = []
            for trial in [study.ask() for _ in range(BATCH)]:
                got = self.prepare(study, trial)
                if isinstance(got, tuple) and isinstance(got[0], Deployment):
                    if len(todo) < room and all(unit_key(u) != unit_key(got[0]) for _, u, _ in todo):
                        todo.append((trial, *got))
                    else:  # the budget is spent, or its batch-mate is the same unit
                        self._tell(study, trial, state=optuna.trial.TrialState.FAIL)
                elif isinstance(got, optuna.TrialPruned):
                    self._tell(study, trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    self._tell(study, trial, values=got)
            idle += BATCH - len(todo)
            start = {k: list(v) for k, v in self.evaluator.calibration.items()}
            bound = self.bounds(known)
            evals = calls(self.evaluate, [(u, e, start, bound.get(u.topology)) for _, u, e in todo], jobs)
            self.evaluator.calibration = start
            for (trial, _, _), ev in zip(todo, evals, strict=True):
                if ev.learned is not None:  # what each unit taught the bisection's first guess, in batch order
                    self.evaluator.calibration.setdefault(ev.unit.topology, []).append(ev.learned)
                self.evaluations[ev.key] = ev
                v = self.values(ev)
                attrs = to_attrs(ev)
                attrs["values"] = list(v) if isinstance(v, tuple) else [v]
                attrs["worker_pid"] = ev.pid
                for k, val in attrs.items():
                    trial.set_user_attr(k, val)
                self._tell(study, trial, values=v)

    def _tell(self, study: optuna.Study, trial: optuna.Trial, values=None, state=None) -> None:
        try:
            study.tell(trial, values=values, state=state)
        except (ValueError, RuntimeError) as e:
            # SQLite cannot lock rows: two workers may pop the same enqueued trial (optuna#4621), and the one that
            # finishes second cannot tell it. Nothing is lost but a duplicate; go on.
            if not ("Cannot tell" in str(e) or "already finished" in str(e)):
                raise


def unit_gpus(unit: dict) -> int:
    """GPUs of a unit as stored (Deployment.to_dict)."""
    return sum(p["replicas"] * p.get("tp", 1) for k, p in unit.items() if k in ("workers", "prefill", "decode"))


def seqs_pool(topology: str) -> str:
    """The pool whose max_seqs the search varies."""
    return "workers" if topology == "agg" else "decode"


def same_behaviour(attrs: dict, unit: Deployment) -> bool:
    """``unit`` differs from the simulated unit of ``attrs`` only in a max_seqs that none of its simulations
    reached (so neither limit ever bound): every probe would come out the same."""
    other = attrs["unit"]
    if other["topology"] != unit.topology:
        return False
    pool = seqs_pool(unit.topology)
    mine = unit.to_dict()
    seqs = (other.get(pool) or {}).get("max_seqs"), (mine.get(pool) or {}).get("max_seqs")
    strip = lambda d: {k: ({kk: vv for kk, vv in v.items() if kk != "max_seqs"} if k == pool else v)  # noqa: E731
                       for k, v in d.items()}
    peak = (attrs.get("peak_seqs") or {}).get(pool)
    return (peak is not None and None not in seqs and seqs[0] != seqs[1] and peak < min(seqs)
            and strip(other) == strip(mine))


def to_attrs(ev: Evaluation) -> dict:
    """An evaluation as JSON-able trial attributes (and plan.json rows)."""
    e = ev.estimate
    return {
        "key": ev.key, "simulated": True, "unit": ev.unit.to_dict(), "feasible": ev.feasible, "score": ev.score,
        "copies": ev.copies, "rate_rps": ev.rate_rps, "summary": ev.summary, "constraint": ev.constraint,
        "sims": ev.sims, "sim_wall_s": sum(p.wall_s for p in ev.probes),
        "probes": [{"rate_rps": p.rate_rps, "requests": p.requests, "met": p.met} for p in ev.probes],
        "above": None if ev.above is None else {"rate_rps": ev.above[0], "misses": ev.above[1]},
        "peak_seqs": {k: max((p.summary.get("peak_seqs") or {}).get(k, 0) for p in ev.probes)
                      for k in ev.unit.pools},
        "screen": None if e is None else {"goodput_rps": e.goodput_rps, "tok_s_per_gpu": e.tok_s_per_gpu,
                                          "ttft_ms": e.ttft_s * 1e3, "tpot_ms": e.tpot_s * 1e3, "limit": e.limit},
    }
