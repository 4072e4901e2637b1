"""Fused policy calls (`LeanSB3.act_many`): a call of many rows gives bitwise the actions of
the same rows called 8 at a time (the protocol's batch), on the real RL Zoo agents and on built
policies of every family; graphs or shapes that could round differently stay batch by batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluator.agents import find_agent, load_agent
from evaluator.agents.base import AgentFiles
from evaluator.agents.sb3_lean import (
    LeanSB3,
    _clear_argmax_many,
    _clear_lead_many,
    batch_invariant_graph,
    clear_argmax,
    clear_lead,
    fast_forward,
)
from evaluator.envs import make_env, resolve_env
from tests.evaluator.test_sb3_lean import _built, _observations, _zoo_agents

BATCH = 8


def _chunked(act, obs: np.ndarray) -> np.ndarray:
    return np.concatenate([act(obs[k:k + BATCH]) for k in range(0, len(obs), BATCH)])


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _windows(space, env, seed: int) -> list[np.ndarray]:
    batches = _observations(space, env, 21, seed=seed)
    rows = np.concatenate([b for b in batches if b.shape[1:] == batches[0].shape[1:]])
    return [rows[k:k + n] for n in (16, 24, 56, 64) for k in range(0, len(rows) - n + 1, 97)]


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo_agents() or ["absent"])
def test_fused_calls_give_the_batch_by_batch_actions_on_the_real_zoo_agents(name, zoo_root):
    root = zoo_root / "sb3" / name
    files = tuple(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    fmt, agent_file = find_agent(files, repo_id=f"sb3/{name}")
    env = make_env(resolve_env(name.split("-", 1)[1]))
    policy = load_agent(fmt, AgentFiles(root, agent_file, files), env.observation_space, env.action_space).policy
    for obs in _windows(env.observation_space, env, seed=5):
        _same(policy.act_many(obs, batch=BATCH), _chunked(policy.act, obs))
    if name in ("ppo-LunarLander-v2", "ppo-CartPole-v1", "dqn-LunarLander-v2", "a2c-LunarLander-v2"):
        assert policy.lean.fused.get(56), name  # the common MLPs do fuse here
    env.close()


@pytest.mark.parametrize(("algo", "env_id", "kwargs"), [
    ("ppo", "CartPole-v1", {}),
    ("ppo", "Pendulum-v1", {}),
    ("a2c", "LunarLander-v3", {"policy_kwargs": {"net_arch": [8], "activation_fn": torch.nn.ReLU}}),
    ("a2c", "LunarLander-v3", {"policy_kwargs": {"net_arch": [6]}}),  # tanh on 6 values: not fused
    ("dqn", "CartPole-v1", {}),
    ("qrdqn", "CartPole-v1", {}),
    ("sac", "Pendulum-v1", {}),
    ("td3", "MountainCarContinuous-v0", {}),
    ("ars", "Pendulum-v1", {}),
])
def test_fused_calls_give_the_batch_by_batch_actions_for_every_family(algo, env_id, kwargs):
    policy, env = _built(algo, env_id, **kwargs)
    lean = LeanSB3(policy)
    for obs in _windows(env.observation_space, env, seed=13):
        _same(lean.act_many(obs, BATCH), _chunked(lean.act, obs))
    if kwargs.get("policy_kwargs", {}).get("net_arch") == [6]:
        assert not any(lean.fused.values())


def test_near_ties_in_a_fused_call_fall_back_batch_by_batch():
    policy, _ = _built("ppo", "CartPole-v1")
    lean = LeanSB3(policy)
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    with torch.no_grad():
        policy.action_net.weight.zero_()
        policy.action_net.bias.copy_(torch.tensor([0.25, 0.25]))  # every row an exact tie
        reference, _ = policy.predict(obs, deterministic=True)
    _same(lean.act_many(obs, BATCH), reference)


def test_a_probe_that_disagrees_keeps_calls_batch_by_batch(monkeypatch):
    policy, env = _built("ppo", "CartPole-v1")
    lean = LeanSB3(policy)
    raw, calls = lean.raw, []
    lean.raw = lambda x: calls.append(len(x)) or raw(x) + (len(x) > BATCH) * 1e-3  # a kernel that differs
    obs = np.random.default_rng(1).normal(size=(24, 4)).astype(np.float32)
    lean.act_many(obs, BATCH)
    assert lean.fused == {24: False}
    calls.clear()
    lean.act_many(obs, BATCH)
    assert calls == []  # batch by batch through `head`, the probe not run again


def test_graphs_that_could_round_differently_are_not_fused():
    def leaves(*modules):
        out: list = []
        fast_forward(torch.nn.Sequential(*modules), out)
        return out

    assert batch_invariant_graph(leaves(torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)))
    assert batch_invariant_graph(leaves(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2)))
    assert not batch_invariant_graph(leaves(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)))
    assert not batch_invariant_graph(leaves(torch.nn.Tanh(), torch.nn.Linear(4, 8)))  # width unknown
    assert not batch_invariant_graph(leaves(torch.nn.Linear(4, 8), torch.nn.ELU()))  # not ours to vouch for


def test_both_lead_checks_are_one_rule_and_give_torchs_argmax():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        n, k = int(rng.choice([1, 8])), int(rng.choice([1, 2, 3, 4, 6]))
        x = (rng.standard_normal((n, k)) * rng.choice([1e-6, 1.0, 1e3, 1e30])).astype(np.float32)
        if k > 1 and rng.random() < 0.4:
            r = rng.integers(n)
            x[r, 1] = np.nextafter(x[r, 0], np.float32(np.inf)) if rng.random() < 0.5 else x[r, 0]
        if rng.random() < 0.05:
            x[rng.integers(n), rng.integers(k)] = rng.choice([np.nan, np.inf, -np.inf])
        assert clear_lead(x) == _clear_lead_many(x), x
        few, many = clear_argmax(x), _clear_argmax_many(x)
        assert (few is None) == (many is None) == (not clear_lead(x)), x
        if few is not None:  # a clear lead: the index torch's argmax takes, from either path
            expected = torch.from_numpy(x).argmax(dim=1).numpy()
            assert few.dtype == many.dtype == expected.dtype == np.int64
            assert few.tolist() == many.tolist() == expected.tolist(), x


def test_dict_observations_are_called_batch_by_batch():
    from gymnasium import spaces
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    space = spaces.Dict({"a": spaces.Box(-1, 1, (3,), np.float32), "b": spaces.Box(-1, 1, (2,), np.float32)})
    torch.manual_seed(0)
    policy = MultiInputActorCriticPolicy(space, spaces.Discrete(3), lambda _: 0.0)
    lean = LeanSB3(policy)
    rng = np.random.default_rng(2)
    obs = {"a": rng.uniform(-1, 1, (24, 3)).astype(np.float32), "b": rng.uniform(-1, 1, (24, 2)).astype(np.float32)}
    whole = lean.act_many(obs, BATCH)
    parts = [lean.act({k: v[i:i + BATCH] for k, v in obs.items()}) for i in range(0, 24, BATCH)]
    _same(whole, np.concatenate(parts))
    _same(lean.act_many({k: v[:BATCH] for k, v in obs.items()}, BATCH), parts[0])
