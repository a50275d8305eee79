"""Fitted engine efficiencies: what `bench/calibrate.py` fits on measured serving results and the roofline
uses by default (``profiler.roofline.engine_efficiency``). One JSON file per GPU the fit was made on; the
factors are shares of datasheet peaks and fixed costs, so they carry over to other GPUs."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

FIT_FILE = Path(__file__).with_name("h100_fit.json")


@lru_cache(maxsize=4)
def load_fit(path: str = str(FIT_FILE)) -> dict:
    """The calibration file as a dict (``{}`` when there is none)."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else {}


def fitted_factors(engine: str) -> dict[str, float]:
    """The fitted Efficiency fields of ``engine`` (empty when the engine was not fitted)."""
    return dict(load_fit().get("engines", {}).get(engine, {}))
