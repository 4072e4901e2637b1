"""What the course's REINFORCE and CleanRL PPO agents compute, rebuilt from their weights alone:
small MLPs ending in a categorical distribution, sampled as the course evaluates them.

Sampling is the protocol's (DESIGN.md): each live row draws one uniform number from its own
episode's generator and takes the first action whose cumulative probability exceeds it, so an
episode's actions do not depend on which slot, process or machine plays it. Padding rows draw
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from evaluator.errors import InvalidActionError, SpaceMismatchError


def check_spaces(what: str, observation_space: gym.Space, action_space: gym.Space) -> tuple[int, int]:
    """(observation size, number of actions): flat Box observations, Discrete actions."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise SpaceMismatchError(f"{what} samples from a categorical distribution: it needs a Discrete action "
                                 f"space, and the env's is {action_space}.")
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise SpaceMismatchError(f"{what} takes flat vector observations; the env's are {observation_space}.")
    return int(observation_space.shape[0]), int(action_space.n)


def check_chain(what: str, layers: Sequence[tuple[str, Any, Any]], n_inputs: int, n_actions: int) -> None:
    """Each layer's input is the previous one's output; the first reads the observation, the
    last gives one value per action. `layers` holds (name, weight, bias or None)."""
    width = n_inputs
    for name, weight, bias in layers:
        if weight.dim() != 2 or weight.shape[1] != width:
            raise SpaceMismatchError(
                f"{what}: layer `{name}` has weights {tuple(weight.shape)}, but its input has {width} values "
                f"({'the observation' if width == n_inputs and name == layers[0][0] else 'the layer before'}).")
        if bias is not None and tuple(bias.shape) != (weight.shape[0],):
            raise SpaceMismatchError(f"{what}: layer `{name}` has a bias of shape {tuple(bias.shape)}.")
        width = int(weight.shape[0])
    if width != n_actions:
        raise SpaceMismatchError(f"{what} outputs {width} action values, but the env has {n_actions} actions.")


def sample(probs: np.ndarray, rngs: Sequence[np.random.Generator | None] | None) -> np.ndarray:
    """One action per row from `probs` (rows, n): inverse CDF of one uniform draw per live row."""
    cumulative = np.cumsum(probs, axis=1)
    actions = np.zeros(len(probs), dtype=np.int64)
    for row, rng in enumerate(rngs or []):
        if rng is None or row >= len(probs):
            continue
        total = cumulative[row, -1]
        if not np.isfinite(total) or total <= 0:
            raise InvalidActionError("the policy's action probabilities are not finite (NaN or overflow).")
        u = rng.random() * total
        actions[row] = min(int(np.searchsorted(cumulative[row], u, side="right")), probs.shape[1] - 1)
    return actions


class CategoricalMLP:
    """A batch of observations -> action probabilities through `forward`, then greedy or sampled."""

    def __init__(self, forward: Callable[[Any], Any], what: str) -> None:
        self.forward = forward
        self.what = what

    def act(self, obs: np.ndarray, *, deterministic: bool = True, rngs: Any = None) -> np.ndarray:
        import torch

        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        with torch.inference_mode():  # no autograd bookkeeping at all (lighter than no_grad)
            probs = self.forward(x).to(torch.float64).numpy()
        if not np.all(np.isfinite(probs)):
            raise InvalidActionError(f"{self.what} produced NaN or infinite action probabilities on this env's "
                                     "observations (its weights overflow).")
        if deterministic:
            return np.argmax(probs, axis=1).astype(np.int64)
        return sample(probs, rngs)
