"""Actions checked the way `env.step` must get them: inside the space, finite, in its dtype.

The referee checks every action a policy returns, after the format's own post-processing,
before it reaches the env; a bad one names the episode, the step and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def _show(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a), threshold=20, precision=6)


def check_action(space: gym.Space, action: Any) -> Any:
    """Return `action` in the form `env.step` takes, or raise ValueError saying what is wrong."""
    a = np.asarray(action)
    if a.dtype == object:
        raise ValueError("is not numeric")
    if isinstance(space, spaces.Discrete):
        if a.shape != ():
            raise ValueError(f"has shape {a.shape}, expected a scalar")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"has dtype {a.dtype}, expected an integer")
        v = int(a)
        if not space.start <= v < space.start + space.n:
            raise ValueError(f"is outside {space}")
        return v
    if isinstance(space, spaces.Box):
        if a.shape != space.shape:
            raise ValueError(f"has shape {a.shape}, expected {space.shape}")
        if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            raise ValueError("is not a finite number")
        cast = a.astype(space.dtype)
        if not (np.all(np.isfinite(cast)) and np.all(cast >= space.low)
                and np.all(cast <= space.high)):
            raise ValueError(f"is outside {space}")
        return cast
    if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
        if a.shape != space.shape:
            raise ValueError(f"has shape {a.shape}, expected {space.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"has dtype {a.dtype}, expected integers")
        cast = a.astype(space.dtype)
        if not space.contains(cast):
            raise ValueError(f"is outside {space}")
        return cast
    if not space.contains(action):
        raise ValueError(f"is outside {space}")
    return action


def check_actions(space: gym.Space, actions: np.ndarray, slots: Sequence[int]) -> list[Any] | None:
    """`check_action` for the rows `slots` of a batch at once (Discrete and Box spaces): the
    same values `check_action` returns, or None when a row fails or the space is another kind
    (the caller then checks row by row, which names the first bad row)."""
    a = actions
    if not slots or a.dtype == object:
        return None
    rows = a[list(slots)]
    if isinstance(space, spaces.Discrete):
        if a.ndim != 1 or a.dtype.kind not in "iu":
            return None
        values = rows.tolist()  # a few Python ints: cheaper to check here than with numpy calls
        low, high = int(space.start), int(space.start) + int(space.n)
        return values if all(low <= v < high for v in values) else None
    if isinstance(space, spaces.Box):
        if a.shape[1:] != space.shape or not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(rows)):
            return None
        cast = rows.astype(space.dtype)
        if not (np.all(np.isfinite(cast)) and np.all(cast >= space.low) and np.all(cast <= space.high)):
            return None
        return list(cast)
    return None
