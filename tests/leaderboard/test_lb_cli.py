"""`python -m leaderboard` end to end through localhub and the real huggingface_hub client:
submit validates and queues, a worker evaluates, show ranks, remove takes down."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from lb_helpers import card, make_result, put_agent, run_cli

import localhub
from evaluator import errors
from leaderboard.__main__ import main
from leaderboard.store import Store
from leaderboard.submit import check_submission


@pytest.fixture(scope="module")
def hub(agent_zip, tmp_path_factory):
    root = tmp_path_factory.mktemp("hubroot")
    put_agent(root, "ann/ppo-CartPole-v1", agent_zip)
    put_agent(root, "bob/ppo-CartPole-v1", agent_zip)
    put_agent(root, "gone/ppo-CartPole-v1", agent_zip)
    put_agent(root, "bad/unknown-env", agent_zip, env_id="Foo-v0")
    (root / "bad" / "no-agent").mkdir(parents=True)
    (root / "bad" / "no-agent" / "README.md").write_text(card("CartPole-v1"))
    with localhub.serve(root, state=tmp_path_factory.mktemp("state")) as running:
        running.root = root
        yield running


@pytest.mark.parametrize(("repo_id", "error"), [
    ("not a repo id", errors.EvaluationError),
    ("a/b/c", errors.EvaluationError),
    ("nobody/nothing", errors.RepoNotFoundError),
    ("bad/no-agent", errors.NoAgentError),
    ("bad/unknown-env", errors.UnknownEnvError),
])
def test_submit_rejects_bad_input(hub, repo_id, error):
    with pytest.raises(error) as info:
        check_submission(repo_id, endpoint=hub.url, token=False)
    assert info.value.exit_code == 1 and str(info.value)


def test_submit_resolves_the_sha_env_and_commit_date(hub):
    found = check_submission("ann/ppo-CartPole-v1", endpoint=hub.url, token=False)
    assert len(found.revision) == 40 and found.env_key == "CartPole-v1" and found.env_id is None
    assert found.commit_date.endswith("Z") and found.agent_file == "ppo-CartPole-v1.zip"
    overridden = check_submission("ann/ppo-CartPole-v1", env_id="CartPole-v1", endpoint=hub.url, token=False)
    assert overridden.env_id == "CartPole-v1"


def test_submit_exit_codes(hub, tmp_path):
    store = str(tmp_path / "store")
    proc = run_cli("submit", "nobody/nothing", "--store", store, "--json", hub_url=hub.url)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["error_code"] == "repo_not_found" and "nobody/nothing" in doc["error"]
    proc = run_cli("submit", "ann/ppo-CartPole-v1", "--store", store, "--endpoint", "http://127.0.0.1:9")
    assert proc.returncode == 3 and "retry" in proc.stderr
    proc = run_cli("submit", "--store", store)
    assert proc.returncode == 2


def test_submit_worker_show_requests_remove(hub, tmp_path, capsys):
    """Through the CLI: in a subprocess where the process boundary matters (JSON-only stdout,
    exit codes, the worker), in-process (`main(argv)`) elsewhere to keep the test short."""
    store = str(tmp_path / "store")

    def cli(*args, code=0):
        capsys.readouterr()
        returned = main([*args, "--store", store, "--endpoint", hub.url])
        out = capsys.readouterr()
        assert returned == code, out.err
        return subprocess.CompletedProcess(args, returned, out.out, out.err)

    proc = run_cli("submit", "ann/ppo-CartPole-v1", "--json", "--store", store, hub_url=hub.url)
    assert proc.returncode == 0, proc.stderr
    first = json.loads(proc.stdout)
    assert first["status"] == "pending" and first["queued"] and len(first["revision"]) == 40
    again = json.loads(cli("submit", "ann/ppo-CartPole-v1", "--json").stdout)
    assert again["id"] == first["id"] and not again["queued"]
    cli("submit", "bob/ppo-CartPole-v1", "--episodes", "2")
    cli("submit", "gone/ppo-CartPole-v1", "--episodes", "1")
    shutil.rmtree(hub.root / "gone")  # deleted from the Hub after it was submitted

    worker = run_cli("worker", "--once", "--store", store, hub_url=hub.url)
    assert worker.returncode == 0 and "2 finished, 1 failed" in worker.stderr, worker.stderr
    assert f"#{first['id']} ann/ppo-CartPole-v1 on CartPole-v1: finished score " in worker.stderr  # a line each
    assert "gone/ppo-CartPole-v1 on CartPole-v1: failed repo_not_found (" in worker.stderr

    requests = {r["repo_id"]: r for r in json.loads(cli("requests", "--json").stdout)}
    assert {r: q["status"] for r, q in requests.items()} == {
        "ann/ppo-CartPole-v1": "finished", "bob/ppo-CartPole-v1": "finished", "gone/ppo-CartPole-v1": "failed"}
    assert requests["gone/ppo-CartPole-v1"]["error_code"] == "repo_not_found"
    assert "finished" in cli("requests", "--status", "finished").stdout

    shown = json.loads(cli("show", "--json").stdout)
    assert [r["repo_id"] for r in shown] == ["ann/ppo-CartPole-v1"]  # bob's run is unranked (--episodes)
    row = shown[0]
    assert row["rank"] == 1 and row["n_episodes"] == 50 and len(row["episode_returns"]) == 50
    assert row["revision"] == first["revision"] and row["commit_date"] == first["commit_date"]
    assert row["video"] == f"replays/ann/ppo-CartPole-v1/{first['revision']}/CartPole-v1.mp4"
    assert (tmp_path / "store" / row["video"]).stat().st_size > 0
    assert "ann/ppo-CartPole-v1" in cli("show", "--env", "CartPole-v1").stdout
    csv = cli("show", "--csv").stdout.splitlines()
    assert csv[0].startswith("rank,env_key,repo_id") and len(csv) == 2

    cli("remove", "ann/ppo-CartPole-v1", "--reason", "test takedown")
    assert json.loads(cli("show", "--json").stdout) == []
    cli("remove", "nobody/nothing", code=1)


def test_evaluator_cli_records_the_result_and_its_replay_in_the_store(hub, tmp_path):
    store = tmp_path / "store"
    proc = run_cli("evaluate", "bob/ppo-CartPole-v1", "--episodes", "1", "--store", str(store), "--json",
                   hub_url=hub.url, module="evaluator")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["video"] == f"replays/bob/ppo-CartPole-v1/{result['revision']}/CartPole-v1.mp4", result
    assert (store / result["video"]).stat().st_size > 0
    assert not list((store / "tmp").iterdir())
    rows = Store(store).results()
    assert list(rows["repo_id"]) == ["bob/ppo-CartPole-v1"] and rows.loc[0, "video"] == result["video"]
    assert rows.loc[0, "commit_date"] is not None and not rows["commit_date"].isna().any()


def test_worker_with_hub_dataset_publishes_and_show_reads_the_publication(hub, tmp_path):
    store = Store(tmp_path / "store")
    store.record(make_result("x/one", "1" * 40))
    args = ("worker", "--once", "--store", str(store.root), "--hub-dataset", "org/board")
    proc = run_cli(*args, hub_url=hub.url)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "--create" in proc.stderr  # never silently
    proc = run_cli(*args, "--create", hub_url=hub.url)
    assert proc.returncode == 0, proc.stderr
    from huggingface_hub import HfApi

    files = HfApi(endpoint=hub.url).list_repo_files("org/board", repo_type="dataset")
    assert {"leaderboard.parquet", "store.json", "history/000000000001-000000000001.parquet"} <= set(files)
    other = tmp_path / "other"  # a machine with no store of its own, like a deployed Space
    proc = run_cli("show", "--json", "--store", str(other), "--hub-dataset", "org/board", hub_url=hub.url)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert row["repo_id"] == "x/one" and row["rank"] == 1 and row["episode_returns"] == [100.0, 120.0]
    assert not (other / "leaderboard.sqlite3").exists()
    proc = run_cli("show", "--store", str(other), "--hub-dataset", "org/missing", hub_url=hub.url)
    assert proc.returncode == 1 and "org/missing" in proc.stderr


def test_export_writes_history_and_ranking_for_pandas(tmp_path):
    import pandas as pd

    from leaderboard.rows import read_results

    store = Store(tmp_path / "store")
    store.record(make_result("x/one", "1" * 40, score=5))
    store.record(make_result("y/two", "1" * 40, score=7))
    store.remove("x/one", reason="gone")
    assert main(["export", str(tmp_path / "out"), "--store", str(store.root)]) == 0
    history = read_results(tmp_path / "out" / "history.parquet")  # the previous version's results.parquet format
    assert list(history["repo_id"]) == ["x/one", "y/two"] and history["removed_reason"].tolist()[0] == "gone"
    assert list(pd.read_parquet(tmp_path / "out" / "ranking.parquet")["repo_id"]) == ["y/two"]
    assert main(["export", str(tmp_path / "csv"), "--format", "csv", "--store", str(store.root)]) == 0
    frame = pd.read_csv(tmp_path / "csv" / "history.csv")
    assert len(frame) == 2 and json.loads(frame.loc[1, "episode_returns"]) == [7.0, 27.0]
