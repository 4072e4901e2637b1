"""The results store: typed rows, keys and history, the ranking rule and its maintained table,
pages/search/filters, takedowns, replays, bulk writes, concurrent writers, crash safety and a
damaged database file."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from lb_helpers import PROJECT, cli_env, make_result, run_cli

from leaderboard import ranking as ranking_module
from leaderboard.rows import frame_records
from leaderboard.store import KEY, SCHEMA, Store, StoreCorruptError, record, row_to_result

SHA1, SHA2, SHA3 = "1" * 40, "2" * 40, "3" * 40


def test_record_keeps_a_typed_table_with_per_episode_returns(tmp_path):
    store = Store(tmp_path)
    result = make_result()
    result.episode_returns = [0.1 * i + 1e-17 for i in range(50)]  # bit-for-bit floats
    result.seeds, result.episode_lengths = list(range(10_000, 10_050)), [7 + i % 3 for i in range(50)]
    row_id = store.record(result, commit_date="2024-05-01T12:00:00Z")
    history = store.history()
    assert list(history.columns) == SCHEMA.names
    assert list(history["row_id"]) == [row_id]
    assert str(history["commit_date"].dtype) == "datetime64[us, UTC]"
    assert history["protocol_version"].dtype == "Int64"
    assert list(history.loc[0, "episode_returns"]) == result.episode_returns
    back = row_to_result(history.iloc[0].to_dict())
    assert back.to_dict() == result.to_dict()
    # per-episode lists are stored compactly: 50 float64 returns + a seed run + int32 lengths
    with sqlite3.connect(store.db_path) as db:
        sizes = db.execute("SELECT length(episode_returns), length(seeds), length(episode_lengths) "
                           "FROM evaluations").fetchone()
    assert sizes == (1 + 50 * 8, 1 + 24, 1 + 50 * 4)


def test_same_key_twice_is_one_current_row_and_history_keeps_both(tmp_path):
    store = Store(tmp_path)
    first = store.record(make_result(score=50, evaluated_at="2025-01-01T00:00:00Z"))
    assert store.record(make_result(score=50, evaluated_at="2025-01-01T00:00:00Z")) == first  # idempotent
    assert len(store.history()) == 1
    store.record(make_result(score=50, evaluated_at="2025-02-01T00:00:00Z"))
    assert len(store.history()) == 2
    current = store.results()
    assert len(current) == 1 and current.loc[0, "evaluated_at"] == pd.Timestamp("2025-02-01", tz="UTC")
    store.record(make_result(revision=SHA2, evaluated_at="2025-01-15T00:00:00Z"))  # a new commit: a new row
    assert len(store.results()) == 2
    assert set(map(tuple, store.results()[list(KEY)].astype(str).values)) == {
        ("ann/ppo-CartPole-v1", "a" * 40, "CartPole-v1", "1", "public"),
        ("ann/ppo-CartPole-v1", SHA2, "CartPole-v1", "1", "public")}


def test_ranking_rule(tmp_path):
    store = Store(tmp_path)
    # score desc, then mean desc, then repo id asc
    store.record(make_result("b/tie", SHA1, score=100, mean=120), commit_date="2024-01-01")
    store.record(make_result("a/tie", SHA1, score=100, mean=120), commit_date="2024-01-01")
    store.record(make_result("c/higher-mean", SHA1, score=100, mean=150), commit_date="2024-01-01")
    store.record(make_result("d/best", SHA1, score=200), commit_date="2024-01-01")
    # the newest revision by commit date counts, even when an older one scored more
    store.record(make_result("e/regressed", SHA1, score=300, evaluated_at="2025-03-01T00:00:00Z"),
                 commit_date="2024-01-01")
    store.record(make_result("e/regressed", SHA2, score=10, evaluated_at="2025-01-01T00:00:00Z"),
                 commit_date="2024-06-01")
    # failed and unranked rows never rank, and never hide a ranked one
    store.record(make_result("f/failed", SHA1, status="failed"), commit_date="2024-01-01")
    store.record(make_result("d/best", SHA3, score=999, ranked=False), commit_date="2025-01-01")
    store.record(make_result("g/other-env", SHA1, score=1000, env_key="Acrobot-v1"), commit_date="2024-01-01")

    ranking = store.ranking("CartPole-v1")
    assert list(ranking["repo_id"]) == ["d/best", "c/higher-mean", "a/tie", "b/tie", "e/regressed"]
    assert list(ranking["rank"]) == [1, 2, 3, 4, 5]
    assert ranking.set_index("repo_id").loc["e/regressed", "revision"] == SHA2
    everything = store.ranking()
    assert set(everything["env_key"]) == {"CartPole-v1", "Acrobot-v1"}
    assert everything[everything["env_key"] == "Acrobot-v1"]["rank"].tolist() == [1]


def test_a_later_unranked_or_failed_run_of_the_same_commit_does_not_hide_its_ranked_row(tmp_path):
    store = Store(tmp_path)
    store.record(make_result("a/one", SHA1, score=300, evaluated_at="2025-01-01T00:00:00Z"),
                 commit_date="2024-12-01T00:00:00Z")
    store.record(make_result("b/two", SHA1, score=200, evaluated_at="2025-01-01T00:00:00Z"),
                 commit_date="2024-12-01T00:00:00Z")
    # `evaluate --episodes 5` of the same commit later: the same key, unranked
    store.record(make_result("a/one", SHA1, score=5, ranked=False, evaluated_at="2025-01-02T00:00:00Z"),
                 commit_date="2024-12-01T00:00:00Z")
    # a failed re-run of b/two's commit, recorded without a commit date
    store.record(make_result("b/two", SHA1, status="failed", evaluated_at="2025-01-03T00:00:00Z"))
    ranking = store.ranking()
    assert list(ranking["repo_id"]) == ["a/one", "b/two"] and list(ranking["score"]) == [300, 200]
    assert set(store.results()["ranked"]) == {False}  # the current rows are the later runs
    # a ranked re-run of the same commit replaces the older ranked one; with a known commit date
    # of its revision, a row recorded without one is not taken for an older commit
    store.record(make_result("b/two", SHA1, score=250, evaluated_at="2025-01-04T00:00:00Z"))
    assert store.ranking().set_index("repo_id").loc["b/two", "score"] == 250
    assert store.ranking().set_index("repo_id").loc["b/two", "commit_date"] == pd.Timestamp("2024-12-01", tz="UTC")


def test_a_claim_beyond_int64_is_stored_as_null_and_the_row_is_kept(tmp_path):
    store = Store(tmp_path)
    result = make_result("a/huge-claim", SHA1)
    result.claim.n_episodes = 10**20  # results.json says n_eval_episodes: 100000000000000000000
    result.claim.mean_reward = 10**400  # not even a float
    result.seeds = [1, 2**70]
    row_id = store.record(result, commit_date="2024-01-01")
    (row,) = store.history().to_dict("records")
    assert row["row_id"] == row_id
    assert pd.isna(row["claim_n_episodes"]) and pd.isna(row["claim_mean_reward"])
    assert row["seeds"] is None and list(row["episode_returns"]) == result.episode_returns
    assert any("claim_n_episodes 100000000000000000000" in note for note in row["notes"])
    assert list(store.ranking()["repo_id"]) == ["a/huge-claim"]


def test_remove_hides_from_ranking_and_keeps_history(tmp_path):
    store = Store(tmp_path)
    store.record(make_result("a/one", SHA1, score=10))
    store.record(make_result("b/two", SHA1, score=20))
    assert store.remove("b/two", reason="author asked") == 1
    assert list(store.ranking()["repo_id"]) == ["a/one"]
    assert "b/two" not in set(store.results()["repo_id"])
    history = store.history().set_index("repo_id")
    assert history.loc["b/two", "removed_reason"] == "author asked"
    assert store.remove("b/two") == 0


def test_record_moves_the_replay_into_the_store(tmp_path):
    store = Store(tmp_path / "store")
    tmp_video = store.new_video_path()
    tmp_video.write_bytes(b"fake mp4")
    result = make_result("ns/name", SHA1, env_key="LunarLander-v3[continuous=True]", video=str(tmp_video))
    path = record(result, tmp_path / "store")  # the evaluator CLI's entry point
    assert path == store.results_path
    assert result.video == f"replays/ns/name/{SHA1}/LunarLander-v3_continuous=True_.mp4"
    assert (store.root / result.video).read_bytes() == b"fake mp4" and not tmp_video.exists()
    assert store.results().loc[0, "video"] == result.video


def test_replays_are_capped_oldest_first(tmp_path):
    store = Store(tmp_path, max_replay_bytes=2500)
    for i, sha in enumerate((SHA1, SHA2, SHA3)):
        video = store.new_video_path()
        video.write_bytes(b"x" * 1000)
        os.utime(video, (time.time() - 100 + i, time.time() - 100 + i))
        store.record(make_result(f"ns/r{i}", sha, video=str(video)))
    rows = store.results().set_index("repo_id")
    assert rows.loc["ns/r0", "video"] is None or pd.isna(rows.loc["ns/r0", "video"])
    assert "disk cap" in rows.loc["ns/r0", "video_error"]
    assert all((store.root / rows.loc[r, "video"]).is_file() for r in ("ns/r1", "ns/r2"))


def _write_many(store_dir: str, worker: int, count: int) -> None:
    store = Store(store_dir)
    for i in range(count):
        store.record(make_result(f"w{worker}/repo-{i}", SHA1, score=i))


def test_concurrent_writers_never_lose_a_row(tmp_path):
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_many, args=(str(tmp_path), w, 15)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
        assert p.exitcode == 0
    history = Store(tmp_path).history()
    assert len(history) == 60 and history["row_id"].is_unique


def test_an_exception_inside_the_transaction_leaves_no_trace(tmp_path, monkeypatch):
    store = Store(tmp_path)
    store.record(make_result("a/one", SHA1))

    def crash(db, repo_id):
        raise OSError("simulated crash inside the transaction")

    monkeypatch.setattr(ranking_module, "refresh_repo", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.record(make_result("b/two", SHA1))
    monkeypatch.undo()
    assert list(store.history()["repo_id"]) == ["a/one"]
    assert list(store.ranking()["repo_id"]) == ["a/one"]
    store.record(make_result("b/two", SHA1))  # the store goes on
    assert list(store.ranking()["repo_id"]) == ["a/one", "b/two"]


_WRITER = """
import sys
sys.path[:0] = [{project!r}, {tests!r}]
from lb_helpers import make_result
from leaderboard.store import Store
store = Store({store!r})
i = 0
print("ready", flush=True)
while True:
    store.record(make_result(f"k/repo-{{i}}", "1" * 40, score=i))
    i += 1
"""


def test_writer_killed_mid_write_leaves_a_readable_store(tmp_path):
    """SIGKILL a process that records in a tight loop, several times: the parquet stays readable
    and holds every row a finished record() wrote."""
    store = Store(tmp_path / "store")
    store.record(make_result("first/row", SHA1))
    code = _WRITER.format(project=str(PROJECT), tests=str(Path(__file__).parent), store=str(store.root))
    seen = 1
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=cli_env(), text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        history = store.history()  # readable, never a half-written file
        assert len(history) >= seen and "first/row" in set(history["repo_id"])
        seen = len(history)
    assert seen > 3, "the writer never recorded: the test did not exercise concurrent writes"


def _damage(path: Path, *, keep_header: bool) -> bytes:
    data = bytearray(path.read_bytes())
    start = 100 if keep_header else 0
    data[start:] = bytes((i * 37 + 11) % 256 for i in range(len(data) - start))
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("keep_header", [True, False], ids=["damaged-pages", "not-sqlite"])
def test_damaged_database_is_a_clear_error_naming_the_backup_and_the_restore_command(tmp_path, keep_header):
    store = Store(tmp_path)
    store.record(make_result("a/one", SHA1))
    assert store.backup() == store.backup_path
    store.record(make_result("b/two", SHA1))
    store.close()
    damaged = _damage(store.db_path, keep_header=keep_header)
    for action in (Store(tmp_path).ranking, Store(tmp_path).history,
                   lambda: Store(tmp_path).record(make_result("c/three", SHA1))):
        with pytest.raises(StoreCorruptError) as info:
            action()
        message = str(info.value)
        assert str(store.db_path) in message and str(store.backup_path) in message
        assert f"python -m leaderboard restore --store {tmp_path}" in message and "Nothing was written" in message
    assert store.db_path.read_bytes() == damaged  # never written over

    proc = run_cli("show", "--store", str(tmp_path), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["error_code"] == "store_corrupt"
    assert str(store.backup_path) in proc.stderr
    proc = run_cli("restore", "--store", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert list(Store(tmp_path).history()["repo_id"]) == ["a/one"]  # the backup's rows
    kept = [p for p in tmp_path.iterdir() if ".damaged-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and kept[0].read_bytes() == damaged


def test_backups_follow_their_cadence_not_each_write(tmp_path):
    store = Store(tmp_path)
    store.record(make_result("a/one", SHA1))
    assert store.maybe_backup(interval=3600) == store.backup_path  # none yet: due
    first = store.backup_path.stat().st_mtime_ns
    store.record(make_result("b/two", SHA1))
    assert store.maybe_backup(interval=3600) is None and store.backup_path.stat().st_mtime_ns == first
    with sqlite3.connect(store.backup_path) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert copy.execute("SELECT repo_id FROM evaluations").fetchall() == [("a/one",)]


def _random_history(store: Store, rng: random.Random, n: int, *, bulk: bool = False) -> None:
    """Random writes and takedowns; with `bulk`, the writes between two takedowns go in one
    `record_many` (the batched ranking refresh) instead of one `record` each."""
    repos = [f"{u}/{m}" for u in ("ann", "Bob", "cy") for m in ("ppo-x", "dqn-y")]
    envs = ["CartPole-v1", "Acrobot-v1"]
    shas = [c * 40 for c in "123"]
    pending: list = []
    for i in range(n):
        action = rng.random()
        repo = rng.choice(repos)
        if action < 0.08:
            store.record_many(pending)
            pending = []
            store.remove(repo, reason=f"takedown {i}")
            continue
        date = rng.choice([None, "2024-01-01", "2024-02-01", "2024-03-01"])
        result = make_result(repo, rng.choice(shas), score=float(rng.randint(0, 5)), mean=float(rng.randint(5, 7)),
                             env_key=rng.choice(envs), status=rng.choice(["finished"] * 4 + ["failed"]),
                             ranked=rng.random() < 0.8, evaluated_at=f"2025-01-{rng.randint(1, 28):02d}T00:00:00Z")
        result.algo = "ppo" if "ppo" in repo else "dqn"
        if bulk:
            pending.append((result, date))
        else:
            store.record(result, commit_date=date)
    store.record_many(pending)


@pytest.mark.parametrize("bulk", [False, True], ids=["one-by-one", "bulk"])
@pytest.mark.parametrize("seed", range(4))
def test_the_maintained_ranking_equals_the_rule_on_random_histories(tmp_path, seed, bulk):
    """Rows in any order, commit dates arriving later from another env's row, ties, failed and
    unranked re-runs, takedowns and resubmissions: the maintained table agrees with the rule
    computed from the whole history, whether rows come one by one or in batches."""
    store = Store(tmp_path)
    _random_history(store, random.Random(seed), 120, bulk=bulk)
    expected = ranking_module.rank(store.history())
    got = store.ranking()
    columns = ["rank", "env_key", "repo_id", "revision", "row_id", "commit_date"]
    assert frame_records(got[columns]) == frame_records(expected[columns])
    for env in ("CartPole-v1", "Acrobot-v1"):
        assert frame_records(store.ranking(env)[columns]) == frame_records(expected[expected["env_key"] == env][
            columns].reset_index(drop=True))
        assert store.count(env) == int((expected["env_key"] == env).sum())


def test_pages_search_filters_and_sorts_keep_each_entry_rank(tmp_path):
    store = Store(tmp_path)
    results = []
    for i in range(30):
        user = "Alice" if i % 10 == 3 else f"user{i:02d}"
        result = make_result(f"{user}/model-{i}", SHA1, score=float(i), mean=100.0 - i,
                             evaluated_at=f"2025-01-{i % 28 + 1:02d}T00:00:00Z")
        result.algo = "PPO" if i % 2 else "dqn"
        result.claim.verdict = "inflated" if i % 5 == 0 else "consistent"
        results.append((result, "2024-01-01"))
    assert len(store.record_many(results, batch=7)) == 30
    full = store.ranking("CartPole-v1")
    assert list(full["score"]) == sorted(full["score"], reverse=True) and list(full["rank"]) == list(range(1, 31))
    rank_of = dict(zip(full["repo_id"], full["rank"], strict=True))

    page = store.ranking("CartPole-v1", limit=10, offset=10)
    assert list(page["repo_id"]) == list(full["repo_id"][10:20]) and list(page["rank"]) == list(range(11, 21))
    hits = store.ranking("CartPole-v1", search="aLiCe")  # user substring, any case (trigram index)
    assert sorted(hits["repo_id"]) == ["Alice/model-13", "Alice/model-23", "Alice/model-3"]
    assert all(rank_of[r] == k for r, k in zip(hits["repo_id"], hits["rank"], strict=True))
    assert store.count("CartPole-v1", search="alice") == 3
    for text in ("l-2", "-2", "E/M", "r1"):  # 3+ characters through the index; shorter ones scan
        expected = {r for r in full["repo_id"] if text.lower() in r.lower()}
        assert set(store.ranking(search=text)["repo_id"]) == expected and len(expected) >= 2, text
    ppo = store.ranking("CartPole-v1", algo="ppo")
    assert len(ppo) == 15 and all(rank_of[r] == k for r, k in zip(ppo["repo_id"], ppo["rank"], strict=True))
    inflated = store.ranking(verdict="inflated")
    assert sorted(inflated["score"]) == [0.0, 5.0, 10.0, 15.0, 20.0, 25.0] and store.count(verdict="inflated") == 6
    by_mean = store.ranking("CartPole-v1", sort="mean_reward", limit=3)
    assert list(by_mean["mean_reward"]) == [100.0, 99.0, 98.0] and list(by_mean["rank"]) == [30, 29, 28]
    by_repo = store.ranking("CartPole-v1", sort="repo_id", limit=2)
    assert list(by_repo["repo_id"]) == sorted(full["repo_id"])[:2]
    with pytest.raises(ValueError, match="unknown sort"):
        store.ranking(sort="DROP TABLE")
    assert store.ranking("Nope-v0").empty and store.count("Nope-v0") == 0


def test_record_many_equals_recording_one_by_one(tmp_path):
    one, many = Store(tmp_path / "one"), Store(tmp_path / "many")
    rng = random.Random(7)
    items = []
    for i in range(40):
        result = make_result(f"u{rng.randint(0, 9)}/m", rng.choice([SHA1, SHA2]), score=float(rng.randint(0, 9)),
                             evaluated_at=f"2025-02-{i % 28 + 1:02d}T{i % 24:02d}:00:00Z")
        items.append((result, rng.choice([None, "2024-05-01"])))
    ids_one = [one.record(r, commit_date=d) for r, d in items]
    assert many.record_many(items, batch=6) == ids_one
    drop = ["recorded_at"]
    assert frame_records(one.history().drop(columns=drop)) == frame_records(many.history().drop(columns=drop))
    assert frame_records(one.ranking().drop(columns=drop)) == frame_records(many.ranking().drop(columns=drop))
    assert frame_records(one.results().drop(columns=drop)) == frame_records(many.results().drop(columns=drop))


def test_replay_pruning_never_walks_the_replays_folder(tmp_path, monkeypatch):
    store = Store(tmp_path, max_replay_bytes=2500)
    store.record(make_result("ns/r0", SHA1))  # open (and create) the database first

    def no_walk(self, *args, **kwargs):
        raise AssertionError(f"walked {self}")

    monkeypatch.setattr(Path, "rglob", no_walk)
    monkeypatch.setattr(os, "walk", no_walk)
    for i, sha in enumerate((SHA1, SHA2, SHA3)):
        video = store.new_video_path()
        video.write_bytes(b"x" * 1000)
        store.record(make_result(f"ns/v{i}", sha, video=str(video)))
    rows = store.results().set_index("repo_id")
    assert pd.isna(rows.loc["ns/v0", "video"]) and not (tmp_path / f"replays/ns/v0/{SHA1}/CartPole-v1.mp4").exists()
    assert all((store.root / rows.loc[r, "video"]).is_file() for r in ("ns/v1", "ns/v2"))
