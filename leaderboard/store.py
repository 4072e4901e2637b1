"""The results store: a folder holding one SQLite database (the system of record) and the replays;
a pandas API on top.

    STORE/
      leaderboard.sqlite3 (+ -wal, -shm)   history, takedowns, ranking, request queue (leaderboard.db)
      backups/leaderboard.sqlite3          the last backup (Connection.backup, every 6 h by default)
      replays/{ns}/{name}/{sha}/{env_key}.mp4   replays; rows' `video` is relative to STORE
      tmp/                                 replays being recorded (moved into replays/ when recorded)
      migrated-<time>/                     results.parquet and queue.sqlite3 of an older version, kept

Rows are keyed by (repo_id, revision, env_key, protocol_version, seed_set). Recording a key again
appends a row; the *current* row of a key is its newest `evaluated_at`; the very same evaluation
(same key, `evaluated_at` and status: the same `row_id`) recorded twice is one row. The history
is never rewritten: takedowns and replay pruning are events, the ranking is a table maintained
in the same transaction as each write, so a write costs the same at 1,000
rows as at 1,000,000 and a ranking page is an index scan (the current rows are computed when
asked: `results()` reads everything anyway).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from evaluator.result import EvalResult

from . import history as hist
from . import ranking as rk
from . import replays
from .db import (
    DB_FILE,
    Database,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
)
from .queue import Queue, Status, finish_in, held_in, takedown_reason_in
from .replays import REPLAYS_DIR, replay_relpath, safe_part
from .rows import (
    COLUMNS,
    KEY,
    SCHEMA,
    empty_frame,
    from_micros,
    iso,
    result_to_row,
    row_to_result,
    rows_to_frame,
    utc,
)

__all__ = ["COLUMNS", "KEY", "SCHEMA", "LeaseLostError", "Recorded", "Store", "StoreBusyError", "StoreCorruptError",
           "StoreError", "StoreFullError", "default_store_dir", "iso", "record", "replay_relpath", "row_to_result",
           "safe_part", "utc"]

STORE_ENV = "RL_LEADERBOARD_STORE"
MAX_REPLAY_BYTES_ENV = "RL_LEADERBOARD_MAX_REPLAY_BYTES"
DEFAULT_MAX_REPLAY_BYTES = 5 * 1024**3  # replays beyond this total are pruned, oldest first
TMP_DIR = "tmp"
BATCH_ROWS = 50_000  # rows per transaction in record_many (a bulk import: see record_many)
BULK_CACHE_KIB = 512 * 1024  # SQLite page cache while record_many writes


class LeaseLostError(RuntimeError):
    """The request is no longer held by this worker: nothing was recorded (another worker will)."""


@dataclass
class Recorded:
    row_id: str
    hidden: str | None = None  # the takedown reason when the row was recorded taken down


def default_store_dir() -> Path:
    """`$RL_LEADERBOARD_STORE`, else `$XDG_DATA_HOME/rl-leaderboard` (~/.local/share/...)."""
    if os.environ.get(STORE_ENV):
        return Path(os.environ[STORE_ENV])
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "rl-leaderboard"


def _frame(rows: list[dict[str, Any]], *, lead: tuple[str, ...] = ()) -> pd.DataFrame:
    unknown = sorted({k for row in rows for k in row} - set(COLUMNS) - set(lead) - {"seq"})
    if not rows:
        frame = empty_frame()
        for name in lead:
            frame.insert(0, name, pd.Series(dtype="Int64"))
        return frame
    frame = rows_to_frame(rows, columns=[*COLUMNS, *unknown])
    for name in reversed(lead):
        frame.insert(0, name, pd.array([row[name] for row in rows], dtype="Int64"))
    return frame


class Store:
    """A store folder (see the module docstring for its layout)."""

    def __init__(self, root: str | Path | None = None, *, max_replay_bytes: int | None = None):
        self.root = Path(root) if root is not None else default_store_dir()
        if max_replay_bytes is None:
            max_replay_bytes = int(os.environ.get(MAX_REPLAY_BYTES_ENV) or DEFAULT_MAX_REPLAY_BYTES)
        self.max_replay_bytes = max_replay_bytes
        self._database: Database | None = None
        self._queue: Queue | None = None

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    results_path = db_path  # where results are recorded (what `record()` returns)
    queue_path = db_path  # the request queue is a table of the same database

    @property
    def backup_path(self) -> Path:
        return Database(self.db_path).backup_path

    @property
    def replays_dir(self) -> Path:
        return self.root / REPLAYS_DIR

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP_DIR

    @property
    def database(self) -> Database:
        """The database, opened on first use; a store of an older version (results.parquet,
        queue.sqlite3) is migrated into it first (leaderboard.migrate)."""
        if self._database is None:
            from .migrate import migrate_if_needed

            database = Database(self.db_path)
            migrate_if_needed(self.root, database)
            database.connect()
            self._database = database
        return self._database

    def queue(self, **options: Any) -> Queue:
        """The request queue (a table of the same database); `options` are Queue's."""
        self.database  # noqa: B018 (open, and migrate, first)
        if options:
            return Queue(self.db_path, **options)
        if self._queue is None:
            self._queue = Queue(self.db_path)
        return self._queue

    def close(self) -> None:
        for database in (self._database, self._queue.database if self._queue else None):
            if database is not None:
                database.close()

    # ------------------------------------------------------------ reads

    def history(self, *, repo_id: str | None = None, env_key: str | None = None) -> pd.DataFrame:
        """Every recorded evaluation, in recording order (a consistent snapshot)."""
        where, args = [], []
        if repo_id is not None:
            where.append("e.repo_id = ?")
            args.append(repo_id)
        if env_key is not None:
            where.append("e.env_key = ?")
            args.append(env_key)
        with self.database.read() as db:
            rows = [r for batch in hist.select(db, " AND ".join(where), args) for r in batch]
        return _frame(rows)

    def results(self, *, include_removed: bool = False) -> pd.DataFrame:
        """The current row of each key (its newest evaluation), failed ones included."""
        with self.database.read() as db:
            rows = [r for batch in hist.select(db, hist.CURRENT) for r in batch]
        if not include_removed:
            rows = [r for r in rows if r["removed_at"] is None]
        return _frame(rows)

    def ranking(self, env_key: str | None = None, *, search: str | None = None, algo: str | None = None,
                verdict: str | None = None, sort: str | None = None, limit: int | None = None,
                offset: int = 0) -> pd.DataFrame:
        """A page of the ranking (every env key when `env_key` is None): `rank` (the place in the
        env's ranking, whatever the filters), then every history column. `search` is a
        case-insensitive substring of the repo id (user or model), `algo` and `verdict` exact
        filters, `sort` one of ranking.SORTS (default: score, the ranking order)."""
        with self.database.read() as db:
            entries = rk.page(db, env_key, search=search, algo=algo, verdict=verdict, sort=sort, limit=limit,
                              offset=offset)
            rows = hist.by_seq(db, [seq for seq, _, _ in entries])
        for row, (_, place, commit_date) in zip(rows, entries, strict=True):
            row["rank"], row["commit_date"] = place, from_micros(commit_date)
        return _frame(rows, lead=("rank",))

    def count(self, env_key: str | None = None, *, search: str | None = None, algo: str | None = None,
              verdict: str | None = None) -> int:
        """How many ranked entries match (the same filters as `ranking`)."""
        with self.database.read() as db:
            return rk.count(db, env_key, search=search, algo=algo, verdict=verdict)

    def entry(self, env_key: str, repo_id: str) -> dict[str, Any] | None:
        """One repo's ranked entry in one env (every history column, `rank`); None if unranked."""
        with self.database.read() as db:
            found = rk.entry(db, env_key, repo_id)
            if found is None:
                return None
            row = hist.by_seq(db, [found[0]])[0]
        row["rank"], row["commit_date"] = found[1], from_micros(found[2])
        return row

    def scores(self, env_key: str) -> list[float]:
        """Every ranked score of one env, best first (the distribution a row is shown against)."""
        with self.database.read() as db:
            return rk.scores(db, env_key)

    def algos(self, env_key: str | None = None) -> list[str]:
        """The algorithms ranked (in one env), lower-cased."""
        with self.database.read() as db:
            return rk.algos(db, env_key)

    def env_keys(self) -> list[str]:
        """The env keys that have a ranking."""
        with self.database.read() as db:
            return rk.env_keys(db)

    # ------------------------------------------------------------ writes

    def new_video_path(self) -> Path:
        """A fresh temporary replay path under the store, for `evaluate(video_path=...)`."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"replay-{uuid.uuid4().hex}.mp4"

    def cleanup_tmp(self, max_age: float = 24 * 3600) -> None:
        """Delete leftover temporary replays (of killed workers) older than `max_age` seconds."""
        if not self.tmp_dir.is_dir():
            return
        limit = time.time() - max_age
        for path in self.tmp_dir.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < limit:
                    path.unlink()

    def record(self, result: EvalResult, *, commit_date: Any = None) -> str:
        """Append one evaluation to the history and return its `row_id`.

        A replay at `result.video` (absolute, e.g. under `tmp/`) is moved to
        `replays/{ns}/{name}/{sha}/{env_key}.mp4` and `result.video` becomes that path relative to
        the store (the result is updated in place). `commit_date` is the evaluated commit's date
        (the ranking's "newest revision"); None when unknown."""
        return self.record_many([(result, commit_date)])[0]

    def record_many(self, results: Iterable[EvalResult | tuple[EvalResult, Any]], *,
                    batch: int = BATCH_ROWS) -> list[str]:
        """Append many evaluations (each an EvalResult or an (EvalResult, commit_date) pair), in
        transactions of `batch` rows; returns their row ids in order.

        Why big transactions and a big cache: a row's index entries land at random places (its
        row id, its repo), so at a million rows nearly every insert dirties its own index pages;
        50,000 rows per transaction share many of them, and a 512 MB page cache keeps them until
        the commit writes each once. The write lock is held for the batch (seconds): queue
        workers wait for it (busy timeout 60 s), none fails."""
        ids: list[str] = []
        chunk: list[tuple[EvalResult, Any]] = []
        with self.database.bulk_cache(BULK_CACHE_KIB):
            for item in results:
                chunk.append(item if isinstance(item, tuple) else (item, None))
                if len(chunk) >= batch:
                    ids += self._write(chunk)
                    chunk = []
            if chunk:
                ids += self._write(chunk)
        if len(ids) > 1:
            with contextlib.suppress(StoreBusyError):
                self.database.checkpoint("PASSIVE")
        return ids

    def record_request(self, result: EvalResult, *, request_id: int, owner: str, commit_date: Any = None,
                       now: float | None = None) -> Recorded:
        """Record a queue request's result and end the request, in one transaction: the row is
        recorded only while `owner` holds the request (else LeaseLostError, nothing written).
        A request that a takedown cancelled meanwhile records its row hidden (kept in the
        history, without its replay) and stays cancelled."""
        taken_down = self.queue().taken_down(request_id)
        rows = self._write([(result, commit_date)], request=(request_id, owner, now), keep_video=not taken_down)
        return rows[0]

    def _write(self, items: list[tuple[EvalResult, Any]], *, request: tuple | None = None,
               keep_video: bool = True) -> list:
        database = self.database
        prepared, tmp_dir = [], self.tmp_dir
        recorded_at = pd.Timestamp.now(tz="UTC")  # one moment for the rows of one transaction
        for result, commit_date in items:
            size = replays.place(self.root, tmp_dir, result, keep=keep_video)
            prepared.append((result_to_row(result, commit_date=commit_date, recorded_at=recorded_at), size))
        gone: list[str] = []
        with database.write() as db:
            hidden = None
            if request is not None:
                request_id, owner, _ = request
                hidden = takedown_reason_in(db, request_id)
                if hidden is None and not held_in(db, request_id, owner):
                    raise LeaseLostError(f"request {request_id} is no longer held by {owner}: not recorded")
            touched, videos, seq = set(), set(), 0
            for row, size in prepared:
                seq = hist.insert(db, row) or seq
                touched.add(row["repo_id"])
                if row.get("video") and size:
                    replays.account(db, row["video"], size, seq)
                    videos.add(row["video"])
            if hidden is not None and seq:
                hist.add_takedown(db, prepared[0][0]["repo_id"], upto_seq=seq, row_seq=seq,
                                  removed_at=pd.Timestamp.now(tz="UTC"), reason=hidden)
            rk.refresh_repos(db, touched)
            if videos:
                gone = replays.prune(db, self.max_replay_bytes, keep=videos, upto_seq=hist.last_seq(db))
            if request is not None and hidden is None:
                result = items[0][0]
                finish_in(db, request_id, owner, Status.FINISHED if result.finished else Status.FAILED,
                          error_code=result.error_code, error=result.error, result_id=prepared[0][0]["row_id"],
                          now=request[2])
        replays.delete_files(self.root, gone)
        if request is not None:
            return [Recorded(prepared[0][0]["row_id"], hidden)]
        return [row["row_id"] for row, _ in prepared]

    def remove(self, repo_id: str, *, reason: str | None = None) -> int:
        """Takedown: hide every row of `repo_id` recorded so far from the ranking and the
        results (they stay in the history, with `removed_at`). Returns how many rows."""
        return self.takedown(repo_id, reason=reason, cancel_requests=False)[0]

    def takedown(self, repo_id: str, *, reason: str | None = None, cancel_requests: bool = True) -> tuple[int, int]:
        """`remove`, plus (by default) the repo's pending and running requests cancelled, in one
        transaction; (rows hidden, requests cancelled)."""
        reason = reason or "removed"
        with self.database.write() as db:
            last = hist.last_seq(db)
            visible = db.execute("SELECT COUNT(*) FROM evaluations e WHERE e.repo_id = ? AND NOT EXISTS (SELECT 1 "
                                 "FROM takedowns t WHERE t.repo_id = e.repo_id AND t.upto_seq >= e.seq AND "
                                 "(t.row_seq IS NULL OR t.row_seq = e.seq))", (repo_id,)).fetchone()[0]
            if visible:
                hist.add_takedown(db, repo_id, upto_seq=last, removed_at=pd.Timestamp.now(tz="UTC"), reason=reason)
                rk.refresh_repo(db, repo_id)
            cancelled = 0
            if cancel_requests:
                from .queue import cancel_in

                cancelled = cancel_in(db, repo_id, reason, now=time.time())
        return visible, cancelled

    # ------------------------------------------------------------ backups

    def backup(self) -> Path:
        """Back the database up now (into backups/leaderboard.sqlite3)."""
        return self.database.backup()

    def maybe_backup(self, interval: float | None = None) -> Path | None:
        """Back up when the last backup is older than `interval` (default: the backup cadence)."""
        return self.database.backup() if self.database.backup_due(interval) else None

    def restore(self) -> Path:
        """Replace a damaged database with the last backup; returns where the damaged file went."""
        self.close()
        self._database = self._queue = None
        return Database(self.db_path).restore()


def record(result: EvalResult, store: str | Path, *, commit_date: Any = None) -> Path:
    """Record one result in the store folder `store` (the evaluator CLI's entry point); returns
    the database file it was recorded in."""
    target = Store(store)
    target.record(result, commit_date=commit_date)
    target.close()
    return target.results_path
