"""Issue 11, panda-gym (course unit 6): Dict observations through the safe loader, the runner's
batching and per-key `vec_normalize.pkl` statistics, scored bit for bit as SB3's `evaluate_policy`
scores the agent; bad Dict agents refused."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from evaluator.agents import load_agent
from evaluator.agents.base import AgentFiles
from evaluator.envs import make_env, resolve_env
from evaluator.errors import SpaceMismatchError
from evaluator.job import Job, describe, execute
from evaluator.runner import BASE_SEED, public_seeds, run_episodes
from scripts.zoo_agents import panda_vec_env, reference_returns, train_panda

ENV = "PandaReachDense-v3"
ZIP = f"a2c-{ENV}.zip"


@pytest.fixture(scope="module")
def panda_agent(tmp_path_factory) -> Path:
    return train_panda(tmp_path_factory.mktemp("panda") / "repo", steps=200, seed=2)


def _files(root: Path) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in root.iterdir()))


def _load(root: Path, env_id: str = ENV):
    env = make_env(resolve_env(env_id))
    try:
        return load_agent("sb3", AgentFiles(root, ZIP, _files(root)), env.observation_space, env.action_space)
    finally:
        env.close()


def test_unit_6_env_is_in_the_table_with_its_aliases():
    spec = resolve_env("PandaReachDense-v2")
    assert spec.env_key == resolve_env("PandaReachDense-v1").env_key == ENV
    assert (spec.family, spec.n_episodes, spec.deterministic, spec.unit_threshold, spec.course_unit) == (
        "panda", 50, True, -3.5, "Unit 6")
    assert resolve_env("PandaReach-v1").return_bounds == (-50.0, 0.0)


def test_dict_agent_is_scored_as_evaluate_policy_scores_it_bit_for_bit(panda_agent):
    from stable_baselines3 import A2C
    from stable_baselines3.common.vec_env import VecNormalize

    agent = _load(panda_agent)
    assert agent.details["vec_normalize"] is True
    spec = resolve_env(ENV)
    ours = run_episodes(agent.policy, spec, n_episodes=8)
    venv = VecNormalize.load(str(panda_agent / "vec_normalize.pkl"), panda_vec_env(ENV, 8, BASE_SEED))
    venv.training, venv.norm_reward = False, False
    ref = reference_returns(A2C.load(panda_agent / ZIP), venv)  # our own file: SB3's loader is fine
    assert ours.returns == ref
    assert len(set(ours.returns)) == 8


def test_without_its_statistics_the_agent_scores_differently(panda_agent, tmp_path):
    """The per-key normalization matters: dropping it changes the returns (so the test above can fail)."""
    root = shutil.copytree(panda_agent, tmp_path / "r")
    (root / "config.yml").write_text((root / "config.yml").read_text().replace(
        "dict(norm_obs=True, norm_reward=True)", "false"))
    (root / "vec_normalize.pkl").unlink()
    spec = resolve_env(ENV)
    assert run_episodes(_load(root).policy, spec, n_episodes=8).returns != run_episodes(
        _load(panda_agent).policy, spec, n_episodes=8).returns


@pytest.mark.slow
def test_dict_agent_through_the_referee_and_player(panda_agent):
    from evaluator.sandbox.referee import play

    job = Job(str(panda_agent), "sb3", ZIP, _files(panda_agent), "PandaReachDense-v2", 50, public_seeds(50).seeds,
              episode_indices=(0, 7, 49))
    assert describe(job)[0].env_key == ENV
    assert play(job).episodes.returns == execute(job).episodes.returns


def _edit_dict_space(root: Path, old: str, new: str) -> None:
    path = root / ZIP
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    text = members["data"].decode()
    assert old in text
    members["data"] = text.replace(old, new).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize(("old", "new", "match"), [
    ("'desired_goal': Box(-10.0, 10.0, (3,), float32), ", "", "missing \\['desired_goal'\\]"),
    ("'observation': Box(", "'velocity': Box(-1.0, 1.0, (2,), float32), 'observation': Box(", "extra \\['velocity'\\]"),
    ("'observation': Box(-10.0, 10.0, (6,), float32)", "'observation': Box(-10.0, 10.0, (7,), float32)",
     "observation"),
])
def test_dict_agent_with_a_missing_extra_or_reshaped_key_is_refused(panda_agent, tmp_path, old, new, match):
    root = shutil.copytree(panda_agent, tmp_path / "r")
    _edit_dict_space(root, old, new)
    with pytest.raises(SpaceMismatchError, match=match):
        _load(root)


def test_per_key_statistics_of_the_wrong_shape_are_refused(panda_agent, tmp_path):
    from stable_baselines3.common.running_mean_std import RunningMeanStd
    from stable_baselines3.common.vec_env import VecNormalize

    root = shutil.copytree(panda_agent, tmp_path / "r")
    venv = VecNormalize.load(str(root / "vec_normalize.pkl"), panda_vec_env(ENV, 1, 0))  # our own file
    venv.obs_rms["desired_goal"] = RunningMeanStd(shape=(4,))
    venv.save(str(root / "vec_normalize.pkl"))
    with pytest.raises(SpaceMismatchError, match="desired_goal"):
        _load(root)


def test_dict_agent_on_a_box_env_is_refused(panda_agent):
    with pytest.raises(SpaceMismatchError):
        _load(panda_agent, "Pendulum-v1")
    assert np.isfinite(BASE_SEED)


def test_v3_ends_an_episode_at_success_the_drift_old_agents_are_told_about():
    """panda-gym v1 played all 50 steps (scripts/panda_drift.py measures the rest); v3 stops at success."""
    from evaluator.drift import drift_notes

    env = make_env(resolve_env("PandaReach-v1"))  # the RL Zoo's id, aliased
    obs, _ = env.reset(seed=3)
    steps, terminated = 0, False
    while not terminated and steps < 50:
        action = np.clip(10.0 * (obs["desired_goal"] - obs["achieved_goal"]), -1, 1)
        obs, reward, terminated, truncated, info = env.step(action)
        steps += 1
    env.close()
    assert terminated and info["is_success"] and reward == 0.0 and steps < 20
    assert "ends an episode at success" in drift_notes(ENV, "1.8.0")[0]
    assert drift_notes(ENV, "2.3.0") == []


def test_dict_agent_over_more_episodes_than_one_policy_batch(panda_agent):
    """Runs wider than the runner's 8-row policy batch (the protocol's 50 episodes for panda):
    a Dict batch is cut by rows key by key, and episode i's return does not depend on the run."""
    agent = _load(panda_agent)
    spec = resolve_env(ENV)
    wide = run_episodes(agent.policy, spec, n_episodes=24)
    assert wide.returns[:8] == run_episodes(agent.policy, spec, n_episodes=8).returns
    assert len(wide.returns) == 24 and len(set(wide.returns)) == 24
