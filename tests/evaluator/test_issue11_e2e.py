"""Issue 11, acceptance 1: through `localhub` and the normal CLI, the demo hub's Atari
SpaceInvaders agent, PandaReachDense agent and TimeFeatureWrapper RL Zoo agent (RL Zoo repos
trained by scripts/train_demo_agents.py, with their honest cards) finish ranked under the protocol
of their family, with the wrappers decided from their config.yml; and the same three agents are
scored bit for bit as SB3's `evaluate_policy` scores them on the RL Zoo's own stack (deterministic
actions, the runner's batch of 8). The family tests (test_atari.py, test_panda.py,
test_env_wrappers.py, test_zoo_wrappers.py) cover reruns, splits, sampled actions and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import localhub
from evaluator.agents import load_agent
from evaluator.agents.base import AgentFiles
from evaluator.envs import make_env
from evaluator.job import Job, describe
from evaluator.result import EvalResult
from evaluator.runner import BASE_SEED, N_SLOTS, public_seeds, run_episodes
from scripts.zoo_agents import atari_vec_env, panda_vec_env, reference_returns, time_feature_vec_env

pytestmark = pytest.mark.slow
PROJECT = Path(__file__).resolve().parents[2]
DEMO = PROJECT / "demo_hub"

# repo id -> (env key, algo, episodes, deterministic, the env wrappers config.yml decides)
EXPECTED = {
    "arcade-ana/ppo-SpaceInvadersNoFrameskip-v4": ("SpaceInvadersNoFrameskip-v4", "ppo", 10, False,
                                                   [["AtariWrapper", {}]]),
    "robo-rui/a2c-PandaReachDense-v3": ("PandaReachDense-v3", "a2c", 50, True, []),
    "robo-rui/ppo-Pendulum-v1": ("Pendulum-v1", "ppo", 50, True, [["TimeFeatureWrapper", {}]]),
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with localhub.serve(DEMO, state=tmp_path_factory.mktemp("state")) as running:
        yield running


def _cli(hub, repo_id: str, tmp_path: Path) -> EvalResult:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(PROJECT)}
    proc = subprocess.run([sys.executable, "-m", "evaluator", "evaluate", repo_id, "--json", "--no-store"],
                          capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return EvalResult.from_dict(json.loads(proc.stdout))  # stdout is exactly one JSON document


@pytest.mark.parametrize("repo_id", list(EXPECTED))
def test_demo_agent_of_a_new_family_finishes_ranked_through_localhub_and_the_cli(hub, repo_id, tmp_path):
    env_key, algo, episodes, deterministic, _ = EXPECTED[repo_id]
    result = _cli(hub, repo_id, tmp_path)
    assert result.status == "finished", result.error
    assert (result.env_key, result.algo, result.n_episodes, result.deterministic) == (
        env_key, algo, episodes, deterministic)
    assert result.ranked is True and result.claim.verdict == "consistent", (result.claim, result.mean_reward)
    assert len(result.episode_returns) == episodes
    assert len(set(result.episode_returns)) > 1  # seeded episodes differ (Atari: sampled actions too)
    if deterministic:  # another process (a sandboxed player), the same seeded episodes: the same returns
        assert result.episode_returns[:N_SLOTS] == _ours(repo_id).returns


def _ours(repo_id: str):
    """The demo agent's first N_SLOTS episodes through the trusted describe + the runner, deterministic
    (the view config.yml decides checked on the way)."""
    root = DEMO / repo_id
    zip_name = f"{root.name}.zip"
    files = tuple(sorted(p.name for p in root.iterdir()))
    spec, _, details = describe(Job(str(root), "sb3", zip_name, files, EXPECTED[repo_id][0], N_SLOTS,
                                    public_seeds(N_SLOTS).seeds))
    assert details.get("env_wrappers") == EXPECTED[repo_id][4]
    env = make_env(spec)
    try:
        agent = load_agent("sb3", AgentFiles(root, zip_name, files), env.observation_space, env.action_space)
    finally:
        env.close()
    return run_episodes(agent.policy, replace(spec, deterministic=True), n_episodes=N_SLOTS)


def _normalized(root: Path, venv):
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize.load(str(root / "vec_normalize.pkl"), venv)
    venv.training, venv.norm_reward = False, False
    return venv


@pytest.mark.parametrize("repo_id", list(EXPECTED))
def test_demo_agent_is_scored_as_evaluate_policy_scores_it_on_the_rl_zoo_stack_bit_for_bit(repo_id):
    from stable_baselines3 import A2C, PPO

    env_key, algo = EXPECTED[repo_id][:2]
    root = DEMO / repo_id
    model = {"ppo": PPO, "a2c": A2C}[algo].load(root / f"{root.name}.zip")  # our own file: SB3's loader is fine
    if env_key.endswith("NoFrameskip-v4"):
        venv = atari_vec_env(env_key, N_SLOTS, BASE_SEED)
    elif env_key.startswith("Panda"):
        venv = _normalized(root, panda_vec_env(env_key, N_SLOTS, BASE_SEED))
    else:
        venv = _normalized(root, time_feature_vec_env(env_key, N_SLOTS, BASE_SEED))
    ours = _ours(repo_id)
    assert ours.returns == reference_returns(model, venv, deterministic=True)
    assert np.isfinite(ours.returns).all()
    # the barely trained Atari agent's greedy play scores the same in all 8 games; their lengths differ
    assert len(set(ours.returns)) > 1 or len(set(ours.lengths)) > 1
