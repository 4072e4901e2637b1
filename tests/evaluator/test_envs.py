import dataclasses

import numpy as np
import pytest

from evaluator.envs import (
    make_env,
    make_vector_env,
    resolve_env,
    supported_env_ids,
    supported_env_keys,
)
from evaluator.errors import ErrorCode, UnknownEnvError


@pytest.mark.parametrize(
    ("requested", "eval_id", "kwargs", "key"),
    [
        ("CartPole-v1", "CartPole-v1", {}, "CartPole-v1"),
        ("LunarLander-v2", "LunarLander-v3", {}, "LunarLander-v3"),
        ("LunarLander-v3", "LunarLander-v3", {}, "LunarLander-v3"),
        ("LunarLanderContinuous-v2", "LunarLander-v3", {"continuous": True},
         "LunarLander-v3[continuous=True]"),
        ("LunarLanderContinuous-v3", "LunarLander-v3", {"continuous": True},
         "LunarLander-v3[continuous=True]"),
        ("FrozenLake-v1-4x4-no_slippery", "FrozenLake-v1",
         {"map_name": "4x4", "is_slippery": False},
         "FrozenLake-v1[is_slippery=False,map_name='4x4']"),
        ("FrozenLake-v1-8x8-no_slippery", "FrozenLake-v1",
         {"map_name": "8x8", "is_slippery": False},
         "FrozenLake-v1[is_slippery=False,map_name='8x8']"),
        ("FrozenLake-v1-4x4", "FrozenLake-v1", {"map_name": "4x4", "is_slippery": True},
         "FrozenLake-v1[is_slippery=True,map_name='4x4']"),
        ("FrozenLake-v1", "FrozenLake-v1", {"map_name": "4x4", "is_slippery": True},
         "FrozenLake-v1[is_slippery=True,map_name='4x4']"),
        ("Taxi-v3", "Taxi-v4", {}, "Taxi-v4"),
        ("BipedalWalkerHardcore-v3", "BipedalWalkerHardcore-v3", {}, "BipedalWalkerHardcore-v3"),
    ],
)
def test_aliases_and_env_keys(requested, eval_id, kwargs, key):
    spec = resolve_env(requested)
    assert spec.requested_id == requested
    assert spec.eval_env_id == eval_id
    assert spec.eval_env_kwargs == kwargs
    assert spec.env_key == key
    # The key is itself accepted, and resolves to the same env.
    again = resolve_env(key)
    assert (again.eval_env_id, again.eval_env_kwargs, again.env_key) == (eval_id, kwargs, key)


def test_protocol_per_family():
    cart, lunar, taxi, frozen = map(
        resolve_env, ["CartPole-v1", "LunarLander-v2", "Taxi-v3", "FrozenLake-v1-4x4-no_slippery"]
    )
    assert (cart.family, cart.n_episodes, cart.deterministic) == ("classic_control", 50, True)
    assert (lunar.family, lunar.n_episodes) == ("box2d", 50)
    assert (taxi.family, taxi.n_episodes, frozen.n_episodes) == ("toy_text", 100, 100)
    assert (cart.unit_threshold, lunar.unit_threshold, taxi.unit_threshold) == (350, 200, 4.5)
    assert resolve_env("Pendulum-v1").unit_threshold is None
    assert resolve_env("LunarLanderContinuous-v2").unit_threshold is None


def test_minimum_table_is_covered():
    required = [
        "CartPole-v1", "Acrobot-v1", "MountainCar-v0", "MountainCarContinuous-v0", "Pendulum-v1",
        "LunarLander-v2", "LunarLander-v3", "LunarLanderContinuous-v2",
        "LunarLanderContinuous-v3", "BipedalWalker-v3", "BipedalWalkerHardcore-v3",
        "FrozenLake-v1", "FrozenLake-v1-4x4-no_slippery", "FrozenLake-v1-8x8-no_slippery",
        "FrozenLake-v1-4x4", "Taxi-v3",
    ]
    assert set(required) <= set(supported_env_ids())
    assert supported_env_ids() == sorted(supported_env_ids())


@pytest.mark.parametrize(
    "bad",
    ["os:Foo-v0", "gymnasium.envs.classic_control:CartPoleEnv", "Foo-v0", "CartPole",
     "cartpole-v1", "CartPole-v1-extra", "ALE/Pong-v5", "", "LunarLander-v3[continuous=False]"],
)
def test_unknown_ids_refused_with_supported_list(bad):
    with pytest.raises(UnknownEnvError) as info:
        resolve_env(bad)
    assert info.value.code is ErrorCode.UNKNOWN_ENV
    message = str(info.value)
    assert "CartPole-v1" in message and "LunarLander-v3" in message


def test_module_ids_say_why():
    with pytest.raises(UnknownEnvError, match="imports code"):
        resolve_env("os:Foo-v0")


def test_atari_runs_under_the_rl_zoo_stack_by_default():
    spec = resolve_env("SpaceInvadersNoFrameskip-v4")
    assert "SpaceInvadersNoFrameskip-v4" in supported_env_ids()
    assert (spec.family, spec.n_episodes, spec.deterministic) == ("atari", 10, False)
    assert (spec.unit_threshold, spec.course_unit) == (200.0, "Unit 3")
    assert spec.view.wrappers == (("AtariWrapper", ()),) and spec.view.frame_stack == 4
    assert spec.max_episode_steps == 27_000  # ALE v4's 108,000 frames at frame skip 4
    env = make_env(spec)
    try:
        assert env.observation_space.shape == (84, 84, 4) and env.action_space.n == 6
    finally:
        env.close()


def test_spec_is_frozen_hashable_and_table_is_not_mutable_through_it():
    spec = resolve_env("LunarLanderContinuous-v2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.env_key = "x"  # type: ignore[misc]
    assert hash(spec) == hash(resolve_env("LunarLanderContinuous-v2"))
    spec.eval_env_kwargs["continuous"] = False
    assert resolve_env("LunarLanderContinuous-v2").eval_env_kwargs == {"continuous": True}


def test_every_supported_key_builds_and_resets():
    for key in supported_env_keys():
        env = make_env(resolve_env(key))
        try:
            obs, _ = env.reset(seed=0)
            assert env.observation_space.contains(obs)
        finally:
            env.close()


def test_make_env_applies_kwargs():
    env = make_env(resolve_env("FrozenLake-v1-8x8-no_slippery"))
    assert env.unwrapped.desc.shape == (8, 8)
    # Not slippery: every transition is deterministic.
    assert all(len(t) == 1 for s in env.unwrapped.P.values() for t in s.values())
    env.close()
    env = make_env(resolve_env("LunarLanderContinuous-v2"))
    assert env.action_space.shape == (2,)
    env.close()


def test_make_vector_env_gives_independent_envs():
    envs = make_vector_env(resolve_env("CartPole-v1"), 3)
    try:
        assert len(envs) == 3 and len({id(e) for e in envs}) == 3
        a, _ = envs[0].reset(seed=1)
        b, _ = envs[1].reset(seed=1)
        np.testing.assert_array_equal(a, b)
    finally:
        for e in envs:
            e.close()
