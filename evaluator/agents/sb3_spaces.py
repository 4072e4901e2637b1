"""What an SB3 zip says about its spaces, checked against the evaluation env's own spaces
(the zip's pickled spaces are never decoded: their readable siblings are enough)."""

from __future__ import annotations

import re
from typing import Any

import gymnasium as gym
import numpy as np

from evaluator.errors import CorruptFileError, SpaceMismatchError, UnsupportedFormatError


def _clip(value: Any, limit: int = 200) -> str:
    """A bounded str of a value from the zip, for error messages."""
    text = str(value) if isinstance(value, str) else repr(value) if not isinstance(value, (list, dict)) else None
    if text is None:  # containers: no full repr of a megabyte list
        text = repr(value[:16]) if isinstance(value, list) else repr(dict(list(value.items())[:16]))
    return text if len(text) <= limit else text[:limit] + "..."


def describe_space(space: gym.Space) -> str:
    if isinstance(space, gym.spaces.Box):
        return f"Box(shape={space.shape}, dtype={space.dtype})"
    if isinstance(space, gym.spaces.Discrete):
        return f"Discrete({space.n})"
    return repr(space)


def _saved_kind(desc: Any, which: str) -> str:
    if not isinstance(desc, dict) or not isinstance(desc.get(":type:"), str):
        raise CorruptFileError(f"The agent zip's `data` has no readable `{which}`.")
    match = re.match(r"^<class '(gym|gymnasium)\.spaces\.\w+\.(\w+)'>$", desc[":type:"])
    if not match:
        raise UnsupportedFormatError(f"The agent's {which} is a {_clip(desc[':type:'])}: not a gym space.")
    kind = match.group(2)
    dict_obs = kind == "Dict" and which == "observation_space"
    if kind not in ("Box", "Discrete", "MultiDiscrete", "MultiBinary") and not dict_obs:
        raise UnsupportedFormatError(f"The agent's {which} is a {kind} space: not supported yet.")
    return kind


_MAX_INT_DIGITS = 18  # any real size or count has fewer; int() of >4300 digits raises ValueError
_MAX_INT_ITEMS = 4096


def _int_list(value: Any) -> list[int] | None:
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    if isinstance(value, str):  # numpy arrays are saved as their str(): "[3 3]"
        numbers: list[int] = []
        for match in re.finditer(r"-?\d+", value):  # lazily: the string may be megabytes of digits
            text = match.group()
            if len(numbers) >= _MAX_INT_ITEMS or len(text.lstrip("-")) > _MAX_INT_DIGITS:
                raise CorruptFileError(f"The agent zip's space has an implausible size {value[:80]!r}.")
            numbers.append(int(text))
        return numbers
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    return None


def _as_int(value: Any) -> int | None:
    """An int saved as JSON, or as the str() of a numpy integer (gymnasium's `Discrete.n`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
        return int(value)
    return None


_NUMBER = re.compile(r"[-+]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)")


def _parse_bounds(text: Any, size: int) -> np.ndarray | None:
    """Bounds saved as numpy's str() (maybe truncated with '...'): an array only when complete."""
    if not isinstance(text, str) or "..." in text:
        return None
    values: list[float] = []
    for match in _NUMBER.finditer(text):  # lazily: never more than size + 1 numbers from the zip
        if len(values) == size:
            return None
        values.append(float(match.group()))
    if len(values) != size:
        return None
    return np.array(values, dtype=np.float64)


_DTYPE_NAME = re.compile(r"^[<>|=]?[A-Za-z][A-Za-z0-9]{0,15}$")


def same_dtype_name(dtype: Any, env_dtype: Any, which: str) -> bool:
    """Whether a dtype saved as its name ("float32") is the env's; only simple dtypes are read
    (structured or subarray dtypes such as `"(99999999999,)f8"` are refused unparsed)."""
    if not isinstance(dtype, str) or not _DTYPE_NAME.match(dtype):
        raise CorruptFileError(f"The agent's {which} has an unsupported dtype {str(dtype)[:80]!r}.")
    try:
        parsed = np.dtype(dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptFileError(f"The agent's {which} has an unknown dtype {dtype!r}.") from exc
    if parsed.fields is not None or parsed.subdtype is not None or parsed.kind not in "biuf":
        raise CorruptFileError(f"The agent's {which} has an unsupported dtype {dtype!r}.")
    return bool(parsed == env_dtype)


def _mismatch(which: str, saved: str, env_space: gym.Space) -> SpaceMismatchError:
    return SpaceMismatchError(
        f"The agent was trained with {which} {saved}, but the evaluation env has {describe_space(env_space)}: "
        "this agent is for another environment (or another version of it)."
    )


def check_space(desc: Any, env_space: gym.Space, which: str) -> gym.Space:
    """Compare the space the zip describes with the env's; return the space to build the policy
    with (the env's own, channel-first when SB3 transposed an image observation)."""
    kind = _saved_kind(desc, which)
    if kind == "Dict":
        from evaluator.agents.sb3_dict import check_dict_space

        return check_dict_space(desc, env_space, which)
    if kind == "Box":
        shape = tuple(_int_list(desc.get("shape", desc.get("_shape"))) or ())
        dtype = desc.get("dtype")
        saved = f"Box(shape={_clip(shape)}, dtype={_clip(dtype, 40)})"
        if not isinstance(env_space, gym.spaces.Box):
            raise _mismatch(which, saved, env_space)
        if dtype is not None:
            if not same_dtype_name(dtype, env_space.dtype, which):
                raise _mismatch(which, saved, env_space)
        if shape == env_space.shape:
            if which == "action_space":
                _check_bounds(desc, env_space, saved)
            return env_space
        if which == "observation_space" and _is_transposed_image(env_space, shape):
            from stable_baselines3.common.vec_env import VecTransposeImage

            return VecTransposeImage.transpose_space(env_space)
        raise _mismatch(which, saved, env_space)
    if kind == "Discrete":
        n, start = _as_int(desc.get("n")), _as_int(desc.get("start", 0))
        if (
            not isinstance(env_space, gym.spaces.Discrete)
            or n != int(env_space.n)
            or start != int(getattr(env_space, "start", 0))
        ):
            raise _mismatch(which, f"Discrete({_clip(desc.get('n'), 40)})", env_space)
        return env_space
    if kind == "MultiDiscrete":
        nvec = _int_list(desc.get("nvec"))
        if not isinstance(env_space, gym.spaces.MultiDiscrete) or (
            nvec is not None and nvec != [int(v) for v in np.ravel(env_space.nvec)]
        ):
            raise _mismatch(which, f"MultiDiscrete({_clip(nvec)})", env_space)
        return env_space
    n = _int_list(desc.get("n"))
    if not isinstance(env_space, gym.spaces.MultiBinary) or (n is not None and n != list(np.ravel(env_space.n))):
        raise _mismatch(which, f"MultiBinary({_clip(n)})", env_space)
    return env_space


def _check_bounds(desc: dict[str, Any], env_space: gym.spaces.Box, saved: str) -> None:
    """Action bounds decide SB3's unscaling/clipping: when the zip's are readable, they must agree."""
    size = int(np.prod(env_space.shape))
    for key, env_bound in (("low", env_space.low), ("high", env_space.high)):
        bound = _parse_bounds(desc.get(key), size)
        if bound is not None and not np.allclose(bound, np.ravel(env_bound), rtol=1e-5, atol=1e-6, equal_nan=True):
            raise SpaceMismatchError(
                f"The agent was trained with action {key} bounds {_clip(desc.get(key))} ({saved}), but the "
                f"evaluation env's are {np.ravel(env_bound).tolist()}: its actions would be rescaled wrongly."
            )


def _is_transposed_image(env_space: gym.spaces.Box, saved_shape: tuple[int, ...]) -> bool:
    from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first

    if len(env_space.shape) != 3 or not is_image_space(env_space, check_channels=False):
        return False
    if is_image_space_channels_first(env_space):
        return False
    height, width, channels = env_space.shape
    return saved_shape == (channels, height, width)
