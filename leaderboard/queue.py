"""The request queue: one record per submission, a table of the store's SQLite database, so that
a queue worker records a result and ends its request in one transaction (`Store.record`).

A request is unique by (repo_id, revision sha, env_key, episode override, protocol version,
seed set) and says who asked (`submitter`, for rate limits): submitting it again
returns the existing record (one that failed for a transient reason or was cancelled by a
takedown is queued again, one `generation` later). Its status is a `Status`: `pending` ->
`running` (a queue worker holds a lease and renews it while it evaluates) -> `finished` or
`failed`. A lease that expires (its worker died) puts the request back to `pending`; claims are
serialized by `BEGIN IMMEDIATE`, so two workers never hold the same request. Only transient
failures (`hub_unavailable`, a lost worker) are retried, after an exponential backoff, up to
`max_attempts` attempts in all.

Defaults (per `Queue`, overridable from the worker's command line):
- lease: `DEFAULT_LEASE_SECONDS` = 120 s, renewed every lease/4 by the worker's heartbeat;
- attempts: `DEFAULT_MAX_ATTEMPTS` = 5 (the first try included);
- backoff before retry n (n = 1, 2, ...): 60 s * 3**(n-1), at most 1 h, +-10% jitter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

DEFAULT_LEASE_SECONDS = 120.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_BACKOFF_SECONDS = 60.0
DEFAULT_BACKOFF_FACTOR = 3.0
DEFAULT_BACKOFF_MAX_SECONDS = 3600.0
BACKOFF_JITTER = 0.1


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (Status.FINISHED, Status.FAILED)


class QueueErrorCode(StrEnum):
    """Request-level error codes beyond the EvalResult ones (`hub_unavailable`, ...)."""

    WORKER_LOST = "worker_lost"  # the queue worker holding the lease died, max_attempts times
    REMOVED = "removed"  # the repo was taken down before the request ended


TRANSIENT_CODES = frozenset({"hub_unavailable", QueueErrorCode.WORKER_LOST.value})
TAKEDOWN_ERROR = "the repo was taken down: "  # + the reason, the error of a request a takedown ended
# A request that ended with one of these is queued again when it is submitted again.
REQUEUED_CODES = TRANSIENT_CODES | {QueueErrorCode.REMOVED.value}

_COLUMNS_SQL = """
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo_id TEXT NOT NULL,
    revision TEXT NOT NULL,
    env_key TEXT NOT NULL,
    env_id TEXT,
    episodes INTEGER,
    commit_date TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    not_before REAL,
    lease_owner TEXT,
    lease_expires REAL,
    started_at REAL,
    finished_at REAL,
    error_code TEXT,
    error TEXT,
    result_id TEXT,
    generation INTEGER NOT NULL DEFAULT 0,
    protocol_version INTEGER NOT NULL DEFAULT 1,
    seed_set TEXT NOT NULL DEFAULT 'public',
    submitter TEXT
"""
# A request is unique by (repo, sha, env key, episode override, protocol version, seed set): the
# override is part of the key (NULL, the protocol's own count, is 0 in the index), so an unranked
# `--episodes N` request never stands in for the ranked one, and a new protocol or a move to the
# private seed set queues the request again. Tables of earlier versions (unique by repo, sha and
# env key; no `generation`, `protocol_version`, `seed_set` or `submitter`) are rebuilt by
# `create_requests_table`, every request kept (protocol 1, public seeds: all there was).
_INDEXES = (
    "DROP INDEX IF EXISTS requests_key_v2",
    "CREATE UNIQUE INDEX IF NOT EXISTS requests_key_v3 ON requests "
    "(repo_id, revision, env_key, COALESCE(episodes, 0), protocol_version, seed_set)",
    "CREATE INDEX IF NOT EXISTS requests_status ON requests (status, not_before, submitted_at)",
    "CREATE INDEX IF NOT EXISTS requests_repo ON requests (repo_id, status)",
    "CREATE INDEX IF NOT EXISTS requests_submitter ON requests (submitter, submitted_at)",
)
_KEY_WHERE = ("repo_id = ? AND revision = ? AND env_key = ? AND COALESCE(episodes, 0) = ? AND protocol_version = ? "
              "AND seed_set = ?")


def create_requests_table(db: sqlite3.Connection) -> None:
    """Create the requests table, or rebuild one of an earlier version with today's columns and
    key, keeping every request (inside the caller's transaction)."""
    columns = [r[1] for r in db.execute("PRAGMA table_info(requests)")]
    if columns:
        old_key = any(r[2] and r[3] == "u" for r in db.execute("PRAGMA index_list(requests)"))
        if old_key or not {"generation", "protocol_version", "seed_set", "submitter"} <= set(columns):
            db.execute("DROP TABLE IF EXISTS requests_new")
            db.execute(f"CREATE TABLE requests_new ({_COLUMNS_SQL})")
            kept = ", ".join(c for c in columns if c in _FIELDS)
            db.execute(f"INSERT INTO requests_new ({kept}) SELECT {kept} FROM requests")
            db.execute("DROP TABLE requests")
            db.execute("ALTER TABLE requests_new RENAME TO requests")
    db.execute(f"CREATE TABLE IF NOT EXISTS requests ({_COLUMNS_SQL})")
    for statement in _INDEXES:
        db.execute(statement)


def current_protocol() -> tuple[int, str]:
    """(protocol version, seed set) the evaluator of this process runs: what a request asks for."""
    from evaluator.runner import PRIVATE, PRIVATE_SALT_ENV, PROTOCOL_VERSION, PUBLIC

    return PROTOCOL_VERSION, PRIVATE if os.environ.get(PRIVATE_SALT_ENV) else PUBLIC


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Request:
    id: int
    repo_id: str
    revision: str
    env_key: str
    env_id: str | None  # the env asked for with --env; None: the env the repo states
    episodes: int | None  # an episode-count override (the result is then unranked)
    commit_date: str | None
    status: Status
    attempts: int
    max_attempts: int
    submitted_at: float
    updated_at: float
    not_before: float | None
    lease_owner: str | None
    lease_expires: float | None
    started_at: float | None
    finished_at: float | None
    error_code: str | None
    error: str | None
    result_id: str | None
    generation: int = 0  # how many times the request was queued again after it ended
    protocol_version: int = 1  # the evaluation protocol asked for (part of the key)
    seed_set: str = "public"  # public or private seeds (part of the key)
    submitter: str | None = None  # who asked (a CLI user, an IP, a Space login): for rate limits

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC strings."""
        data = asdict(self)
        data["status"] = self.status.value
        for name in ("submitted_at", "updated_at", "not_before", "lease_expires", "started_at", "finished_at"):
            data[name] = _iso(data[name])
        return data


_FIELDS = tuple(f.name for f in fields(Request))
_SELECT = ", ".join(_FIELDS)


class Queue:
    """The requests table of a store's database (`Store.queue_path`), or of any SQLite file."""

    def __init__(self, path: str | Path, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 backoff_seconds: float = DEFAULT_BACKOFF_SECONDS, backoff_factor: float = DEFAULT_BACKOFF_FACTOR,
                 backoff_max_seconds: float = DEFAULT_BACKOFF_MAX_SECONDS,
                 clock: Callable[[], float] = time.time):
        from .db import Database

        self.path = Path(path)
        self.max_attempts = max_attempts
        self.backoff_seconds, self.backoff_factor = backoff_seconds, backoff_factor
        self.backoff_max_seconds = backoff_max_seconds
        self.clock = clock
        self.database = Database(self.path)
        self.database.connect()

    def _write(self):
        return self.database.write()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self.database.read() as db:
            yield db

    @staticmethod
    def _get(db: sqlite3.Connection, request_id: int) -> Request | None:
        row = db.execute(f"SELECT {_SELECT} FROM requests WHERE id = ?", (request_id,)).fetchone()
        return Request(*row) if row else None

    def backoff(self, attempts: int) -> float:
        """Seconds to wait before retrying after `attempts` tries."""
        base = self.backoff_seconds * self.backoff_factor ** max(attempts - 1, 0)
        delay = min(base, self.backoff_max_seconds)
        return delay * (1 + random.uniform(-BACKOFF_JITTER, BACKOFF_JITTER))

    # ------------------------------------------------------------ submitting

    def submit(self, repo_id: str, revision: str, env_key: str, *, env_id: str | None = None,
               episodes: int | None = None, commit_date: str | None = None, protocol_version: int | None = None,
               seed_set: str | None = None, submitter: str | None = None) -> tuple[Request, bool]:
        """Queue a request; (the request, whether it was queued now). Requests are unique by
        (repo, sha, env key, `episodes` override (None: the protocol's own count), protocol
        version, seed set); the last two default to what this process's evaluator runs. A
        request that exists already is returned as it is, unless it failed for a transient
        reason or was cancelled by a takedown (`removed`): then it is queued again with fresh
        attempts and its `generation` goes up."""
        if protocol_version is None or seed_set is None:
            default_protocol, default_seeds = current_protocol()
            protocol_version = default_protocol if protocol_version is None else protocol_version
            seed_set = seed_set or default_seeds
        episodes = episodes or None
        key = (repo_id, revision, env_key, episodes or 0, protocol_version, seed_set)
        now = self.clock()
        with self._write() as db:
            row = db.execute(f"SELECT {_SELECT} FROM requests WHERE {_KEY_WHERE}", key).fetchone()
            if row is None:
                cursor = db.execute(
                    "INSERT INTO requests (repo_id, revision, env_key, env_id, episodes, commit_date, status, "
                    "max_attempts, submitted_at, updated_at, protocol_version, seed_set, submitter) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (repo_id, revision, env_key, env_id, episodes, commit_date, Status.PENDING.value,
                     self.max_attempts, now, now, protocol_version, seed_set, submitter))
                return self._get(db, cursor.lastrowid), True
            request = Request(*row)
            if request.status == Status.FAILED and request.error_code in REQUEUED_CODES:
                db.execute("UPDATE requests SET status = ?, attempts = 0, not_before = NULL, error_code = NULL, "
                           "error = NULL, finished_at = NULL, result_id = NULL, lease_owner = NULL, "
                           "lease_expires = NULL, max_attempts = ?, generation = generation + 1, updated_at = ?, "
                           "submitter = COALESCE(?, submitter) WHERE id = ?",
                           (Status.PENDING.value, self.max_attempts, now, submitter, request.id))
                return self._get(db, request.id), True
        return request, False

    # ------------------------------------------------------------ workers

    def _reap(self, db: sqlite3.Connection, now: float) -> None:
        """Requests whose lease expired (their worker died) go back to pending, or fail once
        they have used all their attempts."""
        lost = "the queue worker evaluating it stopped renewing its lease (it died or hung)"
        db.execute("UPDATE requests SET status = ?, lease_owner = NULL, lease_expires = NULL, not_before = NULL, "
                   "error_code = ?, error = ?, updated_at = ? "
                   "WHERE status = ? AND lease_expires < ? AND attempts < max_attempts",
                   (Status.PENDING.value, QueueErrorCode.WORKER_LOST.value, lost, now, Status.RUNNING.value, now))
        db.execute("UPDATE requests SET status = ?, lease_owner = NULL, lease_expires = NULL, error_code = ?, "
                   "error = ?, finished_at = ?, updated_at = ? "
                   "WHERE status = ? AND lease_expires < ? AND attempts >= max_attempts",
                   (Status.FAILED.value, QueueErrorCode.WORKER_LOST.value, lost + ", on every attempt", now, now,
                    Status.RUNNING.value, now))

    def reap(self) -> None:
        with self._write() as db:
            self._reap(db, self.clock())

    def claim(self, owner: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Request | None:
        """Take the oldest due pending request (FIFO), or None when none is due."""
        now = self.clock()
        with self._write() as db:
            self._reap(db, now)
            row = db.execute("SELECT id FROM requests WHERE status = ? AND (not_before IS NULL OR not_before <= ?) "
                             "ORDER BY submitted_at, id LIMIT 1", (Status.PENDING.value, now)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE requests SET status = ?, lease_owner = ?, lease_expires = ?, attempts = attempts + 1, "
                       "started_at = ?, updated_at = ? WHERE id = ?",
                       (Status.RUNNING.value, owner, now + lease_seconds, now, now, row[0]))
            return self._get(db, row[0])

    def renew(self, request_id: int, owner: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> bool:
        """Extend the lease; False when `owner` no longer holds it (it expired and was reaped)."""
        now = self.clock()
        with self._write() as db:
            cursor = db.execute("UPDATE requests SET lease_expires = ?, updated_at = ? "
                                "WHERE id = ? AND status = ? AND lease_owner = ?",
                                (now + lease_seconds, now, request_id, Status.RUNNING.value, owner))
            return cursor.rowcount == 1

    def holds(self, request_id: int, owner: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT 1 FROM requests WHERE id = ? AND status = ? AND lease_owner = ? "
                             "AND lease_expires >= ?",
                             (request_id, Status.RUNNING.value, owner, self.clock())).fetchone()
            return row is not None

    def finish(self, request_id: int, owner: str, status: Status, *, error_code: str | None = None,
               error: str | None = None, result_id: str | None = None) -> bool:
        """End a request (finished or failed); False when `owner` no longer held it."""
        with self._write() as db:
            return finish_in(db, request_id, owner, status, error_code=error_code, error=error, result_id=result_id,
                             now=self.clock())

    def retry(self, request_id: int, owner: str, *, error_code: str, error: str) -> Request | None:
        """A transient failure: back to pending after a backoff, or failed when the attempts
        are used up. None when `owner` no longer held the request."""
        now = self.clock()
        with self._write() as db:
            request = self._get(db, request_id)
            if request is None or request.status != Status.RUNNING or request.lease_owner != owner:
                return None
            if request.attempts >= request.max_attempts:
                db.execute("UPDATE requests SET status = ?, error_code = ?, error = ?, finished_at = ?, "
                           "updated_at = ?, lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                           (Status.FAILED.value, error_code,
                            f"{error} (gave up after {request.attempts} attempts)", now, now, request_id))
            else:
                db.execute("UPDATE requests SET status = ?, error_code = ?, error = ?, not_before = ?, updated_at = ?, "
                           "lease_owner = NULL, lease_expires = NULL WHERE id = ?",
                           (Status.PENDING.value, error_code, error, now + self.backoff(request.attempts), now,
                            request_id))
            return self._get(db, request_id)

    def release(self, request_id: int, owner: str) -> bool:
        """Give a request back untouched (a worker stopping): pending again, the attempt not counted."""
        now = self.clock()
        with self._write() as db:
            cursor = db.execute("UPDATE requests SET status = ?, attempts = MAX(attempts - 1, 0), lease_owner = NULL, "
                                "lease_expires = NULL, updated_at = ? WHERE id = ? AND status = ? AND lease_owner = ?",
                                (Status.PENDING.value, now, request_id, Status.RUNNING.value, owner))
            return cursor.rowcount == 1

    def cancel_repo(self, repo_id: str, reason: str) -> int:
        """Fail the pending and running requests of a repo (a takedown, for `reason`) with
        `removed`; returns how many. A running request loses its lease: its worker records
        the result as taken down (hidden), see `Store.record_request`."""
        with self._write() as db:
            return cancel_in(db, repo_id, reason, now=self.clock())

    def taken_down(self, request_id: int) -> str | None:
        """The takedown's reason when `cancel_repo` ended this request, else None."""
        request = self.get(request_id)
        if request is None or request.status != Status.FAILED or request.error_code != QueueErrorCode.REMOVED:
            return None
        return (request.error or "").removeprefix(TAKEDOWN_ERROR) or "removed"

    # ------------------------------------------------------------ reading

    def lookup(self, repo_id: str, revision: str, env_key: str, *, episodes: int | None = None,
               protocol_version: int | None = None, seed_set: str | None = None) -> Request | None:
        """The request of this key, if any (a read: a sweep checks before it writes)."""
        if protocol_version is None or seed_set is None:
            default_protocol, default_seeds = current_protocol()
            protocol_version = default_protocol if protocol_version is None else protocol_version
            seed_set = seed_set or default_seeds
        key = (repo_id, revision, env_key, episodes or 0, protocol_version, seed_set)
        with self._connect() as db:
            row = db.execute(f"SELECT {_SELECT} FROM requests WHERE {_KEY_WHERE}", key).fetchone()
        return Request(*row) if row else None

    def get(self, request_id: int) -> Request | None:
        with self._connect() as db:
            return self._get(db, request_id)

    def list(self, status: Status | str | None = None) -> list[Request]:
        query, args = "SELECT * FROM requests", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (Status(status).value,)
        with self._connect() as db:
            return [Request(*r) for r in db.execute(query.replace("*", _SELECT) + " ORDER BY submitted_at, id",
                                                    args)]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            found = dict(db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
        return {s.value: found.get(s.value, 0) for s in Status}

    def next_due(self) -> float | None:
        """When the next pending request becomes claimable (epoch seconds), None if none is pending."""
        with self._connect() as db:
            row = db.execute("SELECT MIN(COALESCE(not_before, 0)) FROM requests WHERE status = ?",
                             (Status.PENDING.value,)).fetchone()
        return row[0]

    def submitted_since(self, submitter: str, since: float) -> int:
        """How many requests `submitter` made since `since` (epoch seconds): for rate limits."""
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM requests WHERE submitter = ? AND submitted_at >= ?",
                              (submitter, since)).fetchone()[0]


# ---------------------------------------------------------------- inside a store transaction


def finish_in(db: sqlite3.Connection, request_id: int, owner: str, status: Status | str, *,
              error_code: str | None = None, error: str | None = None, result_id: str | None = None,
              now: float | None = None) -> bool:
    """End a request inside the caller's transaction; False when `owner` no longer held it."""
    if not Status(status).terminal:
        raise ValueError(f"finish() takes a terminal status, not {status}")
    now = time.time() if now is None else now
    cursor = db.execute(
        "UPDATE requests SET status = ?, error_code = ?, error = ?, result_id = ?, finished_at = ?, "
        "updated_at = ?, lease_owner = NULL, lease_expires = NULL, not_before = NULL "
        "WHERE id = ? AND status = ? AND lease_owner = ?",
        (Status(status).value, error_code, error, result_id, now, now, request_id, Status.RUNNING.value, owner))
    return cursor.rowcount == 1


def takedown_reason_in(db: sqlite3.Connection, request_id: int) -> str | None:
    """The takedown's reason when `cancel_repo` ended this request, else None."""
    row = db.execute("SELECT status, error_code, error FROM requests WHERE id = ?", (request_id,)).fetchone()
    if row is None or row[0] != Status.FAILED.value or row[1] != QueueErrorCode.REMOVED.value:
        return None
    return (row[2] or "").removeprefix(TAKEDOWN_ERROR) or "removed"


def held_in(db: sqlite3.Connection, request_id: int, owner: str) -> bool:
    row = db.execute("SELECT 1 FROM requests WHERE id = ? AND status = ? AND lease_owner = ?",
                     (request_id, Status.RUNNING.value, owner)).fetchone()
    return row is not None


def cancel_in(db: sqlite3.Connection, repo_id: str, reason: str, *, now: float) -> int:
    """`Queue.cancel_repo` inside the caller's transaction."""
    cursor = db.execute("UPDATE requests SET status = ?, error_code = ?, error = ?, finished_at = ?, "
                        "updated_at = ?, lease_owner = NULL, lease_expires = NULL, not_before = NULL "
                        "WHERE repo_id = ? AND status IN (?, ?)",
                        (Status.FAILED.value, QueueErrorCode.REMOVED.value, TAKEDOWN_ERROR + reason, now,
                         now, repo_id, Status.PENDING.value, Status.RUNNING.value))
    return cursor.rowcount
