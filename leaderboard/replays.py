"""Replays in the store: moved into `replays/{ns}/{name}/{sha}/{env_key}.mp4` when their row is
recorded, counted in the database (path, bytes, recording order) so that the disk cap is kept
without walking the folder, and pruned oldest first past the cap (a pruning event hides the
replay from the rows that pointed at it; the files go after the transaction commits).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import time
from pathlib import Path

from evaluator.result import EvalResult

REPLAYS_DIR = "replays"
PRUNED = "replay deleted to keep replays under the store's disk cap"


def safe_part(part: str) -> str:
    """A path component from a repo id part, sha or env key (`[continuous=True]` -> `_continuous=True_`)."""
    return re.sub(r"[^A-Za-z0-9._=,-]", "_", part) or "_"


def replay_relpath(repo_id: str | None, revision: str | None, env_key: str | None) -> str:
    """`replays/{ns}/{name}/{sha}/{env_key}.mp4`, relative to the store."""
    ns, _, name = (repo_id or "unknown/unknown").partition("/")
    parts = (REPLAYS_DIR, safe_part(ns), safe_part(name or "unknown"), safe_part(revision or "unresolved"),
             f"{safe_part(env_key or 'unknown-env')}.mp4")
    return "/".join(parts)


def place(root: Path, tmp_dir: Path, result: EvalResult, *, keep: bool = True) -> int:
    """Move the replay at `result.video` into `replays/...`, make `result.video` relative to the
    store, and return its size (0 when there is none). A failed evaluation's replay, or any when
    `keep` is False (a taken-down repo), is deleted instead."""
    if not result.video:
        return 0
    given = Path(result.video)
    source = given if given.is_absolute() else (root / given if (root / given).exists() else given)
    if not source.is_file():
        result.video, result.video_error = None, result.video_error or f"replay file {given} is missing"
        return 0
    if not result.finished or not keep:
        with contextlib.suppress(OSError):
            if tmp_dir.resolve() in source.resolve().parents:
                source.unlink()
        result.video = None
        return 0
    relative = replay_relpath(result.repo_id, result.revision, result.env_key)
    target = root / relative
    if source.resolve() != target.resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), target)
    result.video = relative
    return target.stat().st_size


def _total(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key = 'replay_bytes'").fetchone()
    if row is None:
        return db.execute("SELECT COALESCE(SUM(bytes), 0) FROM replays").fetchone()[0]
    return int(row[0])


def account(db: sqlite3.Connection, path: str, size: int, seq: int) -> None:
    """Count a replay file (inside the recording transaction)."""
    old = db.execute("SELECT bytes FROM replays WHERE path = ?", (path,)).fetchone()
    total = _total(db) - (old[0] if old else 0) + size
    db.execute("INSERT OR REPLACE INTO replays (path, bytes, seq) VALUES (?, ?, ?)", (path, size, seq))
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('replay_bytes', ?)", (str(total),))


def prune(db: sqlite3.Connection, max_bytes: int, *, keep: set[str], upto_seq: int) -> list[str]:
    """Record pruning events, oldest replay first, until the total fits `max_bytes`; returns the
    paths to delete once the transaction has committed."""
    total, gone = _total(db), []
    while total > max_bytes:
        row = db.execute(f"SELECT path, bytes FROM replays WHERE path NOT IN ({', '.join('?' for _ in keep)}) "
                         "ORDER BY seq LIMIT 1", tuple(keep)).fetchone()
        if row is None:
            break
        path, size = row
        db.execute("DELETE FROM replays WHERE path = ?", (path,))
        db.execute("INSERT INTO replay_prunes (path, upto_seq, pruned_at, reason) VALUES (?, ?, ?, ?)",
                   (path, upto_seq, int(time.time() * 1e6), PRUNED))
        total -= size
        gone.append(path)
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('replay_bytes', ?)", (str(total),))
    return gone


def delete_files(root: Path, paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            (root / path).unlink()


def scan(db: sqlite3.Connection, root: Path) -> None:
    """Count the replay files already in a store folder (once, when a store is migrated), oldest
    first by modification time, each attributed to the newest row that points at it."""
    folder = root / REPLAYS_DIR
    if not folder.is_dir():
        return
    newest = dict(db.execute("SELECT video, MAX(seq) FROM evaluations WHERE video IS NOT NULL GROUP BY video"))
    files = sorted((p.stat().st_mtime_ns, p) for p in folder.rglob("*.mp4") if p.is_file())
    for _, path in files:
        relative = path.relative_to(root).as_posix()
        account(db, relative, path.stat().st_size, newest.get(relative, 0))
