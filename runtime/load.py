"""Which weights a model name gets: SmolLM2's real ones, or a catalog model's seeded random ones."""

from __future__ import annotations

import torch

from profiler.models import resolve_model
from runtime.model import Model, build_model
from runtime.smollm2 import load_smollm2


def load_model(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Model:
    """A catalog model with seeded random weights, or SmolLM2's real ones (``model: smollm2-135m``)."""
    spec = resolve_model(name)
    if spec.name == "smollm2-135m":
        return load_smollm2(spec, dtype, device)[0]
    return build_model(spec, seed, dtype, device)
