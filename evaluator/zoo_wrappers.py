"""The RL Zoo's own env wrappers (`rl_zoo3.wrappers`, formerly `utils.wrappers`), reimplemented.

An agent trained under one of them learned on what it produces, so it must be evaluated under it.
`rl_zoo3` itself is not a dependency (it pulls optuna, rich, pytablewriter, ... for five small
classes), so the ones that change what the agent sees or how its episode is chunked are written
out here step for step as rl_zoo3 2.9.2 has them: same arithmetic, same dtypes, same order.
`tests/evaluator/test_zoo_wrappers.py` replays seeded rollouts through these and through
rl_zoo3's file (kept verbatim in tests/evaluator/data) and compares every observation and reward.

Differences, none visible to the agent: bad input raises our errors instead of `assert`, the
wrapped env's spaces are never mutated (HistoryWrapper overwrites its inner env's), and `reset`
accepts `options` (always None from the runner). Wrappers that only add noise or touch actions
(`ActionNoiseWrapper`, `ActionSmoothingWrapper`) or change episodes' rewards and ends for
training (`TruncatedOnSuccessWrapper`) are not here: the allowlist refuses them by name.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from evaluator.errors import UnsupportedFormatError

# MaskVelocityWrapper.velocity_indices, by our evaluation env ids (rl_zoo3 2.9.2 keys LunarLander
# by -v3, older versions by -v2: the same indices, and a -v2 repo is evaluated on -v3 here).
VELOCITY_INDICES: dict[str, tuple[int, ...]] = {
    "CartPole-v1": (1, 3),
    "MountainCar-v0": (1,),
    "MountainCarContinuous-v0": (1,),
    "Pendulum-v1": (2,),
    "LunarLander-v3": (2, 3, 5),
    "LunarLanderContinuous-v3": (2, 3, 5),
}


def _history_bounds(obs_space: Any, action_space: Any, horizon: int, name: str) -> tuple[np.ndarray, ...]:
    if not isinstance(obs_space, spaces.Box) or not isinstance(action_space, spaces.Box):
        raise UnsupportedFormatError(f"{name} needs Box observations and actions; the env has "
                                     f"{obs_space} and {action_space}")
    low_obs, high_obs = np.tile(obs_space.low, horizon), np.tile(obs_space.high, horizon)
    low_action, high_action = np.tile(action_space.low, horizon), np.tile(action_space.high, horizon)
    return low_obs, high_obs, low_action, high_action


class _History:
    """The rolling (observations, actions) history both HistoryWrappers keep, newest last."""

    def __init__(self, low_obs: np.ndarray, low_action: np.ndarray) -> None:
        self.obs_history = np.zeros(low_obs.shape, low_obs.dtype)
        self.action_history = np.zeros(low_action.shape, low_action.dtype)

    def start(self, obs: np.ndarray) -> np.ndarray:
        self.obs_history[...] = 0
        self.action_history[...] = 0
        self.obs_history[..., -obs.shape[-1]:] = obs
        return np.concatenate((self.obs_history, self.action_history))

    def push(self, obs: np.ndarray, action: Any) -> np.ndarray:
        action = np.asarray(action)
        self.obs_history = np.roll(self.obs_history, shift=-obs.shape[-1], axis=-1)
        self.obs_history[..., -obs.shape[-1]:] = obs
        self.action_history = np.roll(self.action_history, shift=-action.shape[-1], axis=-1)
        self.action_history[..., -action.shape[-1]:] = action
        return np.concatenate((self.obs_history, self.action_history))


class HistoryWrapper(gym.Wrapper):
    """The last `horizon` observations, then the last `horizon` actions, in one flat vector."""

    def __init__(self, env: gym.Env, horizon: int = 2) -> None:
        super().__init__(env)
        low_obs, high_obs, low_action, high_action = _history_bounds(
            env.observation_space, env.action_space, horizon, "HistoryWrapper")
        self.observation_space = spaces.Box(low=np.concatenate((low_obs, low_action)),
                                            high=np.concatenate((high_obs, high_action)),
                                            dtype=env.observation_space.dtype)
        self.history = _History(low_obs, low_action)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        obs, info = self.env.reset(seed=seed, options=options)
        return self.history.start(obs), info

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self.history.push(obs, action), reward, terminated, truncated, info


class HistoryWrapperObsDict(gym.Wrapper):
    """HistoryWrapper on the `observation` entry of a Dict observation (goal envs: panda-gym)."""

    def __init__(self, env: gym.Env, horizon: int = 2) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict) or "observation" not in space.spaces:
            raise UnsupportedFormatError(f"HistoryWrapperObsDict needs a Dict observation with an 'observation' "
                                         f"entry; the env has {space}")
        inner = space.spaces["observation"]
        low_obs, high_obs, low_action, high_action = _history_bounds(
            inner, env.action_space, horizon, "HistoryWrapperObsDict")
        entries = dict(space.spaces)
        entries["observation"] = spaces.Box(low=np.concatenate((low_obs, low_action)),
                                            high=np.concatenate((high_obs, high_action)), dtype=inner.dtype)
        self.observation_space = spaces.Dict(entries)
        self.history = _History(low_obs, low_action)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        obs, info = self.env.reset(seed=seed, options=options)
        obs = dict(obs)
        obs["observation"] = self.history.start(obs["observation"])
        return obs, info

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = dict(obs)
        obs["observation"] = self.history.push(obs["observation"], action)
        return obs, reward, terminated, truncated, info


class FrameSkip(gym.Wrapper):
    """The action repeated `skip` times (fewer if the episode ends); the rewards summed as floats."""

    def __init__(self, env: gym.Env, skip: int = 4) -> None:
        super().__init__(env)
        self.skip = skip

    def step(self, action: Any) -> Any:
        total_reward = 0.0
        for _ in range(self.skip):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total_reward += float(reward)
            if terminated or truncated:
                break
        return obs, total_reward, terminated, truncated, info


class DelayedRewardWrapper(gym.Wrapper):
    """Rewards held back and paid every `delay` steps and at the episode's end (same total)."""

    def __init__(self, env: gym.Env, delay: int = 10) -> None:
        super().__init__(env)
        self.delay = delay
        self.current_step = 0
        self.accumulated_reward = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
        self.current_step = 0
        self.accumulated_reward = 0.0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.accumulated_reward += float(reward)
        self.current_step += 1
        if self.current_step % self.delay == 0 or terminated or truncated:
            reward, self.accumulated_reward = self.accumulated_reward, 0.0
        else:
            reward = 0.0
        return obs, reward, terminated, truncated, info


class MaskVelocityWrapper(gym.ObservationWrapper):
    """The velocity terms of a classic-control / Box2D observation zeroed (a partially observable MDP)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        env_id = env.unwrapped.spec.id if env.unwrapped.spec is not None else None
        if env_id not in VELOCITY_INDICES:
            raise UnsupportedFormatError(f"MaskVelocityWrapper has no velocity terms for {env_id!r} "
                                         f"(it knows {', '.join(VELOCITY_INDICES)})")
        # rl_zoo3: np.ones_like(space.sample()), i.e. ones of the space's shape and dtype
        self.mask = np.ones(env.observation_space.shape, dtype=env.observation_space.dtype)
        self.mask[list(VELOCITY_INDICES[env_id])] = 0.0

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation * self.mask


ZOO_WRAPPERS: dict[str, type[gym.Wrapper]] = {
    cls.__name__: cls
    for cls in (HistoryWrapper, HistoryWrapperObsDict, FrameSkip, DelayedRewardWrapper, MaskVelocityWrapper)
}
