"""`pdsim check`: deployment configs as regression tests for CI.

A check file (``*.check.yaml``) names a deployment, a workload, SLO targets and an optional
baseline; `pdsim check` simulates it and says PASS or FAIL with the reason.

```yaml
name: llama-3.1-8b agg, chat            # optional; default: the file name
seed: 0                                 # workload sampling and simulation
deployment: deployments/llama8b.yaml    # a deployment file (relative to this file or the repo), or inline
profile: profiles/h200                  # optional: measured costs (a `pdsim profile` folder or a bundled name)
calibration: calib/h200-8b.yaml         # optional: fitted roofline factors (`pdsim calibrate`)
workload: {requests: 300, isl: 1000, osl: 200, rate: 8}   # synthetic (isl/osl: tokens, "normal:1000,200"
                                        # or a length file); or {trace: PATH, max_requests: 300, speedup: 2}
slo:
  ttft_ms: 300                          # targets at `percentile`; also itl_ms, e2e_ms
  tpot_ms: 20
  percentile: 90                        # 50 | 90 | 99
  attainment: 0.9                       # share of requests that must meet both TTFT and TPOT
baseline:                               # `pdsim check --update-baseline` writes it
  tolerance: 0.05                       # relative, for every metric without its own
  bound: two-sided                      # a move either way fails (the model turned optimistic, or worse);
                                        # one-sided: only a move for the worse fails, a better one is a note
  metrics:
    ttft_ms.p90: 182.4
    tok_s_per_gpu: {value: 2210.0, tolerance: 0.02, bound: one-sided}
```
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from profiler.errors import InputError
from profiler.yamlfile import read_yaml
from simulator.deployment import Deployment, load_deployment, parse_deployment

CHECK_SUFFIXES = (".check.yaml", ".check.yml")
TOP_KEYS = {"name", "seed", "deployment", "workload", "slo", "baseline", "profile", "calibration"}
LATENCIES = {"ttft_ms": "TTFT", "tpot_ms": "TPOT", "itl_ms": "ITL", "e2e_ms": "E2E"}
STATS = ("mean", "p50", "p90", "p99")
PERCENTILES = (50, 90, 99)
# Scalar summary metrics a baseline may pin -> whether more is better (latencies: less is).
SCALAR_METRICS = {"throughput_tok_s": True, "tok_s_per_gpu": True, "tok_s_per_user": True, "slo_attainment": True,
                    "completed": True, "failed": False, "prefix_hit_rate": True,
                    # operations (simulator/faults.py): share of requests served, what faults and GPUs cost
                    "availability": True, "faults.retries": False, "faults.extra_latency_ms.p50": False,
                    "faults.extra_latency_ms.p99": False, "cost.usd_per_million_tokens": False}
SYNTHETIC_KEYS = {"requests", "isl", "osl", "rate", "concurrency", "warmup_requests", "arrival", "cv"}
# A trace: `rate` rescales it (or gives a lengths-only file its arrivals), then the window, max_requests, speedup.
TRACE_KEYS = {"trace", "format", "rate", "arrival", "cv", "spread_ticks", "start_s", "end_s", "max_requests", "speedup"}
ARRIVALS = ("poisson", "gamma", "constant")
DEFAULT_TOLERANCE = 0.05


def baseline_metrics() -> list[str]:
    """Every metric name a baseline may hold: ``ttft_ms.p90`` style latencies and the scalar metrics."""
    return [f"{m}.{s}" for m in LATENCIES for s in STATS] + list(SCALAR_METRICS)


def higher_is_better(metric: str) -> bool:
    return SCALAR_METRICS.get(metric, False)


@dataclass(frozen=True)
class SLOSpec:
    targets_ms: dict[str, float]  # {"ttft_ms": 300.0, "tpot_ms": 20.0}
    percentile: int = 90
    attainment: float | None = 0.9  # None: no attainment requirement

    @property
    def stat(self) -> str:
        return f"p{self.percentile}"


BOUNDS = ("two-sided", "one-sided")


@dataclass(frozen=True)
class Expected:
    value: float
    tolerance: float  # relative
    two_sided: bool = True  # a move for the better beyond tolerance fails too


@dataclass(frozen=True)
class CheckSpec:
    path: Path
    name: str
    deployment: Deployment
    workload: dict  # synthetic kwargs, or {"trace": Path, ...}
    slo: SLOSpec
    baseline: dict[str, Expected] = field(default_factory=dict)
    seed: int = 0
    profile: str | None = None  # a profile folder (resolved) or the name of a bundled profile
    calibration: Path | None = None


@dataclass
class CheckResult:
    path: str
    name: str
    status: str  # pass | fail | error
    reasons: list[str] = field(default_factory=list)  # why it failed (or the error)
    notes: list[str] = field(default_factory=list)  # e.g. improvements beyond tolerance
    summary: dict = field(default_factory=dict)
    deployment: str = ""
    wall_s: float = 0.0
    percentile: int = 90


# ---- reading a check file ----------------------------------------------------------------------
def _yaml() -> YAML:
    y = YAML()  # round-trip: keeps comments, key order and line numbers
    y.preserve_quotes = True
    return y


def _field(path: Path, node: Any, key: str, dotted: str) -> str:
    """``file:line: field`` for ``node[key]``; without the line where the YAML parser kept none."""
    try:
        return f"{path}:{node.lc.key(key)[0] + 1}: {dotted}"
    except (AttributeError, KeyError, TypeError):
        return f"{path}: {dotted}"


def _number(value: Any, where: str, *, kind: type = float, positive: bool = True, upto: float | None = None) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == math.inf:
        raise InputError(f"must be a number, got {value!r}", where=where)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise InputError(f"must be a whole number, got {value!r}", where=where)
    if positive and not value > 0:
        raise InputError(f"must be positive, got {value!r}", where=where)
    if not positive and value < 0:
        raise InputError(f"must be >= 0, got {value!r}", where=where)
    if upto is not None and value > upto:
        raise InputError(f"must be at most {upto:g}, got {value!r}", where=where)
    return kind(value)


def _mapping(node: Any, where: str, example: str) -> dict:
    if not isinstance(node, dict):
        raise InputError(f"must be a mapping like {example}, got {node!r}", where=where)
    return node


def _unknown(node: dict, allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in set(node) - allowed)
    if extra:
        raise InputError(f"unknown field {extra[0]!r} (known: {', '.join(sorted(allowed))})", where=where)


def repo_root(start: Path) -> Path | None:
    """The nearest folder at or above ``start`` holding pyproject.toml or .git."""
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").exists() or (d / ".git").exists():
            return d
    return None


def resolve_path(name: str, check_path: Path, where: str) -> Path:
    """A path as written in a check file: absolute, relative to the check file, or relative to the repo."""
    p = Path(name).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        base = check_path.resolve().parent
        root = repo_root(base)
        candidates = [base / p] + ([root / p] if root and root != base else [])
    for c in candidates:
        if c.exists():
            return c
    tried = ", ".join(str(c.resolve()) for c in candidates)
    raise InputError(f"file not found: {name} (looked for {tried})", where=where)


def _lengths(value: Any, path: Path, where: str) -> Any:
    """isl/osl: tokens, a distribution spec ("normal:1000,200") or a length file (resolved like a trace)."""
    from traces.lengths import _is_path, parse_lengths

    if isinstance(value, str) and _is_path(value):
        return resolve_path(value, path, where)
    if isinstance(value, str):
        try:
            parse_lengths(value)
        except InputError as e:
            raise InputError(str(e), where=where) from None
        return value
    return _number(value, where, kind=int)


def _parse_workload(node: Any, path: Path, w: Callable[..., str], parent: Any) -> dict:
    where = w(parent, "workload", "workload")
    node = _mapping(node, where, "{requests: 300, isl: 1000, osl: 200, rate: 8} or {trace: PATH}")
    sub = lambda key: w(node, key, f"workload.{key}")  # noqa: E731
    spec: dict[str, Any] = {}
    if "trace" in node:
        _unknown(node, TRACE_KEYS, where)
        if not isinstance(node["trace"], str):
            raise InputError(f"must be a path, got {node['trace']!r}", where=sub("trace"))
        spec["trace"] = resolve_path(node["trace"], path, sub("trace"))
        for key in ("start_s", "end_s"):
            if key in node:
                spec[key] = _number(node[key], sub(key), positive=False)
        if "start_s" in spec and "end_s" in spec and not spec["start_s"] < spec["end_s"]:
            raise InputError("must be after start_s", where=sub("end_s"))
    else:
        _unknown(node, SYNTHETIC_KEYS, where)
        for key in ("requests", "isl", "osl"):
            if key not in node:
                raise InputError(f"missing field {key!r} (a synthetic workload needs requests, isl, osl and a rate "
                                 "or a concurrency; a trace workload needs trace)", where=where)
        spec["requests"] = _number(node["requests"], sub("requests"), kind=int)
        spec["isl"], spec["osl"] = (_lengths(node[k], path, sub(k)) for k in ("isl", "osl"))
        if ("rate" in node) == ("concurrency" in node):
            raise InputError("needs exactly one of 'rate' (requests/s, open loop) or 'concurrency' (clients)",
                             where=where)
    for key, kind in (("rate", float), ("concurrency", int), ("cv", float), ("max_requests", int),
                      ("speedup", float)):
        if key in node:
            spec[key] = _number(node[key], sub(key), kind=kind)
    if "warmup_requests" in node:  # closed loop: completions left out of the metrics
        spec["warmup_requests"] = _number(node["warmup_requests"], sub("warmup_requests"), kind=int, positive=False)
    for key in ("format", "arrival"):
        if key in node:
            spec[key] = str(node[key])
    if "arrival" in spec and spec["arrival"] not in ARRIVALS:
        raise InputError(f"must be one of {', '.join(ARRIVALS)}, got {spec['arrival']!r}", where=sub("arrival"))
    if "spread_ticks" in node:
        if not isinstance(node["spread_ticks"], bool):
            raise InputError("must be true or false", where=sub("spread_ticks"))
        spec["spread_ticks"] = node["spread_ticks"]
    return spec


def _parse_slo(node: Any, w: Callable[..., str], parent: Any) -> SLOSpec:
    where = w(parent, "slo", "slo")
    node = _mapping(node, where, "{ttft_ms: 300, tpot_ms: 20, percentile: 90, attainment: 0.9}")
    _unknown(node, set(LATENCIES) | {"percentile", "attainment"}, where)
    sub = lambda key: w(node, key, f"slo.{key}")  # noqa: E731
    targets = {k: _number(node[k], sub(k)) for k in LATENCIES if k in node}
    if not targets:
        raise InputError(f"names no target (give at least one of {', '.join(LATENCIES)})", where=where)
    pct = node.get("percentile", 90)
    if pct not in PERCENTILES or isinstance(pct, bool):
        raise InputError(f"must be one of {', '.join(map(str, PERCENTILES))}, got {pct!r}", where=sub("percentile"))
    att = node.get("attainment", 0.9)
    if att is not None:
        att = _number(att, sub("attainment"), upto=1.0)
    return SLOSpec(targets, int(pct), att)


def _parse_baseline(node: Any, w: Callable[..., str], parent: Any) -> dict[str, Expected]:
    if node is None:
        return {}
    where = w(parent, "baseline", "baseline")
    node = _mapping(node, where, "{tolerance: 0.05, metrics: {ttft_ms.p90: 182.4}}")
    _unknown(node, {"tolerance", "bound", "metrics"}, where)
    default = _number(node.get("tolerance", DEFAULT_TOLERANCE), w(node, "tolerance", "baseline.tolerance"),
                      positive=False)
    two_sided = _bound(node.get("bound", BOUNDS[0]), w(node, "bound", "baseline.bound"))
    metrics = node.get("metrics") or {}
    metrics = _mapping(metrics, w(node, "metrics", "baseline.metrics"), "{ttft_ms.p90: 182.4}")
    known = baseline_metrics()
    out = {}
    for key, entry in metrics.items():
        at = w(metrics, key, f"baseline.metrics.{key}")
        if key not in known:
            raise InputError(f"unknown metric (known: {', '.join(known)})", where=at)
        if isinstance(entry, dict):
            _unknown(entry, {"value", "tolerance", "bound"}, at)
            if "value" not in entry:
                raise InputError("missing field 'value'", where=at)
            value = _number(entry["value"], f"{at}.value", positive=False)
            tol = _number(entry.get("tolerance", default), f"{at}.tolerance", positive=False)
            sides = _bound(entry["bound"], f"{at}.bound") if "bound" in entry else two_sided
        else:
            value, tol, sides = _number(entry, at, positive=False), default, two_sided
        out[str(key)] = Expected(value, tol, sides)
    return out


def _bound(value: Any, where: str) -> bool:
    """True for a two-sided bound."""
    if value not in BOUNDS:
        raise InputError(f"must be {' or '.join(BOUNDS)}, got {value!r}", where=where)
    return value == BOUNDS[0]


def parse_check(data: Any, path: Path) -> CheckSpec:
    """Validate a loaded check file; every error names the file, the line where known, and the field."""
    w = partial(_field, path)
    if not isinstance(data, dict):
        raise InputError("a check file must be a YAML mapping with deployment:, workload: and slo:", where=str(path))
    _unknown(data, TOP_KEYS, str(path))
    for key in ("deployment", "workload", "slo"):
        if key not in data:
            raise InputError(f"missing field {key!r}", where=str(path))
    dep = data["deployment"]
    if isinstance(dep, str):
        deployment = load_deployment(resolve_path(dep, path, w(data, "deployment", "deployment")))
    else:
        deployment = parse_deployment(dep, where=w(data, "deployment", "deployment"))
    seed = _number(data.get("seed", 0), w(data, "seed", "seed"), kind=int, positive=False)
    name = str(data.get("name") or check_name(path))
    extra: dict[str, Any] = {}
    for key in ("profile", "calibration"):
        if data.get(key) is not None:
            if not isinstance(data[key], str):
                raise InputError(f"must be a path, got {data[key]!r}", where=w(data, key, key))
            try:
                extra[key] = resolve_path(data[key], path, w(data, key, key))
            except InputError:
                if key == "calibration" or "/" in data[key]:
                    raise
                extra[key] = data[key]  # the name of a bundled profile; load_profile says if there is none
    if "profile" in extra:
        if "calibration" in extra:
            raise InputError("give a profile (measured costs) or a calibration (fitted roofline), not both",
                             where=w(data, "calibration", "calibration"))
        extra["profile"] = str(extra["profile"])
    return CheckSpec(path, name, deployment, _parse_workload(data["workload"], path, w, data),
                     _parse_slo(data["slo"], w, data), _parse_baseline(data.get("baseline"), w, data), seed, **extra)


def load_check(path: str | Path) -> CheckSpec:
    path = Path(path)
    return parse_check(read_yaml(path, round_trip=True), path)


def check_name(path: Path) -> str:
    name = path.name
    for suffix in (*CHECK_SUFFIXES, ".yaml", ".yml"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_checks(paths: list[str | Path]) -> list[Path]:
    """Files as given; directories searched recursively for ``*.check.yaml`` (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(CHECK_SUFFIXES))
            if not inside:
                raise InputError(f"no check files (*{CHECK_SUFFIXES[0]}) in this folder", where=str(p))
            found += inside
        elif p.exists():
            found.append(p)
        else:
            raise InputError("no such file or folder", where=str(p))
    return list(dict.fromkeys(found))


# ---- judging a summary -------------------------------------------------------------------------
def metric_value(summary: dict, metric: str) -> float | None:
    """``ttft_ms.p90`` -> summary["ttft_ms"]["p90"]; None when the summary lacks it."""
    node: Any = summary
    for part in metric.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return None if node is None else float(node)


def _label(metric: str) -> str:
    head, _, stat = metric.partition(".")
    return f"{stat} {LATENCIES[head]}" if head in LATENCIES and stat else metric


def evaluate(spec: CheckSpec, summary: dict) -> tuple[list[str], list[str]]:
    """Reasons the check fails (empty: it passes) and notes, from a simulation summary."""
    reasons: list[str] = []
    slo = spec.slo
    for metric, target in slo.targets_ms.items():
        v = metric_value(summary, f"{metric}.{slo.stat}")
        if v is None or math.isnan(v):
            reasons.append(f"{slo.stat} {LATENCIES[metric]} target {target:g} ms: no value (no request completed)")
        elif v > target:
            reasons.append(f"{slo.stat} {LATENCIES[metric]} {v:.1f} ms > {target:g} ms target "
                           f"(+{(v / target - 1) * 100:.0f}%)")
    att = metric_value(summary, "slo_attainment")
    if slo.attainment is not None and att is not None and not att >= slo.attainment:
        both = " and ".join(f"{LATENCIES[m]} <= {t:g} ms" for m, t in slo.targets_ms.items()
                            if m in ("ttft_ms", "tpot_ms"))
        reasons.append(f"SLO attainment {att:.1%} < {slo.attainment:.0%} required ({both})")
    failed = metric_value(summary, "failed")
    if failed:
        reasons.append(f"{failed:.0f} of {metric_value(summary, 'requests') or 0:.0f} requests did not complete")
    notes: list[str] = []
    for metric, exp in spec.baseline.items():
        v = metric_value(summary, metric)
        if v is None or math.isnan(v):
            reasons.append(f"{metric}: baseline {exp.value:g} but the simulation gave no value")
            continue
        worse = (exp.value - v) if higher_is_better(metric) else (v - exp.value)
        change = f"{exp.value:g} -> {v:.4g}, tolerance {exp.tolerance:.0%}"
        rel = abs(v - exp.value) / abs(exp.value) if exp.value else math.inf
        if abs(v - exp.value) <= exp.tolerance * abs(exp.value):
            continue
        if worse > 0:
            reasons.append(f"{_label(metric)} regressed {rel:.1%} vs baseline ({change})")
        elif exp.two_sided:  # a prediction that turned optimistic is as wrong as one that turned pessimistic
            reasons.append(f"{_label(metric)} improved {rel:.1%} vs baseline ({change}), beyond a two-sided bound: "
                           "if the model is meant to predict this, --update-baseline")
        else:
            notes.append(f"{_label(metric)} improved {rel:.1%} vs baseline ({change}); --update-baseline to keep it")
    return reasons, notes


# ---- running -----------------------------------------------------------------------------------
def _at(where: str, fn, *args):
    """``fn(*args)``, its InputError prefixed with the check file's field."""
    try:
        return fn(*args)
    except InputError as e:
        raise InputError(str(e), where=where) from None


def _workload(w: dict, seed: int):
    if "trace" not in w:
        from traces.synthetic import synthetic_workload

        return synthetic_workload(**w, seed=seed)
    from traces import load_trace, transforms

    workload = load_trace(w["trace"], w.get("format"), rate=w.get("rate"), arrival=w.get("arrival", "poisson"),
                          cv=w.get("cv", 1.0), seed=seed, spread_ticks=w.get("spread_ticks", False))
    if "start_s" in w or "end_s" in w:
        workload = transforms.time_window(workload, w.get("start_s", 0.0), w.get("end_s", math.inf))
    if "max_requests" in w:
        workload = transforms.head(workload, w["max_requests"])
    if "speedup" in w:
        workload = transforms.rescale(workload, speedup=w["speedup"])
    return workload


def build_workload(spec: CheckSpec):
    """The check's Workload: a trace (rescaled, windowed, cut and sped up as asked) or a seeded synthetic one."""
    return _at(f"{spec.path}: workload", _workload, dict(spec.workload), spec.seed)


def simulate_check(spec: CheckSpec) -> dict:
    """Simulate the check's deployment on its workload; the summary dict of DESIGN.md."""
    from simulator import SLO, simulate

    t = spec.slo.targets_ms
    slo = SLO(ttft_ms=t.get("ttft_ms", math.inf), tpot_ms=t.get("tpot_ms", math.inf), percentile=spec.slo.percentile,
              attainment=spec.slo.attainment or 0.0)
    profile = cost_models = None
    if spec.profile is not None:
        from profiler.profile import load_profile

        profile = _at(f"{spec.path}: profile", load_profile, spec.profile)
    if spec.calibration is not None:
        from planner import calibrate

        eff = _at(f"{spec.path}: calibration", calibrate.efficiency_for, spec.deployment, spec.calibration)
        cost_models = calibrate.cost_models(spec.deployment, eff)
    workload = build_workload(spec)
    result = _at(str(spec.path), lambda: simulate(spec.deployment, workload, seed=spec.seed, slo=slo, profile=profile,
                                                  cost_models=cost_models))
    return result.summary(slo)


def judge(spec: CheckSpec, summary: dict, wall_s: float = 0.0) -> CheckResult:
    reasons, notes = evaluate(spec, summary)
    return CheckResult(str(spec.path), spec.name, "fail" if reasons else "pass", reasons, notes, summary,
                       spec.deployment.describe(), wall_s, spec.slo.percentile)


def run_check(path: str | Path) -> CheckResult:
    """Load, simulate and judge one check file; bad input becomes an ``error`` result, never an exception."""
    t0 = time.perf_counter()
    try:
        spec = load_check(path)
        summary = simulate_check(spec)
    except InputError as e:
        return CheckResult(str(path), check_name(Path(path)), "error", [str(e)], wall_s=time.perf_counter() - t0)
    return judge(spec, summary, time.perf_counter() - t0)


def run_checks(paths: list[Path], jobs: int = 1) -> list[CheckResult]:
    """Run checks, in ``jobs`` processes when more than one; results in the order of ``paths`` either way."""
    if jobs <= 1 or len(paths) <= 1:
        return [run_check(p) for p in paths]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(jobs, len(paths))) as pool:
        return list(pool.map(run_check, paths))


# ---- writing baselines and check files --------------------------------------------------------
def _rounded(v: float) -> float:
    return float(f"{v:.6g}")


def _write_atomic(path: Path, data: Any) -> None:
    """Write YAML to a temp file beside ``path`` and rename it over: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            _yaml().dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            shutil.copymode(path, tmp)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_baseline_metrics(percentile: int) -> list[str]:
    p = f"p{percentile}"
    return [f"ttft_ms.{p}", f"tpot_ms.{p}", f"e2e_ms.{p}", "slo_attainment", "tok_s_per_gpu", "tok_s_per_user"]


def baseline_section(summary: dict, percentile: int, tolerance: float = DEFAULT_TOLERANCE) -> CommentedMap:
    metrics = CommentedMap()
    for m in default_baseline_metrics(percentile):
        v = metric_value(summary, m)
        if v is not None and not math.isnan(v):
            metrics[m] = _rounded(v)
    return CommentedMap(tolerance=tolerance, metrics=metrics)


def update_baseline(path: str | Path, summary: dict) -> None:
    """Rewrite the file's baseline values from ``summary`` in place, keeping comments, order and tolerances.
    A file without a baseline gets one for the SLO's percentile."""
    path = Path(path)
    data = read_yaml(path, round_trip=True)
    spec = parse_check(data, path)
    base = data.get("baseline")
    if not isinstance(base, dict):
        data["baseline"] = baseline_section(summary, spec.slo.percentile)
    elif not base.get("metrics"):  # a baseline with only its tolerance: fill in the metrics
        base["metrics"] = baseline_section(summary, spec.slo.percentile)["metrics"]
    else:
        metrics = base["metrics"]
        for key, entry in metrics.items():
            v = metric_value(summary, key)
            if v is None or math.isnan(v):
                continue
            if isinstance(entry, dict):
                entry["value"] = _rounded(v)
            else:
                metrics[key] = _rounded(v)
    _write_atomic(path, data)


def check_document(deployment: Deployment, workload: dict, slo: dict, *, summary: dict | None = None,
                   seed: int = 0, name: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                   profile: str | Path | None = None, calibration: str | Path | None = None) -> CommentedMap:
    """A check file's content: ``workload`` and ``slo`` in the check-file schema, the baseline from ``summary``."""
    doc = CommentedMap()
    if name:
        doc["name"] = name
    doc["seed"] = seed
    doc["deployment"] = deployment.to_dict()
    for key, value in (("profile", profile), ("calibration", calibration)):
        if value is not None:
            doc[key] = str(value)
    doc["workload"] = {k: str(v) if isinstance(v, Path) else v for k, v in workload.items()}
    doc["slo"] = dict(slo)
    if summary is not None:
        doc["baseline"] = baseline_section(summary, int(slo.get("percentile", 90)), tolerance)
    return doc


def write_check_file(path: str | Path, deployment: Deployment, workload: dict, slo: dict, *,
                     summary: dict | None = None, seed: int = 0, name: str | None = None,
                     tolerance: float = DEFAULT_TOLERANCE, profile: str | Path | None = None,
                     calibration: str | Path | None = None, comment: str | None = None) -> Path:
    """Write a check file that guards ``deployment`` (e.g. `plan --emit-check`); validated before it is written.

    ``workload``: ``{requests, isl, osl, rate | concurrency[, arrival, cv]}`` or ``{trace[, format, max_requests,
    speedup]}`` (a trace path relative to the check file or the repo, or absolute). ``slo``: ``{ttft_ms, tpot_ms,
    percentile, attainment}``. ``summary``: the simulated summary whose metrics become the baseline (simulate it
    with `simulate_check(load_check(path))` after a first write without one, so that it is the check's own run).
    ``profile``/``calibration``: what the simulation used, so that `pdsim check` simulates the same way.
    """
    path = Path(path)
    doc = check_document(deployment, workload, slo, summary=summary, seed=seed, name=name, tolerance=tolerance,
                         profile=profile, calibration=calibration)
    if comment:
        doc.yaml_set_start_comment(comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    parse_check(doc, path)
    _write_atomic(path, doc)
    return path
