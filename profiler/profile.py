"""Profile: a table of measured operation costs plus the metadata of the runs that measured them.

On disk a profile is a directory with ``profile.csv`` (one row per operation and shape) and
``profile.json`` (schema version, pdsim version, and per run: model, dtype, TP, device identity,
torch version and threads, date, grid). Runs for other (model, dtype, TP) are merged into the same
directory, so ``profiles/h200-sxm/`` holds every measured configuration of that GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from profiler.errors import InputError

SCHEMA_VERSION = 1
TABLE_FILE = "profile.csv"
META_FILE = "profile.json"
PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"

# Shape columns are 0 where an op does not use them; ``path`` names a KV copy's route.
SHAPE_COLUMNS = ["tokens", "batch", "seq_len", "ctx_len", "in_dim", "out_dim", "bytes"]
COLUMNS = ["model", "op", *SHAPE_COLUMNS, "path", "dtype", "tp", "median_s", "p10_s", "p90_s", "repeats"]
# Per-layer ops over the batch's tokens, the LM head over the rows that need logits, attention, KV copies.
TOKEN_OPS = ("qkv", "rope", "kv_write", "o", "gate_up", "swiglu", "down", "moe", "rmsnorm", "add", "embed")
OPS = (*TOKEN_OPS, "lm_head", "attn_prefill", "attn_decode", "kv_copy", "iteration_overhead")
KV_PATHS = ("d2h", "h2d", "d2d", "ipc")


def pdsim_version() -> str:
    try:
        return version("pdsim")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


@dataclass
class Profile:
    """Measured costs (``table``, columns ``COLUMNS``) and the runs that produced them (``meta``)."""

    table: pd.DataFrame
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def runs(self) -> list[dict]:
        return self.meta.get("runs", [])

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "<in memory>"

    def configs(self) -> list[tuple[str, str, int]]:
        """(model, dtype, tp) combinations this profile measured."""
        keys = self.table[["model", "dtype", "tp"]].drop_duplicates().itertuples(index=False)
        return sorted((str(m), str(d), int(t)) for m, d, t in keys)

    def rows(self, model: str, dtype: str, tp: int) -> pd.DataFrame:
        """The rows of one (model, dtype, TP); an InputError listing what exists when there are none."""
        t = self.table
        sel = t[(t.model == model) & (t.dtype == dtype) & (t.tp == tp)]
        if sel.empty:
            have = ", ".join(f"{m}/{d}/tp{p}" for m, d, p in self.configs()) or "nothing"
            raise InputError(f"profile has no measurements for {model}/{dtype}/tp{tp}; it has {have} "
                             f"(run `pdsim profile --model {model} --dtype {dtype} --tp {tp} --out DIR`)",
                             where=self.name)
        return sel

    def merged(self, other: Profile) -> Profile:
        """This profile with ``other``'s runs added; ``other`` replaces rows of the same (model, dtype, TP)."""
        keys = set(other.configs())
        keep = self.table[[(m, d, int(t)) not in keys for m, d, t in
                           zip(self.table.model, self.table.dtype, self.table.tp, strict=True)]]
        runs = [r for r in self.runs if (r["model"], r["dtype"], int(r["tp"])) not in keys] + other.runs
        table = pd.concat([keep, other.table], ignore_index=True) if len(keep) else other.table.copy()
        return Profile(table.reset_index(drop=True), {**self.meta, **other.meta, "runs": runs}, self.path)

    def save(self, out_dir: str | Path, merge: bool = True) -> Path:
        """Write ``profile.csv`` and ``profile.json`` under ``out_dir``, merging with a profile already there."""
        out = Path(out_dir)
        prof = self
        if merge and (out / META_FILE).exists():
            prof = load_dir(out).merged(self)
        out.mkdir(parents=True, exist_ok=True)
        prof.table[COLUMNS].to_csv(out / TABLE_FILE, index=False, float_format="%.6g")
        meta = {**prof.meta, "schema_version": SCHEMA_VERSION, "pdsim_version": pdsim_version()}
        (out / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        return out


def load_dir(d: Path) -> Profile:
    """Load and check one profile directory."""
    meta_path, table_path = d / META_FILE, d / TABLE_FILE
    if not meta_path.exists() or not table_path.exists():
        raise InputError(f"not a profile directory (needs {META_FILE} and {TABLE_FILE}; "
                         "make one with `pdsim profile --out DIR`)", where=str(d))
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"not valid JSON ({e})", where=str(meta_path)) from None
    if not isinstance(meta, dict) or "schema_version" not in meta:
        raise InputError("no schema_version: not a pdsim profile", where=str(meta_path))
    if meta["schema_version"] != SCHEMA_VERSION:
        raise InputError(f"profile schema version {meta['schema_version']!r}, this pdsim reads version "
                         f"{SCHEMA_VERSION}; re-run `pdsim profile`", where=str(meta_path))
    try:
        table = pd.read_csv(table_path, dtype={"path": str, "model": str, "dtype": str, "op": str},
                        keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(f"not a readable CSV ({e})", where=str(table_path)) from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"missing columns {missing}", where=str(table_path))
    unknown = sorted(set(table.op) - set(OPS))
    if unknown:
        raise InputError(f"unknown ops {unknown}; known: {', '.join(OPS)}", where=str(table_path))
    for c in ("median_s", "p10_s", "p90_s", *SHAPE_COLUMNS, "tp", "repeats"):
        if not pd.api.types.is_numeric_dtype(table[c]):
            raise InputError(f"column {c!r} must be numeric", where=str(table_path))
    bad = table.index[~(table.median_s > 0)]
    if len(bad):
        raise InputError(f"line {int(bad[0]) + 2}: median_s must be a positive number of seconds",
                         where=str(table_path))
    return Profile(table, meta, d)


def load_profile(path_or_name: str | Path) -> Profile:
    """A profile directory, or the name of one bundled under ``profiles/`` (``h200-sxm``)."""
    p = Path(path_or_name)
    if p.is_dir():
        return load_dir(p)
    if p.exists():
        raise InputError("a profile is a directory (with profile.csv and profile.json), not a file", where=str(p))
    from profiler.gpus import canonical_gpu_name  # noqa: PLC0415

    name = str(path_or_name)
    for key in dict.fromkeys([name, canonical_gpu_name(name) or name]):
        if (PROFILES_DIR / key).is_dir():
            return load_dir(PROFILES_DIR / key)
    bundled = sorted(q.name for q in PROFILES_DIR.glob("*") if (q / META_FILE).exists())
    raise InputError(f"no profile directory {name!r} and no bundled profile of that name (bundled: "
                     f"{', '.join(bundled) or 'none yet'}); make one with `pdsim profile --out DIR`")
