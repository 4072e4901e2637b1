"""The store under faults, in real processes: a full disk during the recording transaction, a
queue worker SIGKILLed inside it, and 8 processes recording while 2 others read."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lb_helpers import PROJECT, cli_env, make_result

from leaderboard.queue import Status
from leaderboard.store import Store
from leaderboard.worker import Worker, WorkerConfig

SHA = "c" * 40
TESTS = Path(__file__).parent

# A queue worker on one request with a stand-in evaluator (the evaluation is not what is tested
# here), and one fault injected between the evaluation and the end of the request.
_WORKER = """
import sys, time
sys.path[:0] = [{project!r}, {tests!r}]
from lb_helpers import make_result
from leaderboard import ranking
from leaderboard.store import StoreError
from leaderboard.worker import Worker, WorkerConfig

fault = {fault!r}

def evaluate(repo_id, **kwargs):
    if fault == "full-disk":
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # no file may grow past 4 KB
    return make_result(repo_id, {sha!r})

if fault == "kill-in-transaction":
    real = ranking.refresh_repo
    def stall(db, repo_id):
        real(db, repo_id)
        print("IN TRANSACTION", flush=True)  # the row is inserted, the request not ended yet
        time.sleep(600)
    ranking.refresh_repo = stall

try:
    Worker({store!r}, config=WorkerConfig(lease_seconds=1.5, video=False), evaluate_fn=evaluate).run(once=True)
except StoreError as err:
    print("STORE ERROR", err, flush=True)
    sys.exit(4)
print("DONE", flush=True)
"""


def _worker(store: Store, fault: str) -> subprocess.Popen:
    code = _WORKER.format(project=str(PROJECT), tests=str(TESTS), store=str(store.root), sha=SHA, fault=fault)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())


def _integrity(store: Store) -> str:
    with sqlite3.connect(store.db_path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def _finish_after_the_lease(store: Store) -> None:
    """The request comes back after its lease; another worker records it, once."""
    time.sleep(2.0)
    stats = Worker(store, config=WorkerConfig(video=False),
                   evaluate_fn=lambda repo_id, **kw: make_result(repo_id, SHA)).run(once=True)
    assert stats.finished == 1
    (request,) = store.queue().list()
    assert request.status is Status.FINISHED
    history = store.history(repo_id="ann/full")
    assert len(history) == 1 and history.loc[0, "row_id"] == request.result_id  # one row, not two
    assert list(store.ranking()["repo_id"]) == ["ann/full"]


def test_a_full_disk_during_the_write_rolls_back_and_the_request_is_retried(tmp_path):
    store = Store(tmp_path / "store")
    store.record(make_result("warm/up", SHA))  # a database with some history: it must not lose it
    store.remove("warm/up")
    store.queue().submit("ann/full", SHA, "CartPole-v1", protocol_version=1, seed_set="public")
    store.close()
    proc = _worker(store, "full-disk")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 4, out + err
    assert "STORE ERROR" in out and "is full" in out and "free some space" in out
    assert _integrity(store) == "ok"
    history = store.history()
    assert list(history["repo_id"]) == ["warm/up"]  # no half row, nothing lost
    (request,) = store.queue().list()
    assert request.status in (Status.RUNNING, Status.PENDING) and request.result_id is None
    _finish_after_the_lease(store)


def test_sigkill_inside_the_recording_transaction_leaves_no_trace(tmp_path):
    store = Store(tmp_path / "store")
    store.queue().submit("ann/full", SHA, "CartPole-v1", protocol_version=1, seed_set="public")
    proc = _worker(store, "kill-in-transaction")
    line = proc.stdout.readline()
    assert line.strip() == "IN TRANSACTION", proc.stderr.read()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _integrity(store) == "ok"
    assert store.history().empty and store.ranking().empty  # the inserted row went with the transaction
    (request,) = store.queue().list()
    assert request.status is Status.RUNNING and request.attempts == 1
    _finish_after_the_lease(store)


_WRITER = """
import json, sys, time
from pathlib import Path
sys.path[:0] = [{project!r}, {tests!r}]
from lb_helpers import make_result
from leaderboard.store import Store
store, me, go = Store({store!r}), {me}, Path({go!r})
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
until = float(go.read_text())
ids, i = [], 0
while time.time() < until:
    if i % 3 == 2:  # a bulk of 5 every third round
        batch = [make_result(f"w{{me}}/repo-{{i}}-{{k}}", "1" * 40, score=float(k)) for k in range(5)]
        ids += store.record_many(batch)
    else:
        ids.append(store.record(make_result(f"w{{me}}/repo-{{i}}", "1" * 40, score=float(i % 50))))
    i += 1
print(json.dumps(ids), flush=True)
"""

_READER = """
import sys, time
from pathlib import Path
sys.path[:0] = [{project!r}, {tests!r}]
from leaderboard.store import Store
store, go = Store({store!r}), Path({go!r})
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
until = float(go.read_text())
calls, seen = 0, 0
while time.time() < until:
    before = store.count("CartPole-v1")
    page = store.ranking("CartPole-v1", limit=100)
    total = store.count("CartPole-v1")
    assert before >= seen and total >= before, (seen, before, total)  # a reader never sees rows disappear
    assert min(100, before) <= len(page) <= min(100, total) and list(page["rank"]) == list(range(1, len(page) + 1))
    seen = total
    if calls % 10 == 0:
        assert len(store.history()) >= seen
    calls += 1
print("calls", calls, "seen", seen, flush=True)
"""


@pytest.mark.slow
def test_eight_writers_and_two_readers_lose_nothing_double_nothing_and_never_fail(tmp_path):
    store = Store(tmp_path / "store")
    store.record(make_result("first/row", "1" * 40))
    go, seconds = tmp_path / "go", 25.0

    def spawn(template: str, **fields) -> subprocess.Popen:
        code = template.format(project=str(PROJECT), tests=str(TESTS), store=str(store.root), go=str(go), **fields)
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env())

    writers = [spawn(_WRITER, me=k) for k in range(8)]
    readers = [spawn(_READER) for _ in range(2)]
    for proc in writers + readers:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    (tmp_path / "go.tmp").write_text(repr(time.time() + seconds))
    (tmp_path / "go.tmp").rename(go)  # every process starts at once, for `seconds`
    outputs = [proc.communicate(timeout=seconds + 300) for proc in writers + readers]
    for proc, (_, err) in zip(writers + readers, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    written = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs[:8]]
    history = store.history()
    assert history["row_id"].is_unique  # none doubled
    assert set(history["row_id"]) == {i for ids in written for i in ids} | {history.loc[0, "row_id"]}  # none lost
    assert all(len(ids) > 20 for ids in written), [len(ids) for ids in written]
    for out, _ in outputs[8:]:
        calls = int(out.split()[1])
        assert calls > 20, out
    assert store.count("CartPole-v1") == len(history)
    assert _integrity(store) == "ok"
