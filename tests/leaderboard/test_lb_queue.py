"""The request queue and the worker loop, with a fake clock and a fake evaluator (fast)."""

from __future__ import annotations

import sqlite3
import time

import pandas as pd
import pytest
from lb_helpers import make_result

from evaluator.result import EvalResult
from leaderboard.queue import Queue, QueueErrorCode, Status
from leaderboard.store import Store
from leaderboard.worker import Worker, WorkerConfig

SHA = "c" * 40


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path, clock) -> Queue:
    return Queue(tmp_path / "queue.sqlite3", max_attempts=3, backoff_seconds=10, backoff_factor=2, clock=clock)


def test_submit_is_deduplicated_by_repo_sha_env_and_episode_override(queue):
    first, created = queue.submit("ann/a", SHA, "CartPole-v1")
    assert created and first.status is Status.PENDING and first.attempts == 0
    again, created = queue.submit("ann/a", SHA, "CartPole-v1")
    assert not created and again.id == first.id
    short, created = queue.submit("ann/a", SHA, "CartPole-v1", episodes=3)
    assert created and short.id != first.id and short.episodes == 3
    assert queue.submit("ann/a", SHA, "CartPole-v1", episodes=3)[0].id == short.id
    other, created = queue.submit("ann/a", SHA, "Acrobot-v1")
    assert created and other.id != first.id
    assert queue.counts() == {"pending": 3, "running": 0, "finished": 0, "failed": 0}
    assert {r.to_dict()["status"] for r in queue.list()} == {"pending"}


def test_claims_are_fifo_and_exclusive_and_end_exactly_once(queue, clock):
    a, _ = queue.submit("ann/a", SHA, "CartPole-v1")
    clock.now += 1
    b, _ = queue.submit("ann/b", SHA, "CartPole-v1")
    got_a = queue.claim("w1", lease_seconds=30)
    got_b = queue.claim("w2", lease_seconds=30)
    assert (got_a.id, got_b.id) == (a.id, b.id)
    assert got_a.status is Status.RUNNING and got_a.lease_owner == "w1" and got_a.attempts == 1
    assert queue.claim("w3") is None
    assert not queue.finish(a.id, "w2", Status.FINISHED)  # not the lease holder
    assert queue.finish(a.id, "w1", Status.FINISHED, result_id="r1")
    assert not queue.finish(a.id, "w1", Status.FAILED)  # already ended
    assert queue.get(a.id).status is Status.FINISHED and queue.get(a.id).result_id == "r1"
    with pytest.raises(ValueError):
        queue.finish(b.id, "w2", Status.PENDING)


def test_an_expired_lease_returns_the_request_to_pending_then_fails_after_max_attempts(queue, clock):
    request, _ = queue.submit("ann/a", SHA, "CartPole-v1")
    for attempt in (1, 2, 3):
        claimed = queue.claim(f"w{attempt}", lease_seconds=5)
        assert claimed.id == request.id and claimed.attempts == attempt
        clock.now += 3
        assert queue.renew(request.id, f"w{attempt}", lease_seconds=5)  # a heartbeat keeps it
        clock.now += 4
        assert queue.claim("other") is None  # renewed: still held
        clock.now += 2  # the worker died: no renewal
        assert not queue.holds(request.id, f"w{attempt}")
    queue.reap()
    failed = queue.get(request.id)
    assert failed.status is Status.FAILED and failed.error_code == QueueErrorCode.WORKER_LOST
    # a worker that comes back late cannot end it
    assert not queue.finish(request.id, "w3", Status.FINISHED)
    # resubmitting a request that failed for a transient reason queues it again
    again, created = queue.submit("ann/a", SHA, "CartPole-v1")
    assert created and again.status is Status.PENDING and again.attempts == 0


def test_transient_failures_are_retried_with_backoff_up_to_max_attempts(queue, clock):
    request, _ = queue.submit("ann/a", SHA, "CartPole-v1")
    delays = []
    for _ in (1, 2):
        queue.claim("w", lease_seconds=60)
        retried = queue.retry(request.id, "w", error_code="hub_unavailable", error="the Hub answered 503")
        assert retried.status is Status.PENDING and retried.error_code == "hub_unavailable"
        delays.append(retried.not_before - clock.now)
        assert queue.claim("w") is None  # not due yet
        clock.now = retried.not_before + 0.01
    assert 9 <= delays[0] <= 11 and 18 <= delays[1] <= 22  # 10 s, then 20 s (+-10% jitter)
    queue.claim("w", lease_seconds=60)
    final = queue.retry(request.id, "w", error_code="hub_unavailable", error="the Hub answered 503")
    assert final.status is Status.FAILED and "gave up after 3 attempts" in final.error


def _fake_evaluator(outcomes: dict[str, object]):
    """evaluate() stand-in: per repo, a result, an exception to raise, or a callable."""

    def evaluate(repo_id, *, revision=None, video_path=None, **kwargs) -> EvalResult:
        outcome = outcomes[repo_id]
        if isinstance(outcome, BaseException):
            raise outcome
        if callable(outcome):
            return outcome()
        if video_path is not None:
            video_path.write_bytes(b"mp4")
            outcome.video = str(video_path)
        return outcome

    return evaluate


def test_worker_records_results_and_survives_a_crashing_evaluation(tmp_path):
    store = Store(tmp_path)
    queue = Queue(store.queue_path)
    good = make_result("ann/good", SHA)
    bad_agent = make_result("ann/no-agent", SHA, status="failed")
    outcomes = {"ann/good": good, "ann/no-agent": bad_agent, "ann/crash": RuntimeError("boom"),
                "ann/garbage": lambda: "not a result"}
    for repo in outcomes:
        queue.submit(repo, SHA, "CartPole-v1", commit_date="2024-01-01T00:00:00Z")
    worker = Worker(store, config=WorkerConfig(lease_seconds=30), evaluate_fn=_fake_evaluator(outcomes))
    stats = worker.run(once=True)
    assert (stats.finished, stats.failed, stats.retried, stats.lost) == (1, 3, 0, 0)
    by_repo = {r.repo_id: r for r in queue.list()}
    assert by_repo["ann/good"].status is Status.FINISHED and by_repo["ann/good"].result_id
    assert by_repo["ann/no-agent"].error_code == "no_agent"
    assert by_repo["ann/crash"].error_code == "internal_error" and "boom" in by_repo["ann/crash"].error
    assert by_repo["ann/garbage"].status is Status.FAILED
    rows = store.results().set_index("repo_id")
    assert set(rows.index) == {"ann/good", "ann/no-agent", "ann/crash", "ann/garbage"}
    assert rows.loc["ann/crash", "revision"] == SHA and rows.loc["ann/crash", "env_key"] == "CartPole-v1"
    assert rows.loc["ann/good", "video"] == f"replays/ann/good/{SHA}/CartPole-v1.mp4"
    assert list(store.ranking()["repo_id"]) == ["ann/good"]
    assert not list(store.tmp_dir.iterdir())  # no temporary replay left behind


def test_worker_retries_only_transient_failures(tmp_path):
    store = Store(tmp_path)
    options = {"max_attempts": 2, "backoff_seconds": 0.0}
    queue = Queue(store.queue_path, **options)
    transient = make_result("ann/flaky", SHA, status="failed")
    transient.error_code, transient.error = "hub_unavailable", "the Hub answered 503: retry later"
    queue.submit("ann/flaky", SHA, "CartPole-v1")
    worker = Worker(store, config=WorkerConfig(queue_options=options),
                    evaluate_fn=_fake_evaluator({"ann/flaky": transient}))
    stats = worker.run(once=True)
    assert stats.retried == 1 and stats.failed == 1
    request = queue.list()[0]
    assert request.status is Status.FAILED and request.attempts == 2 and request.error_code == "hub_unavailable"
    assert store.history().empty  # a transient failure says nothing about the agent: no row


def test_an_unranked_episode_override_submitted_first_does_not_block_the_ranked_request(tmp_path):
    store = Store(tmp_path)
    queue = Queue(store.queue_path)
    short, _ = queue.submit("ann/a", SHA, "CartPole-v1", episodes=1)  # anyone may ask for a quick look
    standard, created = queue.submit("ann/a", SHA, "CartPole-v1")
    assert created and standard.id != short.id and standard.episodes is None
    seen = []

    def evaluate(repo_id, *, episodes=None, **kwargs):
        seen.append(episodes)
        return make_result(repo_id, SHA, ranked=episodes is None, evaluated_at=f"2025-01-0{len(seen)}T00:00:00Z")

    stats = Worker(store, config=WorkerConfig(video=False), evaluate_fn=evaluate).run(once=True)
    assert stats.finished == 2 and sorted(seen, key=str) == [1, None]
    assert list(store.ranking()["repo_id"]) == ["ann/a"]


def test_a_queue_file_of_the_previous_version_is_upgraded_in_place(tmp_path):
    path = tmp_path / "queue.sqlite3"
    with sqlite3.connect(path) as db:  # the table as the previous version created it
        db.executescript("""
            CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT, repo_id TEXT NOT NULL,
                revision TEXT NOT NULL, env_key TEXT NOT NULL, env_id TEXT, episodes INTEGER, commit_date TEXT,
                status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
                submitted_at REAL NOT NULL, updated_at REAL NOT NULL, not_before REAL, lease_owner TEXT,
                lease_expires REAL, started_at REAL, finished_at REAL, error_code TEXT, error TEXT,
                result_id TEXT, UNIQUE (repo_id, revision, env_key));
            CREATE INDEX requests_status ON requests (status, not_before, submitted_at);
            INSERT INTO requests (repo_id, revision, env_key, episodes, status, max_attempts, submitted_at,
                updated_at) VALUES ('ann/a', 'cccccccccccccccccccccccccccccccccccccccc', 'CartPole-v1', 1,
                'pending', 5, 1.0, 1.0);
        """)
    queue = Queue(path)
    (old,) = queue.list()
    assert old.repo_id == "ann/a" and old.episodes == 1 and old.generation == 0
    standard, created = queue.submit("ann/a", SHA, "CartPole-v1")
    assert created and standard.id != old.id
    assert Queue(path).submit("ann/a", SHA, "CartPole-v1", episodes=1) == (old, False)


def _takedown(store: Store, repo_id: str, reason: str = "DMCA") -> None:
    """What `python -m leaderboard remove` does: cancel the requests, then hide the rows."""
    Queue(store.queue_path).cancel_repo(repo_id, reason)
    store.remove(repo_id, reason=reason)


def test_a_takedown_during_the_evaluation_keeps_the_result_hidden_and_a_resubmission_shows_it(tmp_path):
    store = Store(tmp_path)
    queue = Queue(store.queue_path)
    repo = "ann/taken-down"
    queue.submit(repo, SHA, "CartPole-v1", commit_date="2024-01-01T00:00:00Z")

    def evaluate_then_take_down(repo_id, *, video_path=None, **kwargs):
        _takedown(store, repo_id)
        video_path.write_bytes(b"mp4")
        return make_result(repo_id, SHA, evaluated_at="2025-01-01T00:00:00Z", video=str(video_path))

    stats = Worker(store, evaluate_fn=evaluate_then_take_down).run(once=True)
    assert (stats.finished, stats.failed, stats.lost) == (0, 1, 0)
    (request,) = queue.list()
    assert request.status is Status.FAILED and request.error_code == QueueErrorCode.REMOVED
    assert store.ranking().empty and store.results().empty
    (row,) = store.history().to_dict("records")  # kept in the history, hidden, without a replay
    assert row["removed_reason"] == "DMCA" and pd.isna(row["video"])
    assert not (store.root / "replays").exists() or not any((store.root / "replays").rglob("*.mp4"))

    # an explicit resubmission of the same commit is evaluated again, and shown
    again, created = queue.submit(repo, SHA, "CartPole-v1", commit_date="2024-01-01T00:00:00Z")
    assert created and again.id == request.id and again.status is Status.PENDING and again.generation == 1
    outcomes = {repo: make_result(repo, SHA, evaluated_at="2025-02-01T00:00:00Z")}
    assert Worker(store, config=WorkerConfig(video=False), evaluate_fn=_fake_evaluator(outcomes)).run(
        once=True).finished == 1
    assert list(store.ranking()["repo_id"]) == [repo]


def test_a_takedown_racing_the_recording_still_hides_the_row(tmp_path):
    store = Store(tmp_path)
    queue = Queue(store.queue_path)
    queue.submit("ann/raced", SHA, "CartPole-v1")
    worker = Worker(store, config=WorkerConfig(video=False),
                    evaluate_fn=_fake_evaluator({"ann/raced": make_result("ann/raced", SHA)}))
    real_record = store.record_request

    def record_after_the_takedown(result, **kwargs):  # the takedown lands after the worker's checks
        _takedown(store, result.repo_id)
        return real_record(result, **kwargs)

    store.record_request = record_after_the_takedown
    assert worker.run(once=True).failed == 1
    assert store.ranking().empty
    assert store.history()["removed_at"].notna().all() and len(store.history()) == 1
    assert queue.list()[0].error_code == QueueErrorCode.REMOVED


def test_the_lease_is_renewed_while_a_slow_recording_runs(tmp_path):
    store = Store(tmp_path)
    queue = Queue(store.queue_path)
    request, _ = queue.submit("ann/slow", SHA, "CartPole-v1")
    worker = Worker(store, config=WorkerConfig(lease_seconds=0.4, video=False),
                    evaluate_fn=_fake_evaluator({"ann/slow": make_result("ann/slow", SHA)}))
    real_record, stolen = store.record_request, []

    def slow_record(result, **kwargs):
        time.sleep(1.2)  # three leases long
        stolen.append(queue.claim("another-worker", lease_seconds=60))
        return real_record(result, **kwargs)

    store.record_request = slow_record
    stats = worker.run(once=True)
    assert stolen == [None]  # nobody could take the request meanwhile
    assert (stats.finished, stats.lost) == (1, 0)
    assert queue.get(request.id).status is Status.FINISHED


def test_recording_a_result_and_ending_its_request_are_one_transaction(tmp_path, monkeypatch):
    from leaderboard import store as store_module
    from leaderboard.store import LeaseLostError

    store = Store(tmp_path)
    queue = store.queue()
    request, _ = queue.submit("ann/a", SHA, "CartPole-v1")
    queue.claim("w1", lease_seconds=60)

    def crash(*args, **kwargs):
        raise RuntimeError("crash between the row and the end of the request")

    monkeypatch.setattr(store_module, "finish_in", crash)
    with pytest.raises(RuntimeError, match="crash between"):
        store.record_request(make_result("ann/a", SHA), request_id=request.id, owner="w1")
    monkeypatch.undo()
    assert store.history().empty and queue.get(request.id).status is Status.RUNNING  # neither happened

    with pytest.raises(LeaseLostError):  # a worker that no longer holds the request records nothing
        store.record_request(make_result("ann/a", SHA), request_id=request.id, owner="w2")
    assert store.history().empty

    recorded = store.record_request(make_result("ann/a", SHA), request_id=request.id, owner="w1")
    done = queue.get(request.id)
    assert done.status is Status.FINISHED and done.result_id == recorded.row_id and recorded.hidden is None
    assert list(store.history()["row_id"]) == [recorded.row_id]


def test_a_protocol_or_seed_set_change_queues_the_request_again(queue):
    first, _ = queue.submit("ann/a", SHA, "CartPole-v1", protocol_version=1, seed_set="public", submitter="cli:ann")
    again, created = queue.submit("ann/a", SHA, "CartPole-v1", protocol_version=1, seed_set="public")
    assert not created and again.id == first.id and again.submitter == "cli:ann"
    private, created = queue.submit("ann/a", SHA, "CartPole-v1", protocol_version=1, seed_set="private")
    assert created and private.id != first.id
    newer, created = queue.submit("ann/a", SHA, "CartPole-v1", protocol_version=2, seed_set="public")
    assert created and newer.id not in (first.id, private.id)
    assert queue.submitted_since("cli:ann", 0) == 1


def test_the_worker_reports_one_line_per_request_and_quiet_silences_it(tmp_path):
    import io

    from leaderboard.progress import Progress

    store = Store(tmp_path)
    queue = store.queue()
    outcomes = {"ann/good": make_result("ann/good", SHA, score=12.5), "ann/bad": make_result("ann/bad", SHA,
                                                                                               status="failed")}
    for repo in outcomes:
        queue.submit(repo, SHA, "CartPole-v1")
    stream = io.StringIO()
    progress = Progress(total=2, stream=stream)
    Worker(store, config=WorkerConfig(video=False), evaluate_fn=_fake_evaluator(outcomes), report=progress).run(
        once=True)
    progress.close()
    lines = [line for line in stream.getvalue().splitlines() if line.startswith("#")]
    assert len(lines) == 2
    assert lines[0].startswith("#1 ann/good on CartPole-v1: finished score 12.50 (") and lines[0].endswith(" s)")
    assert lines[1].startswith("#2 ann/bad on CartPole-v1: failed no_agent (")
    quiet = io.StringIO()
    silent = Progress(quiet=True, stream=quiet)
    queue.submit("ann/later", SHA, "CartPole-v1")
    Worker(store, config=WorkerConfig(video=False), report=silent,
           evaluate_fn=_fake_evaluator({"ann/later": make_result("ann/later", SHA)})).run(once=True)
    silent.close()
    assert quiet.getvalue() == ""
