"""Issue 10, acceptance 1: the course's own formats, trained here in seconds and pushed as the
course pushes them, evaluated through localhub and the normal CLI: each finishes ranked with a
consistent claim, and reruns and 1-vs-2-process runs are bit-identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import localhub
from evaluator.evaluate import evaluate
from evaluator.result import EvalResult
from scripts import course_agents as ca

PROJECT = Path(__file__).resolve().parents[2]
TAXI_SEEDS = list(range(700, 800))  # the course's Taxi eval_seed: a list of 100 seeds

# repo id -> (format, env key, deterministic)
EXPECTED = {
    "stu/q-FrozenLake-v1-4x4-noSlippery": ("qlearning", "FrozenLake-v1[is_slippery=False,map_name='4x4']", True),
    "stu/q-FrozenLake-v1-8x8-noSlippery": ("qlearning", "FrozenLake-v1[is_slippery=False,map_name='8x8']", True),
    "stu/q-Taxi-v3": ("qlearning", "Taxi-v4", True),
    "stu/Reinforce-CartPole-v1": ("reinforce", "CartPole-v1", False),
    "stu/Reinforce-CartPole-v1-3layers": ("reinforce", "CartPole-v1", False),
    "stu/ppo-LunarLander-v2": ("cleanrl_ppo", "LunarLander-v3", False),
}


@pytest.fixture(scope="module")
def course_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("coursehub")
    lake4 = ca.make_qlearning_env("FrozenLake-v1", "4x4", False)
    ca.package_qlearning(root / "stu/q-FrozenLake-v1-4x4-noSlippery", env_id="FrozenLake-v1", map_name="4x4",
                         slippery=False, table=ca.train_qtable(lake4, 1500, seed=1), n_training_episodes=1500)
    lake8 = ca.make_qlearning_env("FrozenLake-v1", "8x8", False)
    ca.package_qlearning(root / "stu/q-FrozenLake-v1-8x8-noSlippery", env_id="FrozenLake-v1", map_name="8x8",
                         slippery=False, table=ca.plan_qtable(lake8))
    taxi = ca.make_qlearning_env("Taxi-v3")
    ca.package_qlearning(root / "stu/q-Taxi-v3", env_id="Taxi-v3", table=ca.train_qtable(taxi, 4000, seed=2),
                         n_training_episodes=4000, eval_seed=TAXI_SEEDS)
    for layers, name in ((2, "Reinforce-CartPole-v1"), (3, "Reinforce-CartPole-v1-3layers")):
        policy = ca.train_reinforce("CartPole-v1", seed=3, layers=layers, n_episodes=40)
        ca.package_reinforce(root / "stu" / name, policy, env_id="CartPole-v1", h_size=16, n_training_episodes=40,
                             repo_name=name)
    agent = ca.train_cleanrl("LunarLander-v2", seed=1, updates=2)
    ca.package_cleanrl(root / "stu/ppo-LunarLander-v2", agent, env_id="LunarLander-v2")
    with localhub.serve(root, state=tmp_path_factory.mktemp("state")) as running:
        yield running


def _cli(hub, repo_id: str, tmp_path: Path) -> EvalResult:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", repo_id, "--json", "--no-store",
                           "--no-video"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return EvalResult.from_dict(json.loads(proc.stdout))


@pytest.mark.slow
@pytest.mark.parametrize("repo_id", list(EXPECTED))
def test_course_agent_through_cli_is_ranked_consistent_and_reproducible(course_hub, repo_id, tmp_path):
    fmt, env_key, deterministic = EXPECTED[repo_id]
    result = _cli(course_hub, repo_id, tmp_path)
    assert result.status == "finished", result.error
    assert (result.format, result.env_key, result.deterministic) == (fmt, env_key, deterministic)
    assert result.ranked is True and result.claim.verdict == "consistent", (result.claim, result.mean_reward)
    assert result.n_episodes == (100 if fmt == "qlearning" else 50)
    claimed_n = 100 if fmt == "qlearning" else 10
    assert result.claim.n_episodes == claimed_n
    again = evaluate(repo_id, endpoint=course_hub.url, cache_dir=tmp_path / "cache", token=False)
    split = evaluate(repo_id, endpoint=course_hub.url, cache_dir=tmp_path / "cache", token=False, processes=2)
    assert result.comparable() == again.comparable() == split.comparable()


def test_taxi_v3_table_reproduces_its_claim_on_taxi_v4(course_hub, tmp_path):
    """A table trained for the course's Taxi-v3 runs as Taxi-v4 (the same game with default
    options): on the course's own eval seeds our runner gives the course's `evaluate_agent`
    returns episode by episode (wherever the course's 99-step cap did not cut an episode)."""
    import pickle

    from evaluator.job import Job, execute

    result = evaluate("stu/q-Taxi-v3", endpoint=course_hub.url, cache_dir=tmp_path / "cache", token=False)
    assert result.status == "finished" and result.env_id == "Taxi-v3" and result.eval_env_id == "Taxi-v4"
    assert result.claim.verdict == "consistent"
    folder = next((tmp_path / "cache").rglob("q-learning.pkl")).parent
    model = pickle.loads((folder / "q-learning.pkl").read_bytes())  # our own file, written by the fixture
    course = ca.course_evaluate_qtable(ca.make_qlearning_env("Taxi-v3"), 99, 100, model["qtable"], TAXI_SEEDS)
    job = Job(str(folder), "qlearning", "q-learning.pkl", ("q-learning.pkl",), "Taxi-v3", 100, tuple(TAXI_SEEDS))
    ours = execute(job).episodes
    uncut = [i for i, n in enumerate(ours.lengths) if n < 99]
    assert len(uncut) >= 90
    assert [ours.returns[i] for i in uncut] == [course[i] for i in uncut]
    if len(uncut) == 100:
        assert np.mean(ours.returns) == pytest.approx(json.loads((folder / "results.json").read_text())["mean_reward"])
