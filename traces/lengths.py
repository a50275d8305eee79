"""Prompt and output lengths: fixed, from a named distribution, or resampled from a trace file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from profiler.errors import InputError

KINDS = {"fixed": 1, "normal": 2, "uniform": 2, "lognormal": 2}  # kind -> number of parameters
SPECS = "N, normal:MEAN,STD, uniform:LO,HI, lognormal:MEAN,SIGMA or a trace/length file"


@dataclass(frozen=True)
class LengthDist:
    """Token lengths to sample; every sample is a whole number >= 1.

    normal: mean, std. uniform: lo, hi (inclusive). lognormal: MEAN (of the lengths, in tokens) and
    SIGMA (of their logarithm), so that changing the spread keeps the mean. empirical: `values`.
    """

    kind: str
    params: tuple[float, ...] = ()
    values: np.ndarray | None = field(default=None, repr=False, compare=False)
    source: str = ""

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        if self.kind == "fixed":
            x = np.full(n, p[0])
        elif self.kind == "normal":
            x = rng.normal(p[0], p[1], n)
        elif self.kind == "uniform":
            x = rng.integers(int(p[0]), int(p[1]) + 1, n)
        elif self.kind == "lognormal":
            x = rng.lognormal(np.log(p[0]) - p[1] ** 2 / 2, p[1], n)
        else:
            x = self.values[rng.integers(0, len(self.values), n)]
        return np.maximum(np.rint(x), 1).astype(np.int64)

    def __str__(self) -> str:
        if self.kind == "empirical":
            return self.source
        params = ",".join(f"{v:g}" for v in self.params)
        return params if self.kind == "fixed" else f"{self.kind}:{params}"


def parse_lengths(spec) -> LengthDist:
    """`1000`, `normal:1000,200`, `uniform:100,2000` or `lognormal:1000,0.5` -> LengthDist."""
    text = str(spec).strip()
    kind, _, args = text.partition(":") if ":" in text else ("fixed", "", text)
    if kind not in KINDS:
        raise InputError(f"unknown length distribution {kind!r} in {text!r}; use {SPECS}")
    try:
        params = tuple(float(a) for a in args.split(","))
    except ValueError:
        raise InputError(f"length {text!r} is not {SPECS}") from None
    if len(params) != KINDS[kind]:
        raise InputError(f"length {text!r}: {kind} takes {KINDS[kind]} number(s); use {SPECS}")
    if not all(np.isfinite(params)) or params[0] < (1 if kind != "normal" else -np.inf):
        raise InputError(f"length {text!r}: lengths must be >= 1 token")
    if kind == "uniform" and params[1] < params[0]:
        raise InputError(f"length {text!r}: uniform needs LO <= HI")
    if kind in ("normal", "lognormal") and params[1] < 0:
        raise InputError(f"length {text!r}: the spread must be >= 0")
    return LengthDist(kind, params)


def length_dist(spec, column: str) -> LengthDist:
    """An int, a LengthDist, a spec string, or a path to a trace/length file (its `column`: isl or osl)."""
    if isinstance(spec, LengthDist):
        return spec
    if _is_path(spec):
        from traces.loader import read_table  # noqa: PLC0415

        values = read_table(spec).df[column].to_numpy()
        return LengthDist("empirical", values=values, source=str(spec))
    if isinstance(spec, bool) or not isinstance(spec, int | np.integer | str):
        raise InputError(f"{column} must be a number of tokens, a distribution ({SPECS}), got {spec!r}")
    return parse_lengths(spec)


def _is_path(spec) -> bool:
    return isinstance(spec, Path) or (isinstance(spec, str) and (
        Path(spec).is_file() or "/" in spec or spec.endswith((".csv", ".jsonl", ".gz"))))
