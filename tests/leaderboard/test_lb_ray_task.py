"""The Ray task's contract without Ray (issue 13): a task carries the repo id, the sha and the
seeds chosen by the head, never the private salt; the task process drops a stray salt; the
local Ray's environment has none; `--backend ray` without Ray installed is a usage error."""

from __future__ import annotations

import os
import sys

from lb_helpers import make_result

from evaluator.runner import PRIVATE_SALT_ENV, private_seeds, public_seeds
from leaderboard import ray_task
from leaderboard.queue import Request, Status
from leaderboard.ray_backend import _local_ray_env, task_of
from leaderboard.worker import WorkerConfig


def _request(**changes) -> Request:
    base = dict(id=7, repo_id="ann/ppo-LunarLander-v2", revision="a" * 40, env_key="LunarLander-v3", env_id=None,
                episodes=None, commit_date=None, status=Status.RUNNING, attempts=1, max_attempts=5,
                submitted_at=0.0, updated_at=0.0, not_before=None, lease_owner="head", lease_expires=1.0,
                started_at=0.0, finished_at=None, error_code=None, error=None, result_id=None)
    return Request(**{**base, **changes})


def test_a_task_carries_the_heads_seeds_never_the_salt(monkeypatch):
    monkeypatch.delenv(PRIVATE_SALT_ENV, raising=False)
    task = task_of(_request(), WorkerConfig(endpoint="http://hub"))
    assert (task["seed_set"], task["seeds"]) == ("public", list(public_seeds(50).seeds))  # LunarLander: 50
    assert (task["repo_id"], task["revision"]) == ("ann/ppo-LunarLander-v2", "a" * 40)
    monkeypatch.setenv(PRIVATE_SALT_ENV, "s3cret-salt")
    task = task_of(_request(episodes=5), WorkerConfig())
    assert (task["seed_set"], task["seeds"]) == ("private", list(private_seeds(5, "s3cret-salt").seeds))
    assert "s3cret-salt" not in repr(task)


def test_the_task_process_drops_a_stray_salt_and_plays_the_given_seeds(monkeypatch, tmp_path):
    seen = {}

    def fake_evaluate(repo_id, **kwargs):
        seen.update(kwargs, salt=os.environ.get(PRIVATE_SALT_ENV))
        return make_result(repo_id)

    import evaluator.evaluate

    monkeypatch.setattr(evaluator.evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(ray_task, "_slot", None)
    monkeypatch.setenv(PRIVATE_SALT_ENV, "node-salt")
    task = {"repo_id": "ann/x", "revision": "b" * 40, "episodes": None, "env_id": None, "seed_set": "private",
            "seeds": [5, 6, 7], "video": False, "cache_dir": str(tmp_path / "cache"), "cache_max_bytes": None}
    out = ray_task.run_evaluation(task)
    assert seen["salt"] is None and PRIVATE_SALT_ENV not in os.environ
    assert (seen["seeds"].name, seen["seeds"].seeds) == ("private", (5, 6, 7))
    assert seen["revision"] == "b" * 40 and out["result"]["repo_id"] == "ann/x" and out["replay"] is None


def test_a_local_ray_starts_without_the_salt_on_loopback(monkeypatch):
    monkeypatch.setenv(PRIVATE_SALT_ENV, "s3cret-salt")
    with _local_ray_env():
        assert PRIVATE_SALT_ENV not in os.environ
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    assert os.environ[PRIVATE_SALT_ENV] == "s3cret-salt"  # the head keeps it


def test_backend_ray_without_ray_is_a_usage_error(monkeypatch, tmp_path, capsys):
    from leaderboard.__main__ import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["worker", "--store", str(tmp_path / "store"), "--backend", "ray", "--once"])
    assert code == 2 and "requirements-ray.txt" in capsys.readouterr().err
    assert main(["worker", "--store", str(tmp_path / "store"), "--num-cpus", "2", "--once"]) == 2
