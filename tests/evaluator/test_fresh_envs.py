"""Episode i's return must not depend on which episodes its env played before: the real RL Zoo
BipedalWalker agent, whose returns did depend on it while Box2D envs were reused (a Box2D world
keeps allocator and contact state across `reset`). Whatever the window (8 slots, so each env
would play several episodes, or all 50 at once) the per-episode returns are the same."""

from __future__ import annotations

import pytest

import evaluator.runner as runner
from evaluator.agents import find_agent, load_agent
from evaluator.agents.base import AgentFiles
from evaluator.envs import make_env, resolve_env

pytestmark = [pytest.mark.slow, pytest.mark.shared]


@pytest.fixture(scope="module")
def walker(zoo_root):
    root = zoo_root / "sb3" / "ppo-BipedalWalker-v3"
    files = tuple(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    fmt, agent_file = find_agent(files, repo_id="sb3/ppo-BipedalWalker-v3")
    spec = resolve_env("BipedalWalker-v3")
    env = make_env(spec)
    policy = load_agent(fmt, AgentFiles(root, agent_file, files), env.observation_space, env.action_space).policy
    env.close()
    return policy, spec


def test_returns_do_not_depend_on_env_reuse(walker, monkeypatch):
    policy, spec = walker
    wide = runner.run_episodes(policy, spec, n_episodes=24)
    monkeypatch.setattr(runner, "MAX_WINDOW", 8)
    narrow = runner.run_episodes(policy, spec, n_episodes=24)
    assert narrow.returns == wide.returns and narrow.lengths == wide.lengths
    # What the rule prevents: the same schedule with envs reused gives other returns.
    monkeypatch.setattr(runner, "REUSABLE_ENV_FAMILIES", runner.REUSABLE_ENV_FAMILIES | {"box2d"})
    reused = runner.run_episodes(policy, spec, n_episodes=24)
    assert reused.returns[:16] == wide.returns[:16] and reused.returns != wide.returns
