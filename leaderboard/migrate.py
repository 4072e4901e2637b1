"""Import a store folder of the previous version (`results.parquet` + `queue.sqlite3`) into the
SQLite database, once, on first open.

Lossless: every row keeps every field (row ids, timestamps, takedowns as one event per removed
row, columns a newer writer added); every request keeps its id and fields (protocol 1 and the
seed set of its result, or public: all there was). The old files are then moved, untouched, to
`migrated-<time>/` with a README saying how to go back. While a writer of the previous version
holds its lock (`.results.lock`, flock) the migration is refused: stop it first. Importing is
idempotent (rows by row id, requests by key), so a crash half-way, or an old writer run again
afterwards, is imported again on the next open.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from . import history as hist
from . import ranking as rk
from . import replays
from .db import Database, StoreError
from .queue import _FIELDS as REQUEST_FIELDS
from .rows import COLUMNS, frame_records, read_results

log = logging.getLogger(__name__)

OLD_RESULTS = "results.parquet"
OLD_BACKUP = "backups/results.parquet"
OLD_QUEUE = "queue.sqlite3"
OLD_LOCK = ".results.lock"
LOCK_WAIT_SECONDS = 5.0  # an old writer holds its lock for one write: wait this long, then refuse

_README = """This folder holds the files of the previous version of the leaderboard store, moved here
untouched when the store was migrated to {db} on {when}.

To go back to the previous version: stop every process using the store, then
    python -m leaderboard export {root}/exported --store {root}   # optional: the rows recorded since
    mv {here}/results.parquet {here}/queue.sqlite3 {root}/
    mv {root}/{dbname} {root}/{dbname}.new
and run the previous version. Rows recorded since the migration are in exported/history.parquet,
in the previous version's results.parquet format.
"""


def pending(root: Path) -> bool:
    return (root / OLD_RESULTS).exists() or (root / OLD_QUEUE).exists()


@contextlib.contextmanager
def _locked(path: Path, *, wait: float | None) -> Iterator[None]:
    with open(path, "a") as fh:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | (0 if deadline is None else fcntl.LOCK_NB))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"a process of the previous leaderboard version is writing this store (it holds {path}): "
                        "stop it (its queue workers, `evaluate --store`), then run this command again; the store "
                        "is migrated to SQLite on first open and was not touched") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate_if_needed(root: Path, database: Database) -> bool:
    """Migrate the old files in `root`, if any; True when something was imported."""
    if not pending(root):
        return False
    with _locked(root / ".migrate.lock", wait=None), _locked(root / OLD_LOCK, wait=LOCK_WAIT_SECONDS):
        if not pending(root):  # another process of this version did it meanwhile
            return False
        rows, requests = _read_old(root)
        with database.write() as db:
            imported = _import_rows(db, rows)
            _import_requests(db, requests)
            replays.scan(db, root)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('migrated_at', ?)", (str(time.time()),))
        kept = _move_aside(root, database)
    log.warning("migrated %s: %d rows and %d requests imported into %s; the old files are in %s", root, imported,
                len(requests), database.path, kept)
    return True


def _read_old(root: Path) -> tuple[list[dict], list[dict]]:
    rows: list[dict] = []
    if (root / OLD_RESULTS).exists():
        try:
            frame = read_results(root / OLD_RESULTS)
        except ValueError as err:
            raise StoreError(
                f"cannot migrate {root / OLD_RESULTS}: it is unreadable ({err}). The previous version's backup is "
                f"{root / OLD_BACKUP}: restore it with `cp {root / OLD_BACKUP} {root / OLD_RESULTS}`, then run "
                "again. Nothing was written.") from err
        rows = frame_records(frame)
    requests: list[dict] = []
    if (root / OLD_QUEUE).exists():
        db = sqlite3.connect(f"file:{root / OLD_QUEUE}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone():
                requests = [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
        except sqlite3.DatabaseError as err:
            raise StoreError(f"cannot migrate {root / OLD_QUEUE}: {err}. Nothing was written.") from err
        finally:
            db.close()
    return rows, requests


def _import_rows(db: sqlite3.Connection, rows: list[dict]) -> int:
    imported, repos = 0, set()
    for row in rows:
        removed_at, reason = row.pop("removed_at", None), row.pop("removed_reason", None)
        unknown = {k: row.pop(k) for k in list(row) if k not in COLUMNS}
        row["unknown"] = unknown or None
        seq = hist.insert(db, row)
        if seq is None:
            continue
        imported += 1
        repos.add(row["repo_id"])
        if removed_at is not None:
            hist.add_takedown(db, row["repo_id"], upto_seq=seq, row_seq=seq, removed_at=removed_at, reason=reason)
    rk.refresh_repos(db, repos)
    return imported


def _import_requests(db: sqlite3.Connection, requests: list[dict]) -> None:
    for request in requests:
        data = {k: v for k, v in request.items() if k in REQUEST_FIELDS}
        found = db.execute("SELECT protocol_version, seed_set FROM evaluations WHERE row_id = ?",
                           (data.get("result_id"),)).fetchone()
        data.setdefault("protocol_version", found[0] if found and found[0] is not None else 1)
        data.setdefault("seed_set", found[1] if found and found[1] else "public")
        data.setdefault("generation", 0)
        names = list(data)
        db.execute(f"INSERT OR IGNORE INTO requests ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
                   [data[n] for n in names])


def _move_aside(root: Path, database: Database) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = root / f"migrated-{stamp}"
    kept.mkdir(exist_ok=True)
    for name in (OLD_RESULTS, OLD_BACKUP, OLD_QUEUE, OLD_QUEUE + "-wal", OLD_QUEUE + "-shm"):
        source = root / name
        if source.exists():
            target = kept / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    (kept / "README.txt").write_text(_README.format(db=database.path, when=stamp, root=root, here=kept,
                                                    dbname=database.path.name))
    return kept
