"""Real trace formats: detect one by content, parse it vectorised, and say exactly where a file is wrong.

Every reader yields a `Table` (arrival seconds or none, isl, osl, optional hash_ids / session_id, and
what was dropped). Checks run on whole columns first; only when one fails is the offending line looked
up, so that a 27-million-row Azure week loads at pandas speed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from profiler.errors import InputError
from traces.workload import Workload, make_requests

FORMATS = ("azure", "mooncake", "burstgpt", "vidur", "lengths")
HEAD_BYTES = 1 << 16
MAX_TOKENS = 10**9  # 100x the longest context served today; beyond it is a unit mistake (and int64 sums overflow)

# CSV formats: role -> header name (matched case-insensitively). Detection tries them in this order.
CSV_COLUMNS = {
    "azure": {"arrival": "TIMESTAMP", "isl": "ContextTokens", "osl": "GeneratedTokens"},
    "burstgpt": {"arrival": "Timestamp", "isl": "Request tokens", "osl": "Response tokens"},
    "vidur": {"arrival": "arrived_at", "isl": "num_prefill_tokens", "osl": "num_decode_tokens"},
    "lengths": {"isl": "num_prefill_tokens", "osl": "num_decode_tokens"},
}
SESSION_COLUMNS = ("session id", "session_id")  # BurstGPT_3, generic
MOONCAKE_KEYS = {"arrival": "timestamp", "isl": "input_length", "osl": "output_length"}


@dataclass
class Table:
    """A parsed trace before it becomes a Workload: columns in file order, blank lines gone."""

    df: pd.DataFrame  # arrival_s (absent for lengths), isl, osl, optional hash_ids, session_id
    format: str
    dropped: int = 0
    drop_reason: str = ""


def load_trace(path, format: str | None = None, *, rate: float | None = None, arrival: str = "poisson",
               cv: float = 1.0, seed: int = 0, spread_ticks: bool = False) -> Workload:
    """Load a trace file as a Workload, arrivals relative to the first request and sorted (stable).

    format: None detects it from the content; else one of FORMATS. A lengths-only file needs `rate`
    (req/s) and draws arrivals from `arrival` ("poisson" | "gamma" with `cv` | "constant"); a timed trace
    given `rate` is rescaled to that mean rate. `spread_ticks` spreads requests that share a timestamp
    uniformly over the tick (Mooncake's ~3 s quantisation), seeded.
    """
    from traces import transforms  # noqa: PLC0415 (transforms import this module)
    from traces.arrivals import arrival_times  # noqa: PLC0415

    table = read_table(path, format)
    df = table.df
    if "arrival_s" in df:
        arrival_s = df["arrival_s"].to_numpy(dtype=np.float64)
        with np.errstate(over="ignore"):
            arrival_s = arrival_s - arrival_s.min()
        if not np.isfinite(arrival_s).all():
            raise InputError("the arrival times span more than a float can hold", where=str(path))
    else:
        if rate is None:
            raise InputError("a lengths-only trace has no arrival times: pass a rate (--rate REQ_PER_S)",
                             where=str(path))
        arrival_s = arrival_times(len(df), rate, arrival, cv, np.random.default_rng(seed))
    extra = {c: df[c].to_numpy() for c in ("hash_ids", "session_id") if c in df}
    source = str(path) if "arrival_s" in df else f"{path} [{arrival} arrivals at {rate:g} req/s]"
    w = Workload(make_requests(arrival_s, df["isl"].to_numpy(), df["osl"].to_numpy(), **extra), source=source,
                 dropped=table.dropped, drop_reason=table.drop_reason, format=table.format)
    if spread_ticks:
        w = transforms.spread_ticks(w, seed=seed)
    if rate is not None and "arrival_s" in df:
        w = transforms.rescale(w, rate=rate)
    return w


def read_table(path, format: str | None = None) -> Table:
    """Parse a trace file into a Table (no arrival process, no sorting): the loaders' common step."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file" if not path.exists() else "not a file", where=str(path))
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown trace format {format!r}; use one of {', '.join(FORMATS)}", where=str(path))
    try:
        first = _first_line(path)
        if first.lstrip().startswith("{"):
            if format not in (None, "mooncake"):
                raise InputError(f"this is a JSON-lines file, not a {format} CSV", where=str(path))
            table = _read_mooncake(path)
        else:
            header = [h.strip().strip('"').lower() for h in first.split(",")]
            fmt = format or _detect_csv(header, path)
            table = _read_csv(path, fmt, header)
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz, an unreadable file
        raise InputError(f"cannot read the file: {e}", where=str(path)) from None
    return _drop_empty(table, path)


# --- reading bytes ------------------------------------------------------------------------------------------


def _gzipped(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open(path: Path):
    return gzip.open(path, "rb") if _gzipped(path) else open(path, "rb")


def _first_line(path: Path) -> str:
    """The header (or first JSON line); refuses empty, binary and non-UTF-8 files with the line at fault."""
    with _open(path) as f:
        head = f.read(HEAD_BYTES)
    if not head.strip():
        raise InputError("empty file: no header and no requests", where=str(path))
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        raise InputError(f"line {line}: binary data (NUL byte); expected a CSV or JSON-lines text file",
                         where=str(path))
    text = _decode(head[:-3] if len(head) == HEAD_BYTES else head, path)  # a cut may split a UTF-8 sequence
    return text.lstrip("\n\r").split("\n", 1)[0].rstrip("\r")


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(f"line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8",
                         where=str(path)) from None


def _where(path: Path, line: int) -> str:
    return f"{path}, line {line}"


# --- CSV ----------------------------------------------------------------------------------------------------


def _detect_csv(header: list[str], path: Path) -> str:
    for fmt, cols in CSV_COLUMNS.items():
        if {c.lower() for c in cols.values()} <= set(header) and not (fmt == "lengths" and "arrived_at" in header):
            return fmt
    known = "; ".join(f"{fmt}: {','.join(cols.values())}" for fmt, cols in CSV_COLUMNS.items())
    raise InputError(f"cannot tell the trace format from the header {header}; expected columns ({known}) or "
                     f"mooncake JSON lines, or pass --format", where=str(path))


def _read_csv(path: Path, fmt: str, header: list[str]) -> Table:
    if fmt == "mooncake":
        raise InputError("format mooncake expects JSON lines, but the file starts with a CSV header", where=str(path))
    roles = dict(CSV_COLUMNS[fmt])
    missing = [name for name in roles.values() if name.lower() not in header]
    if missing:
        raise InputError(f"line 1: missing column(s) {missing} for format {fmt}; the header has {header}",
                         where=str(path))
    session = next((c for c in SESSION_COLUMNS if c in header), None)
    if session:
        roles["session_id"] = session
    wanted = {v.lower(): k for k, v in roles.items()}
    try:
        # every column is read (no usecols) and a short header is an error, so no field is ever ignored
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            raw = pd.read_csv(path, skip_blank_lines=False, index_col=False, encoding="utf-8-sig",
                              compression="gzip" if _gzipped(path) else None)
    except pd.errors.ParserWarning:  # the first data row is longer than the header
        line, n = _first_long_row(path, len(header))
        raise InputError(f"malformed CSV row: {n} fields, but the header has {len(header)}",
                         where=_where(path, line)) from None
    except pd.errors.ParserError as e:
        m = re.search(r"line (\d+)", str(e))
        where = _where(path, int(m.group(1))) if m else str(path)
        raise InputError(f"malformed CSV row: {str(e).split('C error: ')[-1]}", where=where) from None
    except UnicodeDecodeError:
        with _open(path) as f:
            _decode(f.read(), path)
        raise
    raw = raw[[c for c in raw.columns if str(c).strip().lower() in wanted]]
    names = {wanted[c.strip().lower()]: c.strip() for c in raw.columns}  # as the file spells them, for errors
    raw.columns = list(names)
    raw = raw[~raw.isna().all(axis=1)]  # blank lines: not requests
    if raw.empty:
        raise InputError("no requests: the file has a header but no rows", where=str(path))
    df = pd.DataFrame(index=raw.index)
    if "arrival" in raw:
        if fmt == "azure":
            df["arrival_s"] = _datetimes_s(raw["arrival"], names["arrival"], path)
        else:
            df["arrival_s"] = _numbers(raw["arrival"], names["arrival"], path)
    df["isl"] = _tokens(raw["isl"], names["isl"], path)
    df["osl"] = _tokens(raw["osl"], names["osl"], path)
    if session:
        df["session_id"] = raw["session_id"].to_numpy()
    return Table(df, fmt)


def _first_long_row(path: Path, fields: int) -> tuple[int, int]:
    with _open(path) as f:
        for number, row in enumerate(csv.reader(io.TextIOWrapper(f, encoding="utf-8-sig")), start=1):
            if len(row) > fields:
                return number, len(row)
    return 2, fields  # pragma: no cover - pandas warned, so such a row exists


# --- JSON lines (Mooncake) ------------------------------------------------------------------------------------


def _read_mooncake(path: Path) -> Table:
    with _open(path) as f:
        lines = _decode(f.read(), path).split("\n")
    keep = [i for i, line in enumerate(lines) if line.strip()]
    records = None
    try:  # one C-speed parse of the whole file; per-line only to find a fault
        records = json.loads("[" + ",".join(lines[i] for i in keep) + "]")
    except (json.JSONDecodeError, RecursionError):
        pass
    if records is None or len(records) != len(keep) or not all(isinstance(r, dict) for r in records):
        records = [_json_line(lines[i], i + 1, path) for i in keep]
    raw = pd.DataFrame.from_records(records, index=np.asarray(keep) - 1)  # index + 2 = line, as for CSV
    missing = [k for k in MOONCAKE_KEYS.values() if k not in raw]
    if missing:
        raise InputError(f"line {keep[0] + 1}: missing key(s) {missing}; Mooncake lines need "
                         f"{list(MOONCAKE_KEYS.values())}", where=str(path))
    df = pd.DataFrame(index=raw.index)
    df["arrival_s"] = _numbers(raw["timestamp"], "timestamp", path) / 1000.0
    df["isl"] = _tokens(raw["input_length"], "input_length", path)
    df["osl"] = _tokens(raw["output_length"], "output_length", path)
    if "hash_ids" in raw:
        bad = ~raw["hash_ids"].map(lambda h: isinstance(h, list))
        _fail_first(bad, path, "hash_ids is not a list of block ids")
        df["hash_ids"] = raw["hash_ids"]
    for key in ("session_id", "chat_id"):
        if key in raw:
            df["session_id"] = raw[key].to_numpy()
            break
    return Table(df, "mooncake")


def _json_line(line: str, number: int, path: Path) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg} at column {e.colno})", where=_where(path, number)) from None
    except RecursionError:
        raise InputError("JSON nested too deeply", where=_where(path, number)) from None
    if not isinstance(record, dict):
        raise InputError("expected a JSON object {...} per line", where=_where(path, number))
    return record


# --- column checks: whole columns first, the line only on failure --------------------------------------------


def _first_line_where(bad: pd.Series) -> int | None:
    """The 1-based file line of the first True in `bad` (index + 2: a header line, then 0-based rows)."""
    return int(bad.index[np.argmax(bad.to_numpy())]) + 2 if bad.any() else None


def _fail_first(bad: pd.Series, path: Path, message: str) -> None:
    if (line := _first_line_where(bad)) is not None:
        raise InputError(message, where=_where(path, line))


def _numbers(col: pd.Series, name: str, path: Path) -> pd.Series:
    if pd.api.types.is_bool_dtype(col) or col.dtype == object:  # JSON true / a CSV column of True: not numbers
        _fail_first(col.map(lambda v: isinstance(v, (bool, np.bool_))).astype(bool), path,
                    f"{name} is true/false, not a number")
    values = (col if pd.api.types.is_numeric_dtype(col) else pd.to_numeric(col, errors="coerce")).astype(np.float64)
    if (line := _first_line_where(values.isna() & col.notna())) is not None:
        raise InputError(f"{name} {col.loc[line - 2]!r} is not a number", where=_where(path, line))
    _fail_first(values.isna(), path, f"{name} is missing (empty or NaN)")
    _fail_first(~np.isfinite(values), path, f"{name} is infinite")
    return values


def _tokens(col: pd.Series, name: str, path: Path) -> pd.Series:
    values = _numbers(col, name, path)
    if (line := _first_line_where(values < 0)) is not None:
        raise InputError(f"{name} is negative ({values.loc[line - 2]:g}): token counts must be >= 0",
                         where=_where(path, line))
    if (line := _first_line_where(values > MAX_TOKENS)) is not None:
        raise InputError(f"{name} is {values.loc[line - 2]:g} tokens, more than {MAX_TOKENS:,}: not a real request",
                         where=_where(path, line))
    _fail_first(values != np.floor(values), path, f"{name} is not a whole number of tokens")
    return values.astype(np.int64)


def _datetimes_s(col: pd.Series, name: str, path: Path) -> pd.Series:
    """Azure's TIMESTAMP: 2023 `2023-11-16 18:17:03.9799600` or 2024 `...+00:00`, with/without fractions."""
    _fail_first(col.isna(), path, f"{name} is missing")
    col = col.astype(str)
    t = pd.to_datetime(col, format="ISO8601", utc=True, errors="coerce")
    if (line := _first_line_where(t.isna())) is not None:
        raise InputError(f"{name} {col.loc[line - 2]!r} is not a date-time like 2023-11-16 18:17:03.9799600",
                         where=_where(path, line))
    return (t - t.min()).dt.total_seconds()


def _drop_empty(table: Table, path: Path) -> Table:
    """Rows with 0 output (failed requests) or 0 prompt tokens are dropped and counted, never kept silently."""
    df = table.df
    no_out, no_in = df["osl"].to_numpy() == 0, df["isl"].to_numpy() == 0
    reasons = []
    if no_out.any():
        what = "failed requests" if table.format == "burstgpt" else "requests"
        reasons.append(f"{int(no_out.sum())} {what} with 0 output tokens")
    if (no_in & ~no_out).any():
        reasons.append(f"{int((no_in & ~no_out).sum())} requests with 0 prompt tokens")
    if not reasons:
        return table
    kept = df[~(no_out | no_in)]
    if kept.empty:
        raise InputError(f"no requests left after dropping {'; '.join(reasons)}", where=str(path))
    return Table(kept, table.format, int((no_out | no_in).sum()), "; ".join(reasons))
