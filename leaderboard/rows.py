"""One evaluation as a typed row: the column schema, EvalResult <-> row, rows <-> DataFrames.

The columns are data keys (EvalResult's, the claim flattened to `claim_*`, dicts as JSON text,
per-episode lists kept as lists) plus `row_id`, `commit_date`, `recorded_at`, `removed_at`,
`removed_reason`. The same schema types the DataFrames of the Python API, the parquet files of
`export` and of the Hub dataset, and the `results.parquet` of stores written before SQLite.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from evaluator.result import ClaimResult, EvalResult

log = logging.getLogger(__name__)

KEY = ("repo_id", "revision", "env_key", "protocol_version", "seed_set")

_TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("row_id", pa.string()),
    ("repo_id", pa.string()),
    ("revision", pa.string()),
    ("env_key", pa.string()),
    ("protocol_version", pa.int64()),
    ("seed_set", pa.string()),
    ("commit_date", _TS),
    ("evaluated_at", _TS),
    ("recorded_at", _TS),
    ("removed_at", _TS),
    ("removed_reason", pa.string()),
    ("status", pa.string()),
    ("error_code", pa.string()),
    ("error", pa.string()),
    ("ranked", pa.bool_()),
    ("env_id", pa.string()),
    ("eval_env_id", pa.string()),
    ("eval_env_kwargs", pa.string()),
    ("algo", pa.string()),
    ("format", pa.string()),
    ("n_episodes", pa.int64()),
    ("seeds", pa.list_(pa.int64())),
    ("episode_returns", pa.list_(pa.float64())),
    ("episode_lengths", pa.list_(pa.int64())),
    ("mean_reward", pa.float64()),
    ("std_reward", pa.float64()),
    ("score", pa.float64()),
    ("iqm", pa.float64()),
    ("ci95", pa.list_(pa.float64())),
    ("claim_mean_reward", pa.float64()),
    ("claim_std_reward", pa.float64()),
    ("claim_n_episodes", pa.int64()),
    ("claim_verdict", pa.string()),
    ("claim_env_id", pa.string()),
    ("video", pa.string()),
    ("video_error", pa.string()),
    ("notes", pa.list_(pa.string())),
    ("schema_version", pa.int64()),
    ("evaluator_version", pa.string()),
    ("versions", pa.string()),
    ("platform", pa.string()),
    ("extra", pa.string()),
])
COLUMNS = tuple(SCHEMA.names)
REQUIRED = ("row_id", *KEY, "status", "evaluated_at")
JSON_COLUMNS = ("eval_env_kwargs", "versions", "extra")
TS_COLUMNS = ("commit_date", "evaluated_at", "recorded_at", "removed_at")
LIST_COLUMNS = tuple(f.name for f in SCHEMA if pa.types.is_list(f.type))


# ---------------------------------------------------------------- values


def utc(value: Any) -> pd.Timestamp | None:
    """A UTC timestamp from an ISO string, datetime or Timestamp; None for null/unparseable."""
    if value is None or value is pd.NaT:
        return None
    if type(value) is pd.Timestamp and value.tzinfo is not None and value.utcoffset() == _ZERO:
        return value  # already UTC (the common case when rows are written)
    if type(value) is str:  # ISO 8601, the fast way (pd.Timestamp parsing costs 10x more)
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None:
            parsed = parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
            return pd.Timestamp(parsed)
    if isinstance(value, float) and value != value:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def iso(value: Any) -> str | None:
    ts = utc(value)
    if ts is None:
        return None
    return ts.isoformat(timespec="seconds").replace("+00:00", "Z")


def to_micros(value: Any) -> int | None:
    """Microseconds since the epoch (how the database stores times), None for null."""
    if type(value) is pd.Timestamp and value.tzinfo is not None:
        return value.value // 1000
    ts = utc(value)
    return None if ts is None else ts.value // 1000  # Timestamp.value is in nanoseconds


def from_micros(value: int | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value, unit="us", tz="UTC")


def plain(value: Any) -> Any:
    """numpy scalars/arrays and pandas NA -> plain Python."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float) and value != value:
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


_ZERO = dt.timedelta(0)
def clean_text(value: Any, *, limit: int = 200) -> str | None:
    """A short string that came from outside (a submitter, a request file, an error reason):
    at most `limit` characters, None when nothing is left. Data, never markup or a command.

    Where `evaluator.text.clean_text` escapes what is not printable (a card's text keeps its
    meaning), these names drop it: control characters, surrogates, and the invisible ones too
    (bidirectional overrides, zero-width characters, private-use and unassigned code points,
    line separators), which could make one submitter's name look like another's."""
    if value is None:
        return None
    text = unicodedata.normalize("NFC", str(value).encode("utf-8", "replace").decode("utf-8"))
    if not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    return text.strip()[:limit] or None


def row_id(key: Iterable[Any], evaluated_at: Any, status: str | None) -> str:
    """The identity of one evaluation: its key, when it ran, and how it ended."""
    parts = [("" if v is None else str(v)) for v in key] + [iso(evaluated_at) or "", status or ""]
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------- EvalResult <-> row


_SCHEMA_NAMES = frozenset(COLUMNS)
_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(EvalResult) if f.name not in ("claim", "extra"))
_ROW_FIELDS = tuple(n for n in _RESULT_FIELDS if n in _SCHEMA_NAMES)
_OTHER_FIELDS = tuple(n for n in _RESULT_FIELDS if n not in _SCHEMA_NAMES)
_CLAIM_FIELDS = ("mean_reward", "std_reward", "n_episodes", "verdict", "env_id")


def _copy(value: Any) -> Any:
    """A plain copy of a result's value (lists and dicts copied, no deep dataclass walk: this
    runs a million times when a store is rebuilt)."""
    if isinstance(value, list):
        return [_copy(v) for v in value] if value and isinstance(value[0], (list, dict)) else list(value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def result_to_row(result: EvalResult, *, commit_date: Any = None, recorded_at: Any = None) -> dict[str, Any]:
    row: dict[str, Any] = {name: _copy(getattr(result, name)) for name in _ROW_FIELDS}
    claim = result.claim if isinstance(result.claim, ClaimResult) else ClaimResult()
    for name in _CLAIM_FIELDS:
        row[f"claim_{name}"] = getattr(claim, name, None)
    extra = {k: v for k, v in (result.extra or {}).items() if k not in _RESULT_FIELDS}
    extra.update({name: _copy(getattr(result, name)) for name in _OTHER_FIELDS})
    for name in JSON_COLUMNS:
        value = extra if name == "extra" else row.get(name)
        row[name] = None if value is None or value == {} and name == "extra" else json.dumps(value, sort_keys=True)
    row["commit_date"] = utc(commit_date)
    row["evaluated_at"] = utc(result.evaluated_at)
    row["recorded_at"] = utc(recorded_at) or pd.Timestamp(dt.datetime.now(dt.UTC))
    row["removed_at"], row["removed_reason"] = None, None
    fit_to_schema(row)
    row["row_id"] = row_id((row.get(k) for k in KEY), row["evaluated_at"], row.get("status"))
    return row


def row_to_result(row: Mapping[str, Any]) -> EvalResult:
    """The EvalResult a stored row came from (timestamps back to ISO strings)."""
    row = {k: plain(v) for k, v in row.items()}
    data: dict[str, Any] = {}
    extra = json.loads(row["extra"]) if row.get("extra") else {}
    data.update(extra)
    skip = {"row_id", "commit_date", "recorded_at", "removed_at", "removed_reason", "extra", "rank", "seq"}
    for name, value in row.items():
        if name in skip or name.startswith("claim_"):
            continue
        if name in JSON_COLUMNS:
            value = json.loads(value) if value else None
        data[name] = value
    data["evaluated_at"] = iso(row.get("evaluated_at"))
    claim = {name: row.get(f"claim_{name}") for name in ("mean_reward", "std_reward", "n_episodes", "verdict",
                                                          "env_id")}
    claim["verdict"] = claim["verdict"] or ClaimResult().verdict
    data["claim"] = claim
    return EvalResult.from_dict(data)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _fit_int(value: Any) -> tuple[Any, bool]:
    """(the value as an int64, True) or (None, False) when it does not fit one."""
    if isinstance(value, bool):
        return int(value), True
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            return None, False
        value = int(value)
    if isinstance(value, int):
        return (value, True) if _INT64_MIN <= value <= _INT64_MAX else (None, False)
    try:
        return _fit_int(int(value))  # numpy integers and the like
    except (TypeError, ValueError, OverflowError):
        return None, False


def _fit_float(value: Any) -> tuple[Any, bool]:
    try:
        return float(value), True
    except (TypeError, ValueError, OverflowError):
        return None, False


def _encodable(text: str) -> str:
    """`text` with lone surrogates replaced (no UTF-8 encoder takes them: SQLite and pyarrow
    raise), so a row is never lost to one, whichever producer made it (issue 14). ASCII, the
    common case, is an O(1) check."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _fit_str(value: Any) -> tuple[Any, bool]:
    return _encodable(value if isinstance(value, str) else str(value)), True


def _fit_bool(value: Any) -> tuple[Any, bool]:
    return bool(value), True


_FITTERS = {pa.int64(): _fit_int, pa.float64(): _fit_float, pa.string(): _fit_str, pa.bool_(): _fit_bool}
# (column, element fitter, is a list, the element's fast type) for every column a fitter applies to
_FIT_PLAN = tuple(
    (f.name, _FITTERS[f.type.value_type if pa.types.is_list(f.type) else f.type], pa.types.is_list(f.type),
     {pa.float64(): float, pa.int64(): int, pa.string(): str}.get(f.type.value_type) if pa.types.is_list(f.type)
     else {pa.float64(): float, pa.int64(): int, pa.string(): str, pa.bool_(): bool}.get(f.type))
    for f in SCHEMA if (f.type.value_type if pa.types.is_list(f.type) else f.type) in _FITTERS)


def fit_to_schema(row: dict[str, Any]) -> None:
    """Make every value fit its column (in place): a value a column cannot hold (an int beyond
    int64, such as a claimed `n_eval_episodes` of 10**20) is stored as null and said in `notes`,
    so that recording never fails on what an agent's files claim (never a lost row)."""
    notes = []
    for name, fit, is_list, fast in _FIT_PLAN:
        value = row.get(name)
        if value is None:
            continue
        if not is_list:
            if fast is str and type(value) is str:
                row[name] = _encodable(value)
                continue
            if type(value) is fast and (fast is not int or _INT64_MIN <= value <= _INT64_MAX):
                continue
            row[name], ok = fit(value)
            if not ok:
                notes.append(f"{name} {_short_repr(value)} does not fit the store's column: stored as null")
            continue
        if not isinstance(value, (list, tuple)):
            row[name] = None
            notes.append(f"{name} is not a list: stored as null")
            continue
        types = set(map(type, value))  # the common cases, checked at C speed
        if fast is str and types <= {str}:
            row[name] = [_encodable(v) for v in value]
            continue
        if types <= {fast} and (fast is not int or not value or _INT64_MIN <= min(value) and max(value) <= _INT64_MAX):
            continue
        fitted = [fit(v) if v is not None else (None, True) for v in value]
        if all(ok for _, ok in fitted):
            row[name] = [v for v, _ in fitted]
        else:
            row[name] = None
            notes.append(f"{name} holds values that do not fit the store's column: stored as null")
    if notes:
        row["notes"] = [*(row.get("notes") or []), *notes]
        log.warning("%s: %s", row.get("repo_id"), "; ".join(notes))


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- rows <-> frames and tables

_PANDAS_TYPES = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def table_to_frame(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def conform(table: pa.Table) -> pa.Table:
    """The schema's columns first (cast; added as nulls when an older file lacks them), then any
    unknown columns a newer writer added, kept as they are."""
    arrays, fields = [], []
    for field in SCHEMA:
        if field.name in table.column_names:
            column = table.column(field.name)
            arrays.append(column if column.type == field.type else column.cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
        fields.append(field)
    for name in table.column_names:
        if name not in SCHEMA.names:
            arrays.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def rows_to_table(rows: list[dict[str, Any]], *, columns: Iterable[str] = COLUMNS) -> pa.Table:
    """A typed table from row dicts (timestamps as pd.Timestamp/None, lists as lists)."""
    columns = list(columns)
    arrays, fields = [], []
    for name in columns:
        field = SCHEMA.field(name) if name in SCHEMA.names else None
        values = [row.get(name) for row in rows]
        if field is not None and name in TS_COLUMNS:
            values = [None if v is None else v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in values]
        arrays.append(pa.array(values, type=field.type if field is not None else None))
        fields.append(field if field is not None else pa.field(name, arrays[-1].type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def rows_to_frame(rows: list[dict[str, Any]], *, columns: Iterable[str] = COLUMNS) -> pd.DataFrame:
    return table_to_frame(rows_to_table(rows, columns=columns))


def empty_frame() -> pd.DataFrame:
    return table_to_frame(SCHEMA.empty_table())


def read_results(source: Any) -> pd.DataFrame:
    """A results table from a parquet file (the format of `results.parquet` before SQLite, and
    of `export`); ValueError, saying why, when it is not one."""
    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise ValueError(f"not a readable parquet file ({err})") from err
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ValueError(f"not a results table (missing columns {', '.join(missing)})")
    try:
        return table_to_frame(conform(table))
    except (pa.ArrowException, ValueError, TypeError) as err:
        raise ValueError(f"columns of unexpected types ({err})") from err


def frame_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain-Python records of a frame (for comparisons, JSON and re-insertion)."""
    return [{k: plain(v) for k, v in record.items()} for record in frame.to_dict("records")]
