"""Episode i sits at row i % N_SLOTS of its policy batch (protocol v1), so a network whose output
depends on the row (two hidden layers of 5 units: torch's CPU matrix product computes some rows
of an 8-row batch with another summation order when the inner width is not a multiple of 4)
still gives per-episode returns that do not depend on the split or the window."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from evaluator import runner
from evaluator.actors import LocalActor, Rows
from evaluator.envs import make_env, resolve_env
from evaluator.protocol import N_SLOTS

N = 20


@pytest.fixture(scope="module")
def odd_policy():
    from stable_baselines3.common.policies import ActorCriticPolicy

    from evaluator.agents.sb3 import SB3Policy

    env = make_env(resolve_env("Pendulum-v1"))
    torch.manual_seed(3)
    policy = ActorCriticPolicy(env.observation_space, env.action_space, lambda _: 0.0, net_arch=[5, 5])
    env.close()
    return SB3Policy(policy, None)


def test_the_network_depends_on_the_row(odd_policy):
    """The premise: the same observation gets another action at another row of the batch."""
    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(20):
        obs = rng.standard_normal((N_SLOTS, 3)).astype(np.float32)
        at = [odd_policy.act(np.roll(obs, k, axis=0))[k] for k in range(N_SLOTS)]  # row 0 at row k
        moved += sum(not np.array_equal(at[0], a) for a in at[1:])
    assert moved > 0


def _returns(policy, indices):
    out = runner.run_episodes(policy, resolve_env("Pendulum-v1"), n_episodes=N, episode_indices=indices)
    return dict(zip(out.episode_indices, out.returns, strict=True))


def test_returns_do_not_depend_on_the_split_or_the_window(odd_policy, monkeypatch):
    whole = _returns(odd_policy, None)
    parts = {**_returns(odd_policy, range(1, N, 2)), **_returns(odd_policy, range(0, N, 2))}
    reversed_ = _returns(odd_policy, reversed(range(N)))
    singles = {i: _returns(odd_policy, [i])[i] for i in (0, 5, 13)}
    monkeypatch.setattr(runner, "MAX_WINDOW", N_SLOTS)
    narrow = _returns(odd_policy, None)
    for other in (parts, reversed_, narrow):
        assert other == whole
    assert singles == {i: whole[i] for i in singles}


def test_placement_puts_each_live_row_at_its_position():
    from evaluator.actors import placement

    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.choice([8, 16, 56, 64]))
        positions = rng.integers(0, N_SLOTS, n)
        live = np.flatnonzero(rng.random(n) < rng.random())
        if not len(live):
            continue
        idx, at = placement(live, positions)
        assert len(idx) % N_SLOTS == 0 and (idx[at] == live).all()
        assert (at % N_SLOTS == positions[live]).all()  # each at its own position
        assert len(set(at.tolist())) == len(live)  # no two in one place
        assert len(idx) // N_SLOTS == np.bincount(positions[live]).max()  # as few batches as can be
        assert set(idx.tolist()) <= set(live.tolist())  # padding copies live rows


def test_stochastic_padding_draws_nothing():
    """Padding places get no generator: a live row's generator draws once per call."""
    seen = []

    class Recorder:
        def act(self, obs, *, deterministic, rngs=None):
            seen.append(rngs)
            return np.zeros(len(obs), dtype=np.int64)

    actor = LocalActor(Recorder())
    live = np.zeros(16, dtype=bool)
    live[[2, 10, 11]] = True
    positions = np.arange(16, dtype=np.uint8) % N_SLOTS
    actor.act_rows(np.zeros((16, 1), np.float32), Rows(live, live.copy(), np.arange(16, dtype=np.uint64), positions),
                   deterministic=False)
    assert len(seen) == 2  # rows 2 and 10 share position 2: two batches
    drawn = [g for call in seen for g in call if g is not None]
    assert len(drawn) == 3 and len({id(g) for g in drawn}) == 3


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_a_confined_player_places_rows_as_the_runner_does(tmp_path, monkeypatch):
    """The positions travel in the frame's flags: the refereed returns, whole and split over two
    players, are the in-process ones."""
    from dataclasses import replace

    from stable_baselines3 import PPO

    from evaluator.evaluate import run_job
    from evaluator.job import Job, execute
    from evaluator.runner import public_seeds
    from evaluator.sandbox import warm

    torch.manual_seed(3)
    model = PPO("MlpPolicy", "Pendulum-v1", seed=3, device="cpu", policy_kwargs={"net_arch": [5, 5]})
    model.save(tmp_path / "ppo-Pendulum-v1.zip")
    os.chmod(tmp_path / "ppo-Pendulum-v1.zip", 0o644)
    job = Job(str(tmp_path), "sb3", "ppo-Pendulum-v1.zip", ("ppo-Pendulum-v1.zip",), "Pendulum-v1", 12,
              tuple(public_seeds(12)))
    pool = warm.WarmPool()
    monkeypatch.setattr(warm, "_POOL", pool)
    monkeypatch.setenv(warm.ENABLED_ENV, "1")
    try:
        local = execute(job).episodes.returns
        assert run_job(job).episodes.returns == local
        assert run_job(job, processes=2).episodes.returns == local
        assert run_job(replace(job, episode_indices=(11, 3, 7))).episodes.returns == [local[i] for i in (11, 3, 7)]
    finally:
        pool.close()
