"""End to end through localhub and the real huggingface_hub client: a repo id in, an EvalResult
out; every bad input is a `failed` result with the right `error_code` and exit code 1."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import localhub
from evaluator.evaluate import evaluate
from evaluator.result import EvalResult
from tests.evaluator.sb3_zip_edit import rewrite_zip

PROJECT = Path(__file__).resolve().parents[2]


def card(env_id: str, claim: str | None, algo: str = "PPO") -> str:
    metrics = f"    metrics:\n    - type: mean_reward\n      value: {claim}\n" if claim else ""
    return (
        "---\nlibrary_name: stable-baselines3\ntags:\n"
        f"- {env_id}\n- deep-reinforcement-learning\n- reinforcement-learning\n- stable-baselines3\n"
        f"model-index:\n- name: {algo}\n  results:\n  - task:\n      type: reinforcement-learning\n"
        f"    dataset:\n      name: {env_id}\n      type: {env_id}\n{metrics}---\n# {algo} on {env_id}\n"
    )


def put_repo(root: Path, repo_id: str, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        path = root / repo_id / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PPO CartPole agent, trained here in seconds, and SB3's own model for reference."""
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "CartPole-v1", n_steps=256, batch_size=64, n_epochs=4, seed=3,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    model.learn(2048)
    path = tmp_path_factory.mktemp("agent") / "ppo-CartPole-v1.zip"
    model.save(path)
    return model, path.read_bytes()


@pytest.fixture(scope="module")
def hub(trained, tmp_path_factory):
    model, zip_bytes = trained
    root = tmp_path_factory.mktemp("hubroot")
    put_repo(root, "ann/ppo-CartPole-v1", {"ppo-CartPole-v1.zip": zip_bytes,
                                           "README.md": card("CartPole-v1", "30.00 +/- 10.00"),
                                           "results.json": '{"n_eval_episodes": 10}'})
    put_repo(root, "ann/inflated", {"agent.zip": zip_bytes, "README.md": card("CartPole-v1", "500.00 +/- 0.00")})
    put_repo(root, "ann/no-claim", {"agent.zip": zip_bytes, "README.md": card("CartPole-v1", None)})
    put_repo(root, "ann/other-env-claim", {"agent.zip": zip_bytes, "README.md": card("Acrobot-v1", "1 +/- 1")
                                           .replace("tags:\n- Acrobot-v1", "tags:\n- CartPole-v1")})
    put_repo(root, "bad/gated", {"agent.zip": zip_bytes,
                                 "README.md": card("CartPole-v1", None).replace("---\n", "---\ngated: manual\n", 1)})
    put_repo(root, "bad/no-agent", {"README.md": card("CartPole-v1", "1 +/- 1"), "notes.txt": "nothing here"})
    put_repo(root, "bad/unknown-env", {"agent.zip": zip_bytes, "README.md": card("Foo-v0", "1 +/- 1")})
    put_repo(root, "bad/module-env", {"agent.zip": zip_bytes, "README.md": card("os:Foo-v0", "1 +/- 1")})
    put_repo(root, "bad/wrong-space", {"agent.zip": zip_bytes, "README.md": card("Acrobot-v1", "1 +/- 1")})
    put_repo(root, "bad/truncated", {"agent.zip": zip_bytes[: len(zip_bytes) // 2],
                                     "README.md": card("CartPole-v1", None)})
    put_repo(root, "bad/not-a-zip", {"agent.zip": b"<html>this is not a zip</html>",
                                     "README.md": card("CartPole-v1", None)})

    def custom_class(data):
        data["policy_class"]["__module__"] = "__main__"
        data["policy_class"]["__init__"] = "<function EvilPolicy.__init__ at 0x7f>"

    put_repo(root, "bad/custom-policy", {"agent.zip": rewrite_zip(zip_bytes, custom_class),
                                         "README.md": card("CartPole-v1", None)})
    import torch

    state = torch.load(io.BytesIO(zipfile.ZipFile(io.BytesIO(zip_bytes)).read("policy.pth")), weights_only=True)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    buf = io.BytesIO()
    torch.save(state, buf)
    put_repo(root, "bad/nan-weights", {"agent.zip": rewrite_zip(zip_bytes, replace={"policy.pth": buf.getvalue()}),
                                       "README.md": card("CartPole-v1", None)})
    with localhub.serve(root, state=tmp_path_factory.mktemp("state")) as running:
        yield running


def run(hub, repo_id, tmp_path, **kwargs) -> EvalResult:
    return evaluate(repo_id, endpoint=hub.url, cache_dir=tmp_path / "cache", token=False, **kwargs)


def test_evaluates_and_matches_sb3_predict_episode_by_episode(hub, trained, tmp_path, sb3_reference_returns):
    """The safe loader plus the batched runner add no drift: each episode's return equals a plain
    loop over SB3's own `model.predict`, one episode at a time, on the same seed."""
    import gymnasium as gym

    model, _ = trained
    result = run(hub, "ann/ppo-CartPole-v1", tmp_path, episodes=12)
    assert result.status == "finished", result.error
    assert result.n_episodes == 12 and not result.ranked and len(result.revision) == 40
    expected = sb3_reference_returns(model, gym.make("CartPole-v1"), result.seeds)
    assert result.episode_returns == expected
    assert result.episode_lengths == [int(r) for r in expected]  # CartPole: +1 per step
    assert result.mean_reward == pytest.approx(np.mean(expected))
    assert result.score == pytest.approx(np.mean(expected) - np.std(expected))


def test_full_protocol_result_fields(hub, tmp_path):
    result = run(hub, "ann/ppo-CartPole-v1", tmp_path)
    data = result.to_dict()
    assert data["status"] == "finished" and data["ranked"] is True
    assert data["n_episodes"] == 50 and len(data["episode_returns"]) == 50
    assert (data["env_id"], data["eval_env_id"], data["env_key"]) == ("CartPole-v1", "CartPole-v1", "CartPole-v1")
    assert data["algo"] == "ppo" and data["format"] == "sb3" and data["seed_set"] == "public"
    assert data["claim"]["n_episodes"] == 10 and data["claim"]["mean_reward"] == 30.0
    assert data["ci95"][0] <= data["mean_reward"] <= data["ci95"][1]
    assert data["versions"]["torch"].startswith("2.13.0") and data["error"] is None
    json.dumps(data, allow_nan=False)  # strict JSON: no NaN anywhere


def test_two_runs_and_split_over_processes_are_identical(hub, tmp_path):
    first = run(hub, "ann/ppo-CartPole-v1", tmp_path, episodes=16)
    second = run(hub, "ann/ppo-CartPole-v1", tmp_path, episodes=16)
    split = run(hub, "ann/ppo-CartPole-v1", tmp_path, episodes=16, processes=2)
    assert first.status == second.status == split.status == "finished"
    assert first.comparable() == second.comparable() == split.comparable()


@pytest.mark.parametrize("repo_id,verdict", [
    ("ann/inflated", "inflated"),
    ("ann/no-claim", "absent"),
    ("ann/other-env-claim", "unverifiable"),
])
def test_claim_verdicts(hub, tmp_path, repo_id, verdict):
    result = run(hub, repo_id, tmp_path, episodes=10, env_id="CartPole-v1")
    assert result.status == "finished", result.error
    assert result.claim.verdict == verdict
    if repo_id == "ann/other-env-claim":  # --env overrides what the repo states: recorded, unranked
        assert (result.env_id, result.env_key, result.ranked) == ("Acrobot-v1", "CartPole-v1", False)


@pytest.mark.parametrize("repo_id,kwargs,code,words", [
    ("nobody/nothing", {}, "repo_not_found", "not found"),
    ("ann/ppo-CartPole-v1", {"revision": "f" * 40}, "revision_not_found", "revision"),
    ("ann/ppo-CartPole-v1", {"revision": "no-such-branch"}, "revision_not_found", "revision"),
    ("bad/no-agent", {}, "no_agent", "No agent"),
    ("bad/gated", {}, "gated_repo", "HF_TOKEN"),
    ("bad/unknown-env", {}, "unknown_env", "Supported env ids"),
    ("bad/module-env", {}, "unknown_env", "imports code"),
    ("ann/ppo-CartPole-v1", {"env_id": "os:Evil-v0"}, "unknown_env", "imports code"),
    ("bad/wrong-space", {}, "space_mismatch", ""),
    ("bad/truncated", {}, "corrupt_file", ""),
    ("bad/not-a-zip", {}, "corrupt_file", ""),
    ("bad/custom-policy", {}, "unsafe_content", "__main__"),
    ("bad/nan-weights", {}, "invalid_weights", ""),
])
def test_bad_inputs_fail_cleanly(hub, tmp_path, repo_id, kwargs, code, words):
    result = run(hub, repo_id, tmp_path, **kwargs)
    assert result.status == "failed"
    assert result.error_code == code, result.error
    assert words.lower() in result.error.lower()
    assert result.ranked is False and result.episode_returns is None
    data = result.to_dict()
    assert set(data) >= {"schema_version", "repo_id", "revision", "env_key", "claim", "error", "versions"}
    assert data["claim"]["verdict"] in ("unverifiable", "absent")


def test_actions_outside_the_space_fail_the_evaluation(hub, tmp_path, monkeypatch):
    """A format whose post-processed actions leave the space is stopped by the runner's check."""
    import evaluator.agents as agents
    import evaluator.evaluate as evaluate_module
    from evaluator.agents.base import LoadedAgent
    from evaluator.job import execute

    class OutOfRange:
        def act(self, obs, *, deterministic=True):
            return np.full(len(obs), 7)  # CartPole has actions {0, 1}

    def load_bad(files, observation_space, action_space):
        return LoadedAgent(OutOfRange(), "bad", "sb3")

    monkeypatch.setattr(agents, "get_loader", lambda name: load_bad)
    # the fake format lives in this process only: run the job here rather than in a sandbox
    monkeypatch.setattr(evaluate_module, "_run_part", lambda job, progress=None: execute(job, progress))
    result = run(hub, "ann/ppo-CartPole-v1", tmp_path, episodes=2)
    assert result.status == "failed" and result.error_code == "invalid_action"
    assert "7" in result.error and "10000" not in result.error  # never a seed in a message

    # On the private seed set a failure keeps its code but not its details (they could carry what
    # the agent saw, hence the seeds), and the row says it is private.
    from evaluator.runner import private_seeds

    monkeypatch.setenv("EVALUATOR_PRIVATE_SALT", "s3cret")
    result = run(hub, "ann/ppo-CartPole-v1", tmp_path, episodes=2)
    assert result.status == "failed" and result.error_code == "invalid_action" and result.seed_set == "private"
    assert "withheld" in result.error and "--revision" in result.error
    assert not any(str(seed) in result.error for seed in private_seeds(2, "s3cret"))


def test_payload_in_serialized_field_or_extra_key_is_never_run(hub, trained, tmp_path, hostile_pickles):
    import base64

    _, zip_bytes = trained
    marker = tmp_path / "payload-ran"
    payload = base64.b64encode(hostile_pickles(marker)["os.system"]).decode()

    def poison(data):
        for key in ("policy_class", "observation_space", "action_space"):
            data[key][":serialized:"] = payload
        data["invented_key"] = {":type:": "<class 'builtins.object'>", ":serialized:": payload}

    root = Path(hub.storage.root)
    put_repo(root, "evil/serialized", {"agent.zip": rewrite_zip(zip_bytes, poison, extra={"evil.pkl": b"x"}),
                                       "README.md": card("CartPole-v1", None)})
    result = run(hub, "evil/serialized", tmp_path, episodes=2)
    assert not marker.exists()
    assert result.status == "finished", result.error  # the readable siblings were enough


def test_cli_json_and_exit_codes(hub, tmp_path):
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(PROJECT)}
    ok = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", "ann/ppo-CartPole-v1", "--episodes", "3",
                         "--json", "--store", str(tmp_path / "store")], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)  # exactly one JSON document on stdout
    assert doc["status"] == "finished" and doc["n_episodes"] == 3
    from leaderboard.store import Store

    assert list(Store(tmp_path / "store").results()["revision"]) == [doc["revision"]]
    bad = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", "bad/no-agent", "--json", "--no-store"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error_code"] == "no_agent"
    text = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", "bad/no-agent", "--no-store"],
                          capture_output=True, text=True, env=env)
    assert text.returncode == 1 and "FAILED [no_agent]" in text.stdout
    usage = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", "x/y", "--episodes", "0"],
                           capture_output=True, text=True, env=env)
    assert usage.returncode == 2
    down = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", "ann/ppo-CartPole-v1", "--json",
                           "--no-store"], capture_output=True, text=True,
                          env={**env, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert down.returncode == 3, down.stdout + down.stderr
    assert json.loads(down.stdout)["error_code"] == "hub_unavailable"
