"""Lean SB3 calls (evaluator.agents.sb3_lean) give exactly SB3's `predict` actions: on the real
RL Zoo agents, on freshly built policies of every family, and on batches built to hit the
fallbacks (ties between logits, NaN outputs)."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from evaluator.agents import find_agent, load_agent
from evaluator.agents.base import AgentFiles
from evaluator.agents.sb3_lean import LeanSB3, clear_lead, fast_forward
from evaluator.envs import make_env, resolve_env


def _same(lean: np.ndarray, reference: np.ndarray) -> None:
    assert lean.dtype == reference.dtype and lean.shape == reference.shape
    assert lean.tobytes() == reference.tobytes()


def _observations(space: gym.Space, env: gym.Env | None, n_batches: int, seed: int) -> list[np.ndarray]:
    """Batches of 8: visited states (random play from seeded resets) and samples of the space,
    some scaled far outside it (large activations, saturated tanh)."""
    space.seed(seed)
    rng = np.random.default_rng(seed)
    batches = []
    visited = []
    if env is not None:
        obs, _ = env.reset(seed=seed)
        for _ in range(8 * n_batches):
            visited.append(obs)
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
        batches += [np.stack(visited[i:i + 8]) for i in range(0, len(visited), 8)]
    for _ in range(n_batches):
        sample = np.stack([space.sample() for _ in range(8)])
        if isinstance(space, gym.spaces.Box):
            sample = np.nan_to_num(sample, posinf=1e3, neginf=-1e3).astype(space.dtype)
            batches.append((sample * rng.uniform(0.5, 50)).astype(space.dtype))
        batches.append(sample)
    return batches


def _zoo_agents() -> list[str]:
    root = Path(__file__).resolve().parents[3] / "shared" / "agents" / "zoo" / "sb3"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo_agents() or ["absent"])
def test_lean_actions_are_predicts_on_the_real_zoo_agents(name, zoo_root):
    root = zoo_root / "sb3" / name
    files = tuple(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    fmt, agent_file = find_agent(files, repo_id=f"sb3/{name}")
    spec = resolve_env(name.split("-", 1)[1])
    env = make_env(spec)
    agent = load_agent(fmt, AgentFiles(root, agent_file, files), env.observation_space, env.action_space)
    policy = agent.policy
    assert policy.lean.head is not None or type(policy.policy).__name__ == "QRDQNPolicy", name
    for obs in _observations(env.observation_space, env, 40, seed=7):
        x = policy.obs_stats.normalize(obs) if policy.obs_stats is not None else obs
        with torch.no_grad():
            reference, _ = policy.policy.predict(x, deterministic=True)
        _same(policy.act(obs), reference)
    env.close()


def _built(algo: str, env_id: str, **kwargs):
    import sb3_contrib
    import stable_baselines3 as sb3

    cls = getattr(sb3, algo.upper(), None) or getattr(sb3_contrib, algo.upper())
    env = gym.make(env_id)
    torch.manual_seed(3)
    model = cls("MlpPolicy", env, device="cpu", seed=3, **kwargs)
    model.policy.set_training_mode(False)
    return model.policy, env


@pytest.mark.parametrize(("algo", "env_id", "kwargs"), [
    ("ppo", "CartPole-v1", {}),
    ("ppo", "Pendulum-v1", {}),
    ("ppo", "FrozenLake-v1", {}),  # Discrete observations: one-hot preprocessing
    ("a2c", "LunarLander-v3", {"policy_kwargs": {"net_arch": [8], "activation_fn": torch.nn.ReLU}}),
    ("dqn", "CartPole-v1", {}),
    ("qrdqn", "CartPole-v1", {}),
    ("sac", "Pendulum-v1", {}),
    ("td3", "MountainCarContinuous-v0", {}),
    ("tqc", "Pendulum-v1", {}),
    ("ars", "Pendulum-v1", {}),
    ("ars", "CartPole-v1", {}),
])
def test_lean_actions_are_predicts_for_every_family(algo, env_id, kwargs):
    policy, env = _built(algo, env_id, **kwargs)
    lean = LeanSB3(policy)
    if algo != "qrdqn":
        assert lean.head is not None, f"{algo} should have a lean form"
    for obs in _observations(env.observation_space, env, 20, seed=11):
        with torch.no_grad():
            reference, _ = policy.predict(obs, deterministic=True)
        _same(lean.act(obs), reference)


def test_ties_and_near_ties_between_logits_go_through_sb3s_own_path():
    policy, _ = _built("ppo", "CartPole-v1")
    lean = LeanSB3(policy)
    with torch.no_grad():
        policy.action_net.weight.zero_()
        calls = []
        original = policy._predict
        obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
        # exact tie, then a one-ulp lead, then a lead far beyond any rounding
        for second in (0.25, np.nextafter(np.float32(0.25), np.float32(1)), 3.0):
            policy.action_net.bias.copy_(torch.tensor([0.25, second]))
            reference, _ = policy.predict(obs, deterministic=True)
            policy._predict = lambda *a, s=second, **k: calls.append(s) or original(*a, **k)
            _same(lean.act(obs), reference)
            policy._predict = original
    assert calls == [0.25, np.nextafter(np.float32(0.25), np.float32(1))]  # the ties fell back, the lead did not


def test_clear_lead_refuses_what_rounding_could_tie():
    assert clear_lead(np.array([[0.0, 1.0], [2.0, -1.0]], dtype=np.float32))
    assert not clear_lead(np.array([[0.0, 1e-9]], dtype=np.float32))
    assert not clear_lead(np.array([[1e6, 1e6 + 0.0625]], dtype=np.float32))  # 1 ulp at this size
    assert not clear_lead(np.array([[np.nan, 1.0]], dtype=np.float32))
    assert not clear_lead(np.array([[np.inf, 1.0]], dtype=np.float32))
    assert clear_lead(np.array([[5.0]], dtype=np.float32))  # one action: nothing to tie


def test_nan_outputs_fail_as_sb3_does():
    from evaluator.agents.sb3 import SB3Policy
    from evaluator.errors import InvalidActionError

    for algo, env_id in (("ppo", "CartPole-v1"), ("ppo", "Pendulum-v1"), ("sac", "Pendulum-v1")):
        policy, env = _built(algo, env_id)
        with torch.no_grad():
            for p in policy.parameters():
                p.fill_(float("nan"))
        obs = np.stack([env.observation_space.sample() for _ in range(8)])
        with pytest.raises(ValueError):
            policy.predict(obs, deterministic=True)
        with pytest.raises(InvalidActionError, match="NaN"):
            SB3Policy(policy, None).act(obs)


def test_fast_forward_runs_sequentials_functionally_and_keeps_other_modules():
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2), torch.nn.ReLU())
    x = torch.randn(8, 3)
    with torch.inference_mode():
        assert torch.equal(fast_forward(net)(x), net(x))
    odd = torch.nn.ELU()
    assert fast_forward(odd) is odd
