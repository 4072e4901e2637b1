"""The demo hub's repos in the course's own formats and the RL Zoo repos of issue 11: who owns
each, under which repo name, and the function that trains and packages it into a folder
(`scripts/train_demo_agents.py --only NAME` builds one)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import course_agents as ca
import numpy as np
import zoo_agents as za


@dataclass(frozen=True)
class CourseAgent:
    """A demo repo in one of the course's own formats: `build(folder)` trains and packages it."""

    name: str
    user: str
    repo: str
    build: Callable[[Path], Path]

    @property
    def repo_id(self) -> str:
        return f"{self.user}/{self.repo}"


def build_q_frozenlake(folder: Path) -> Path:
    env = ca.make_qlearning_env("FrozenLake-v1", "4x4", False)
    table = ca.train_qtable(env, 2000, seed=11)
    return ca.package_qlearning(folder, env_id="FrozenLake-v1", map_name="4x4", slippery=False, table=table,
                                n_training_episodes=2000, repo_name="q-FrozenLake-v1-4x4-noSlippery")


def build_q_taxi(folder: Path) -> Path:
    table = ca.train_qtable(ca.make_qlearning_env("Taxi-v3"), 8000, seed=12)
    seeds = [int(s) for s in np.random.default_rng(12).integers(0, 10_000, 100)]  # the course's eval_seed list
    return ca.package_qlearning(folder, env_id="Taxi-v3", table=table, n_training_episodes=8000, eval_seed=seeds,
                                repo_name="q-Taxi-v3")


def build_reinforce(folder: Path) -> Path:
    policy = ca.train_reinforce("CartPole-v1", seed=13, h_size=16, n_episodes=150)
    return ca.package_reinforce(folder, policy, env_id="CartPole-v1", h_size=16, n_training_episodes=150,
                                repo_name="Reinforce-CartPole-v1")


def build_cleanrl_overclaimer(folder: Path) -> Path:
    agent = ca.train_cleanrl("LunarLander-v2", seed=14, updates=4)
    return ca.package_cleanrl(folder, agent, env_id="LunarLander-v2", forged=(250.0, 15.0),
                              repo_name="ppo-LunarLander-v2")


COURSE_AGENTS: tuple[CourseAgent, ...] = (
    CourseAgent("q-frozenlake", "mei-tanaka", "q-FrozenLake-v1-4x4-noSlippery", build_q_frozenlake),
    CourseAgent("q-taxi", "mei-tanaka", "q-Taxi-v3", build_q_taxi),
    CourseAgent("reinforce-cartpole", "olu-ade", "Reinforce-CartPole-v1", build_reinforce),
    CourseAgent("cleanrl-lunarlander", "quick-win", "ppo-LunarLander-v2", build_cleanrl_overclaimer),
)


# RL Zoo repos of the families issue 11 added (scripts/zoo_agents.py): small budgets, honest cards
# measured with evaluate_policy on the RL Zoo's own stack (stochastic for Atari, as the RL Zoo does).
ZOO_AGENTS: tuple[CourseAgent, ...] = (
    CourseAgent("ppo-spaceinvaders", "arcade-ana", "ppo-SpaceInvadersNoFrameskip-v4", za.demo_atari),
    CourseAgent("a2c-pandareach", "robo-rui", "a2c-PandaReachDense-v3", za.demo_panda),
    CourseAgent("ppo-pendulum-timefeature", "robo-rui", "ppo-Pendulum-v1", za.demo_time_feature),
)
