"""Small synthetic sample traces, one per supported format, made by `python -m traces.samples.generate`.

They are not copies of real traces: their arrivals and lengths come from seeded synthetic workloads, shaped
like the real files (Azure conversation lengths, Mooncake's 3 s ticks and 512-token prefix blocks, BurstGPT's
failed requests) so that tests, examples and `pdsim check` configs have something small to replay.
"""

from pathlib import Path

SAMPLES_DIR = Path(__file__).parent
SAMPLES = {  # file -> format
    "azure_2023.csv": "azure",
    "azure_2024.csv": "azure",
    "mooncake.jsonl": "mooncake",
    "burstgpt.csv": "burstgpt",
    "vidur.csv": "vidur",
    "lengths.csv": "lengths",
}


def sample_path(name: str) -> Path:
    """The path of a bundled sample, e.g. sample_path("azure_2023.csv")."""
    if name not in SAMPLES:
        from profiler.errors import InputError  # noqa: PLC0415

        raise InputError(f"no bundled sample {name!r}; there are {', '.join(SAMPLES)}")
    return SAMPLES_DIR / name
