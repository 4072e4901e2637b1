"""RL Zoo extras of an SB3 repo, read as data: `config.yml`/`args.yml`/`env_kwargs.yml` and
`vec_normalize.pkl`.

RL Zoo writes its YAML with `!!python/object/apply:collections.OrderedDict` and evaluates
strings such as `normalize: "dict(norm_obs=True)"` with `eval`; `vec_normalize.pkl` is a plain
pickle. Here the YAML goes through a safe loader with exactly one extra constructor, the strings
through an AST walk that accepts literals only, and the pickle through the one restricted
unpickler (`evaluator.restricted_pickle`) with the allowlist below, whose stand-ins only record
state (DESIGN.md, security model).
"""

from __future__ import annotations

import ast
import reprlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evaluator.agents.base import AgentFiles
from evaluator.agents.pickle_numpy import NUMPY_ALLOWLIST, to_array, to_scalar
from evaluator.errors import (
    CorruptFileError,
    EvaluationError,
    TooLargeError,
    UnsafeContentError,
    UnsupportedFormatError,
)
from evaluator.restricted_pickle import RecordedOrderedDict, StandIn, restricted_load
from evaluator.safe_yaml import StrictSafeLoader
from evaluator.text import clean_tree

MAX_YAML_BYTES = 1024 * 1024
MAX_PICKLE_BYTES = 8 * 1024 * 1024
MAX_EXPRESSION_CHARS = 4096

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 8
_REPR.maxlevel = 3


def short_repr(value: Any) -> str:
    """A bounded repr of a value from the repo, for error messages."""
    return _REPR.repr(value)[:200]


_short = short_repr


_ORDERED_DICT_TAG = "tag:yaml.org,2002:python/object/apply:collections.OrderedDict"

# ---------------------------------------------------------------------------------------------
# YAML


class ZooYamlLoader(StrictSafeLoader):
    """The strict safe loader plus the one python tag RL Zoo writes; every other tag is refused
    (RL Zoo never writes anchors or aliases either)."""


def _construct_ordered_dict(loader: ZooYamlLoader, node: yaml.Node) -> OrderedDict:
    if not isinstance(node, yaml.SequenceNode):
        raise UnsafeContentError(
            "A YAML `!!python/object/apply:collections.OrderedDict` must be the list form RL Zoo "
            "writes (a list holding one list of [key, value] pairs)."
        )
    args = loader.construct_sequence(node, deep=True)
    if len(args) != 1 or not isinstance(args[0], list):
        raise UnsafeContentError("`!!python/object/apply:collections.OrderedDict` takes one list of pairs.")
    pairs = args[0]
    if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
        raise CorruptFileError("An RL Zoo OrderedDict entry is not a [key, value] pair.")
    if not all(isinstance(key, (str, int, float, bool, type(None))) for key, _ in pairs):
        raise CorruptFileError("An RL Zoo OrderedDict key is not a plain value (a string or a number).")
    return OrderedDict((key, value) for key, value in pairs)


def _refuse_tag(loader: ZooYamlLoader, suffix_or_node: Any, node: yaml.Node | None = None) -> Any:
    node = suffix_or_node if node is None else node
    raise UnsafeContentError(
        f"The YAML asks to construct {str(node.tag)[:100]!r}: only plain YAML and RL Zoo's "
        "`!!python/object/apply:collections.OrderedDict` are accepted (nothing is executed)."
    )


ZooYamlLoader.add_constructor(_ORDERED_DICT_TAG, _construct_ordered_dict)
ZooYamlLoader.add_multi_constructor("tag:yaml.org,2002:python/", _refuse_tag)
ZooYamlLoader.add_multi_constructor("!", _refuse_tag)
ZooYamlLoader.add_constructor(None, _refuse_tag)


def load_zoo_yaml(text: str | bytes, *, name: str = "config.yml") -> Any:
    """Parse RL Zoo YAML safely (UnsafeContentError on any python tag but OrderedDict)."""
    if len(text) > MAX_YAML_BYTES:
        raise TooLargeError(f"{name} is {len(text)} bytes (limit {MAX_YAML_BYTES}).")
    try:
        return clean_tree(yaml.load(text, Loader=ZooYamlLoader))  # noqa: S506 - ZooYamlLoader is a SafeLoader
    except EvaluationError as exc:
        raise type(exc)(f"{name}: {exc}", code=exc.code) from exc
    except yaml.YAMLError as exc:
        raise CorruptFileError(f"{name} is not valid YAML: {str(exc)[:500]}") from exc
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
        # the safe constructors' own failures: `2020-13-45`, `!!int foo`, `!!timestamp foo`, ...
        raise CorruptFileError(f"{name} has a value YAML cannot construct: {str(exc)[:300]}") from exc


def _read_small(path: Path, limit: int) -> bytes:
    size = path.stat().st_size
    if size > limit:
        raise TooLargeError(f"{path.name} is {size} bytes (limit {limit}).")
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Python-expression strings (normalize, policy_kwargs), by AST walk: never eval


@dataclass(frozen=True)
class ClassRef:
    """A class named in a config string (e.g. `nn.ReLU`): resolved later through an allowlist."""

    dotted: str


# Prefixes under which a config string may name a class; the class itself is checked later.
_CLASS_PREFIXES = ("nn.", "th.nn.", "torch.nn.", "th.optim.", "torch.optim.", "optim.")
_BARE_CLASS_NAMES = frozenset({"RMSpropTFLike", "NatureCNN", "FlattenExtractor"})


def _dotted_name(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _literal(node: ast.AST, *, where: str, allow_classes: bool) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str, type(None))):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) in (int, float)
    ):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item, where=where, allow_classes=allow_classes) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        out = {}
        for key, value in zip(node.keys, node.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise UnsafeContentError(f"{where}: dict keys must be string literals.")
            out[key.value] = _literal(value, where=where, allow_classes=allow_classes)
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(kw.arg is None for kw in node.keywords):
            raise UnsafeContentError(f"{where}: only `dict(key=literal, ...)` is accepted.")
        return {kw.arg: _literal(kw.value, where=where, allow_classes=allow_classes) for kw in node.keywords}
    if allow_classes and isinstance(node, (ast.Name, ast.Attribute)):
        dotted = _dotted_name(node)
        if dotted and (dotted.startswith(_CLASS_PREFIXES) or dotted in _BARE_CLASS_NAMES):
            return ClassRef(dotted)
    raise UnsafeContentError(
        f"{where}: {ast.unparse(node)[:80]!r} is not a literal; only literals, lists, dict literals, "
        "`dict(...)`" + (" and torch classes such as `nn.ReLU`" if allow_classes else "") + " are accepted."
    )


def _parse_expression(text: str, *, where: str) -> ast.AST:
    if len(text) > MAX_EXPRESSION_CHARS:
        raise TooLargeError(f"{where} is {len(text)} characters long (limit {MAX_EXPRESSION_CHARS}).")
    try:
        return ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UnsafeContentError(f"{where} is not a Python literal expression: {exc}") from exc


_NORMALIZE_KEYS = frozenset({"norm_obs", "norm_reward", "clip_obs", "clip_reward", "gamma", "epsilon"})


def parse_normalize(value: Any) -> dict[str, Any] | None:
    """`normalize` from config.yml: None when off, else the VecNormalize kwargs (maybe empty).

    Accepts only a bool, a dict literal or `dict(key=literal)` (RL Zoo `eval`s this string)."""
    where = "config.yml `normalize`"
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise UnsupportedFormatError(f"{where} has non-string keys: {_short(value)}.")
        kwargs = dict(value)
    elif isinstance(value, str):
        node = _parse_expression(value, where=where)
        if isinstance(node, ast.Constant) and isinstance(node.value, bool):
            return {} if node.value else None
        if not (isinstance(node, ast.Dict) or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name))):
            raise UnsafeContentError(
                f"{where} is {value[:80]!r}: only a bool, a dict literal or dict(key=literal) is accepted."
            )
        kwargs = _literal(node, where=where, allow_classes=False)
    else:
        raise UnsafeContentError(f"{where} has type {type(value).__name__}: expected a bool or a dict.")
    unknown = sorted(set(kwargs) - _NORMALIZE_KEYS)
    if unknown:
        raise UnsupportedFormatError(f"{where} has unsupported keys {unknown}.")
    return kwargs


def parse_policy_kwargs(value: Any) -> dict[str, Any]:
    """`policy_kwargs` from config.yml (`"dict(net_arch=[64, 64], activation_fn=nn.ReLU)"`)."""
    where = "config.yml `policy_kwargs`"
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if not isinstance(value, str):
        raise UnsafeContentError(f"{where} has type {type(value).__name__}: expected a dict string.")
    node = _parse_expression(value, where=where)
    parsed = _literal(node, where=where, allow_classes=True)
    if not isinstance(parsed, dict):
        raise UnsafeContentError(f"{where} is {value[:80]!r}: expected `dict(...)` or a dict literal.")
    return parsed


# ---------------------------------------------------------------------------------------------
# config.yml


# RL Zoo `env_wrapper` entries we know to be harmless, by the name RL Zoo writes -> our name.
# `evaluator.env_wrappers` applies them (our installed classes, kwargs checked per wrapper).
ENV_WRAPPERS = {
    "sb3_contrib.common.wrappers.TimeFeatureWrapper": "TimeFeatureWrapper",
    "rl_zoo3.wrappers.TimeFeatureWrapper": "TimeFeatureWrapper",
    "utils.wrappers.TimeFeatureWrapper": "TimeFeatureWrapper",
    "stable_baselines3.common.atari_wrappers.AtariWrapper": "AtariWrapper",
    # rl_zoo3's own (`evaluator.zoo_wrappers`); RL Zoo configs before the rl_zoo3 package say `utils.wrappers`
    **{f"{package}.{name}": name
       for package in ("rl_zoo3.wrappers", "utils.wrappers")
       for name in ("HistoryWrapper", "HistoryWrapperObsDict", "FrameSkip", "DelayedRewardWrapper",
                    "MaskVelocityWrapper")},
    **{f"{package}.{name}": name
       for package in ("gymnasium.wrappers", "gym.wrappers")
       for name in ("FlattenObservation", "TimeAwareObservation", "ClipAction", "RescaleAction")},
}


def parse_env_wrappers(value: Any) -> list[tuple[str, dict[str, Any]]]:
    """RL Zoo `env_wrapper` (a name, or a list of names / {name: kwargs}) through the allowlist."""
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    wrappers = []
    for entry in entries:
        if isinstance(entry, str):
            name, kwargs = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            name, kwargs = next(iter(entry.items()))
            kwargs = kwargs or {}
        else:
            raise UnsupportedFormatError(f"config.yml `env_wrapper` entry {_short(entry)} is not understood.")
        if name not in ENV_WRAPPERS:
            raise UnsafeContentError(
                f"config.yml asks for the env wrapper {_short(name)}, which is not on the allowlist "
                f"({', '.join(sorted(set(ENV_WRAPPERS.values())))}): wrappers are code, so only known "
                "ones are applied."
            )
        if not isinstance(kwargs, dict) or not all(
            isinstance(v, (bool, int, float, str, type(None))) for v in kwargs.values()
        ):
            raise UnsafeContentError(f"config.yml env wrapper {_short(name)} has non-literal kwargs.")
        wrappers.append((ENV_WRAPPERS[name], dict(kwargs)))
    return wrappers


@dataclass
class ZooConfig:
    """What RL Zoo's `config.yml` (+ `env_kwargs.yml`) says about how the agent ran."""

    hyperparams: dict[str, Any]
    normalize: dict[str, Any] | None = None
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    env_wrappers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    frame_stack: int | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)


def parse_config(text: str | bytes, *, env_kwargs_text: str | bytes | None = None) -> ZooConfig:
    """Parse `config.yml` text (and optionally `env_kwargs.yml`) into a `ZooConfig`."""
    raw = load_zoo_yaml(text, name="config.yml")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CorruptFileError("config.yml is not a mapping of hyperparameters.")
    hyperparams = dict(raw)
    frame_stack = hyperparams.get("frame_stack")
    if frame_stack is not None and (isinstance(frame_stack, bool) or not isinstance(frame_stack, int)):
        raise CorruptFileError(f"config.yml `frame_stack` is {_short(frame_stack)}: expected an integer.")
    env_kwargs: dict[str, Any] = {}
    if env_kwargs_text is not None:
        loaded = load_zoo_yaml(env_kwargs_text, name="env_kwargs.yml")
        if loaded is not None and not isinstance(loaded, dict):
            raise CorruptFileError("env_kwargs.yml is not a mapping.")
        env_kwargs = dict(loaded or {})
    return ZooConfig(
        hyperparams=hyperparams,
        normalize=parse_normalize(hyperparams.get("normalize")),
        policy_kwargs=parse_policy_kwargs(hyperparams.get("policy_kwargs")),
        env_wrappers=parse_env_wrappers(hyperparams.get("env_wrapper")),
        frame_stack=frame_stack,
        env_kwargs=env_kwargs,
    )


def _find(files: AgentFiles, name: str) -> Path | None:
    """`name` at the top level of the repo, else beside the agent zip (RL Zoo's folder layout)."""
    agent_dir = str(Path(files.agent_file).parent)
    for candidate in (name, f"{agent_dir}/{name}" if agent_dir not in ("", ".") else None):
        if candidate and files.has(candidate):
            return files.path(candidate)
    return None


def read_zoo_config(files: AgentFiles) -> ZooConfig | None:
    """The repo's RL Zoo config, or None when it has no `config.yml`."""
    config_path = _find(files, "config.yml")
    if config_path is None:
        return None
    env_kwargs_path = _find(files, "env_kwargs.yml")
    return parse_config(
        _read_small(config_path, MAX_YAML_BYTES),
        env_kwargs_text=_read_small(env_kwargs_path, MAX_YAML_BYTES) if env_kwargs_path else None,
    )


# ---------------------------------------------------------------------------------------------
# vec_normalize.pkl


class _VecNormalizeRecord(StandIn):
    pass


class _RunningMeanStdRecord(StandIn):
    pass


class _SpaceRecord(StandIn):
    pass


class _RandomStateRecord(StandIn):
    pass


_SPACES = ("Box", "Discrete", "MultiDiscrete", "MultiBinary", "Dict")
# The allowlist of vec_normalize.pkl, for the one restricted unpickler (evaluator.restricted_pickle).
VEC_NORMALIZE_ALLOWLIST: dict[tuple[str, str], Any] = {
    ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"): _VecNormalizeRecord,
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"): _RunningMeanStdRecord,
    ("collections", "OrderedDict"): RecordedOrderedDict,
    **NUMPY_ALLOWLIST,
    **{
        ("numpy.random._pickle", name): _RandomStateRecord
        for name in ("__randomstate_ctor", "__bit_generator_ctor", "__generator_ctor")
    },
    ("numpy.random", "__RandomState_ctor"): _RandomStateRecord,
    # numpy 2 pickles a seeded space's Generator (SB3 2.x `make_vec_env(seed=...)`) through its bit
    # generator class and SeedSequence: recorded, never constructed
    **{(f"numpy.random.{module}", name): _RandomStateRecord
       for module, name in (("_pcg64", "PCG64"), ("_pcg64", "PCG64DXSM"), ("_mt19937", "MT19937"),
                            ("_philox", "Philox"), ("_sfc64", "SFC64"), ("bit_generator", "SeedSequence"),
                            ("bit_generator", "__pyx_unpickle_SeedSequence"))},
    **{
        (f"{package}.spaces.{module}", cls): _SpaceRecord
        for package in ("gym", "gymnasium")
        for module, cls in zip(("box", "discrete", "multi_discrete", "multi_binary", "dict"), _SPACES, strict=True)
    },
}
_HINT = " (VecNormalize statistics need only numpy arrays and a few SB3/gym classes)"


@dataclass(frozen=True)
class VecNormalizeStats:
    """Observation statistics of an RL Zoo `VecNormalize`, applied as in its eval mode."""

    mean: np.ndarray
    var: np.ndarray
    epsilon: float
    clip_obs: float
    norm_obs: bool

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        """`VecNormalize.normalize_obs` (SB3 2.x): clip((obs-mean)/sqrt(var+eps)), as float32."""
        if not self.norm_obs:
            return obs
        normalized = np.clip((obs - self.mean) / np.sqrt(self.var + self.epsilon), -self.clip_obs, self.clip_obs)
        return normalized.astype(np.float32)


def parse_vec_normalize(raw: bytes) -> VecNormalizeStats:
    """Read the observation statistics from `vec_normalize.pkl` bytes, without running anything."""
    obj = restricted_load(raw, VEC_NORMALIZE_ALLOWLIST, what="vec_normalize.pkl", max_bytes=MAX_PICKLE_BYTES,
                          hint=_HINT)
    try:
        return _vec_normalize_stats(obj)
    except EvaluationError:
        raise
    except (ValueError, TypeError, OverflowError, AttributeError, KeyError, IndexError, RecursionError) as exc:
        raise CorruptFileError(f"vec_normalize.pkl holds malformed statistics: {str(exc)[:300]}") from exc


def _rms_arrays(rms: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean, var) of one pickled RunningMeanStd, checked finite and of one shape."""
    if not isinstance(rms, _RunningMeanStdRecord) or not isinstance(rms.state, dict):
        raise CorruptFileError(f"vec_normalize.pkl has no observation statistics (`{where}`).")
    mean = to_array(rms.state.get("mean"), f"vec_normalize.pkl: `{where}.mean`")
    var = to_array(rms.state.get("var"), f"vec_normalize.pkl: `{where}.var`")
    if mean.shape != var.shape:
        raise CorruptFileError(f"vec_normalize.pkl: {where} mean {mean.shape} and var {var.shape} differ in shape.")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var)) and np.all(var >= 0)):
        raise CorruptFileError(f"vec_normalize.pkl: the observation statistics ({where}) are not finite.")
    return mean, var


def _vec_normalize_stats(obj: Any) -> VecNormalizeStats:
    if not isinstance(obj, _VecNormalizeRecord) or not isinstance(obj.state, dict):
        raise CorruptFileError("vec_normalize.pkl does not hold a VecNormalize object.")
    state = obj.state
    rms = state.get("obs_rms")
    if isinstance(rms, dict):  # Dict observations: statistics per key (evaluator.agents.vec_normalize_dict)
        from evaluator.agents.vec_normalize_dict import dict_stats

        return dict_stats(state, {k: _rms_arrays(v, f"obs_rms[{_short(k)}]") for k, v in rms.items()})
    mean, var = _rms_arrays(rms, "obs_rms")
    epsilon = to_scalar(state.get("epsilon", 1e-8), "vec_normalize.pkl: `epsilon`")
    clip_obs = to_scalar(state.get("clip_obs", 10.0), "vec_normalize.pkl: `clip_obs`")
    norm_obs = state.get("norm_obs", True)
    if not isinstance(norm_obs, bool) or epsilon < 0 or clip_obs <= 0:
        raise CorruptFileError("vec_normalize.pkl: `norm_obs`, `epsilon` or `clip_obs` is invalid.")
    return VecNormalizeStats(mean=mean, var=var, epsilon=epsilon, clip_obs=clip_obs, norm_obs=norm_obs)


def read_vec_normalize(files: AgentFiles) -> VecNormalizeStats | None:
    """The repo's `vec_normalize.pkl` statistics, or None when it has none."""
    path = _find(files, "vec_normalize.pkl")
    if path is None:
        return None
    return parse_vec_normalize(_read_small(path, MAX_PICKLE_BYTES))
