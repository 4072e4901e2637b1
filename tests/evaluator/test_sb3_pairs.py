"""Issue 10, acceptance 3: every algorithm x action-space pair the SB3 loader accepts, checked
against the policy its own library (SB3, sb3-contrib) builds: same class, same parameter names
and shapes, same deterministic actions. Plus the old sb3-contrib ARS linear layout."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import ARS, QRDQN, TQC, TRPO
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3

from evaluator.agents import AgentFiles, load_agent
from tests.evaluator.sb3_zip_edit import rewrite_zip

SPACES = {
    "Box": gym.spaces.Box(-2.0, 2.0, (2,), np.float32),
    "Discrete": gym.spaces.Discrete(3),
    "MultiDiscrete": gym.spaces.MultiDiscrete([3, 2]),
    "MultiBinary": gym.spaces.MultiBinary(3),
}
ON_POLICY = ("Box", "Discrete", "MultiDiscrete", "MultiBinary")
PAIRS = [
    *[(algo, kind) for algo in (PPO, A2C, TRPO) for kind in ON_POLICY],
    (DQN, "Discrete"), (QRDQN, "Discrete"),
    *[(algo, "Box") for algo in (SAC, TD3, DDPG, TQC)],
    (ARS, "Box"), (ARS, "Discrete"),
]


class SpaceEnv(gym.Env):
    """A 4-dimensional observation and the action space under test; nothing else matters here."""

    def __init__(self, action_space: gym.Space) -> None:
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _saved(algo, kind: str, tmp_path: Path, policy: str = "MlpPolicy"):
    env = SpaceEnv(SPACES[kind])
    kwargs = {"learning_starts": 0} if algo in (DQN, QRDQN, SAC, TD3, DDPG, TQC) else {}
    model = algo(policy, env, seed=0, device="cpu", **kwargs) if algo is not ARS else algo(policy, env, seed=0)
    with torch.no_grad():  # weights that make actions differ between observations
        for param in model.policy.parameters():
            param.copy_(torch.randn_like(param))
    path = tmp_path / f"{algo.__name__.lower()}-{kind}.zip"
    model.save(path)
    return env, model, path


def _check(agent, model, env) -> None:
    assert type(agent.policy.policy).__name__ == type(model.policy).__name__
    ours = {k: tuple(v.shape) for k, v in agent.policy.policy.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in model.policy.state_dict().items()}
    assert ours == theirs
    obs = np.stack([env.observation_space.sample() for _ in range(16)])
    expected, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(np.asarray(agent.policy.act(obs), dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("algo,kind", PAIRS, ids=[f"{a.__name__}-{k}" for a, k in PAIRS])
def test_pair_matches_the_class_its_library_builds(algo, kind, tmp_path):
    env, model, path = _saved(algo, kind, tmp_path)
    agent = load_agent("sb3", AgentFiles(path.parent, path.name, (path.name,)), env.observation_space,
                       env.action_space)
    assert agent.algo == algo.__name__.lower()
    _check(agent, model, env)


@pytest.mark.parametrize("kind", ["Box", "Discrete"])
def test_ars_linear_policy_and_its_old_layout(kind, tmp_path):
    """sb3-contrib < 2.0 saved ARS's LinearPolicy as one bare Linear (`action_net.weight`);
    the current class wraps it (`action_net.0.weight`). Both load, to the same actions."""
    env, model, path = _saved(ARS, kind, tmp_path, policy="LinearPolicy")
    files = AgentFiles(path.parent, path.name, (path.name,))
    _check(load_agent("sb3", files, env.observation_space, env.action_space), model, env)
    zf = zipfile.ZipFile(path)
    state = torch.load(io.BytesIO(zf.read("policy.pth")), weights_only=True)
    assert set(state) == {"action_net.0.weight"}
    old = {"action_net.weight": state["action_net.0.weight"]}
    buffer = io.BytesIO()
    torch.save(old, buffer)
    legacy = tmp_path / "ars-legacy.zip"
    legacy.write_bytes(rewrite_zip(path.read_bytes(), replace={"policy.pth": buffer.getvalue()}))
    agent = load_agent("sb3", AgentFiles(tmp_path, legacy.name, (legacy.name,)), env.observation_space,
                       env.action_space)
    _check(agent, model, env)
