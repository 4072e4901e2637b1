"""Sweeps (issue 13): discovery through localhub's listing, classification from the listing alone,
skip reasons, resumability (a second run queues nothing; a killed sweep resumes), filters,
--protocol-changed, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from lb_helpers import PROJECT, card, cli_env, make_result, put_agent, run_cli

import localhub
from leaderboard import sweep as sweep_module
from leaderboard.store import Store
from leaderboard.sweep import SweepQuery, requeue_older_protocol, sweep

ZIP = b"PK\x05\x06" + bytes(18)  # an empty zip: a sweep reads names, never contents


def _hub_tree(root, n_good: int = 4) -> list[str]:
    good = []
    for i in range(n_good):
        env = "CartPole-v1" if i % 2 == 0 else "LunarLander-v2"
        repo = f"user{i}/ppo-{env}-{i}"
        put_agent(root, repo, ZIP, env_id=env)
        good.append(repo)
    (root / "nobody/no-agent").mkdir(parents=True)
    (root / "nobody/no-agent/README.md").write_text(card("CartPole-v1"))
    unity = root / "unity/ppo-Huggy"
    unity.mkdir(parents=True)
    (unity / "Huggy.onnx").write_bytes(b"onnx")
    (unity / "README.md").write_text(card("Huggy").replace("stable-baselines3\ntags", "ml-agents\ntags"))
    put_agent(root, "odd/ppo-Pong-ple", ZIP, env_id="Pong-PLE-v0")
    gated = put_agent(root, "locked/ppo-CartPole-v1", ZIP)
    (gated / "README.md").write_text(card("CartPole-v1").replace("---\n", "---\ngated: auto\n", 1))
    other = put_agent(root, "misc/not-rl", ZIP)  # no reinforcement-learning tag: not listed
    (other / "README.md").write_text("---\nlibrary_name: stable-baselines3\ntags:\n- CartPole-v1\n---\n")
    return good


@pytest.fixture()
def hub(tmp_path):
    root = tmp_path / "hub"
    good = _hub_tree(root)
    running = localhub.serve(root, state=tmp_path / "state", page_size=3)  # several pages
    yield SimpleNamespace(url=running.url, root=root, good=good, storage=running.storage)
    running.close()


def _requests(store: Store) -> list[tuple[str, str, str]]:
    return sorted((r.repo_id, r.revision, r.env_key) for r in store.queue().list())


def test_sweep_queues_what_the_listing_shows_is_scorable_and_says_why_not_the_rest(hub, tmp_path, monkeypatch):
    def no_lookup(*_a, **_k):
        raise AssertionError("the listing says enough: no per-repo call")

    monkeypatch.setattr(sweep_module, "look_up", no_lookup)
    store = Store(tmp_path / "store")
    report = sweep(store, SweepQuery(), endpoint=hub.url, token=False)
    assert report.listed == 8  # misc/not-rl lacks the tag
    assert report.queued == 4 and report.known == 0 and report.looked_up == 0
    assert report.skipped == {"no_agent": 1, "unsupported_format": 1, "unknown_env": 1, "gated": 1}
    assert "Pong-PLE-v0" in report.examples["unknown_env"][0]
    requests = store.queue().list()
    assert sorted(r.repo_id for r in requests) == sorted(hub.good)
    from huggingface_hub import HfApi

    for request in requests:  # pinned to the listing's sha, with its commit date
        info = HfApi(endpoint=hub.url, token=False).model_info(request.repo_id)
        assert request.revision == info.sha and request.commit_date is not None
        assert request.submitter == "sweep" and request.env_id is None
    assert {r.env_key for r in requests} == {"CartPole-v1", "LunarLander-v3"}


def test_a_second_sweep_queues_nothing_and_a_new_commit_is_queued(hub, tmp_path):
    store = Store(tmp_path / "store")
    first = sweep(store, SweepQuery(), endpoint=hub.url, token=False)
    before = _requests(store)
    second = sweep(store, SweepQuery(), endpoint=hub.url, token=False)
    assert first.queued == 4 and second.queued == 0 and second.known == 4
    assert _requests(store) == before
    # a new revision of one repo is a new request; the rest stay known
    readme = hub.root / hub.good[0] / "README.md"
    readme.write_text(readme.read_text() + "\nupdated\n")
    third = sweep(store, SweepQuery(), endpoint=hub.url, token=False)
    assert third.queued == 1 and third.known == 3
    assert len(_requests(store)) == 5


def test_sweep_dry_run_queues_nothing(hub, tmp_path):
    store = Store(tmp_path / "store")
    report = sweep(store, SweepQuery(), endpoint=hub.url, token=False, dry_run=True)
    assert report.queued == 4 and report.dry_run
    assert store.queue().list() == []


def test_sweep_filters_author_env_search_limit(hub, tmp_path):
    store = Store(tmp_path / "store")
    by_env = sweep(store, SweepQuery(env_id="LunarLander-v2"), endpoint=hub.url, token=False, dry_run=True)
    assert by_env.queued == 2 and by_env.listed == 2
    by_author = sweep(store, SweepQuery(author="user0"), endpoint=hub.url, token=False, dry_run=True)
    assert (by_author.listed, by_author.queued) == (1, 1)
    by_search = sweep(store, SweepQuery(search="ppo-cartpole"), endpoint=hub.url, token=False, dry_run=True)
    assert by_search.queued == 2 and by_search.skipped == {"gated": 1}
    limited = sweep(store, SweepQuery(limit=2), endpoint=hub.url, token=False, dry_run=True)
    assert limited.listed == 2


def test_taken_down_repos_are_not_queued_by_a_sweep(hub, tmp_path):
    store = Store(tmp_path / "store")
    sweep(store, SweepQuery(), endpoint=hub.url, token=False)
    store.takedown(hub.good[1], reason="abuse")  # cancels its pending request
    report = sweep(store, SweepQuery(), endpoint=hub.url, token=False)
    assert report.queued == 0 and report.skipped["taken_down"] == 1
    assert [r.status.value for r in store.queue().list() if r.repo_id == hub.good[1]] == ["failed"]


def test_a_listing_without_sha_or_files_is_looked_up_per_repo(hub, tmp_path):
    store = Store(tmp_path / "store")
    bare = [SimpleNamespace(id=hub.good[0], sha=None, siblings=None, gated=False, tags=[], card_data=None),
            SimpleNamespace(id="nobody/no-agent", sha=None, siblings=None, gated=False, tags=[], card_data=None)]
    report = sweep(store, SweepQuery(), endpoint=hub.url, token=False, listing=bare)
    assert report.looked_up == 2 and report.queued == 1 and report.skipped == {"no_agent": 1}


def test_protocol_changed_requeues_ranked_rows_of_older_protocols_only(tmp_path):
    store = Store(tmp_path / "store")
    old = make_result("ann/ppo-CartPole-v1", "a" * 40, score=100.0)
    old.protocol_version = 0
    current = make_result("bob/ppo-CartPole-v1", "b" * 40, score=90.0)
    unranked = make_result("cid/ppo-CartPole-v1", "c" * 40, score=80.0, ranked=False)
    unranked.protocol_version = 0
    store.record_many([(old, "2025-01-01T00:00:00Z"), current, unranked])
    dry = requeue_older_protocol(store, dry_run=True)
    assert dry.queued == 1 and store.queue().list() == []
    report = requeue_older_protocol(store)
    assert report.queued == 1
    (request,) = store.queue().list()
    assert (request.repo_id, request.revision, request.env_key, request.protocol_version) == (
        "ann/ppo-CartPole-v1", "a" * 40, "CartPole-v1", 1)
    assert requeue_older_protocol(store).queued == 0  # resumable too


def test_sweep_cli_json_and_exit_3_when_the_hub_is_unreachable(hub, tmp_path):
    store = tmp_path / "store"
    done = run_cli("sweep", "--store", str(store), "--json", "--filter", "reinforcement-learning",
                   hub_url=hub.url, check=True)
    report = json.loads(done.stdout)
    assert report["queued"] == 4 and report["skipped"]["gated"] == 1
    assert "skipped" in done.stderr and "gated" in done.stderr
    again = json.loads(run_cli("sweep", "--store", str(store), "--json", hub_url=hub.url, check=True).stdout)
    assert again["queued"] == 0 and again["known"] == 4
    down = run_cli("sweep", "--store", str(store), "--json", hub_url="http://127.0.0.1:9", timeout=120)
    assert down.returncode == 3, down.stderr
    assert json.loads(down.stdout)["status"] == "error"
    usage = run_cli("sweep", "--store", str(store), "--protocol-changed", "--filter", "x", hub_url=hub.url)
    assert usage.returncode == 2


@pytest.mark.slow
def test_a_sweep_killed_half_way_resumes_without_losing_or_doubling(tmp_path):
    root = tmp_path / "hub"
    for i in range(400):
        (root / f"u{i % 23}" / f"ppo-CartPole-v1-{i}").mkdir(parents=True)
        (root / f"u{i % 23}" / f"ppo-CartPole-v1-{i}" / f"ppo-CartPole-v1-{i}.zip").write_bytes(ZIP)
        (root / f"u{i % 23}" / f"ppo-CartPole-v1-{i}" / "README.md").write_text(card("CartPole-v1"))
    running = localhub.serve(root, state=tmp_path / "state", page_size=10)
    store = tmp_path / "store"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "leaderboard", "sweep", "--store", str(store)],
                                env={**cli_env(running.url)}, cwd=PROJECT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        queued = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (store / "leaderboard.sqlite3").exists():
                try:
                    with sqlite3.connect(store / "leaderboard.sqlite3", timeout=5) as db:
                        queued = db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
                except sqlite3.OperationalError:
                    queued = 0
                if queued >= 30:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "the sweep ended before it could be killed"
        assert 30 <= queued < 400
        resumed = run_cli("sweep", "--store", str(store), "--json", hub_url=running.url, check=True)
        report = json.loads(resumed.stdout)
        assert report["listed"] == 400
        assert report["queued"] + report["known"] == 400 and report["known"] >= queued
        requests = Store(store).queue().list()
        assert len(requests) == 400 and len({r.repo_id for r in requests}) == 400
    finally:
        running.close()
