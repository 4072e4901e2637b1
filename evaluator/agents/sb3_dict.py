"""Dict observation spaces (panda-gym, goal-conditioned envs) in an SB3 zip, read as data.

SB3 saves a `Dict` space's readable `spaces` as its repr: `"{'achieved_goal': Box(-10.0, 10.0,
(3,), float32), ...}"`. The keys, each sub-space's kind, shape and dtype are read from that text
(never evaluated) and must match the env's own Dict space exactly: a missing or extra key, or a
sub-space of another shape, is a space mismatch. The policy is then built with the env's space.
"""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym

from evaluator.errors import CorruptFileError, SpaceMismatchError

MAX_SPACES_CHARS = 20_000
_ENTRY = re.compile(r"'([^'\\]{1,100})': (Box|Discrete|MultiBinary|MultiDiscrete)\(")
_BOX = re.compile(r"Box\([^()]*?,\s*[^()]*?,\s*\(([\d,\s]*)\),\s*(\w+)\)")


def _saved_entries(text: str) -> dict[str, tuple[str, str]]:
    """key -> (kind, the sub-space's repr) from the saved repr."""
    if len(text) > MAX_SPACES_CHARS:
        raise CorruptFileError(f"The agent zip's Dict observation space is {len(text)} characters long: implausible.")
    matches = list(_ENTRY.finditer(text))
    entries: dict[str, tuple[str, str]] = {}
    for k, match in enumerate(matches):
        end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
        if match.group(1) in entries:
            raise CorruptFileError(f"The agent zip's Dict space names {match.group(1)!r} twice.")
        entries[match.group(1)] = (match.group(2), text[match.start(2):end])
    return entries


def _describe(space: gym.spaces.Dict) -> str:
    return "Dict(" + ", ".join(f"{k}: {v}" for k, v in space.spaces.items()) + ")"


def check_dict_space(desc: dict[str, Any], env_space: gym.Space, which: str) -> gym.Space:
    """The env's Dict space, when the zip's readable description matches it key by key."""
    text = desc.get("spaces")
    if not isinstance(env_space, gym.spaces.Dict):
        raise SpaceMismatchError(f"The agent was trained on Dict {which} but the evaluation env's is {env_space}.")
    if not isinstance(text, str):
        raise CorruptFileError(f"The agent zip's Dict {which} has no readable `spaces`.")
    saved = _saved_entries(text)
    env_keys = set(env_space.spaces)
    if set(saved) != env_keys:
        missing, extra = sorted(env_keys - set(saved)), sorted(set(saved) - env_keys)
        raise SpaceMismatchError(
            f"The agent's Dict {which} has keys {sorted(saved)}, the evaluation env's {sorted(env_keys)}"
            f"{f' (missing {missing})' if missing else ''}{f' (extra {extra})' if extra else ''}.")
    for key, (kind, sub) in saved.items():
        env_sub = env_space.spaces[key]
        if kind != type(env_sub).__name__:
            raise SpaceMismatchError(f"The agent's {which}[{key!r}] is a {kind}, the env's {env_sub}.")
        if kind == "Box":
            match = _BOX.match(sub)
            shape = tuple(int(v) for v in re.findall(r"\d+", match.group(1))) if match else None
            if match is None or shape != env_sub.shape or match.group(2) != str(env_sub.dtype):
                raise SpaceMismatchError(
                    f"The agent's {which}[{key!r}] is {sub.rstrip(', }')[:120]}, the evaluation env's {env_sub}: "
                    f"{_describe(env_space)}.")
    return env_space
