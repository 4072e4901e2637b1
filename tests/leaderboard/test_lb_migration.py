"""A store folder of the previous version (results.parquet + queue.sqlite3) is imported once on
first open, losslessly; the old files are kept aside; an old-version writer holding its lock
makes the migration refuse."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lb_helpers import make_result

from leaderboard import ranking as ranking_module
from leaderboard.rows import frame_records, read_results, result_to_row, rows_to_table
from leaderboard.store import Store, StoreError

SHA1, SHA2 = "1" * 40, "2" * 40

_OLD_QUEUE = """
CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, repo_id TEXT NOT NULL, revision TEXT NOT NULL,
    env_key TEXT NOT NULL, env_id TEXT, episodes INTEGER, commit_date TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'finished', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL, submitted_at REAL NOT NULL,
    updated_at REAL NOT NULL, not_before REAL, lease_owner TEXT, lease_expires REAL, started_at REAL,
    finished_at REAL, error_code TEXT, error TEXT, result_id TEXT, generation INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX requests_key_v2 ON requests (repo_id, revision, env_key, COALESCE(episodes, 0));
"""


def _old_store(root, *, video: bool = True):
    """The files the previous version wrote: typed parquet rows (one taken down, one with a
    claim beyond int64 noted, one with a column a newer writer added) and its request queue."""
    root.mkdir(parents=True)
    results = [
        make_result("ann/a", SHA1, score=50, evaluated_at="2025-01-01T00:00:00Z"),
        make_result("ann/a", SHA1, score=60, evaluated_at="2025-02-01T00:00:00Z"),
        make_result("bob/b", SHA2, score=70, seed_set="private"),
        make_result("cy/c", SHA1, status="failed"),
        make_result("dee/d", SHA1, score=10, ranked=False),
    ]
    results[0].claim.n_episodes = 10**20
    rows = [result_to_row(r, commit_date="2024-06-01T10:00:00Z" if i != 3 else None,
                          recorded_at=f"2025-03-0{i + 1}T12:34:56.123456Z") for i, r in enumerate(results)]
    rows[2]["removed_at"], rows[2]["removed_reason"] = pd.Timestamp("2025-03-10T00:00:00Z"), "DMCA"
    if video:
        rows[1]["video"] = f"replays/ann/a/{SHA1}/CartPole-v1.mp4"
        (root / rows[1]["video"]).parent.mkdir(parents=True)
        (root / rows[1]["video"]).write_bytes(b"old replay")
    table = rows_to_table(rows)
    table = table.append_column("added_by_a_newer_writer", pa.array(["x", None, "z", None, None]))
    pq.write_table(table, root / "results.parquet")
    (root / "backups").mkdir()
    pq.write_table(table.slice(0, 3), root / "backups" / "results.parquet")
    with sqlite3.connect(root / "queue.sqlite3") as db:
        db.executescript(_OLD_QUEUE)
        for i, (repo, status, result_id) in enumerate([("ann/a", "finished", rows[1]["row_id"]),
                                                      ("bob/b", "finished", rows[2]["row_id"]),
                                                      ("eve/e", "pending", None)]):
            db.execute("INSERT INTO requests (repo_id, revision, env_key, status, max_attempts, submitted_at, "
                       "updated_at, result_id, generation) VALUES (?, ?, 'CartPole-v1', ?, 5, ?, ?, ?, ?)",
                       (repo, SHA1, status, 100.0 + i, 200.0 + i, result_id, i))
    return rows


def test_migration_is_lossless_and_keeps_the_old_files_aside(tmp_path):
    root = tmp_path / "store"
    _old_store(root)
    old = read_results(root / "results.parquet")
    with sqlite3.connect(root / "queue.sqlite3") as db:
        db.row_factory = sqlite3.Row
        old_requests = [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]

    store = Store(root)
    history = store.history()
    assert list(history.columns) == list(old.columns)  # the unknown column too
    assert frame_records(history) == frame_records(old)  # every field of every row
    assert history.loc[2, "removed_reason"] == "DMCA" and pd.isna(history.loc[4, "added_by_a_newer_writer"])
    assert history.loc[0, "claim_n_episodes"] is pd.NA and "does not fit" in history.loc[0, "notes"][0]
    columns = ["rank", "env_key", "repo_id", "row_id", "commit_date"]
    assert frame_records(store.ranking()[columns]) == frame_records(ranking_module.rank(old)[columns])
    assert list(store.ranking()["repo_id"]) == ["ann/a"]  # bob taken down, cy failed, dee unranked

    requests = [r.to_dict() for r in store.queue().list()]
    assert [r["id"] for r in requests] == [r["id"] for r in old_requests]
    for new, before in zip(requests, old_requests, strict=True):
        assert {k: new[k] for k in ("repo_id", "revision", "status", "result_id", "generation")} == {
            k: before[k] for k in ("repo_id", "revision", "status", "result_id", "generation")}
    assert [r["seed_set"] for r in requests] == ["public", "private", "public"]  # from their results
    assert {r["protocol_version"] for r in requests} == {1}

    kept = [p for p in root.iterdir() if p.name.startswith("migrated-")]
    assert len(kept) == 1 and not (root / "results.parquet").exists() and not (root / "queue.sqlite3").exists()
    assert read_results(kept[0] / "results.parquet").equals(old)  # untouched
    assert (kept[0] / "queue.sqlite3").is_file() and (kept[0] / "backups" / "results.parquet").is_file()
    assert "To go back" in (kept[0] / "README.txt").read_text()
    # the replays folder was counted once: the cap applies to the old replays too
    small = Store(root, max_replay_bytes=5)
    video = small.new_video_path()
    video.write_bytes(b"new")
    small.record(make_result("fay/f", SHA1, video=str(video)))
    assert not (root / f"replays/ann/a/{SHA1}/CartPole-v1.mp4").exists()
    assert pd.isna(small.results().set_index("repo_id").loc["ann/a", "video"])

    Store(root).history()  # a second open imports nothing again
    assert len(Store(root).history()) == 6


def test_an_old_writer_after_the_migration_is_imported_again_without_doubles(tmp_path):
    root = tmp_path / "store"
    rows = _old_store(root, video=False)
    assert len(Store(root).history()) == 5
    pq.write_table(rows_to_table(rows[:2] + [result_to_row(make_result("new/old-writer", SHA1))]),
                   root / "results.parquet")  # a forgotten process of the previous version wrote again
    history = Store(root).history()
    assert len(history) == 6 and history["row_id"].is_unique and history.iloc[-1]["repo_id"] == "new/old-writer"


_HOLDER = textwrap.dedent("""
    import fcntl, sys, time
    fh = open(sys.argv[1], "a")
    fcntl.flock(fh, fcntl.LOCK_EX)  # what the previous version's writer holds while it writes
    print("locked", flush=True)
    time.sleep(120)
""")


def test_migration_refuses_while_an_old_writer_holds_its_lock(tmp_path, monkeypatch):
    from leaderboard import migrate

    root = tmp_path / "store"
    _old_store(root, video=False)
    before = (root / "results.parquet").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root / ".results.lock")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setattr(migrate, "LOCK_WAIT_SECONDS", 0.5)
        with pytest.raises(StoreError, match="previous leaderboard version is writing this store") as info:
            Store(root).history()
        assert str(root / ".results.lock") in str(info.value)
        assert (root / "results.parquet").read_bytes() == before and (root / "queue.sqlite3").exists()
        assert not list(root.glob("migrated-*"))
    finally:
        holder.kill()
        holder.wait()
    assert len(Store(root).history()) == 5  # once the old writer is gone, it migrates
