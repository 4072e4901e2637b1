"""Issue 11, the RL Zoo's own env wrappers (`rl_zoo3.wrappers.*`, `utils.wrappers.*`): ours
(`evaluator.zoo_wrappers`) give the same observations, rewards and episode ends as rl_zoo3's
file on seeded rollouts; config.yml decides them on the trusted side; anything else is refused by
name; and an agent trained under rl_zoo3's HistoryWrapper is scored as `evaluate_policy` scores it."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from evaluator.agents.rlzoo import parse_config
from evaluator.env_wrappers import EnvView, decide_view
from evaluator.envs import make_env, resolve_env
from evaluator.errors import UnsafeContentError, UnsupportedFormatError
from evaluator.zoo_wrappers import VELOCITY_INDICES
from scripts.zoo_agents import zoo_config_text

DATA = Path(__file__).parent / "data"
REFERENCE_SHA256 = "bbef0d83bc3fcaf77ce410807fd8a9d3d78a09f0bf7d6d6c705243f7cb4d0415"  # rl_zoo3 2.9.2


@pytest.fixture(scope="module")
def ref():
    """rl_zoo3 2.9.2's wrappers.py, verbatim (tests/evaluator/data/rl_zoo3_wrappers.md)."""
    path = DATA / "rl_zoo3_wrappers.py"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == REFERENCE_SHA256
    spec = importlib.util.spec_from_file_location("rl_zoo3_wrappers_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _view(entries) -> EnvView:
    """The view the referee decides from a config.yml whose `env_wrapper` is `entries`."""
    config = parse_config(zoo_config_text({"env_wrapper": entries, "policy": "MlpPolicy"}))
    return decide_view(False, {"rl_zoo_config": True, "env_wrappers": config.env_wrappers, "frame_stack": None})


def _ours(env_id: str, entries) -> gym.Env:
    from dataclasses import replace

    return make_env(replace(resolve_env(env_id), view=_view(entries)))


def _reference_env(env_id: str, wrap) -> gym.Env:
    if env_id.startswith("Panda"):
        from evaluator.panda import make_panda

        return wrap(make_panda(env_id, disable_env_checker=True))
    return wrap(gym.make(env_id, disable_env_checker=True))


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _rollouts(ours: gym.Env, theirs: gym.Env, *, episodes: int = 3, max_steps: int = 150) -> int:
    """Seeded episodes with the same sampled actions through both; every step compared bit for bit."""
    assert ours.observation_space == theirs.observation_space
    actions = ours.action_space
    actions.seed(7)
    steps = 0
    for seed in range(episodes):
        (o1, _), (o2, _) = ours.reset(seed=seed), theirs.reset(seed=seed)
        assert _same(o1, o2)
        for _ in range(max_steps):
            action = actions.sample()
            o1, r1, te1, tr1, _ = ours.step(action)
            o2, r2, te2, tr2, _ = theirs.step(np.copy(action) if isinstance(action, np.ndarray) else action)
            assert _same(o1, o2) and (r1, te1, tr1) == (r2, te2, tr2) and type(r1) is type(r2), steps
            steps += 1
            if te1 or tr1:
                break
    return steps


CASES = [  # (env id, config.yml env_wrapper entries, the reference class name, its kwargs)
    ("Pendulum-v1", [{"rl_zoo3.wrappers.HistoryWrapper": {"horizon": 2}}], "HistoryWrapper", {"horizon": 2}),
    ("MountainCarContinuous-v0", [{"utils.wrappers.HistoryWrapper": {"horizon": 5}}], "HistoryWrapper",
     {"horizon": 5}),
    ("LunarLanderContinuous-v3", ["rl_zoo3.wrappers.HistoryWrapper"], "HistoryWrapper", {}),
    ("Pendulum-v1", [{"rl_zoo3.wrappers.FrameSkip": {"skip": 3}}], "FrameSkip", {"skip": 3}),
    ("CartPole-v1", ["rl_zoo3.wrappers.FrameSkip"], "FrameSkip", {}),  # episodes end mid-skip
    ("CartPole-v1", [{"rl_zoo3.wrappers.DelayedRewardWrapper": {"delay": 7}}], "DelayedRewardWrapper",
     {"delay": 7}),
    ("Pendulum-v1", ["utils.wrappers.DelayedRewardWrapper"], "DelayedRewardWrapper", {}),
    *[(env_id, ["rl_zoo3.wrappers.MaskVelocityWrapper"], "MaskVelocityWrapper", {}) for env_id in VELOCITY_INDICES],
]


@pytest.mark.parametrize(("env_id", "entries", "name", "kwargs"), CASES,
                         ids=[f"{c[2]}-{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_wrapper_matches_rl_zoo3_step_for_step(ref, env_id, entries, name, kwargs):
    ours = _ours(env_id, entries)
    theirs = _reference_env(env_id, lambda env: getattr(ref, name)(env, **kwargs))
    assert _rollouts(ours, theirs, episodes=10) > 20
    ours.close()
    theirs.close()


def test_history_wrapper_obs_dict_on_panda_matches_rl_zoo3(ref):
    ours = _ours("PandaReachDense-v3", [{"rl_zoo3.wrappers.HistoryWrapperObsDict": {"horizon": 3}}])
    theirs = _reference_env("PandaReachDense-v3", lambda env: ref.HistoryWrapperObsDict(env, horizon=3))
    assert ours.observation_space["observation"].shape == (3 * 6 + 3 * 3,)  # 3 observations, 3 actions
    assert _rollouts(ours, theirs, episodes=3, max_steps=60) > 50  # each at most 50 steps (truncated)
    ours.close()
    theirs.close()


def test_stacked_zoo_wrappers_match_in_order(ref):
    """tqc.yml's donkey-car pattern: FrameSkip then HistoryWrapper (the first innermost)."""
    ours = _ours("Pendulum-v1", [{"rl_zoo3.wrappers.FrameSkip": {"skip": 4}},
                                 {"rl_zoo3.wrappers.HistoryWrapper": {"horizon": 2}},
                                 "sb3_contrib.common.wrappers.TimeFeatureWrapper"])
    from sb3_contrib.common.wrappers import TimeFeatureWrapper

    theirs = _reference_env("Pendulum-v1", lambda env: TimeFeatureWrapper(
        ref.HistoryWrapper(ref.FrameSkip(env, skip=4), horizon=2)))
    assert _rollouts(ours, theirs) == 150  # Pendulum's 200 steps are 50 at skip 4: three episodes
    ours.close()
    theirs.close()


def test_masking_really_hides_the_velocities():
    env = _ours("CartPole-v1", ["rl_zoo3.wrappers.MaskVelocityWrapper"])
    obs, _ = env.reset(seed=1)
    for _ in range(5):
        obs, *_ = env.step(1)
    assert obs[1] == 0 and obs[3] == 0 and obs[0] != 0 and obs[2] != 0


# ------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize("name", ["rl_zoo3.wrappers.ActionNoiseWrapper", "rl_zoo3.wrappers.TruncatedOnSuccessWrapper",
                                  "utils.wrappers.DoneOnSuccessWrapper", "rl_zoo3.wrappers.PlotActionWrapper",
                                  "my_package.wrappers.HistoryWrapper", "ae.wrapper.AutoencoderWrapper"])
def test_wrappers_outside_the_allowlist_are_refused_by_name(name):
    with pytest.raises(UnsafeContentError, match=name.replace(".", r"\.")):
        parse_config(zoo_config_text({"env_wrapper": [name]}))


@pytest.mark.parametrize(("entry", "match"), [
    ({"rl_zoo3.wrappers.HistoryWrapper": {"horizon": 0}}, "horizon is 0: expected 1 to 64"),
    ({"rl_zoo3.wrappers.HistoryWrapper": {"horizon": 100_000}}, "horizon is 100000"),
    ({"rl_zoo3.wrappers.HistoryWrapper": {"horizon": "2"}}, "expected int"),
    ({"rl_zoo3.wrappers.HistoryWrapper": {"horizon": True}}, "expected int"),
    ({"rl_zoo3.wrappers.FrameSkip": {"skip": 2, "noise": 1}}, "no parameter 'noise'"),
    ({"rl_zoo3.wrappers.DelayedRewardWrapper": {"delay": 0}}, "delay is 0"),
    ({"rl_zoo3.wrappers.MaskVelocityWrapper": {"env_id": "CartPole-v1"}}, "no parameter 'env_id'"),
])
def test_bad_wrapper_kwargs_are_refused(entry, match):
    with pytest.raises(UnsupportedFormatError, match=match):
        _view([entry])


def test_non_literal_wrapper_kwargs_are_refused():
    text = ("!!python/object/apply:collections.OrderedDict\n- - - env_wrapper\n"
            "    - - rl_zoo3.wrappers.FrameSkip:\n          skip: !!python/name:os.system ''\n")
    with pytest.raises(Exception, match="(?i)yaml|tag|unsafe|not allowed|python/name"):
        parse_config(text)


@pytest.mark.parametrize(("env_id", "entry", "match"), [
    ("CartPole-v1", "rl_zoo3.wrappers.HistoryWrapper", "Box observations and actions"),  # Discrete actions
    ("Pendulum-v1", "rl_zoo3.wrappers.HistoryWrapperObsDict", "Dict observation"),
    ("Acrobot-v1", "rl_zoo3.wrappers.MaskVelocityWrapper", "no velocity terms for 'Acrobot-v1'"),
])
def test_wrappers_refuse_envs_they_cannot_wrap(env_id, entry, match):
    with pytest.raises(UnsupportedFormatError, match=match):
        _ours(env_id, [entry])


def test_the_player_rechecks_zoo_wrapper_kwargs_from_json():
    view = _view([{"rl_zoo3.wrappers.HistoryWrapper": {"horizon": 3}}])
    assert view.describe()["env_wrappers"] == [["HistoryWrapper", {"horizon": 3}]]
    assert EnvView.from_json(view.to_json()) == view
    with pytest.raises(UnsupportedFormatError, match="horizon is 1000"):
        EnvView.from_json({"wrappers": [["HistoryWrapper", [["horizon", 1000]]]], "frame_stack": 0})


# ------------------------------------------------------------------------------------------ an agent


def _train_under(ref, folder: Path, entries, wrap) -> Path:
    """PPO trained a few hundred steps on Pendulum under rl_zoo3's own wrappers, saved as an RL Zoo repo."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from scripts.zoo_agents import write_repo

    venv = make_vec_env("Pendulum-v1", n_envs=2, seed=5, wrapper_class=wrap)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=5, policy_kwargs={"net_arch": [32]})
    model.learn(256)
    return write_repo(folder, "ppo-Pendulum-v1", model, {"env_wrapper": entries, "policy": "MlpPolicy",
                                                         "n_timesteps": 256})


def _job(root: Path, n: int, **kw):
    from evaluator.job import Job
    from evaluator.runner import public_seeds

    files = tuple(sorted(p.name for p in root.iterdir()))
    return Job(str(root), "sb3", "ppo-Pendulum-v1.zip", files, "Pendulum-v1", n, public_seeds(n).seeds, **kw)


def _scores(ref, root: Path, wrap, n: int) -> tuple[list[float], list[float], dict]:
    """(ours through describe + the runner, evaluate_policy's on rl_zoo3's stack, the details).
    `n` is the runner's batch (8): the reference's policy calls then see the same batch shapes."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from evaluator.job import describe, execute
    from evaluator.runner import BASE_SEED
    from scripts.zoo_agents import reference_returns

    job = _job(root, n)
    _, _, details = describe(job)
    ours = execute(job).episodes.returns
    venv = make_vec_env("Pendulum-v1", n_envs=n, seed=BASE_SEED, wrapper_class=wrap)
    return ours, reference_returns(PPO.load(root / "ppo-Pendulum-v1.zip"), venv), details


@pytest.fixture(scope="module")
def history_agent(ref, tmp_path_factory) -> Path:
    return _train_under(ref, tmp_path_factory.mktemp("history") / "repo",
                        [{"rl_zoo3.wrappers.HistoryWrapper": {"horizon": 2}}], _history(ref))


def _history(ref):
    return lambda env: ref.HistoryWrapper(env, horizon=2)


def test_history_wrapper_agent_is_scored_as_evaluate_policy_scores_it_bit_for_bit(ref, history_agent):
    ours, theirs, details = _scores(ref, history_agent, _history(ref), 8)
    assert details["env_wrappers"] == [["HistoryWrapper", {"horizon": 2}]]
    assert ours == theirs and len(set(ours)) == 8


@pytest.mark.slow
def test_history_wrapper_agent_through_referee_and_player(history_agent):
    """The player builds the wrapper from the view the referee sends: same returns as in process."""
    from evaluator.job import execute
    from evaluator.sandbox.referee import play

    job = _job(history_agent, 8, episode_indices=(2, 5))
    assert play(job).episodes.returns == execute(job).episodes.returns


def test_frame_skip_agent_scores_the_same_total(ref, tmp_path):
    """FrameSkip hands the runner each skip's rewards already summed; a Monitor below it (the
    reference) sums them one by one: the same total up to float rounding (README)."""
    wrap = lambda env: ref.HistoryWrapper(ref.FrameSkip(env, skip=2), horizon=2)  # noqa: E731
    entries = [{"rl_zoo3.wrappers.FrameSkip": {"skip": 2}}, {"rl_zoo3.wrappers.HistoryWrapper": {"horizon": 2}}]
    root = _train_under(ref, tmp_path / "f", entries, wrap)
    ours, theirs, _ = _scores(ref, root, wrap, 8)
    assert np.allclose(ours, theirs, rtol=1e-12, atol=0) and len(set(ours)) == 8
