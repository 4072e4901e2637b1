"""Helpers of the leaderboard tests: course-format Hub repos, the CLI in a subprocess, and
synthetic EvalResults for store, ranking and publication tests (no evaluation needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from evaluator.result import ClaimResult, EvalResult

PROJECT = Path(__file__).resolve().parents[2]


def card(env_id: str, claim: str | None = "100.00 +/- 10.00", algo: str = "PPO") -> str:
    """A Deep RL course model card (what `package_to_hub` writes)."""
    metrics = f"    metrics:\n    - type: mean_reward\n      value: {claim}\n      name: mean_reward\n" if claim else ""
    return (
        "---\nlibrary_name: stable-baselines3\ntags:\n"
        f"- {env_id}\n- deep-reinforcement-learning\n- reinforcement-learning\n- stable-baselines3\n"
        f"model-index:\n- name: {algo}\n  results:\n  - task:\n      type: reinforcement-learning\n"
        f"      name: reinforcement-learning\n    dataset:\n      name: {env_id}\n      type: {env_id}\n"
        f"{metrics}---\n\n# **{algo}** Agent playing **{env_id}**\n"
    )


def put_agent(root: Path, repo_id: str, zip_bytes: bytes, *, env_id: str = "CartPole-v1",
              claim: str | None = "100.00 +/- 10.00") -> Path:
    folder = root / repo_id
    folder.mkdir(parents=True, exist_ok=True)
    name = repo_id.split("/")[1]
    (folder / f"{name}.zip").write_bytes(zip_bytes)
    (folder / "README.md").write_text(card(env_id, claim))
    (folder / "results.json").write_text(json.dumps({"mean_reward": 100.0, "std_reward": 10.0,
                                                     "n_eval_episodes": 10}))
    return folder


def cli_env(hub_url: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RL_LEADERBOARD_STORE", None)
    if hub_url:
        env["HF_ENDPOINT"] = hub_url
    return env


def run_cli(*args: str, hub_url: str | None = None, timeout: float = 300, check: bool = False,
            module: str = "leaderboard", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env={**cli_env(hub_url), **(env or {})}, cwd=PROJECT, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def make_result(repo_id: str = "ann/ppo-CartPole-v1", revision: str = "a" * 40, *, score: float = 100.0,
                mean: float | None = None, evaluated_at: str = "2025-01-01T00:00:00Z", env_key: str = "CartPole-v1",
                status: str = "finished", ranked: bool = True, seed_set: str = "public",
                video: str | None = None) -> EvalResult:
    finished = status == "finished"
    mean = score + 10.0 if mean is None else mean
    returns = [mean - 10.0, mean + 10.0] if finished else None
    return EvalResult(
        repo_id=repo_id, revision=revision, env_id=env_key, eval_env_id=env_key, eval_env_kwargs={},
        env_key=env_key, algo="ppo", format="sb3", protocol_version=1, seed_set=seed_set,
        n_episodes=2 if finished else None, seeds=[10_000, 10_001] if finished else None,
        episode_returns=returns, episode_lengths=[10, 20] if finished else None,
        mean_reward=mean if finished else None, std_reward=mean - score if finished else None,
        score=score if finished else None, iqm=mean if finished else None,
        ci95=[mean - 5, mean + 5] if finished else None, ranked=ranked and finished,
        claim=ClaimResult(mean, 1.0, 10, "consistent"), status=status,
        error_code=None if finished else "no_agent", error=None if finished else "no agent in the repo",
        video=video, evaluated_at=evaluated_at, evaluator_version="0.1.0",
        versions={"python": "3.11"}, platform="linux-x86_64",
    )
