"""`vec_normalize.pkl` statistics of Dict observations (panda-gym, course unit 6): one running
mean/var per key, applied as `VecNormalize.normalize_obs` does in eval mode (SB3 2.x): each key
of `norm_obs_keys` becomes float32 clip((obs - mean) / sqrt(var + eps)), the others pass as is.
The statistics must fit the env's Dict space key by key (shape included): else a space mismatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from evaluator.agents.pickle_numpy import to_scalar
from evaluator.errors import CorruptFileError, SpaceMismatchError


@dataclass(frozen=True)
class DictVecNormalizeStats:
    stats: dict[str, tuple[np.ndarray, np.ndarray]]  # key -> (mean, var)
    keys: tuple[str, ...]  # the normalized keys (`norm_obs_keys`)
    epsilon: float
    clip_obs: float
    norm_obs: bool

    def normalize(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.norm_obs:
            return obs
        out = dict(obs)
        for key in self.keys:
            mean, var = self.stats[key]
            out[key] = np.clip((obs[key] - mean) / np.sqrt(var + self.epsilon),
                               -self.clip_obs, self.clip_obs).astype(np.float32)
        return out


def dict_stats(state: dict[str, Any], stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> DictVecNormalizeStats:
    """From a recorded VecNormalize state whose `obs_rms` is per key (already read as arrays)."""
    keys = state.get("norm_obs_keys")
    keys = list(stats) if keys is None else keys
    if not isinstance(keys, list) or not all(isinstance(k, str) and k in stats for k in keys):
        raise CorruptFileError("vec_normalize.pkl: `norm_obs_keys` does not name keys of its statistics.")
    epsilon = to_scalar(state.get("epsilon", 1e-8), "vec_normalize.pkl: `epsilon`")
    clip_obs = to_scalar(state.get("clip_obs", 10.0), "vec_normalize.pkl: `clip_obs`")
    norm_obs = state.get("norm_obs", True)
    if not isinstance(norm_obs, bool) or epsilon < 0 or clip_obs <= 0:
        raise CorruptFileError("vec_normalize.pkl: `norm_obs`, `epsilon` or `clip_obs` is invalid.")
    return DictVecNormalizeStats(dict(stats), tuple(keys), epsilon, clip_obs, norm_obs)


def check_stats_fit(obs_stats: Any, space: gym.Space) -> None:
    """SpaceMismatchError unless the statistics have the shape of the observations they normalize."""
    if obs_stats is None or not obs_stats.norm_obs:
        return
    if isinstance(obs_stats, DictVecNormalizeStats):
        if not isinstance(space, gym.spaces.Dict):
            raise SpaceMismatchError(
                f"vec_normalize.pkl normalizes Dict observations, the evaluation env's are {space}.")
        for key in obs_stats.keys:
            sub = space.spaces.get(key)
            mean, _ = obs_stats.stats[key]
            if sub is None or mean.shape != tuple(sub.shape or ()):
                raise SpaceMismatchError(
                    f"vec_normalize.pkl normalizes {key!r} with statistics of shape {mean.shape}, but the "
                    f"evaluation env's {key!r} is {sub}.")
        return
    if isinstance(space, gym.spaces.Dict) or obs_stats.mean.shape != tuple(space.shape or ()):
        raise SpaceMismatchError(
            f"vec_normalize.pkl normalizes observations of shape {obs_stats.mean.shape}, but the "
            f"evaluation env's are {getattr(space, 'shape', None) or space}.")
