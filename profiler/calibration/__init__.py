"""Fitted engine efficiencies: what `bench/calibrate.py` fits on measured serving results and the roofline
uses by default (``profiler.roofline.engine_efficiency``). One JSON file per GPU the fit was made on; the
factors are shares of datasheet peaks and fixed costs, so they carry over to other GPUs."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

FIT_FILE = Path(__file__).with_name("h100_fit.json")
FIGURES_FILE = Path(__file__).with_name("h100_fidelity.json")  # bench/fidelity.py --write-figures


@lru_cache(maxsize=4)
def load_fit(path: str = str(FIT_FILE)) -> dict:
    """The calibration file as a dict (``{}`` when there is none)."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def fitted_factors(engine: str) -> dict[str, float]:
    """The fitted Efficiency fields of ``engine`` (empty when the engine was not fitted)."""
    return dict(load_fit().get("engines", {}).get(engine, {}))


@lru_cache(maxsize=1)
def fidelity_error(engine: str) -> dict[str, float]:
    """Median absolute percentage error of TTFT and TPOT on the measured rows of ``engine`` (dense models,
    bench/fidelity.py): how far a prediction for that engine can be off. Empty without figures."""
    figures = json.loads(FIGURES_FILE.read_text()) if FIGURES_FILE.exists() else {}
    e = figures.get("per_engine", {}).get(engine) or {}
    return {k: e[k] for k in ("ttft_median_ape", "tpot_median_ape") if e.get(k) is not None}
