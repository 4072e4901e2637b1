"""RL Zoo files read as data: config.yml through the safe loader, `normalize`/`policy_kwargs`
through the AST walk, vec_normalize.pkl through the restricted unpickler; hostile ones refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from evaluator.agents.rlzoo import (
    ClassRef,
    load_zoo_yaml,
    parse_config,
    parse_env_wrappers,
    parse_normalize,
    parse_policy_kwargs,
    parse_vec_normalize,
)
from evaluator.errors import CorruptFileError, UnsafeContentError, UnsupportedFormatError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
ZOO = SHARED / "agents" / "zoo" / "sb3"

NORMALIZED = {"ppo-Acrobot-v1": 6, "ppo-BipedalWalker-v3": 24, "ars-Pendulum-v1": 3}


def _zoo() -> Path:
    if not ZOO.is_dir():
        pytest.skip("../shared/agents/zoo is absent (a fresh checkout has no ../shared)")
    return ZOO


# ---------------------------------------------------------------------------------------------
# Real files


@pytest.mark.shared
def test_real_configs_parse() -> None:
    repos = sorted(p for p in _zoo().iterdir() if p.is_dir())
    assert len(repos) == 13
    for repo in repos:
        config = parse_config(
            (repo / "config.yml").read_bytes(), env_kwargs_text=(repo / "env_kwargs.yml").read_bytes()
        )
        assert config.hyperparams["policy"] == "MlpPolicy"
        assert config.env_wrappers == [] and config.env_kwargs == {}
        assert (config.normalize is not None) == (repo.name in NORMALIZED), repo.name
        args = load_zoo_yaml((repo / "args.yml").read_bytes(), name="args.yml")
        assert args["env"] == repo.name.split("-", 1)[1]


@pytest.mark.shared
def test_real_config_values() -> None:
    zoo = _zoo()
    ars = parse_config((zoo / "ars-Pendulum-v1" / "config.yml").read_bytes())
    assert ars.normalize == {"norm_obs": True, "norm_reward": False}
    assert ars.policy_kwargs == {"net_arch": [16]}
    sac = parse_config((zoo / "sac-MountainCarContinuous-v0" / "config.yml").read_bytes())
    assert sac.policy_kwargs == {"log_std_init": -3.67, "net_arch": [64, 64]}
    assert parse_config((zoo / "ppo-Acrobot-v1" / "config.yml").read_bytes()).normalize == {}


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(NORMALIZED))
def test_real_vec_normalize_stats(name: str) -> None:
    stats = parse_vec_normalize((_zoo() / name / "vec_normalize.pkl").read_bytes())
    assert stats.mean.shape == stats.var.shape == (NORMALIZED[name],)
    assert stats.norm_obs is True
    assert stats.clip_obs == 10.0 and stats.epsilon == 1e-8
    assert np.all(np.isfinite(stats.mean)) and np.all(stats.var > 0)


def test_vec_normalize_written_by_sb3_round_trips() -> None:
    """A VecNormalize pickled by our SB3 (numpy 2, gymnasium, protocol 5) gives back its stats,
    and our normalization equals SB3's own `normalize_obs`."""
    vec = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]), norm_reward=False, clip_obs=5.0)
    vec.obs_rms.mean = np.array([0.1, -0.2, 0.3])
    vec.obs_rms.var = np.array([1.5, 2.5, 0.5])
    vec.training = False
    stats = parse_vec_normalize(pickle.dumps(vec))
    np.testing.assert_array_equal(stats.mean, vec.obs_rms.mean)
    np.testing.assert_array_equal(stats.var, vec.obs_rms.var)
    assert (stats.clip_obs, stats.epsilon, stats.norm_obs) == (5.0, vec.epsilon, True)
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32) * 10
    normalized = stats.normalize(obs)
    assert normalized.dtype == np.float32
    np.testing.assert_array_equal(normalized, vec.normalize_obs(obs))


# ---------------------------------------------------------------------------------------------
# Safe YAML


def test_yaml_ordered_dict_is_the_only_python_tag(tmp_path: Path, marker: Path) -> None:
    text = "!!python/object/apply:collections.OrderedDict\n- - - policy\n    - MlpPolicy\n  - - n_envs\n    - 8\n"
    assert dict(load_zoo_yaml(text)) == {"policy": "MlpPolicy", "n_envs": 8}
    hostile = [
        f"!!python/object/apply:os.system ['touch {marker}']",
        f"a: !!python/object/apply:subprocess.call [['touch', '{marker}']]",
        "a: !!python/name:os.system ''",
        "a: !!python/object/new:builtins.dict {}",
        "a: !custom_tag 1",
    ]
    for text in hostile:
        with pytest.raises(UnsafeContentError):
            load_zoo_yaml(text)
    assert not marker.exists()


def test_config_with_hostile_normalize_is_refused(marker: Path) -> None:
    config = (
        "!!python/object/apply:collections.OrderedDict\n"
        f"- - - normalize\n    - \"__import__('os').system('touch {marker}')\"\n"
    )
    with pytest.raises(UnsafeContentError, match="normalize"):
        parse_config(config)
    config_tag = (
        "!!python/object/apply:collections.OrderedDict\n"
        f"- - - normalize\n    - !!python/object/apply:os.system ['touch {marker}']\n"
    )
    with pytest.raises(UnsafeContentError):
        parse_config(config_tag)
    assert not marker.exists()


def test_broken_yaml_is_corrupt() -> None:
    with pytest.raises(CorruptFileError):
        load_zoo_yaml("a: [1, 2\nb: }")


# ---------------------------------------------------------------------------------------------
# normalize / policy_kwargs by AST walk


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, {}),
        (False, None),
        (None, None),
        ("True", {}),
        ("False", None),
        ("dict(norm_obs=True, norm_reward=False)", {"norm_obs": True, "norm_reward": False}),
        ("{'norm_obs': False, 'clip_obs': 5.0}", {"norm_obs": False, "clip_obs": 5.0}),
        ("dict(gamma=0.99, epsilon=-1e-8)", {"gamma": 0.99, "epsilon": -1e-8}),
    ],
)
def test_normalize_forms(value, expected) -> None:
    assert parse_normalize(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "__import__('os').system('true')",
        "dict(norm_obs=__import__('os'))",
        "dict(**{'norm_obs': True})",
        "open('/etc/passwd')",
        "lambda: 1",
        "dict(norm_obs=True) if True else 0",
        "[x for x in ()]",
        "os.system",
        "dict(norm_obs=nn.ReLU)",
        42,
    ],
)
def test_normalize_refuses_code(value) -> None:
    with pytest.raises(UnsafeContentError):
        parse_normalize(value)


def test_normalize_unknown_key_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormatError, match="norm_obs_keyz"):
        parse_normalize("dict(norm_obs_keyz=1)")


def test_policy_kwargs_strings() -> None:
    parsed = parse_policy_kwargs("dict(log_std_init=-2, net_arch=[64, 64], activation_fn=nn.ReLU)")
    assert parsed == {"log_std_init": -2, "net_arch": [64, 64], "activation_fn": ClassRef("nn.ReLU")}
    parsed = parse_policy_kwargs(
        "dict(net_arch=[dict(pi=[256], vf=[256])], activation_fn=th.nn.Tanh, ortho_init=False, "
        "optimizer_class=RMSpropTFLike, optimizer_kwargs=dict(eps=1e-5))"
    )
    assert parsed["net_arch"] == [{"pi": [256], "vf": [256]}]
    assert parsed["activation_fn"] == ClassRef("th.nn.Tanh")
    assert parsed["optimizer_class"] == ClassRef("RMSpropTFLike")
    assert parsed["ortho_init"] is False and parsed["optimizer_kwargs"] == {"eps": 1e-5}


@pytest.mark.parametrize(
    "value",
    [
        "dict(activation_fn=os.system)",
        "dict(activation_fn=__import__('os').system)",
        "dict(net_arch=eval('[64]'))",
        "dict(activation_fn=nn.ReLU())",
        "dict(features_extractor_class=my_module.MyCNN)",
        "__import__('os').system('true')",
        "[64, 64]",
    ],
)
def test_policy_kwargs_refuse_code(value) -> None:
    with pytest.raises(UnsafeContentError):
        parse_policy_kwargs(value)


def test_env_wrappers_allowlist() -> None:
    assert parse_env_wrappers(None) == []
    assert parse_env_wrappers("sb3_contrib.common.wrappers.TimeFeatureWrapper") == [("TimeFeatureWrapper", {})]
    assert parse_env_wrappers([{"rl_zoo3.wrappers.TimeFeatureWrapper": {"max_steps": 1000}}]) == [
        ("TimeFeatureWrapper", {"max_steps": 1000})
    ]
    with pytest.raises(UnsafeContentError, match="my_package.wrappers.Cheat"):
        parse_env_wrappers(["my_package.wrappers.Cheat"])


# ---------------------------------------------------------------------------------------------
# Hostile vec_normalize.pkl


def test_vec_normalize_payloads_are_refused(hostile_pickles, marker: Path) -> None:
    for name, payload in hostile_pickles(marker).items():
        with pytest.raises(UnsafeContentError, match="allowlist"):
            parse_vec_normalize(payload)
        assert not marker.exists(), name


def test_vec_normalize_payload_inside_real_structure_is_refused(marker: Path) -> None:
    """The payload hidden as one field of an otherwise valid VecNormalize pickle."""
    vec = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    vec.clip_obs = _System(marker)
    raw = pickle.dumps(vec, protocol=3)  # as SB3 1.x wrote them
    assert b"VecNormalize" in raw and b"system" in raw
    with pytest.raises(UnsafeContentError, match="system"):
        parse_vec_normalize(raw)
    assert not marker.exists()


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize(
    "raw",
    [b"", b"not a pickle", pickle.dumps({"obs_rms": 1}), pickle.dumps([1, 2, 3])],
)
def test_vec_normalize_garbage_is_corrupt(raw: bytes) -> None:
    with pytest.raises(CorruptFileError):
        parse_vec_normalize(raw)


def test_vec_normalize_object_arrays_are_refused() -> None:
    vec = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")]))
    vec.obs_rms.mean = np.array([1, "a", None], dtype=object)
    with pytest.raises(UnsafeContentError):
        parse_vec_normalize(pickle.dumps(vec))


# ---------------------------------------------------------------------------------------------
# Review findings: malformed YAML and pickles end in typed errors, never a large allocation


@pytest.mark.parametrize(
    "text",
    [
        "a: 2020-13-45\n",
        "a: !!timestamp foo\n",
        "a: !!int foo\n",
        "a: !!float foo\n",
        "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "a:\n" + "".join("  " * i + f"b{i}:\n" for i in range(1, 200)) + "  " * 200 + "c: 1\n",
        "!!python/object/apply:collections.OrderedDict\n- - [[a], 1]\n",
        "!!python/object/apply:collections.OrderedDict\n- - [{a: 1}, 1]\n",
    ],
)
def test_yaml_values_that_cannot_be_built_are_corrupt(text: str) -> None:
    with pytest.raises(CorruptFileError, match="config.yml"):
        parse_config(text)


def _alias_bomb(depth: int, use: str) -> str:
    lines = ["a0: &a0 [" + ",".join(['"xxxxxxxx"'] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, depth)]
    return "\n".join(lines) + f"\n{use}: [*a{depth - 1}]\n"


@pytest.mark.parametrize(
    "text",
    [
        _alias_bomb(6, "env_wrapper"),  # once expanded: a 12 MB error message
        _alias_bomb(6, "normalize"),
        "a: &x 1\nb: *x\n",
        "a: &x 1\n",
        "base: &b {n_envs: 8}\nppo:\n  <<: *b\n",
    ],
)
def test_yaml_anchors_and_aliases_are_refused(text: str) -> None:
    with pytest.raises(UnsafeContentError, match="aliases") as info:
        parse_config(text)
    assert len(str(info.value)) < 1000


def test_config_error_messages_are_bounded() -> None:
    wrapper = "env_wrapper: [[" + ", ".join(["x" * 100] * 1000) + "]]\n"
    with pytest.raises(UnsupportedFormatError) as info:
        parse_config(wrapper)
    assert len(str(info.value)) < 500
    with pytest.raises(CorruptFileError) as info:
        parse_config("frame_stack: [" + ", ".join(["x" * 100] * 1000) + "]\n")
    assert len(str(info.value)) < 500


def test_normalize_with_non_string_keys_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormatError, match="non-string keys"):
        parse_config("normalize: {1: a, b: c}\n")


# vec_normalize.pkl built opcode by opcode, as a hostile writer would (numpy's own pickler never
# writes these shapes or dtypes).


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _bytes(raw: bytes) -> bytes:
    return b"B" + len(raw).to_bytes(4, "little") + raw


def _int(n: int) -> bytes:
    return b"L" + str(n).encode() + b"L\n"


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _dtype(code: str) -> bytes:
    state = _tuple(_int(3), _str("<"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0))
    return _global("numpy", "dtype") + _tuple(_str(code), b"\x89", b"\x88") + b"R" + state + b"b"


def _array(shape: tuple[int, ...], code: str, raw: bytes) -> bytes:
    reconstruct = _global("numpy.core.multiarray", "_reconstruct")
    args = _tuple(_global("numpy", "ndarray"), _tuple(_int(0)), _bytes(b"b"))
    state = _tuple(_int(1), _tuple(*(_int(n) for n in shape)), _dtype(code), b"\x89", _bytes(raw))
    return reconstruct + args + b"R" + state + b"b"


def _vec_normalize(mean: bytes, var: bytes) -> bytes:
    rms = (_global("stable_baselines3.common.running_mean_std", "RunningMeanStd") + b")R"
           + b"}(" + _str("mean") + mean + _str("var") + var + b"ub")
    vec = _global("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize") + b")R"
    return b"\x80\x02" + vec + b"}(" + _str("obs_rms") + rms + b"ub."


_GOOD = _array((2,), "f8", np.zeros(2).tobytes())


def test_opcode_built_vec_normalize_reads() -> None:
    stats = parse_vec_normalize(_vec_normalize(_GOOD, _GOOD))
    assert stats.mean.shape == (2,) and stats.mean.dtype == np.float64


@pytest.mark.parametrize(
    "mean",
    [
        _array((2**32, 2**32), "f8", b""),  # the int64 product wraps to 0
        _array((2**70,), "f8", b""),
        _array((0, 2**62), "f8", b""),
        _array((0,) * 65, "f8", b""),
        _array((0,) * 9, "f8", b""),
        _array((2,), "abcd", b""),
        _array((2,), "f8", b"short"),
    ],
)
def test_vec_normalize_malformed_arrays_are_corrupt(mean: bytes) -> None:
    with pytest.raises(CorruptFileError, match="vec_normalize.pkl"):
        parse_vec_normalize(_vec_normalize(mean, _GOOD))


@pytest.mark.parametrize(
    "target",
    [("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")],
)
def test_vec_normalize_build_on_a_global_is_refused(target: tuple[str, str]) -> None:
    """BUILD on the allowlisted global itself would set attributes on a shared object."""
    from evaluator.agents import pickle_numpy

    for state in (b"}(" + _str("polluted") + b"K\x01u", b"(N}(" + _str("polluted") + b"K\x01ut"):
        raw = b"\x80\x02" + _global(*target) + state + b"b0" + _vec_normalize(_GOOD, _GOOD)[2:]
        with pytest.raises(UnsafeContentError, match="BUILD"):
            parse_vec_normalize(raw)
    assert not hasattr(pickle_numpy.NdarrayMarker, "polluted")
    assert not hasattr(pickle_numpy.reconstruct, "polluted")
    assert parse_vec_normalize(_vec_normalize(_GOOD, _GOOD)).mean.shape == (2,)
