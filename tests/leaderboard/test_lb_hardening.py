"""Issue 14, leaderboard side: a queue worker's download cache stays under its cap (safely when
several workers share a store); the CLI says when a store folder does not exist or is not a
folder, and names an option's expectation; a result carrying hostile text is recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from lb_helpers import make_result

import localhub
from evaluator.result import STATUS_FAILED, EvalResult
from leaderboard.__main__ import main
from leaderboard.cache import lease_slot
from leaderboard.store import Store
from leaderboard.worker import Worker, WorkerConfig

AGENT_BYTES = 300_000


@pytest.fixture
def versions_hub(tmp_path):
    """One repo with four revisions of a 300 KB agent file (the cache's unit of eviction)."""
    from huggingface_hub import HfApi

    root = tmp_path / "root"
    (root / "ann" / "big").mkdir(parents=True)
    (root / "ann" / "big" / "agent.zip").write_bytes(os.urandom(AGENT_BYTES))
    (root / "ann" / "big" / "README.md").write_text("---\ntags:\n- CartPole-v1\n---\n")
    with localhub.serve(root, state=tmp_path / "state") as hub:
        api = HfApi(endpoint=hub.url, token=False)
        shas = [api.model_info("ann/big").sha]
        for i in range(3):
            api.upload_file(path_or_fileobj=os.urandom(AGENT_BYTES), path_in_repo="agent.zip", repo_id="ann/big",
                            commit_message=f"v{i + 2}")
            shas.append(api.model_info("ann/big").sha)
        hub.shas = shas
        yield hub


def _downloading_evaluator(hub, seen: list):
    """Downloads the agent for real (evaluator.hub.fetch), then reports a failure: no sandbox."""
    from evaluator.hub import fetch

    def evaluate(repo_id, *, revision=None, cache_dir=None, **_):
        seen.append(cache_dir)
        snapshot = fetch(repo_id, revision, cache_dir=cache_dir, endpoint=hub.url, token=False)
        return EvalResult(repo_id=repo_id, revision=snapshot.sha, env_key="CartPole-v1", status=STATUS_FAILED,
                          error_code="no_agent", error="fake: downloaded only")

    return evaluate


def _cached(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("explicit_dir", [False, True])
def test_a_worker_keeps_its_download_cache_under_the_cap(versions_hub, tmp_path, explicit_dir):
    store = Store(tmp_path / "store")
    cap = int(2.5 * AGENT_BYTES)  # room for two revisions
    config = WorkerConfig(video=False, cache_max_bytes=cap,
                          cache_dir=str(tmp_path / "dl") if explicit_dir else None)
    seen: list = []
    worker = Worker(store, config=config, evaluate_fn=_downloading_evaluator(versions_hub, seen))
    for sha in versions_hub.shas:
        store.queue().submit("ann/big", sha, "CartPole-v1")
        assert worker.run(once=True).failed == 1
        assert seen[-1] is not None, "the worker must give the evaluator its own download cache"
        assert _cached(Path(seen[-1])) <= cap
    cache = Path(seen[-1])
    assert cache.is_relative_to(tmp_path / ("dl" if explicit_dir else "store"))
    snapshots = sorted(p.name for p in cache.glob("models--ann--big/snapshots/*"))
    assert snapshots == sorted(versions_hub.shas[-2:])  # least recently used revisions went first


def test_a_revision_over_the_cap_alone_is_evicted_after_its_evaluation(versions_hub, tmp_path):
    store = Store(tmp_path / "store")
    seen: list = []
    worker = Worker(store, config=WorkerConfig(video=False, cache_max_bytes=1000),
                    evaluate_fn=_downloading_evaluator(versions_hub, seen))
    store.queue().submit("ann/big", versions_hub.shas[0], "CartPole-v1")
    worker.run(once=True)
    assert _cached(Path(seen[-1])) <= 1000


def test_workers_sharing_a_store_never_share_a_cache_slot(tmp_path):
    first = lease_slot(tmp_path / "cache", 10)
    second = lease_slot(tmp_path / "cache", 10)
    assert first.path != second.path  # two holders: never one evicting under the other
    first.close()
    third = lease_slot(tmp_path / "cache", 10)
    assert third.path == first.path  # a freed slot (a worker that ended) is reused
    second.close()
    third.close()


def test_cache_cap_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RL_LEADERBOARD_CACHE_MAX_BYTES", "12345")
    slot = lease_slot(tmp_path / "cache")
    assert slot.max_bytes == 12345
    slot.close()


# ------------------------------------------------------------------ CLI, first use


@pytest.mark.parametrize("command", [["show"], ["requests"], ["export", "out"], ["show", "--json"]])
def test_a_store_folder_that_does_not_exist_is_said(command, tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    code = main([*command, "--store", str(missing)])
    out = capsys.readouterr()
    assert code == 2
    assert "does not exist" in out.err and str(missing) in out.err
    assert "no ranked results" not in out.out
    assert not missing.exists()  # nothing created by a read


@pytest.mark.parametrize("command", [["show"], ["requests"], ["requests", "--json"], ["submit", "a/b"], ["worker",
                                                                                                          "--once"]])
def test_a_store_that_is_a_file_is_said(command, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    code = main([*command, "--store", str(afile)])
    out = capsys.readouterr()
    assert code == 2
    assert "is not a folder" in out.err
    if "--json" in command:
        assert json.loads(out.out)["status"] == "error"


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--episodes", "abc", "whole number"), ("--episodes", "0", "whole number"),
    ("--concurrency", "x", "whole number"), ("--lease", "abc", "positive number"), ("--lease", "nan", "positive"),
])
def test_options_name_what_they_expect(option, value, expected, capsys):
    command = ["submit", "a/b"] if option == "--episodes" else ["worker"]
    with pytest.raises(SystemExit) as exit_info:
        main([*command, option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and expected in err and "invalid parse value" not in err


def test_the_store_never_loses_a_row_to_a_lone_surrogate(tmp_path):
    """Whichever producer made the result (evaluate() sanitises its own): SQLite cannot encode a
    lone surrogate, so the row used to be lost and its request evaluated again, 5 times."""
    result = make_result(status="failed")
    result.error, result.env_id, result.notes = "bad \ud800 text", "CartPole-v1\udfff", ["n\ud800"]
    store = Store(tmp_path / "store")
    store.record(result)
    row = store.history().iloc[0]
    assert row["error"] == "bad ? text" and row["env_id"] == "CartPole-v1?" and list(row["notes"]) == ["n?"]


def test_a_result_with_hostile_text_is_recorded(tmp_path):
    """A result that did not come through evaluate() (another producer) still records: the
    store never loses a row to a lone surrogate. (evaluate() itself sanitises.)"""
    from evaluator.evaluate import _clean_strings

    result = make_result(status="failed")
    result.error = "bad \ud800 \x1b[2J\r fake line"
    result.env_id = "CartPole-v1\ud800"
    _clean_strings(result)
    store = Store(tmp_path / "store")
    store.record(result)
    row = store.history().iloc[0]
    assert "\ud800" not in row["error"] and "\x1b" not in row["error"] and "\r" not in row["error"]


def test_submitter_names_keep_no_invisible_characters():
    """A name with a right-to-left override or zero-width characters could pass for another
    submitter's in the Space: what is not printable is dropped, as control characters are."""
    from leaderboard.rows import clean_text

    assert clean_text("carol\u202egnp.exe") == "carolgnp.exe"
    assert clean_text("ca\u200brol\u2060\ufeff") == "carol"
    assert clean_text("\x1b[31mcarol\r\n\u2028") == "[31mcarol"
    assert clean_text("bad \ud800 name") == "bad ? name"
    assert clean_text("\u202e\u200b") is None
    assert clean_text("Zoë Ω  ok", limit=5) == "Zoë Ω"
