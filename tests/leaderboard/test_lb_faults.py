"""Fault tests through localhub: four queue workers on 100 requests, a worker killed with
SIGKILL mid-request (the store's own faults are in test_lb_store_faults.py)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lb_helpers import PROJECT, cli_env, put_agent

import localhub
from leaderboard.queue import Queue, Status
from leaderboard.store import Store
from leaderboard.submit import check_submission

WORKER = Path(__file__).with_name("lb_worker.py")
N_REPOS = 100


@pytest.fixture(scope="module")
def hub(agent_zip, tmp_path_factory):
    root = tmp_path_factory.mktemp("hubroot")
    for i in range(N_REPOS):
        put_agent(root, f"user{i:03d}/ppo-CartPole-v1", agent_zip)
    with localhub.serve(root, state=tmp_path_factory.mktemp("state")) as running:
        yield running


def _queue_all(hub, store: Store, repos: list[str]) -> Queue:
    queue = store.queue()
    for repo in repos:
        found = check_submission(repo, endpoint=hub.url, token=False)
        queue.submit(found.repo_id, found.revision, found.env_key, episodes=1, commit_date=found.commit_date)
    return queue


def _worker(store: Store, hub, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), str(store.root), "--endpoint", hub.url, "--in-process",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            cwd=PROJECT)


@pytest.mark.slow
def test_four_workers_on_100_requests_end_each_exactly_once(hub, tmp_path):
    store = Store(tmp_path / "store")
    repos = [f"user{i:03d}/ppo-CartPole-v1" for i in range(N_REPOS)]
    queue = _queue_all(hub, store, repos)
    workers = [_worker(store, hub) for _ in range(4)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
    done = [dict(kv.split("=") for kv in re.search(r"DONE (.*)", out).group(1).split()) for out, _ in outputs]
    assert sum(int(d["finished"]) + int(d["failed"]) for d in done) == N_REPOS  # each ended once, by one worker
    assert sum(int(d["finished"]) > 0 for d in done) >= 2, "the workers did not share the queue"

    requests = queue.list()
    assert len(requests) == N_REPOS
    assert {r.status for r in requests} == {Status.FINISHED}, {r.repo_id: r.error for r in requests if r.error}
    assert {r.attempts for r in requests} == {1}
    history = store.history()
    assert len(history) == N_REPOS and history["row_id"].is_unique  # no row lost or duplicated
    assert set(history["repo_id"]) == set(repos)
    assert set(history["row_id"]) == {r.result_id for r in requests}
    assert (history["n_episodes"] == 1).all() and (history["status"] == "finished").all()


@pytest.mark.slow
def test_request_of_a_killed_worker_is_finished_by_another(hub, tmp_path):
    store = Store(tmp_path / "store")
    queue = _queue_all(hub, store, ["user000/ppo-CartPole-v1"])
    doomed = _worker(store, hub, "--lease", "1.5", "--hang-after-evaluation")
    line = doomed.stdout.readline()
    assert line.startswith("EVALUATED user000/ppo-CartPole-v1"), doomed.stderr.read()[-3000:]
    held = queue.list()[0]
    assert held.status is Status.RUNNING and held.attempts == 1
    doomed.kill()  # SIGKILL, mid-request: evaluated, not recorded
    doomed.wait()
    time.sleep(2.0)  # the lease (1.5 s) expires without its heartbeat
    survivor = _worker(store, hub, "--lease", "30")
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0 and "DONE finished=1" in out, err[-3000:]
    request = queue.list()[0]
    assert request.status is Status.FINISHED and request.attempts == 2 and request.lease_owner is None
    history = store.history()
    assert len(history) == 1 and history.loc[0, "row_id"] == request.result_id
