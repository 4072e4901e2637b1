"""The store's SQLite database: schema, connections, transactions, errors, backups.

One file (`leaderboard.sqlite3`, WAL) holds the history, the takedown and replay-pruning
events, the maintained ranking, and the request queue, so that recording a
result and ending its request are one transaction.

- Connections: one per thread and process, `busy_timeout` 60 s, `synchronous=NORMAL` (in WAL
  mode a commit survives a crash of the process; a power cut may lose the last transactions,
  never part of one: a request whose row was lost runs again).
- Checkpoints: SQLite's automatic PASSIVE checkpoint every 1,000 pages, a TRUNCATE checkpoint
  after each bulk `record_many` and each backup; `journal_size_limit` caps an idle WAL at 64 MB.
- Backups: `Connection.backup` into `backups/leaderboard.sqlite3` (written aside, checked with
  `PRAGMA quick_check`, then renamed), when the last one is older than the backup interval
  (6 h; `RL_LEADERBOARD_BACKUP_SECONDS`): queue workers check at start and between requests,
  never per write.
- Errors: a damaged file is `StoreCorruptError` (nothing is written to it; the message names the
  backup and `python -m leaderboard restore`), a full disk `StoreFullError` (the transaction is
  rolled back), a database locked beyond the timeout `StoreBusyError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

DB_FILE = "leaderboard.sqlite3"
BACKUP_DIR = "backups"
SCHEMA_VERSION = 1
BACKUP_SECONDS_ENV = "RL_LEADERBOARD_BACKUP_SECONDS"
DEFAULT_BACKUP_SECONDS = 6 * 3600.0
BUSY_TIMEOUT_MS = 60_000
CACHE_KIB = 64 * 1024  # SQLite page cache per connection
_SQLITE_HEADER = b"SQLite format 3\x00"

# Evaluations are appended, never updated. Times are microseconds since the epoch (UTC);
# per-episode lists are codec BLOBs; dicts and notes are JSON text.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS evaluations (
    seq INTEGER PRIMARY KEY,
    row_id TEXT NOT NULL UNIQUE,
    repo_id TEXT, revision TEXT, env_key TEXT, protocol_version INTEGER, seed_set TEXT,
    commit_date INTEGER, evaluated_at INTEGER, recorded_at INTEGER,
    status TEXT, error_code TEXT, error TEXT, ranked INTEGER,
    env_id TEXT, eval_env_id TEXT, eval_env_kwargs TEXT, algo TEXT, format TEXT, n_episodes INTEGER,
    seeds BLOB, episode_returns BLOB, episode_lengths BLOB,
    mean_reward REAL, std_reward REAL, score REAL, iqm REAL, ci95 BLOB,
    claim_mean_reward REAL, claim_std_reward REAL, claim_n_episodes INTEGER, claim_verdict TEXT,
    claim_env_id TEXT, video TEXT, video_error TEXT, notes TEXT, schema_version INTEGER,
    evaluator_version TEXT, versions TEXT, platform TEXT, extra TEXT,
    unknown TEXT
);
-- covering what a ranking refresh reads, so the rows of one repo are one contiguous index range
CREATE INDEX IF NOT EXISTS evaluations_repo ON evaluations (repo_id, revision, env_key, status, ranked, score,
    mean_reward, iqm, algo, claim_verdict, commit_date, evaluated_at, recorded_at);
-- takedowns: hide the rows of repo_id with seq <= upto_seq (or only row_seq when set)
CREATE TABLE IF NOT EXISTS takedowns (
    id INTEGER PRIMARY KEY, repo_id TEXT NOT NULL, upto_seq INTEGER NOT NULL, row_seq INTEGER,
    removed_at INTEGER NOT NULL, reason TEXT);
CREATE INDEX IF NOT EXISTS takedowns_repo ON takedowns (repo_id, upto_seq);
-- replay files present under replays/, and the pruning events (rows of seq <= upto_seq lose it)
CREATE TABLE IF NOT EXISTS replays (path TEXT PRIMARY KEY, bytes INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS replays_order ON replays (seq);
CREATE TABLE IF NOT EXISTS replay_prunes (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, upto_seq INTEGER NOT NULL, pruned_at INTEGER NOT NULL,
    reason TEXT);
CREATE INDEX IF NOT EXISTS replay_prunes_path ON replay_prunes (path, upto_seq);
-- the current ranking: one entry per (env_key, repo_id), maintained at write time
CREATE TABLE IF NOT EXISTS ranking (
    env_key TEXT NOT NULL, repo_id TEXT NOT NULL, seq INTEGER NOT NULL, score REAL NOT NULL,
    mean_reward REAL, iqm REAL, evaluated_at INTEGER, commit_date INTEGER, algo TEXT, claim_verdict TEXT,
    UNIQUE (env_key, repo_id));
CREATE INDEX IF NOT EXISTS ranking_repo ON ranking (repo_id);
CREATE INDEX IF NOT EXISTS ranking_score ON ranking (env_key, score DESC, mean_reward DESC, repo_id);
CREATE INDEX IF NOT EXISTS ranking_mean ON ranking (env_key, mean_reward DESC, repo_id);
CREATE INDEX IF NOT EXISTS ranking_iqm ON ranking (env_key, iqm DESC, repo_id);
CREATE INDEX IF NOT EXISTS ranking_evaluated ON ranking (env_key, evaluated_at DESC, repo_id);
CREATE INDEX IF NOT EXISTS ranking_commit ON ranking (env_key, commit_date DESC, repo_id);
CREATE INDEX IF NOT EXISTS ranking_repo_sort ON ranking (env_key, repo_id);
CREATE VIRTUAL TABLE IF NOT EXISTS ranking_search USING fts5(repo_id, tokenize = 'trigram');
CREATE TRIGGER IF NOT EXISTS ranking_search_add AFTER INSERT ON ranking BEGIN
    INSERT INTO ranking_search (rowid, repo_id) VALUES (new.rowid, new.repo_id); END;
CREATE TRIGGER IF NOT EXISTS ranking_search_drop AFTER DELETE ON ranking BEGIN
    DELETE FROM ranking_search WHERE rowid = old.rowid; END;
"""


class StoreError(RuntimeError):
    """The store folder cannot be used as it is (an operator problem, not an agent's)."""


class StoreBusyError(StoreError):
    """The database stayed locked beyond the busy timeout (transient: retry)."""


class StoreFullError(StoreError):
    """The disk holding the store is full: the transaction was rolled back."""


class StoreCorruptError(StoreError):
    """The database file is damaged: the message names the backup and how to restore it."""

    def __init__(self, path: Path, backup: Path, reason: str):
        self.path, self.backup, self.reason = path, backup, reason
        store = path.parent
        if backup.is_file():
            when = dt.datetime.fromtimestamp(backup.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
            fix = (f"The last backup is {backup} (written {when}): restore it with "
                   f"`python -m leaderboard restore --store {store}` (the damaged file is kept aside; rows "
                   "recorded after the backup are lost, the Hub dataset's history shards hold the published ones)")
        else:
            fix = (f"No backup exists ({backup} is missing): salvage what is readable with "
                   f"`sqlite3 {path} .recover | sqlite3 recovered.sqlite3`, or rebuild from your own copy")
        super().__init__(f"the leaderboard database {path} is damaged: {reason}. Nothing was written to it. {fix}.")


def _statements(script: str) -> Iterator[str]:
    """The statements of a script (triggers included), for running them inside a transaction."""
    pending = ""
    for line in script.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""


# (pid, real path) of the database files this process has opened with SQLite: never opened
# again by other means in this process (see Database._check_header)
_CONNECTED: set[tuple[int, str]] = set()

# I/O errors of a write that did not fit (ENOSPC, or EFBIG past a file size limit); other I/O
# errors (a read, the shared-memory index) are not a full disk and are raised as they are
_WRITE_FAILED = frozenset({"SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC", "SQLITE_IOERR_TRUNCATE",
                           "SQLITE_IOERR_SHMSIZE"})


def _code(err: sqlite3.Error) -> int | None:
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


class Database:
    """Connections to one database file (cached per thread and process), the schema created on
    first use. `read()` gives a consistent snapshot, `write()` one IMMEDIATE transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.backup_path = self.path.parent / BACKUP_DIR / self.path.name
        self._local = threading.local()
        self._ready = False

    def _check_header(self) -> None:
        """A file that is not SQLite is refused before SQLite opens it for writing.

        Only before this process holds any connection to the file: closing a descriptor of
        the database file releases every POSIX lock the process holds on it, the SQLite
        connections' included (sqlite.org/howtocorrupt.html, 2.2); another process closing its
        last connection would then take the file for unused and delete the WAL and its index
        under the readers and writers still on it (they fail with "disk I/O error"). Later
        opens rely on SQLite's own check (SQLITE_NOTADB, translated as a damaged store)."""
        key = (os.getpid(), os.path.realpath(self.path))
        if key in _CONNECTED:
            return
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(len(_SQLITE_HEADER))
        except FileNotFoundError:
            return
        if header and header != _SQLITE_HEADER:
            raise StoreCorruptError(self.path, self.backup_path, "the file is not an SQLite database")

    def connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            return db
        self._check_header()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=True)
        _CONNECTED.add((os.getpid(), os.path.realpath(self.path)))
        with self.translated():
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_size_limit=67108864")
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # the random-key indexes of a big history stay cached
            db.execute("PRAGMA mmap_size=1073741824")  # reads from the OS page cache, shared by processes
            db.execute("PRAGMA foreign_keys=OFF")
            self._local.db, self._local.pid = db, os.getpid()
            if not self._ready:
                self._create(db)
                self._ready = True
        return db

    def _create(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        from .queue import create_requests_table

        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:  # another process did it
                db.execute("COMMIT")
                return
            for statement in _statements(_SCHEMA):
                db.execute(statement)
            create_requests_table(db)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid == os.getpid():
            db.close()
        self._local.db = None

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """sqlite3 errors as store errors that say what to do."""
        try:
            yield
        except sqlite3.Error as err:
            code = _code(err)
            if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                self.close()
                raise StoreCorruptError(self.path, self.backup_path, f"{err} ({self._quick_check()})") from err
            name = getattr(err, "sqlite_errorname", None) or "SQLITE_ERROR"
            if code == sqlite3.SQLITE_FULL or name in _WRITE_FAILED:
                raise StoreFullError(f"the disk holding {self.path} is full ({err}, {name}): the write was rolled "
                                     "back; free some space, then run the command again (a queue request goes back to "
                                     "the queue when its lease expires)") from err
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreBusyError(f"{self.path} stayed locked for {BUSY_TIMEOUT_MS // 1000} s ({err}): another "
                                     "process holds a long write; retry") from err
            raise

    def _quick_check(self) -> str:
        """PRAGMA quick_check on a suspicious file, read-only (never written to)."""
        try:
            probe = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
            try:
                rows = [r[0] for r in probe.execute("PRAGMA quick_check(5)")]
            finally:
                probe.close()
        except sqlite3.Error as err:
            return f"quick_check could not run: {err}"
        return "quick_check: " + "; ".join(rows)

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        db = self.connect()
        with self.translated():
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken with BEGIN IMMEDIATE (writers queue up on the busy
        timeout; no lost updates). Any exception rolls it back."""
        db = self.connect()
        with self.translated():
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            try:
                db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    def checkpoint(self, mode: str = "TRUNCATE") -> None:
        with self.translated():
            self.connect().execute(f"PRAGMA wal_checkpoint({mode})")

    @contextlib.contextmanager
    def bulk_cache(self, kib: int) -> Iterator[None]:
        """This thread's connection with a page cache of `kib` KiB for a bulk write, then back."""
        db = self.connect()
        db.execute(f"PRAGMA cache_size=-{int(kib)}")
        try:
            yield
        finally:
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")

    # ------------------------------------------------------------ backups

    def backup(self) -> Path:
        """Copy the database into `backups/` (consistent, while writers go on), check the copy,
        then replace the previous backup with it."""
        target = self.backup_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        source = self.connect()
        with self.translated():
            copy = sqlite3.connect(tmp)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")
                check = copy.execute("PRAGMA quick_check").fetchone()[0]
            finally:
                copy.close()
        if check != "ok":
            tmp.unlink(missing_ok=True)
            raise StoreCorruptError(self.path, target, f"the backup copy failed quick_check ({check})")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        with self.write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_backup', ?)", (str(time.time()),))
        self.checkpoint()
        return target

    def backup_due(self, interval: float | None = None) -> bool:
        if interval is None:
            interval = float(os.environ.get(BACKUP_SECONDS_ENV) or DEFAULT_BACKUP_SECONDS)
        with self.read() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'last_backup'").fetchone()
        return row is None or time.time() - float(row[0]) >= interval

    def restore(self) -> Path:
        """Replace a damaged database with its backup; the damaged file (and its WAL) is kept
        as `leaderboard.sqlite3.damaged-<time>`. Returns where it was kept."""
        if not self.backup_path.is_file():
            raise StoreError(f"no backup to restore: {self.backup_path} is missing")
        self.close()
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        kept = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(self.path) + suffix)
            if source.exists():
                os.replace(source, Path(str(kept) + suffix))
        tmp = self.path.with_name(f".{self.path.name}.restore.tmp")
        with open(self.backup_path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, self.path)
        self._ready = False
        return kept
