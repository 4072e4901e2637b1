import dataclasses
import multiprocessing as mp

import gymnasium as gym
import numpy as np
import pytest

import evaluator.runner as runner
from evaluator.envs import make_env, make_vector_env, resolve_env
from evaluator.errors import InvalidActionError
from evaluator.runner import (
    BASE_SEED,
    N_SLOTS,
    EpisodeResults,
    private_seeds,
    public_seeds,
    run_episodes,
)

# Balances a while, then falls: episodes of 25-60 steps, so slots free up at different times.
CARTPOLE_W = (0.0, 0.0, 1.0, 0.0)


class LinearPolicy:
    """Row-wise numpy policy: each row's action depends on that row only."""

    def __init__(self, w=CARTPOLE_W):
        self.w = np.asarray(w)
        self.batch_shapes: list[tuple[int, ...]] = []

    def act(self, obs, *, deterministic=True):
        self.batch_shapes.append(obs.shape)
        return ((obs * self.w).sum(axis=1) > 0).astype(np.int64)


class ConstantPolicy:
    def __init__(self, action):
        self.action = np.asarray(action)

    def act(self, obs, *, deterministic=True):
        return np.stack([self.action] * len(obs))


class FixedBatchPolicy:
    def __init__(self, actions):
        self.actions = actions

    def act(self, obs, *, deterministic=True):
        return self.actions


def _run_part(indices):
    """Runs in a spawned process (module-level so it pickles by name)."""
    res = run_episodes(LinearPolicy(), resolve_env("CartPole-v1"), episode_indices=indices)
    return res.episode_indices, res.returns, res.lengths


def test_constants():
    assert runner.PROTOCOL_VERSION == 1
    assert N_SLOTS >= 4
    assert runner.protocol_constants()["n_slots"] == N_SLOTS


def test_result_types_and_defaults():
    spec = resolve_env("CartPole-v1")
    res = run_episodes(LinearPolicy(), spec)
    assert res.n_episodes == spec.n_episodes == len(res.returns) == 50
    assert res.seed_set == "public" and res.env_key == "CartPole-v1"
    assert res.seeds == [BASE_SEED + i for i in range(50)]
    assert res.episode_indices == list(range(50))
    assert all(type(r) is float for r in res.returns)
    assert all(type(n) is int for n in res.lengths)
    assert len(set(res.lengths)) > 5  # the fixture does exercise uneven episode lengths


@pytest.mark.parametrize("n", [1, 3, N_SLOTS, 21])
def test_policy_always_sees_a_full_batch(n):
    policy = LinearPolicy()
    run_episodes(policy, resolve_env("CartPole-v1"), n_episodes=n)
    assert policy.batch_shapes and {s for s in policy.batch_shapes} == {(N_SLOTS, 4)}


def test_each_episode_starts_from_its_own_seed_whatever_the_slot(monkeypatch):
    resets: list[tuple[int, int]] = []

    class Recorder(gym.Wrapper):
        def __init__(self, env, slot):
            super().__init__(env)
            self.slot = slot

        def reset(self, *, seed=None, options=None):
            resets.append((self.slot, seed))
            return self.env.reset(seed=seed, options=options)

    def recording_envs(spec, n_slots):
        return [Recorder(e, k) for k, e in enumerate(make_vector_env(spec, n_slots))]

    monkeypatch.setattr(runner, "make_vector_env", recording_envs)
    spec = resolve_env("CartPole-v1")
    n = runner.MAX_WINDOW + 30  # more episodes than envs: slots are reused
    res = run_episodes(LinearPolicy(), spec, n_episodes=n)
    assert sorted(seed for _, seed in resets) == res.seeds == list(public_seeds(n))
    assert len({slot for slot, _ in resets}) == runner.window_slots(spec, n) < n  # episodes moved between slots

    # Each episode equals a lone rollout from reset(seed=BASE_SEED + i), summed in float64.
    policy = LinearPolicy()
    env = make_env(spec)
    for i in range(n):
        obs, _ = env.reset(seed=BASE_SEED + i)
        total, steps, done = 0.0, 0, False
        while not done:
            action = policy.act(np.stack([obs] * N_SLOTS))[0]
            obs, r, term, trunc, _ = env.step(int(action))
            total += float(r)
            steps += 1
            done = term or trunc
        assert (res.returns[i], res.lengths[i]) == (total, steps)
    env.close()


def test_two_runs_identical():
    spec = resolve_env("LunarLander-v2")
    a = run_episodes(ConstantPolicy(np.int64(0)), spec, n_episodes=12)
    b = run_episodes(ConstantPolicy(np.int64(0)), spec, n_episodes=12)
    assert a == b


def test_split_over_indices_identical():
    spec = resolve_env("CartPole-v1")
    full = run_episodes(LinearPolicy(), spec)
    first = run_episodes(LinearPolicy(), spec, episode_indices=range(25))
    second = run_episodes(LinearPolicy(), spec, episode_indices=range(25, 50))
    assert first.returns + second.returns == full.returns
    assert first.lengths + second.lengths == full.lengths
    assert EpisodeResults.merge([second, first]) == full
    # Any subset, in any order, gives the same per-episode results.
    odd = run_episodes(LinearPolicy(), spec, episode_indices=[49, 7, 3, 30])
    assert odd.returns == [full.returns[i] for i in (49, 7, 3, 30)]


def test_split_across_two_processes_identical():
    full = run_episodes(LinearPolicy(), resolve_env("CartPole-v1"))
    with mp.get_context("spawn").Pool(2) as pool:
        parts = pool.map(_run_part, [list(range(25)), list(range(25, 50))])
    assert parts[0][0] + parts[1][0] == list(range(50))
    assert parts[0][1] + parts[1][1] == full.returns
    assert parts[0][2] + parts[1][2] == full.lengths


def test_torch_policy_split_identical():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 4),
    )

    class TorchPolicy:
        def act(self, obs, *, deterministic=True):
            with torch.no_grad():
                return net(torch.as_tensor(obs, dtype=torch.float32)).argmax(dim=1).numpy()

    spec = resolve_env("LunarLander-v2")
    full = run_episodes(TorchPolicy(), spec, n_episodes=10)
    parts = [
        run_episodes(TorchPolicy(), spec, n_episodes=10, episode_indices=ix)
        for ix in ([9, 0, 5], [1, 2, 3, 4, 6, 7, 8])
    ]
    assert EpisodeResults.merge(parts).returns == full.returns


def test_continuous_actions_and_progress():
    calls = []
    res = run_episodes(
        ConstantPolicy(np.zeros(2, dtype=np.float32)), resolve_env("LunarLanderContinuous-v2"),
        n_episodes=5, progress=lambda done, total: calls.append((done, total)),
    )
    assert len(res.returns) == 5
    assert calls == [(k, 5) for k in range(1, 6)]


def test_toy_text_scalar_observations():
    res = run_episodes(ConstantPolicy(np.int64(0)), resolve_env("Taxi-v3"), n_episodes=3)
    assert res.returns == [-200.0] * 3 and res.lengths == [200] * 3


@pytest.mark.parametrize(
    ("env_id", "action", "shown"),
    [
        ("CartPole-v1", np.int64(2), "2"),
        ("CartPole-v1", np.int64(-1), "-1"),
        ("CartPole-v1", np.float32(1.0), "1."),
        ("CartPole-v1", np.array([0, 1]), "[0 1]"),
        ("LunarLanderContinuous-v2", np.array([np.nan, 0.0], dtype=np.float32), "nan"),
        ("LunarLanderContinuous-v2", np.array([np.inf, 0.0], dtype=np.float32), "inf"),
        ("LunarLanderContinuous-v2", np.array([1.5, 0.0], dtype=np.float32), "1.5"),
        ("LunarLanderContinuous-v2", np.zeros(3, dtype=np.float32), "[0. 0. 0.]"),
    ],
)
def test_invalid_actions_refused_with_the_value(env_id, action, shown):
    with pytest.raises(InvalidActionError) as info:
        run_episodes(ConstantPolicy(action), resolve_env(env_id), n_episodes=2)
    assert shown in str(info.value) and "Episode 0, step 0" in str(info.value)
    assert "10000" not in str(info.value)  # a message never carries a seed (it may be published)


@pytest.mark.parametrize("actions", [np.zeros(N_SLOTS - 1, np.int64), np.int64(0)])
def test_wrong_batch_size_refused(actions):
    with pytest.raises(InvalidActionError, match=str(N_SLOTS)):
        run_episodes(FixedBatchPolicy(actions), resolve_env("CartPole-v1"), n_episodes=2)


def test_bounds_are_inclusive():
    res = run_episodes(
        ConstantPolicy(np.ones(2, dtype=np.float32)), resolve_env("LunarLanderContinuous-v2"),
        n_episodes=1,
    )
    assert len(res.returns) == 1


def test_seed_sets(monkeypatch):
    assert list(public_seeds(3)) == [BASE_SEED, BASE_SEED + 1, BASE_SEED + 2]
    a = private_seeds(20, "salt-a")
    assert a.name == "private" and a == private_seeds(20, "salt-a")
    assert list(a)[:5] == list(private_seeds(5, "salt-a"))  # prefix-stable
    assert list(a) != list(private_seeds(20, "salt-b"))
    assert all(0 <= s < 2**31 for s in a)
    monkeypatch.setenv("EVALUATOR_PRIVATE_SALT", "salt-a")
    assert private_seeds(20) == a
    monkeypatch.delenv("EVALUATOR_PRIVATE_SALT")
    with pytest.raises(ValueError, match="EVALUATOR_PRIVATE_SALT"):
        private_seeds(3)


def test_result_names_its_seed_set():
    spec = resolve_env("CartPole-v1")
    policy = LinearPolicy()
    private = run_episodes(policy, spec, seeds=private_seeds(4, "s"))
    assert private.seed_set == "private" and private.seeds == list(private_seeds(4, "s"))
    assert run_episodes(policy, spec, seeds=list(public_seeds(4))).seed_set == "public"
    assert run_episodes(policy, spec, seeds=[1, 2, 3]).seed_set == "custom"


def test_bad_arguments():
    spec = resolve_env("CartPole-v1")
    with pytest.raises(ValueError):
        run_episodes(LinearPolicy(), spec, n_episodes=5, episode_indices=[5])
    with pytest.raises(ValueError):
        run_episodes(LinearPolicy(), spec, n_episodes=5, episode_indices=[1, 1])
    with pytest.raises(ValueError):
        run_episodes(LinearPolicy(), spec, n_episodes=5, seeds=[1, 2])
    a = run_episodes(LinearPolicy(), spec, n_episodes=4, episode_indices=[0, 1])
    with pytest.raises(ValueError, match="overlapping"):
        EpisodeResults.merge([a, a])


class SeededCoinPolicy:
    """A stochastic row-wise policy: each row draws from its own generator (None: padding)."""

    def __init__(self):
        self.batch_shapes = []

    def act(self, obs, *, deterministic=True, rngs=None):
        self.batch_shapes.append(obs.shape)
        assert len(rngs) == len(obs)
        return np.array([int(r.integers(2)) if r is not None else 0 for r in rngs], dtype=np.int64)


@pytest.mark.parametrize("window", [1, 8, 12, 16, 64])
def test_results_do_not_depend_on_the_window(monkeypatch, window):
    """How many episodes are in flight (and so how the live rows are cut into policy batches)
    is not part of the protocol: deterministic and stochastic returns are the same."""
    spec = resolve_env("CartPole-v1")
    stochastic = dataclasses.replace(spec, deterministic=False)
    reference = run_episodes(LinearPolicy(), spec, n_episodes=30)
    coin_reference = run_episodes(SeededCoinPolicy(), stochastic, n_episodes=30)
    monkeypatch.setattr(runner, "MAX_WINDOW", window)
    policy, coin = LinearPolicy(), SeededCoinPolicy()
    assert run_episodes(policy, spec, n_episodes=30) == reference
    assert run_episodes(coin, stochastic, n_episodes=30) == coin_reference
    assert {s for s in policy.batch_shapes + coin.batch_shapes} == {(N_SLOTS, 4)}  # always full batches


def test_window_rows_are_whole_policy_batches():
    spec = resolve_env("CartPole-v1")
    assert runner.window_slots(spec, 50) == 50 and runner.window_rows(spec, 50) == 56
    assert runner.window_rows(spec, 3) == N_SLOTS and runner.window_rows(spec, 0) == N_SLOTS
    assert runner.window_slots(spec, 1000) == runner.MAX_WINDOW
    narrow = dataclasses.replace(spec, family="panda")
    assert runner.window_slots(narrow, 50) == N_SLOTS and runner.window_rows(narrow, 50) == N_SLOTS


def test_no_window_setting_asks_for_more_rows_than_a_call_may_carry(monkeypatch):
    monkeypatch.setattr(runner, "MAX_WINDOW", 10_000)
    spec = resolve_env("CartPole-v1")
    assert runner.window_rows(spec, 5000) == runner.MAX_CALL_ROWS and runner.MAX_CALL_ROWS % N_SLOTS == 0


def test_box2d_episodes_each_get_a_fresh_env(monkeypatch):
    """A Box2D env never plays a second episode (its world keeps state across resets); classic
    control envs, whose reset sets all their state, are reused."""
    made: list[str] = []
    real = runner.make_env

    def counting(spec, **kwargs):
        made.append(spec.family)
        return real(spec, **kwargs)

    monkeypatch.setattr(runner, "make_env", counting)
    monkeypatch.setattr(runner, "MAX_WINDOW", 8)
    res = run_episodes(ConstantPolicy(np.int64(0)), resolve_env("LunarLander-v2"), n_episodes=12)
    assert len(res.returns) == 12 and made.count("box2d") == 12 - 8  # the 8 first from make_vector_env
    made.clear()
    run_episodes(LinearPolicy(), resolve_env("CartPole-v1"), n_episodes=12)
    assert made == []
