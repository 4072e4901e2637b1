"""Stochastic actions of a rebuilt SB3 policy, drawn per episode (protocol v1; Atari's convention).

SB3 samples from torch's and numpy's global generators, so its draws depend on everything else
the process did. Here every row of a batch draws from its own episode's generator (`rngs[i]`,
seeded by the referee's action seed; None for padding rows, which draw nothing), following the
algorithm's own code path:

- DQN / QR-DQN (`DQN.predict`): with probability `exploration_rate` (the agent's final rate, as
  saved) a uniform random action, else the greedy one (the policy's deterministic action).
- Actor-critic (PPO, A2C, TRPO): a draw from the policy's own action distribution
  (`policy.get_distribution`): inverse CDF of the categorical probabilities for Discrete, the
  diagonal Gaussian's mean + std * N(0, 1) for Box (then SB3's clipping).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from evaluator.errors import UnsupportedFormatError


def _categorical(probs: np.ndarray, rngs: list[Any]) -> np.ndarray:
    out = probs.argmax(axis=1)
    cdf = np.cumsum(probs.astype(np.float64), axis=1)
    for row, rng in enumerate(rngs):
        if rng is not None:
            u = rng.random() * cdf[row, -1]
            out[row] = min(int(np.searchsorted(cdf[row], u, side="right")), probs.shape[1] - 1)
    return out


def sample_actions(policy: Any, lean: Any, obs: Any, rngs: list[Any], *, exploration_rate: float | None) -> np.ndarray:
    """Actions for a batch: each live row draws from its own generator (see module docstring)."""
    from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution
    from stable_baselines3.common.policies import ActorCriticPolicy

    rngs = list(rngs) if rngs is not None else []
    space = policy.action_space
    if exploration_rate is not None:  # DQN family: epsilon-greedy around the greedy action
        actions = np.array(lean.act(obs))
        for row, rng in enumerate(rngs):
            if rng is not None and rng.random() < exploration_rate:
                actions[row] = rng.integers(int(space.n))
        return actions
    if not isinstance(policy, ActorCriticPolicy):
        raise UnsupportedFormatError(
            f"stochastic actions of {type(policy).__name__} are not supported (the protocol samples "
            "actor-critic and DQN-family policies)")
    with torch.inference_mode():
        dist = policy.get_distribution(lean.to_tensor(obs))
        if isinstance(dist, CategoricalDistribution) and isinstance(space, spaces.Discrete):
            return _categorical(dist.distribution.probs.numpy(), rngs)
        if isinstance(dist, DiagGaussianDistribution) and isinstance(space, spaces.Box):
            mean = dist.distribution.mean.numpy().astype(np.float64)
            std = dist.distribution.stddev.numpy().astype(np.float64)
    if not isinstance(dist, DiagGaussianDistribution) or not isinstance(space, spaces.Box):
        raise UnsupportedFormatError(
            f"stochastic actions from a {type(dist).__name__} are not supported (Categorical and diagonal "
            "Gaussian policies are)")
    actions = mean.copy()
    for row, rng in enumerate(rngs):
        if rng is not None:
            actions[row] = mean[row] + std[row] * rng.standard_normal(mean.shape[1:])
    actions = actions.astype(np.float32).reshape((-1, *space.shape))
    if policy.squash_output:
        return policy.unscale_action(actions)
    return np.clip(actions, space.low, space.high)


def exploration_rate(data: dict[str, Any]) -> float:
    """A DQN-family agent's final exploration rate, as its zip saved it (`exploration_rate`, else
    `exploration_final_eps`); a value outside [0, 1] is refused."""
    from evaluator.errors import CorruptFileError

    for key in ("exploration_rate", "exploration_final_eps"):
        value = data.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0.0 <= float(value) <= 1.0:
                raise CorruptFileError(f"the zip's `{key}` is {value!r}: expected a rate in [0, 1]")
            return float(value)
    return 0.0
