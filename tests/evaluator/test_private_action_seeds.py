"""On the private seed set, a stochastic policy's action seeds are keyed with the private key,
wherever the episodes run: the job carries the key (never the salt) to the referee, a Ray node
included. Before this, the referee handed the runner plain seeds and every private evaluation
drew its actions from publicly derivable seeds."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac

import numpy as np
import pytest

from evaluator.envs import resolve_env
from evaluator.job import Job
from evaluator.runner import (
    PRIVATE,
    PRIVATE_SALT_ENV,
    SeedSet,
    _action_secret,
    action_seed,
    private_seeds,
    run_episodes,
)


class SeedRecorder:
    """An actor that plays action 0 and notes every episode's action seed."""

    def __init__(self) -> None:
        self.seeds: set[int] = set()

    def act_rows(self, obs, rows, *, deterministic):
        self.seeds.update(int(s) for s, live in zip(rows.action_seeds, rows.live, strict=True) if live)
        return np.zeros(len(rows.live), dtype=np.int64)


def test_private_seeds_carry_their_action_key_and_never_fall_back_to_the_public_one(monkeypatch):
    monkeypatch.delenv(PRIVATE_SALT_ENV, raising=False)
    seeds = private_seeds(4, salt="the deployment secret")
    assert seeds.action_key == hmac.new(b"the deployment secret", b"action-seeds", hashlib.sha256).digest()
    assert _action_secret(seeds) == seeds.action_key  # no salt here: the key travels with the seeds
    with pytest.raises(ValueError, match="action key"):
        _action_secret(SeedSet(PRIVATE, seeds.seeds))  # private seeds without a key: refused, not public


def test_a_job_on_private_seeds_plays_privately_keyed_action_seeds(monkeypatch):
    monkeypatch.delenv(PRIVATE_SALT_ENV, raising=False)
    seeds = private_seeds(3, salt="s3cret")
    job = Job("/nowhere", "reinforce", "model.pt", ("model.pt",), "CartPole-v1", 3, tuple(seeds),
              seed_set=PRIVATE, action_key=seeds.action_key.hex())
    job = Job.from_json(job.to_json())  # what a player host or a Ray node receives
    spec = dataclasses.replace(resolve_env("CartPole-v1"), deterministic=False)
    actor = SeedRecorder()
    run_episodes(actor, spec, n_episodes=3, seeds=job.seed_set_of())
    private = {action_seed(s, seeds.action_key) for s in seeds}
    public = {action_seed(s) for s in seeds}
    assert actor.seeds == private and not actor.seeds & public
