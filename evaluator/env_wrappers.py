"""The env wrappers and frame stack an agent is evaluated under, decided on the trusted side.

An RL Zoo agent names its env wrappers in `config.yml` (`env_wrapper`) and its frame stack
(`frame_stack`). They are code, so only an allowlist is applied, built from *our* installed
packages, with kwargs that are literals of the wrapper's own parameters (checked here against an
explicit table, never by calling anything from the repo). The referee decides the `EnvView`
from the repo's files read as data (`decide_view`) and tells the player; the player only builds
the same spaces from it. Atari always runs under the RL Zoo's `AtariWrapper` (`evaluator.atari`).

Frame stacking is `VecFrameStack`'s: along the last axis, zeros at a reset, the newest frame
last, cleared when the vector env would have reset the stack (a lost Atari life).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from evaluator.errors import UnsafeContentError, UnsupportedFormatError
from evaluator.zoo_wrappers import ZOO_WRAPPERS  # imported with the envs: players preload it

MAX_FRAME_STACK = 16
ATARI_WRAPPER = "AtariWrapper"
ATARI_FRAME_STACK = 4  # the RL Zoo's and the course's (unit 3) frame stack for Atari

# Our name -> (its accepted kwargs and their types). The names RL Zoo writes map to ours in
# `evaluator.agents.rlzoo.ENV_WRAPPERS` (the config allowlist).
_NUM = (int, float)
WRAPPER_KWARGS: dict[str, dict[str, tuple[type, ...]]] = {
    ATARI_WRAPPER: {"noop_max": (int,), "frame_skip": (int,), "screen_size": (int,),
                    "terminal_on_life_loss": (bool,), "clip_reward": (bool,), "action_repeat_probability": _NUM},
    "TimeFeatureWrapper": {"max_steps": (int,), "test_mode": (bool,)},
    "FlattenObservation": {},
    "TimeAwareObservation": {"flatten": (bool,), "normalize_time": (bool,)},
    "ClipAction": {},
    "RescaleAction": {"min_action": _NUM, "max_action": _NUM},
    # the RL Zoo's own (`evaluator.zoo_wrappers`)
    "HistoryWrapper": {"horizon": (int,)},
    "HistoryWrapperObsDict": {"horizon": (int,)},
    "FrameSkip": {"skip": (int,)},
    "DelayedRewardWrapper": {"delay": (int,)},
    "MaskVelocityWrapper": {},
}
# Integer kwargs outside these bounds would crash a wrapper (a delay of 0 divides by zero) or
# make its observations needlessly large; the RL Zoo's configs use 2 to 10.
INT_BOUNDS: dict[tuple[str, str], tuple[int, int]] = {
    ("HistoryWrapper", "horizon"): (1, 64),
    ("HistoryWrapperObsDict", "horizon"): (1, 64),
    ("FrameSkip", "skip"): (1, 64),
    ("DelayedRewardWrapper", "delay"): (1, 100_000),
}


@dataclass(frozen=True)
class EnvView:
    """What the agent sees: wrappers (our name, sorted kwargs pairs) in order, then a frame stack."""

    wrappers: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    frame_stack: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"wrappers": [[name, [list(kv) for kv in kwargs]] for name, kwargs in self.wrappers],
                "frame_stack": self.frame_stack}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> EnvView | None:
        if not data:
            return None
        return checked_view([(name, dict(kwargs)) for name, kwargs in data.get("wrappers", [])],
                            data.get("frame_stack") or 0)

    def describe(self) -> dict[str, Any]:
        return {"env_wrappers": [[name, dict(kwargs)] for name, kwargs in self.wrappers],
                "frame_stack": self.frame_stack}


def _check_kwargs(name: str, kwargs: Any) -> tuple[tuple[str, Any], ...]:
    if name not in WRAPPER_KWARGS:
        raise UnsafeContentError(
            f"the env wrapper {name[:100]!r} is not on the allowlist ({', '.join(sorted(WRAPPER_KWARGS))}): "
            "wrappers are code, so only known ones are applied")
    if not isinstance(kwargs, dict):
        raise UnsupportedFormatError(f"the env wrapper {name}'s kwargs are not a mapping")
    allowed = WRAPPER_KWARGS[name]
    for key, value in kwargs.items():
        types = allowed.get(key) if isinstance(key, str) else None
        if types is None:
            raise UnsupportedFormatError(
                f"the env wrapper {name} has no parameter {str(key)[:60]!r} (accepted: {', '.join(allowed) or 'none'})")
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise UnsupportedFormatError(f"the env wrapper {name}'s {key} is {str(value)[:60]!r}: expected "
                                         f"{' or '.join(t.__name__ for t in types)}")
        bounds = INT_BOUNDS.get((name, key))
        if bounds and not bounds[0] <= value <= bounds[1]:
            low, high = bounds
            raise UnsupportedFormatError(f"the env wrapper {name}'s {key} is {value}: expected {low} to {high}")
    return tuple(sorted(kwargs.items()))


def checked_view(wrappers: list[tuple[str, dict[str, Any]]], frame_stack: Any) -> EnvView:
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or not 0 <= frame_stack <= MAX_FRAME_STACK:
        raise UnsupportedFormatError(f"frame_stack is {str(frame_stack)[:40]!r}: expected 0 to {MAX_FRAME_STACK}")
    return EnvView(tuple((name, _check_kwargs(name, kwargs)) for name, kwargs in wrappers), frame_stack)


def default_view(atari: bool) -> EnvView | None:
    """The view of an env family when the repo says nothing (no RL Zoo config)."""
    return EnvView(((ATARI_WRAPPER, ()),), ATARI_FRAME_STACK) if atari else None


def decide_view(atari: bool, details: dict[str, Any]) -> EnvView | None:
    """The view from an agent's trusted `details` (its `config.yml`, parsed as data)."""
    if not details.get("rl_zoo_config"):
        return default_view(atari)
    wrappers = [(str(name), kwargs or {}) for name, kwargs in details.get("env_wrappers") or []]
    names = [name for name, _ in wrappers]
    if atari and ATARI_WRAPPER not in names:  # the standard Atari stack is part of the env
        wrappers.insert(0, (ATARI_WRAPPER, {}))
    if not atari and ATARI_WRAPPER in names:
        raise UnsupportedFormatError("config.yml names the AtariWrapper for an env that is not an Atari game")
    if atari and names and names[0] != ATARI_WRAPPER and ATARI_WRAPPER in names:
        raise UnsupportedFormatError("config.yml names env wrappers below the AtariWrapper: not supported")
    view = checked_view(wrappers, details.get("frame_stack") or 0)
    return view if view.wrappers or view.frame_stack else None


# ------------------------------------------------------------------------------------------ applying


class FrameStack(gym.ObservationWrapper):
    """`VecFrameStack` for one env: the last `n` observations along the last axis, newest last;
    zeros at a reset and when the step says the stack was `restarted` (a lost Atari life)."""

    def __init__(self, env: gym.Env, n: int) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or not space.shape:
            raise UnsupportedFormatError(f"frame stacking needs a Box observation space, the env has {space}")
        self.n = n
        self.shift = space.shape[-1]
        low = np.repeat(space.low, n, axis=-1)
        high = np.repeat(space.high, n, axis=-1)
        self.observation_space = gym.spaces.Box(low=low, high=high, dtype=space.dtype)
        self.stacked = np.zeros(self.observation_space.shape, dtype=space.dtype)

    def _push(self, obs: np.ndarray, clear: bool) -> np.ndarray:
        if clear:
            self.stacked[...] = 0
        else:
            self.stacked = np.roll(self.stacked, shift=-self.shift, axis=-1)
        self.stacked[..., -self.shift:] = obs
        return self.stacked.copy()

    def reset(self, **kwargs: Any) -> Any:
        obs, info = self.env.reset(**kwargs)
        return self._push(obs, True), info

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._push(obs, bool(info.get("restarted"))), reward, terminated, truncated, info

    def observation(self, observation: Any) -> Any:  # pragma: no cover - reset/step do the work
        return observation


def _build(name: str, env: gym.Env, kwargs: dict[str, Any]) -> gym.Env:
    if name == ATARI_WRAPPER:
        from evaluator.atari import wrap_atari

        return wrap_atari(env, kwargs)
    if name == "TimeFeatureWrapper":
        from sb3_contrib.common.wrappers import TimeFeatureWrapper

        return TimeFeatureWrapper(env, **kwargs)
    if name in ZOO_WRAPPERS:
        return ZOO_WRAPPERS[name](env, **kwargs)
    from gymnasium import wrappers

    if name == "RescaleAction":
        return wrappers.RescaleAction(env, **kwargs)
    return getattr(wrappers, name)(env, **kwargs)


def apply_view(env: gym.Env, view: EnvView | None) -> gym.Env:
    """`env` under the view's wrappers (in order, the first innermost) and frame stack."""
    if view is None:
        return env
    for name, kwargs in view.wrappers:
        env = _build(name, env, dict(kwargs))
    if view.frame_stack:
        env = FrameStack(env, view.frame_stack)
    return env
