"""Issue 14, the unsafe-content report: the globals a repo's pickles would import if loaded the
usual way, scanned opcode by opcode (never loaded), recorded in the result with a flag, shown by
the CLI, kept by the store; the evaluation itself stays data-only."""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import pytest

from evaluator.__main__ import summary
from evaluator.pickle_report import is_benign, scan_repo, unsafe_imports
from tests.evaluator.payloads import ExecPayload, SystemPayload
from tests.evaluator.sb3_zip_edit import rewrite_zip
from tests.evaluator.test_evaluate import card, put_repo, trained  # noqa: F401  (trained: a fixture)
from tests.evaluator.test_hardening import hub as hardening_hub  # noqa: F401
from tests.evaluator.test_hardening import run

# `getattr(posix.system, '__call__')`: a gadget built by hand (protocol 0), as attackers do
GETATTR_GADGET = b"cbuiltins\ngetattr\n(cposix\nsystem\nS'__call__'\ntR."


class _NestedTensorBytes:
    """What a tensor pickled by plain pickle looks like (`torch.storage._load_from_bytes(b)`),
    with a hostile pickle as the bytes torch.load would load."""

    def __init__(self, inner: bytes) -> None:
        self.inner = inner

    def __reduce__(self):
        import torch.storage

        return (torch.storage._load_from_bytes, (self.inner,))


@pytest.fixture(scope="module")
def poisoned(trained, tmp_path_factory):  # noqa: F811
    """Repos whose pickles name dangerous globals in every place the report looks."""
    _, zip_bytes = trained
    marker = tmp_path_factory.mktemp("marker") / "payload-ran"
    system = pickle.dumps(SystemPayload(f"touch '{marker}'"), protocol=2)
    execute = pickle.dumps(ExecPayload(f"open({str(marker)!r}, 'w').close()"), protocol=4)

    def serialized(data):
        data["policy_class"][":serialized:"] = base64.b64encode(system).decode()
        data["lr_schedule"] = {":type:": "<class 'function'>", ":serialized:": base64.b64encode(execute).decode()}

    nested = pickle.dumps(_NestedTensorBytes(GETATTR_GADGET), protocol=4)
    return {
        "marker": marker,
        "files": {
            "serialized": {"agent.zip": rewrite_zip(zip_bytes, serialized)},
            "vecnorm": {"agent.zip": zip_bytes, "vec_normalize.pkl": execute},
            "nested": {"agent.zip": rewrite_zip(zip_bytes, replace={"pytorch_variables.pth": nested})},
            "clean": {"agent.zip": zip_bytes},
        },
    }


def test_benign_list():
    for name in ("numpy.core.multiarray._reconstruct", "collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                 "torch.FloatStorage", "gym.spaces.box.Box", "stable_baselines3.common.policies.ActorCriticPolicy",
                 "cloudpickle.cloudpickle._make_function", "__main__.Policy"):
        assert is_benign(name), name
    for name in ("os.system", "posix.system", "nt.system", "subprocess.Popen", "builtins.exec", "builtins.eval",
                 "builtins.getattr", "builtins.__import__", "runpy._run_code", "importlib.import_module",
                 "numpy.testing._private.utils.runstring", "torch.load", "pickle.loads", "__main__.system",
                 "<dynamic STACK_GLOBAL>", "<extension 7>", "shutil.rmtree", "webbrowser.open"):
        assert not is_benign(name), name


@pytest.mark.parametrize(("repo", "expected"), [
    ("serialized", {"posix.system", "builtins.exec"}),
    ("vecnorm", {"builtins.exec"}),
    ("nested", {"builtins.getattr", "posix.system"}),
])
def test_hostile_pickles_are_reported_without_running(poisoned, tmp_path, repo, expected):
    root = tmp_path / repo
    put_repo(root, "", poisoned["files"][repo])
    report = scan_repo(root, sorted(poisoned["files"][repo]))
    assert expected <= set(unsafe_imports(report.imports)), report
    assert set(report.unsafe) >= expected
    assert not poisoned["marker"].exists()


def test_a_clean_sb3_zip_is_all_benign(poisoned, tmp_path):
    root = tmp_path / "clean"
    put_repo(root, "", poisoned["files"]["clean"])
    report = scan_repo(root, ["agent.zip"])
    assert report.imports and report.unsafe == []
    assert "torch._utils._rebuild_tensor_v2" in report.imports  # policy.pth, one zip down
    assert any(name.startswith("stable_baselines3.common.utils.") for name in report.imports)  # `:serialized:`


@pytest.mark.shared
def test_the_zoo_agents_are_all_benign(zoo_root):
    for folder in sorted((zoo_root / "sb3").iterdir()):
        report = scan_repo(folder, [p.name for p in folder.iterdir()])
        assert report.imports and report.unsafe == [], (folder.name, report.unsafe)


@pytest.fixture(scope="module")
def poisoned_hub(hardening_hub, poisoned):  # noqa: F811
    root = Path(hardening_hub.storage.root)
    for name, files in poisoned["files"].items():
        put_repo(root, f"pickles/{name}", {**files, "README.md": card("CartPole-v1", "30 +/- 10")})
    return hardening_hub


def test_the_report_is_in_the_result_and_the_evaluation_proceeds_data_only(poisoned_hub, poisoned, tmp_path):
    result = run(poisoned_hub, "pickles/serialized", tmp_path, episodes=2)
    assert result.status == "finished", result.error  # the readable siblings were enough: data only
    assert result.pickle_unsafe is True
    assert {"posix.system", "builtins.exec"} <= set(result.pickle_imports)
    assert not poisoned["marker"].exists()
    text = summary(result)
    assert "UNSAFE PICKLES: loading this repo with PPO.load would run" in text and "posix.system" in text
    clean = run(poisoned_hub, "pickles/clean", tmp_path, episodes=2)
    assert clean.pickle_unsafe is False and clean.pickle_imports
    assert "all on the benign list" in summary(clean)
    failed = run(poisoned_hub, "pickles/vecnorm", tmp_path, episodes=2)
    assert failed.status == "failed" and failed.error_code == "unsafe_content"  # refused by the loader
    assert failed.pickle_unsafe is True and "builtins.exec" in failed.pickle_imports  # and reported


def test_the_store_keeps_the_report(poisoned_hub, tmp_path):
    from leaderboard.store import Store

    result = run(poisoned_hub, "pickles/serialized", tmp_path, episodes=2)
    store = Store(tmp_path / "store")
    store.record(result)
    back = store.results().to_dict("records")[0]
    from leaderboard.store import row_to_result

    again = row_to_result(back)
    assert again.pickle_unsafe is True and again.pickle_imports == result.pickle_imports
    doc = json.loads(again.to_json())
    assert doc["pickle_unsafe"] is True


def test_the_space_shows_the_report():
    from space_app.render import details_html

    row = {"repo_id": "a/b", "revision": "0" * 40, "env_key": "CartPole-v1", "rank": 1,
           "extra": json.dumps({"pickle_imports": ["numpy.dtype", "posix.system"], "pickle_unsafe": True})}
    html = details_html(row)
    assert "posix.system" in html and "would run" in html
    row["extra"] = json.dumps({"pickle_imports": ["numpy.dtype"], "pickle_unsafe": False})
    assert "benign" in details_html(row)


def test_report_never_fails_on_garbage(tmp_path):
    (tmp_path / "a.pkl").write_bytes(b"\x80\x04garbage")
    (tmp_path / "b.zip").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "c.pt").write_bytes(io.BytesIO(b"").getvalue())
    report = scan_repo(tmp_path, ["a.pkl", "b.zip", "c.pt", "missing.pkl"])
    assert isinstance(report.imports, list)


def test_what_cannot_be_scanned_is_never_called_benign(tmp_path, monkeypatch):
    from evaluator import pickle_report

    (tmp_path / "big.pkl").write_bytes(pickle.dumps(list(range(1000))))
    monkeypatch.setattr(pickle_report, "MAX_SCAN_BYTES", 100)
    report = scan_repo(tmp_path, ["big.pkl"])
    assert report.unsafe == ["<unscanned big.pkl>"] and report.unscanned


def test_the_published_leaderboard_carries_the_report():
    """What a deployed Space reads (leaderboard.parquet) keeps the report, in `extra`."""
    from leaderboard.publish import LEADERBOARD_COLUMNS

    assert "extra" in LEADERBOARD_COLUMNS

