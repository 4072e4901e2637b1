"""SQLite's locks survive every connection a process opens: no descriptor of the database file
is opened and closed beside SQLite's own once it is connected (sqlite.org/howtocorrupt.html 2.2).

The bug this guards against: a header check with open()/close() on each new thread's connection
released the process's POSIX locks, so another process closing its last connection took the
database for unused and deleted its WAL and WAL index under the Space and the worker, which
then failed with "disk I/O error"."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lb_helpers import make_result

from leaderboard.store import Store

PROJECT = Path(__file__).resolve().parents[2]


def test_a_new_threads_connection_keeps_the_wal_of_a_database_in_use(tmp_path):
    store = Store(tmp_path)
    store.queue()  # two Database objects on one file in one process, as a worker has
    store.record(make_result("a/one"))
    reader = threading.Thread(target=store.ranking)  # a new thread: a new connection
    reader.start()
    reader.join(timeout=60)
    code = (f"import sys; sys.path.insert(0, {str(PROJECT)!r}); from leaderboard.store import Store; "
            f"s = Store({str(tmp_path)!r}); s.ranking(); s.close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # opens, reads, closes
    for suffix in ("-wal", "-shm"):  # still in use here: the other process must not delete them
        assert Path(str(store.db_path) + suffix).exists(), suffix
    store.record(make_result("b/two"))
    assert sorted(store.history()["repo_id"]) == ["a/one", "b/two"]


def test_a_file_that_is_not_sqlite_is_still_refused(tmp_path):
    from leaderboard.db import StoreCorruptError

    damaged = b"not a database at all" * 50
    (tmp_path / "leaderboard.sqlite3").write_bytes(damaged)
    with pytest.raises(StoreCorruptError, match="damaged"):
        Store(tmp_path).ranking()
    assert (tmp_path / "leaderboard.sqlite3").read_bytes() == damaged  # nothing written over it
