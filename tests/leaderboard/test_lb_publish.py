"""Publication to a Hub dataset, through localhub and the real huggingface_hub client:
append-only history and takedown shards, leaderboard.parquet, replays of ranked rows only,
private seeds withheld, requests/ ingested and deleted, --create, a stale parent commit, a
Hub that is down, and one dataset per store."""

from __future__ import annotations

import http.server
import json
import threading

import pandas as pd
import pytest
from huggingface_hub import HfApi, hf_hub_download
from lb_helpers import make_result, put_agent, run_cli

import localhub
from leaderboard.publish import Publisher, PublishError
from leaderboard.rows import frame_records
from leaderboard.store import Store

SHA1, SHA2 = "1" * 40, "2" * 40
DATASET = "org/board"


@pytest.fixture
def hub(tmp_path, agent_zip):
    root = tmp_path / "hub-root"
    put_agent(root, "ann/ppo-CartPole-v1", agent_zip)
    with localhub.serve(root, state=tmp_path / "hub-state") as running:
        yield running


def _files(hub) -> set[str]:
    return set(HfApi(endpoint=hub.url).list_repo_files(DATASET, repo_type="dataset"))


def _read(hub, path: str) -> pd.DataFrame:
    return pd.read_parquet(hf_hub_download(DATASET, path, repo_type="dataset", endpoint=hub.url))


def _replay(store: Store, content: bytes) -> str:
    path = store.new_video_path()
    path.write_bytes(content)
    return str(path)


def test_publication_is_append_only_and_withholds_private_seeds_and_taken_down_rows(hub, tmp_path):
    store = Store(tmp_path / "store")
    store.record(make_result("ann/pub", SHA1, score=50, video=_replay(store, b"ann")), commit_date="2024-01-01")
    store.record(make_result("bob/priv", SHA1, score=70, seed_set="private", video=_replay(store, b"bob")),
                 commit_date="2024-01-01")
    store.record(make_result("cy/early-takedown", SHA1, score=90))
    store.remove("cy/early-takedown", reason="DMCA")  # before anything was published: never leaves the head

    with pytest.raises(PublishError, match="--create") as info:
        Publisher(store, DATASET, endpoint=hub.url, token="t").publish()
    assert not info.value.transient
    first = Publisher(store, DATASET, endpoint=hub.url, token="t", create=True).publish()
    assert first.commit and first.history_rows == 2 and first.replays_uploaded == 2 and first.leaderboard_rows == 2
    files = _files(hub)
    assert {"store.json", "history/000000000001-000000000003.parquet", "leaderboard.parquet",
            "takedowns/000000000001-000000000001.parquet", f"replays/ann/pub/{SHA1}/CartPole-v1.mp4",
            f"replays/bob/priv/{SHA1}/CartPole-v1.mp4"} <= files
    shard = _read(hub, "history/000000000001-000000000003.parquet").set_index("repo_id")
    assert sorted(shard.index) == ["ann/pub", "bob/priv"]
    assert list(shard.loc["bob/priv", "seeds"]) == [] and list(shard.loc["ann/pub", "seeds"]) == [10_000, 10_001]
    assert list(shard.loc["bob/priv", "episode_returns"]) == [70.0, 90.0]
    board = _read(hub, "leaderboard.parquet")
    assert list(board["repo_id"]) == ["bob/priv", "ann/pub"] and list(board["rank"]) == [1, 2]
    assert "seeds" not in board.columns and list(board.loc[0, "episode_returns"]) == [70.0, 90.0]

    publisher = Publisher(store, DATASET, endpoint=hub.url, token="t")
    assert publisher.publish().commit is None  # up to date: nothing uploaded again

    store.record(make_result("dee/new", SHA2, score=10), commit_date="2024-01-01")
    store.remove("bob/priv", reason="author asked")
    report = publisher.publish()
    assert (report.history_rows, report.takedowns, report.replays_deleted) == (1, 1, 1)
    files = _files(hub)
    assert {"history/000000000004-000000000004.parquet", "takedowns/000000000002-000000000002.parquet"} <= files
    assert len([f for f in files if f.startswith("history/")]) == 2  # the first shard was not sent again
    assert f"replays/bob/priv/{SHA1}/CartPole-v1.mp4" not in files  # a taken-down replay leaves the dataset
    assert list(_read(hub, "leaderboard.parquet")["repo_id"]) == ["ann/pub", "dee/new"]
    takedowns = _read(hub, "takedowns/000000000002-000000000002.parquet")
    assert list(takedowns["repo_id"]) == ["bob/priv"] and list(takedowns["reason"]) == ["author asked"]

    other = Store(tmp_path / "other")
    other.record(make_result("eve/e", SHA1))
    with pytest.raises(PublishError, match="published by another store"):
        Publisher(other, DATASET, endpoint=hub.url, token="t").publish()


def _upload_request(hub, name: str, content: bytes) -> None:
    """What a deployed Space does with a submission."""
    HfApi(endpoint=hub.url, token="space").upload_file(path_or_fileobj=content, path_in_repo=f"requests/{name}",
                                                         repo_id=DATASET, repo_type="dataset")


def test_the_requests_folder_is_ingested_into_the_queue_and_emptied(hub, tmp_path):
    store = Store(tmp_path / "store")
    publisher = Publisher(store, DATASET, endpoint=hub.url, token="t", create=True)
    publisher.publish()
    _upload_request(hub, "a.json", json.dumps({"repo_id": "ann/ppo-CartPole-v1",
                                               "submitter": "space:carol\x1b[31m"}).encode())
    _upload_request(hub, "b.json", json.dumps({"repo_id": "nobody/nothing"}).encode())
    _upload_request(hub, "c.json", b"\xff not json")
    _upload_request(hub, "d.json", json.dumps({"repo_id": "ann/ppo-CartPole-v1", "submitter": "ip:10.0.0.1"}).encode())
    report = publisher.publish()
    assert (report.requests_ingested, report.requests_rejected) == (2, 2)
    assert not [f for f in _files(hub) if f.startswith("requests/")]
    (request,) = store.queue().list()  # the same repo twice is one request
    assert request.repo_id == "ann/ppo-CartPole-v1" and len(request.revision) == 40
    assert request.submitter == "space:carol[31m"  # data: no control characters
    assert request.env_key == "CartPole-v1" and request.status.value == "pending"


def test_a_stale_parent_commit_restarts_the_round(hub, tmp_path, monkeypatch):
    """A Space adds a request between the head's read of the dataset and its commit: HTTP 412,
    the round starts again and takes the new request too."""
    store = Store(tmp_path / "store")
    store.record(make_result("x/one", SHA1))
    real_commit, raced = HfApi.create_commit, []

    def racing_commit(self, *args, **kwargs):
        if not raced and kwargs.get("parent_commit"):
            raced.append(True)
            _upload_request(hub, "late.json", json.dumps({"repo_id": "ann/ppo-CartPole-v1"}).encode())
        return real_commit(self, *args, **kwargs)

    Publisher(store, DATASET, endpoint=hub.url, token="t", create=True).publish()
    store.record(make_result("y/two", SHA1))
    monkeypatch.setattr(HfApi, "create_commit", racing_commit)
    report = Publisher(store, DATASET, endpoint=hub.url, token="t").publish()
    assert raced and report.attempts == 2 and report.commit and report.requests_ingested == 1
    assert [r.repo_id for r in store.queue().list()] == ["ann/ppo-CartPole-v1"]
    assert "history/000000000002-000000000002.parquet" in _files(hub)


class _Always500(http.server.BaseHTTPRequestHandler):
    hits = 0

    def _answer(self) -> None:
        type(self).hits += 1
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"error": "internal error"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def broken_hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Always500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Always500.hits = 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("where", ["unreachable", "answers 500"])
def test_hub_down_retries_then_a_clear_error_and_the_store_is_untouched(where, broken_hub, tmp_path):
    endpoint = "http://127.0.0.1:9" if where == "unreachable" else broken_hub
    store = Store(tmp_path / "store")
    store.record(make_result("x/one", SHA1))
    store.queue().submit("z/pending", SHA1, "CartPole-v1", protocol_version=1, seed_set="public")
    before = (frame_records(store.history()), [r.to_dict() for r in store.queue().list()])
    sleeps: list[float] = []
    publisher = Publisher(store, DATASET, endpoint=endpoint, token="t", attempts=3, backoff_seconds=0.01,
                          sleep=sleeps.append)
    with pytest.raises(PublishError) as info:
        publisher.publish()
    message = str(info.value)
    assert DATASET in message and endpoint in message and "after 3 attempts" in message and info.value.transient
    assert sleeps == [0.01, 0.02]  # retried with backoff
    if where == "answers 500":
        assert _Always500.hits >= 3 and "500" in message
    assert (frame_records(store.history()), [r.to_dict() for r in store.queue().list()]) == before


def test_show_from_an_unreachable_hub_dataset_exits_3(tmp_path):
    proc = run_cli("show", "--store", str(tmp_path / "store"), "--hub-dataset", DATASET, "--endpoint",
                   "http://127.0.0.1:9", "--json", timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert DATASET in proc.stderr and json.loads(proc.stdout)["status"] == "error"
