"""Issue 14, evaluator side: what an attacker and a newcomer found. Impossible or unfit claims,
hostile strings from repos (surrogates, ANSI escapes, carriage returns), hostile card YAML,
downloads of unknown size, and the first-use errors of `python -m evaluator evaluate`."""

from __future__ import annotations

import contextlib
import gc
import json
import time
from pathlib import Path

import pytest
import yaml

import localhub
from evaluator import hub as hub_module
from evaluator.__main__ import main
from evaluator.card import Claim, front_matter, parse_claim
from evaluator.envs import resolve_env
from evaluator.evaluate import evaluate
from evaluator.stats import claim_verdict
from evaluator.text import clean_text, clean_tree
from tests.evaluator.sb3_zip_edit import rewrite_zip
from tests.evaluator.test_evaluate import card, put_repo, trained  # noqa: F401  (trained: a fixture)

HOSTILE = "evil\x1b[2K\r\x1b[1A  ppo [sb3]: mean 500.00 +/- 0.00 \u202e\u200b\ud800\x07"
UNSAFE_CHARS = ("\x1b", "\r", "\x07", "\u202e", "\u200b", "\ud800")


def _card_with_dataset(name_yaml: str, claim: str = "30 +/- 1") -> str:
    return (
        "---\nlibrary_name: stable-baselines3\ntags:\n- CartPole-v1\nmodel-index:\n- name: PPO\n  results:\n"
        f"  - task:\n      type: reinforcement-learning\n    dataset:\n      name: {name_yaml}\n"
        f"      type: {name_yaml}\n    metrics:\n    - type: mean_reward\n      value: {claim}\n---\n"
    )


@pytest.fixture(scope="module")
def hub(trained, tmp_path_factory):  # noqa: F811
    _, zip_bytes = trained
    root = tmp_path_factory.mktemp("hardening-root")
    big_int = "9" * 400
    for name, claim in (("huge-std", "1000000 +/- 1e200"), ("huge-both", "1e300 +/- 1e300"),
                        ("big-int", big_int), ("wide-std", "250 +/- 100000"), ("honest", "30 +/- 10"),
                        ("below", "-5 +/- 1")):
        put_repo(root, f"claims/{name}", {"ppo-CartPole-v1.zip": zip_bytes, "README.md": card("CartPole-v1", claim)})
    put_repo(root, "strings/surrogate", {"agent.zip": zip_bytes,
                                         "README.md": _card_with_dataset('"CartPole-v1\\ud800"')})

    def ansi_module(data):
        data["policy_class"]["__module__"] = HOSTILE
        data["policy_class"]["__init__"] = "<function EvilPolicy.__init__ at 0x7f>"

    put_repo(root, "strings/ansi", {"agent.zip": rewrite_zip(zip_bytes, ansi_module),
                                    "README.md": card("CartPole-v1", None)})
    put_repo(root, "strings/tagged", {"agent.zip": zip_bytes,
                                      "README.md": card("CartPole-v1", None).replace(
                                          "model-index:", 'extra: "\\x1b[31mred"\nmodel-index:')})
    put_repo(root, "big/readme", {"agent.zip": zip_bytes,
                                  "README.md": card("CartPole-v1", "30 +/- 1") + "x" * (3 * 1024 * 1024)})
    with localhub.serve(root, state=tmp_path_factory.mktemp("hardening-state")) as running:
        yield running


def run(hub, repo_id, tmp_path, **kwargs):
    return evaluate(repo_id, endpoint=hub.url, cache_dir=tmp_path / "cache", token=False, **kwargs)


@pytest.fixture
def default_endpoint(hub, monkeypatch):
    """The CLI reads HF_ENDPOINT through huggingface_hub's constants: point them at the hub."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub.url


# ------------------------------------------------------------------ claims


def test_env_table_knows_achievable_return_bounds():
    assert resolve_env("CartPole-v1").return_bounds == (0.0, 500.0)
    assert resolve_env("MountainCar-v0").return_bounds == (-200.0, 0.0)
    assert resolve_env("FrozenLake-v1-4x4-no_slippery").return_bounds == (0.0, 1.0)
    assert resolve_env("Taxi-v3").return_bounds == (-2000.0, 20.0)
    assert resolve_env("LunarLander-v2").return_bounds is None  # shaped rewards: unknown


@pytest.mark.parametrize(("mean", "std", "verdict"), [
    (1e6, 1e200, "inflated"), (1e300, 1e300, "inflated"), (501.0, 0.0, "inflated"), (-1.0, None, "inflated"),
    (250.0, 1e5, "unverifiable"), (250.0, 501.0, "unverifiable"), (100.0, 10.0, "consistent"),
])
def test_claims_outside_the_bounds(mean, std, verdict):
    got = claim_verdict(100.0, 5.0, 50, mean, std, 10, bounds=resolve_env("CartPole-v1").return_bounds)
    assert got == verdict


def test_a_claim_whose_margin_is_not_finite_is_unverifiable_without_bounds():
    assert claim_verdict(200.0, 10.0, 50, 1e300, 1e300, 10) == "unverifiable"


def test_numbers_that_do_not_fit_a_float_are_absent_with_a_note():
    meta = front_matter(card("CartPole-v1", "9" * 400))
    claim = parse_claim(meta)
    assert isinstance(claim, Claim) and claim.mean_reward is None and "does not fit a float" in claim.note
    assert parse_claim(front_matter(card("CartPole-v1", '"1e400 +/- 1"'))).mean_reward is None


@pytest.mark.parametrize(("repo", "verdict"), [
    ("huge-std", "inflated"), ("huge-both", "inflated"), ("big-int", "absent"), ("wide-std", "unverifiable"),
    ("honest", "consistent"), ("below", "inflated"),
])
def test_claim_verdicts_end_to_end(hub, tmp_path, repo, verdict):
    result = run(hub, f"claims/{repo}", tmp_path, episodes=2)
    assert result.status == "finished", result.error  # never internal_error
    assert result.claim.verdict == verdict
    if repo == "big-int":
        assert result.claim.mean_reward is None
        assert any("does not fit a float" in note for note in result.notes)
    json.dumps(result.to_dict(), allow_nan=False)  # a valid JSON document


# ------------------------------------------------------------------ strings from repos


def test_one_sanitiser_escapes_replaces_caps_and_is_idempotent():
    out = clean_text(HOSTILE)
    assert not any(ch in out for ch in UNSAFE_CHARS)
    assert "\\x1b[2K" in out and "\\r" in out and "\ufffd" in out
    assert clean_text(out) == out
    assert clean_text("é 中文 🙂 plain") == "é 中文 🙂 plain"
    assert len(clean_text("x" * 10_000, 100)) == 100
    assert clean_tree({"k\x1b": ["\ud800", 1]}) == {"k\\x1b": ["\ufffd", 1]}
    from evaluator.sandbox import referee

    assert referee.clean_text is clean_text  # the referee reuses it, no second copy


def test_lone_surrogate_in_the_card_is_recorded_and_printable(hub, tmp_path):
    from leaderboard.store import Store

    result = run(hub, "strings/surrogate", tmp_path, episodes=2)
    text = json.dumps(result.to_dict())
    assert "\\ud800" not in text  # no lone surrogate anywhere in the result
    result.to_json().encode("utf-8")  # printable on a UTF-8 terminal
    store = Store(tmp_path / "store")
    store.record(result)  # pyarrow used to raise here: the row was lost and the request re-run
    assert list(store.history()["repo_id"]) == ["strings/surrogate"]


def test_ansi_in_policy_class_never_reaches_the_terminal_or_the_store(hub, tmp_path, default_endpoint, capsys):
    from leaderboard.store import Store

    code = main(["evaluate", "strings/ansi", "--store", str(tmp_path / "store"), "--no-video", "--episodes", "2"])
    out = capsys.readouterr()
    assert code == 1
    assert "FAILED [unsafe_content]" in out.out
    for stream in (out.out, out.err):
        assert not any(ch in stream for ch in UNSAFE_CHARS), stream
    lines = out.out.splitlines()
    assert lines[1].startswith("  FAILED [unsafe_content]")  # no fake score line drawn over it
    assert not any(line.lstrip().startswith("ppo [sb3]: mean") for line in lines)
    stored = Store(tmp_path / "store").history()
    assert not any(ch in stored["error"][0] for ch in UNSAFE_CHARS)
    assert "\\x1b" in stored["error"][0]  # escaped, still readable


def test_card_strings_are_sanitised_where_they_enter():
    meta = front_matter(_card_with_dataset('"Cart\\x1b[2JPole\\u202e"'))
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "Cart\\x1b[2JPole\\u202e"


# ------------------------------------------------------------------ hostile card YAML


@pytest.mark.parametrize("hostile", [
    "a: [" + ",".join(["[]"] * 15000) + "]",
    "\n".join(f"k{i}: []" for i in range(15000)),
    "a: " + ":".join(["59"] * 60000),
    "a: " + ":".join(["59"] * 60000) + ".5",
    "- x\n" * 45000,
    "\n".join(f"k{i}: v" for i in range(7000)),  # within the size bound: the value count stops it
    ("- a\n" * 15000),
    "a: " + "[" * 5000 + "]" * 5000,
])
def test_hostile_card_yaml_is_bounded_before_parsing(hostile):
    readme = f"---\n{hostile}\n---\n# card\n"
    assert front_matter(readme) == {}
    gc.collect()
    gc.disable()  # a full collection of a long test session's heap is not the parser's work
    try:  # CPU time of this thread, the least disturbed of three runs (other threads, caches)
        elapsed = min(_thread_cpu(front_matter, readme) for _ in range(3))
        assert elapsed < 0.15 or elapsed < 0.6 * _thread_cpu(yaml.safe_load, hostile)  # vs the unbounded parse
    finally:
        gc.enable()


def _thread_cpu(parse, text: str) -> float:
    started = time.thread_time()
    with contextlib.suppress(Exception):
        parse(text)
    return time.thread_time() - started


def test_an_ordinary_card_still_parses():
    meta = front_matter(card("CartPole-v1", "248.58 +/- 18.59"))
    assert parse_claim(meta).mean_reward == 248.58


# ------------------------------------------------------------------ downloads of unknown size


@pytest.fixture
def sizeless_hub(hub, monkeypatch):
    """The hub answers its listings without file sizes (some mirrors do)."""
    from localhub.storage import Storage

    info = Storage.info

    def without_sizes(self, *args, **kwargs):
        data = info(self, *args, **kwargs)
        for sibling in data.get("siblings", []):
            sibling.pop("size", None)
        return data

    monkeypatch.setattr(Storage, "info", without_sizes)
    monkeypatch.setattr(hub_module, "MAX_SIDE_FILE_BYTES", 1024 * 1024)
    return hub


def _cached_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_a_file_of_unknown_size_is_checked_before_download(sizeless_hub, tmp_path):
    result = run(sizeless_hub, "big/readme", tmp_path, episodes=2)
    assert result.status == "failed" and result.error_code == "too_large", result.error
    assert "README.md" in result.error
    assert _cached_bytes(tmp_path / "cache") < 1024 * 1024  # the 3 MB README never landed


def test_a_file_nobody_sizes_is_streamed_with_a_cap(sizeless_hub, tmp_path, monkeypatch):
    real = hub_module._file_metadata

    def no_size(url, token):
        meta = real(url, token)
        return type(meta)(commit_hash=meta.commit_hash, etag=meta.etag, location=meta.location, size=None,
                          xet_file_data=None)

    monkeypatch.setattr(hub_module, "_file_metadata", no_size)
    result = run(sizeless_hub, "big/readme", tmp_path, episodes=2)
    assert result.status == "failed" and result.error_code == "too_large", result.error
    assert "stopped" in result.error
    assert _cached_bytes(tmp_path / "cache") < 2 * 1024 * 1024  # the cap plus at most one chunk


def test_a_small_file_nobody_sizes_is_still_downloaded(sizeless_hub, tmp_path, monkeypatch):
    real = hub_module._file_metadata

    def no_size(url, token):
        meta = real(url, token)
        return type(meta)(commit_hash=meta.commit_hash, etag=meta.etag, location=meta.location, size=None,
                          xet_file_data=None)

    monkeypatch.setattr(hub_module, "_file_metadata", no_size)
    monkeypatch.setattr(hub_module, "MAX_SIDE_FILE_BYTES", 16 * 1024 * 1024)
    result = run(sizeless_hub, "claims/honest", tmp_path, episodes=2)
    assert result.status == "finished", result.error
    assert result.claim.verdict == "consistent"


# ------------------------------------------------------------------ first use


@pytest.mark.parametrize("repo_id", ["bad//id with spaces", "not-a-valid-id", "a/b/c", "x\x1b[2J/y"])
def test_invalid_repo_ids_are_usage_errors_without_a_row(repo_id, tmp_path, default_endpoint, capsys):
    code = main(["evaluate", repo_id, "--store", str(tmp_path / "store"), "--json"])
    out = capsys.readouterr()
    assert code == 2
    doc = json.loads(out.out)  # still exactly one JSON document
    assert doc["status"] == "failed" and doc["error_code"] == "invalid_repo_id"
    assert "namespace/name" in out.err and "Traceback" not in out.err and "please report" not in out.err
    assert "\x1b" not in out.out + out.err
    assert not (tmp_path / "store").exists()  # no row, no store


def test_the_library_refuses_an_invalid_repo_id_without_asking_the_hub(tmp_path):
    result = evaluate("bad//id with spaces", endpoint="http://127.0.0.1:9", cache_dir=tmp_path, token=False)
    assert result.status == "failed" and result.error_code == "invalid_repo_id"


def test_a_result_that_could_not_be_recorded_exits_1(hub, tmp_path, default_endpoint, capsys, monkeypatch):
    from leaderboard.store import Store

    def broken(self, *args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(Store, "record", broken)
    code = main(["evaluate", "claims/honest", "--store", str(tmp_path / "store"), "--no-video", "--episodes", "2"])
    out = capsys.readouterr()
    assert code == 1
    assert "NOT recorded" in out.err and "disk on fire" in out.err
    assert "mean" in out.out  # the result is still printed


def test_a_store_that_is_a_file_is_a_usage_error(tmp_path, default_endpoint, capsys):
    (tmp_path / "afile").write_text("x")
    code = main(["evaluate", "claims/honest", "--store", str(tmp_path / "afile")])
    assert code == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5"])
def test_episodes_option_names_itself_and_what_it_expects(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "a/b", "--episodes", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --episodes" in err and "whole number of at least 1" in err
    assert "_positive" not in err


def test_hub_unreachable_names_the_endpoint(tmp_path):
    result = evaluate("ann/agent", endpoint="http://127.0.0.1:9", cache_dir=tmp_path, token=False)
    assert result.error_code == "hub_unavailable"
    assert "http://127.0.0.1:9" in result.error


def test_hub_404_is_a_sentence_not_a_dump(hub, tmp_path):
    result = run(hub, "nobody/nothing", tmp_path)
    assert result.error_code == "repo_not_found"
    assert "\n" not in result.error and len(result.error) < 300
    assert hub.url in result.error
