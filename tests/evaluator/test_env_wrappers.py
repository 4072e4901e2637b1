"""Issue 11, RL Zoo env wrappers: an agent whose config.yml names `TimeFeatureWrapper` (with
`normalize`) is scored exactly as SB3's `evaluate_policy` scores it on the RL Zoo's stack; the
view (wrappers, frame stack) is decided on the trusted side and survives the trip to the player."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluator.agents import load_agent
from evaluator.agents.base import AgentFiles
from evaluator.env_wrappers import EnvView, apply_view, checked_view, decide_view
from evaluator.envs import make_env, resolve_env
from evaluator.errors import UnsafeContentError, UnsupportedFormatError
from evaluator.job import Job, describe, execute
from evaluator.runner import BASE_SEED, public_seeds, run_episodes
from scripts.zoo_agents import reference_returns, time_feature_vec_env, train_time_feature

ENV = "Pendulum-v1"


@pytest.fixture(scope="module")
def tf_agent(tmp_path_factory) -> Path:
    return train_time_feature(tmp_path_factory.mktemp("tf") / "repo", steps=256, seed=3)


def _job(root: Path, n: int, **kw) -> Job:
    files = tuple(sorted(p.name for p in root.iterdir()))
    return Job(str(root), "sb3", f"ppo-{ENV}.zip", files, ENV, n, public_seeds(n).seeds, **kw)


def test_time_feature_agent_is_scored_as_evaluate_policy_scores_it_bit_for_bit(tf_agent):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    spec, _, details = describe(_job(tf_agent, 8))
    assert details["env_wrappers"] == [["TimeFeatureWrapper", {}]] and spec.view.frame_stack == 0
    env = make_env(spec)
    assert env.observation_space.shape == (4,)  # Pendulum's 3 + the time feature
    files = AgentFiles(tf_agent, f"ppo-{ENV}.zip", tuple(p.name for p in tf_agent.iterdir()))
    agent = load_agent("sb3", files, env.observation_space, env.action_space)
    env.close()
    ours = run_episodes(agent.policy, spec, n_episodes=8)
    venv = VecNormalize.load(str(tf_agent / "vec_normalize.pkl"), time_feature_vec_env(ENV, 8, BASE_SEED))
    venv.training, venv.norm_reward = False, False
    ref = reference_returns(PPO.load(tf_agent / f"ppo-{ENV}.zip"), venv)  # our own file: SB3's loader is fine
    assert ours.returns == ref
    assert len(set(ours.returns)) == 8


def test_without_the_wrapper_the_agent_does_not_even_fit(tf_agent, tmp_path):
    """The wrapper changes what the agent sees: the same zip on the bare env is refused."""
    env = make_env(resolve_env(ENV))
    files = AgentFiles(tf_agent, f"ppo-{ENV}.zip", tuple(p.name for p in tf_agent.iterdir()))
    with pytest.raises(Exception, match="observation"):
        load_agent("sb3", files, env.observation_space, env.action_space)
    env.close()


@pytest.mark.slow
def test_time_feature_agent_through_referee_and_player(tf_agent):
    from evaluator.sandbox.referee import play

    job = _job(tf_agent, 8, episode_indices=(1, 6))
    assert play(job).episodes.returns == execute(job).episodes.returns


def test_view_round_trips_and_is_rechecked_from_json():
    view = checked_view([("AtariWrapper", {"noop_max": 10, "clip_reward": False})], 4)
    assert EnvView.from_json(view.to_json()) == view
    with pytest.raises(UnsafeContentError, match="Cheat"):
        EnvView.from_json({"wrappers": [["Cheat", []]], "frame_stack": 0})
    with pytest.raises(UnsupportedFormatError):
        EnvView.from_json({"wrappers": [["TimeFeatureWrapper", [["max_steps", "9"]]]], "frame_stack": 0})


def test_decide_view_rules():
    assert decide_view(False, {"rl_zoo_config": True, "env_wrappers": [], "frame_stack": None}) is None
    assert decide_view(False, {}) is None
    atari = decide_view(True, {})
    assert atari.wrappers == (("AtariWrapper", ()),) and atari.frame_stack == 4
    # an RL Zoo Atari config without the wrapper still runs under the standard Atari stack
    v = decide_view(True, {"rl_zoo_config": True, "env_wrappers": [], "frame_stack": 4})
    assert v.wrappers == (("AtariWrapper", ()),)
    stacked = decide_view(False, {"rl_zoo_config": True, "env_wrappers": [["FlattenObservation", {}]],
                                  "frame_stack": 2})
    env = apply_view(make_env(resolve_env("CartPole-v1")), stacked)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (8,) and np.array_equal(obs[:4], np.zeros(4))  # zeros, then the newest frame last
    obs2, *_ = env.step(0)
    assert np.array_equal(obs2[:4], obs[4:])
