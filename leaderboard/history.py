"""The history table: rows appended, never rewritten; read back as typed rows with their
takedown and replay-pruning events applied (`removed_at`/`removed_reason`, `video`/`video_error`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from typing import Any

from . import codec
from .rows import COLUMNS, TS_COLUMNS, from_micros, plain, to_micros

# Database columns: the schema's, minus the two that come from takedown events, plus `unknown`
# (columns a newer writer added to a migrated results.parquet, as JSON).
DB_COLUMNS = tuple(c for c in COLUMNS if c not in ("removed_at", "removed_reason")) + ("unknown",)
_INT_LISTS = ("seeds", "episode_lengths")
_FLOAT_LISTS = ("episode_returns", "ci95")
_INSERT = (f"INSERT OR IGNORE INTO evaluations ({', '.join(DB_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in DB_COLUMNS)})")
# The first takedown that covers a row, and the first pruning of its replay.
_SELECT = (
    "SELECT e.seq, " + ", ".join(f"e.{c}" for c in DB_COLUMNS) + ", t.removed_at, t.reason, p.reason "
    "FROM evaluations e "
    "LEFT JOIN takedowns t ON t.id = (SELECT id FROM takedowns WHERE repo_id = e.repo_id AND upto_seq >= e.seq "
    "AND (row_seq IS NULL OR row_seq = e.seq) ORDER BY id LIMIT 1) "
    "LEFT JOIN replay_prunes p ON e.video IS NOT NULL AND p.id = (SELECT id FROM replay_prunes WHERE path = e.video "
    "AND upto_seq >= e.seq ORDER BY id LIMIT 1)")


def _json_default(value: Any) -> Any:
    value = plain(value)
    return value if isinstance(value, (str, int, float, bool, list, dict)) or value is None else str(value)


def _int_list(value: Any) -> bytes | None:
    return codec.encode(value, "int")


def _float_list(value: Any) -> bytes | None:
    return codec.encode(value, "float")


def _notes(value: Any) -> str | None:
    return None if value is None else json.dumps(list(value))


def _flag(value: Any) -> int | None:
    return None if value is None else int(bool(value))


def _unknown(value: Any) -> str | None:
    return json.dumps(value, sort_keys=True, default=_json_default) if value else None


# (column, how its value is stored), in DB_COLUMNS order; None: as it is
_ENCODERS = tuple(
    (name, to_micros if name in TS_COLUMNS else _int_list if name in _INT_LISTS else _float_list
     if name in _FLOAT_LISTS else _notes if name == "notes" else _flag if name == "ranked" else _unknown
     if name == "unknown" else None)
    for name in DB_COLUMNS)


def encode(row: dict[str, Any]) -> tuple:
    """A row (as `rows.result_to_row` makes it) as the INSERT's parameters."""
    get = row.get
    return tuple(get(name) if fn is None else fn(get(name)) for name, fn in _ENCODERS)


def insert(db: sqlite3.Connection, row: dict[str, Any]) -> int | None:
    """Append one row; its `seq`, or None when a row with its `row_id` exists already (the very
    same evaluation recorded twice is one row)."""
    cursor = db.execute(_INSERT, encode(row))
    if cursor.rowcount != 1:
        return None
    return cursor.lastrowid


def add_takedown(db: sqlite3.Connection, repo_id: str, *, upto_seq: int, removed_at: Any, reason: str | None,
                 row_seq: int | None = None) -> None:
    db.execute("INSERT INTO takedowns (repo_id, upto_seq, row_seq, removed_at, reason) VALUES (?, ?, ?, ?, ?)",
               (repo_id, upto_seq, row_seq, to_micros(removed_at), reason))


# The current row of each key: its newest evaluated_at, then the latest recorded (nulls oldest).
CURRENT = ("e.seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER (PARTITION BY repo_id, revision, env_key, "
           "protocol_version, seed_set ORDER BY evaluated_at DESC NULLS LAST, recorded_at DESC NULLS LAST, "
           "row_id DESC) AS newest FROM evaluations) WHERE newest = 1)")


def last_seq(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COALESCE(MAX(seq), 0) FROM evaluations").fetchone()[0]


def decode(record: tuple) -> dict[str, Any]:
    """A selected record as a row dict (with `seq`, and unknown columns spread out)."""
    seq, *values = record
    removed_at, removed_reason, pruned = values[-3:]
    row: dict[str, Any] = {"seq": seq}
    for name, value in zip(DB_COLUMNS, values[:-3], strict=True):
        if name in TS_COLUMNS:
            value = from_micros(value)
        elif name in _INT_LISTS or name in _FLOAT_LISTS:
            value = codec.decode(value)
        elif name == "notes":
            value = None if value is None else json.loads(value)
        elif name == "ranked":
            value = None if value is None else bool(value)
        elif name == "unknown":
            row.update(json.loads(value) if value else {})
            continue
        row[name] = value
    row["removed_at"], row["removed_reason"] = from_micros(removed_at), removed_reason
    if pruned is not None:
        row["video"], row["video_error"] = None, pruned
    return row


def select(db: sqlite3.Connection, where: str = "", args: Iterable[Any] = (), *, order: str = "e.seq",
           batch: int = 10_000) -> Iterator[list[dict[str, Any]]]:
    """Rows matching `where` (SQL over alias `e`), in batches."""
    cursor = db.execute(f"{_SELECT} {('WHERE ' + where) if where else ''} ORDER BY {order}", tuple(args))
    while records := cursor.fetchmany(batch):
        yield [decode(r) for r in records]


def by_seq(db: sqlite3.Connection, seqs: list[int]) -> list[dict[str, Any]]:
    """The rows of these seqs, in that order."""
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start:start + 500]
        for rows in select(db, f"e.seq IN ({', '.join('?' for _ in chunk)})", chunk):
            found.update((r["seq"], r) for r in rows)
    return [found[s] for s in seqs if s in found]
