"""Train the demo agents and write them as Hub-style model repos under ``demo_hub/``.

Each agent becomes ``demo_hub/{user}/{repo}/`` holding what the Deep RL course's
``package_to_hub`` produces (minus the replay video): ``{repo}.zip`` (SB3 ``model.save``),
``README.md`` (the course model card) and ``results.json``. The card's claim is what
``evaluate_policy(model, env, n_eval_episodes=10, deterministic=True)`` measures on a seeded
env, except for the over-claiming agent, whose card is deliberately false.

After saving, every agent is reloaded from its zip and scored with a plain loop over 50
episodes (``env.reset(seed=i)`` for i in 0..49, deterministic actions); that honest figure is
printed next to the card's claim together with the leaderboard's claim verdict.

The Deep RL course's own formats (a FrozenLake and a Taxi Q-table, a REINFORCE CartPole module,
a CleanRL LunarLander PPO state dict) are trained and packaged by ``scripts/course_agents.py``
the way the course notebooks push them, in seconds each, with fixed seeds (``COURSE_AGENTS`` in
``scripts/demo_repos.py``);
the CleanRL one over-claims. The RL Zoo repos of the families issue 11 added (an Atari
SpaceInvaders PPO, a PandaReachDense A2C, a Pendulum PPO under TimeFeatureWrapper) are trained by
``scripts/zoo_agents.py`` in about two minutes (``ZOO_AGENTS``), with the ``config.yml`` the RL Zoo
writes and cards measured by ``evaluate_policy`` on the RL Zoo's own stack.

Usage:
    python scripts/train_demo_agents.py [--out demo_hub] [--only NAME ...]

Training runs on one CPU thread; agents are trained one after another, quick ones first.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from demo_repos import COURSE_AGENTS, ZOO_AGENTS, CourseAgent
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv

ALGOS: dict[str, type[BaseAlgorithm]] = {"A2C": A2C, "DQN": DQN, "PPO": PPO}

CARD_EPISODES = 10  # the course default for package_to_hub
CHECK_EPISODES = 50  # what the leaderboard runs for classic control and Box2D
CARD_EVAL_SEED = 1234  # seed of the env the card's claim is measured on

# Strong LunarLander agent: stop once mean - std over the 50 check episodes reaches
# TARGET_SCORE; keep training in chunks up to MAX_STEPS, never accepting less than MIN_SCORE.
LUNAR_FIRST_STEPS = 1_000_000
LUNAR_CHUNK_STEPS = 250_000
LUNAR_MAX_STEPS = 3_000_000
LUNAR_TARGET_SCORE = 210.0
LUNAR_MIN_SCORE = 200.0


@dataclass(frozen=True)
class Agent:
    """One demo repo: who publishes it, what it is, and how it is trained."""

    name: str  # key for --only
    user: str
    repo: str
    algo: str
    env_id: str
    seed: int
    train: Callable[[Agent], BaseAlgorithm]
    # (mean, std) written on the card instead of the measured figures
    forged_claim: tuple[float, float] | None = None

    @property
    def repo_id(self) -> str:
        return f"{self.user}/{self.repo}"


def linear(initial: float) -> Callable[[float], float]:
    """RL Zoo's ``lin_X`` schedule: decays from ``initial`` to 0 over training."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


# --------------------------------------------------------------------------- scoring


def play_episodes(model: BaseAlgorithm, env_id: str, n_episodes: int) -> np.ndarray:
    """Plain loop: episode i starts from ``env.reset(seed=i)``; actions are deterministic."""
    env = gym.make(env_id)
    returns = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=i)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return np.asarray(returns)


def claim_verdict(claimed: tuple[float, float], measured: np.ndarray) -> str:
    """The leaderboard's rule (DESIGN.md): inflated iff M - m > 3*sqrt(s2/n + S2/N) + 0.01*max(|M|, 1)."""
    big_m, big_s = claimed
    m, s, n = float(measured.mean()), float(measured.std()), len(measured)
    margin = 3 * math.sqrt(s * s / n + big_s * big_s / CARD_EPISODES) + 0.01 * max(abs(big_m), 1)
    return "inflated" if big_m - m > margin else "consistent"


# --------------------------------------------------------------------------- training


def train_ppo_cartpole(agent: Agent) -> BaseAlgorithm:
    """RL Zoo hyperparameters for PPO on CartPole-v1 (1e5 steps)."""
    env = make_vec_env(agent.env_id, n_envs=8, seed=agent.seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(0.001),
        clip_range=linear(0.2),
        seed=agent.seed,
        verbose=0,
    )
    return model.learn(total_timesteps=100_000)


def train_a2c_cartpole(agent: Agent) -> BaseAlgorithm:
    """RL Zoo hyperparameters for A2C on CartPole-v1 (n_envs=8, ent_coef=0), 2e5 steps."""
    env = make_vec_env(agent.env_id, n_envs=8, seed=agent.seed)
    model = A2C("MlpPolicy", env, ent_coef=0.0, seed=agent.seed, verbose=0)
    return model.learn(total_timesteps=200_000)


def train_nothing(agent: Agent) -> BaseAlgorithm:
    """Random baseline: a freshly initialised PPO policy, saved without any training."""
    env = make_vec_env(agent.env_id, n_envs=1, seed=agent.seed)
    return PPO("MlpPolicy", env, seed=agent.seed, verbose=0)


def train_ppo_cartpole_briefly(agent: Agent) -> BaseAlgorithm:
    """Over-claimer: default PPO on CartPole-v1 for one rollout only."""
    env = make_vec_env(agent.env_id, n_envs=1, seed=agent.seed)
    model = PPO("MlpPolicy", env, seed=agent.seed, verbose=0)
    return model.learn(total_timesteps=2_048)


def train_dqn_lunar_briefly(agent: Agent) -> BaseAlgorithm:
    """Weak DQN: RL Zoo LunarLander hyperparameters, default (64, 64) net, 8e4 steps."""
    env = make_vec_env(agent.env_id, n_envs=1, seed=agent.seed)
    model = DQN(
        "MlpPolicy",
        env,
        learning_rate=6.3e-4,
        batch_size=128,
        buffer_size=50_000,
        learning_starts=0,
        gamma=0.99,
        target_update_interval=250,
        train_freq=4,
        gradient_steps=-1,
        exploration_fraction=0.12,
        exploration_final_eps=0.1,
        seed=agent.seed,
        verbose=0,
    )
    return model.learn(total_timesteps=80_000)


def train_ppo_lunar(agent: Agent) -> BaseAlgorithm:
    """RL Zoo hyperparameters for PPO on LunarLander, 1e6 steps, then more until strong."""
    env = make_vec_env(agent.env_id, n_envs=16, seed=agent.seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=1024,
        batch_size=64,
        gae_lambda=0.98,
        gamma=0.999,
        n_epochs=4,
        ent_coef=0.01,
        seed=agent.seed,
        verbose=0,
    )
    model.learn(total_timesteps=LUNAR_FIRST_STEPS)
    best_score, best_params = -math.inf, None
    while True:
        returns = play_episodes(model, agent.env_id, CHECK_EPISODES)
        score = float(returns.mean() - returns.std())
        log(
            f"  {agent.repo_id} after {model.num_timesteps} steps: "
            f"{returns.mean():.2f} +/- {returns.std():.2f} (score {score:.2f})"
        )
        if score > best_score:
            best_score, best_params = score, copy.deepcopy(model.get_parameters())
        if score >= LUNAR_TARGET_SCORE or model.num_timesteps >= LUNAR_MAX_STEPS:
            break
        model.learn(total_timesteps=LUNAR_CHUNK_STEPS, reset_num_timesteps=False)
    model.set_parameters(best_params)
    if best_score < LUNAR_MIN_SCORE:
        raise RuntimeError(f"{agent.repo_id}: best score {best_score:.2f} < {LUNAR_MIN_SCORE}")
    return model


# Quick ones first; the long LunarLander PPO last.
AGENTS: tuple[Agent, ...] = (
    Agent(
        name="ppo-cartpole",
        user="ada-lovelace",
        repo="ppo-CartPole-v1",
        algo="PPO",
        env_id="CartPole-v1",
        seed=1,
        train=train_ppo_cartpole,
    ),
    Agent(
        name="a2c-cartpole",
        user="ada-lovelace",
        repo="a2c-CartPole-v1",
        algo="A2C",
        env_id="CartPole-v1",
        seed=2,
        train=train_a2c_cartpole,
    ),
    Agent(
        name="random-lunarlander",
        user="baseline-bot",
        repo="random-LunarLander-v3",
        algo="PPO",
        env_id="LunarLander-v3",
        seed=3,
        train=train_nothing,
    ),
    Agent(
        name="overclaimer",
        user="hype-master",
        repo="ppo-CartPole-v1-perfect",
        algo="PPO",
        env_id="CartPole-v1",
        seed=4,
        train=train_ppo_cartpole_briefly,
        forged_claim=(500.0, 0.0),
    ),
    Agent(
        name="dqn-lunarlander",
        user="grace-h",
        repo="dqn-LunarLander-v3",
        algo="DQN",
        env_id="LunarLander-v3",
        seed=5,
        train=train_dqn_lunar_briefly,
    ),
    Agent(
        name="ppo-lunarlander",
        user="kenji-rl",
        repo="ppo-LunarLander-v3",
        algo="PPO",
        env_id="LunarLander-v3",
        seed=6,
        train=train_ppo_lunar,
    ),
)


# --------------------------------------------------------------------------- the course's formats


def build_course_agent(agent: CourseAgent, out: Path) -> str:
    """Train and package one course-format repo; its summary line."""
    log(f"training {agent.repo_id} (course format)")
    started = time.perf_counter()
    folder = agent.build(out / agent.user / agent.repo)
    seconds = time.perf_counter() - started
    results = json.loads((folder / "results.json").read_text())
    log(f"  {agent.repo_id}: card evaluation {results['mean_reward']:.2f} in {seconds:.0f} s")
    mean = results["mean_reward"]
    how = "RL Zoo evaluate_policy" if agent in ZOO_AGENTS else "course evaluate_agent"
    return f"| {agent.repo_id} | {'RL Zoo repo' if agent in ZOO_AGENTS else 'course format'} | {mean:.2f} ({how}) " \
           f"| {seconds:.0f} s |"


# --------------------------------------------------------------------------- packaging


def model_card(algo: str, env_id: str, mean: float, std: float) -> str:
    """The course model card: ``generate_metadata`` front matter and ``_generate_model_card`` body."""
    return f"""---
library_name: stable-baselines3
tags:
- {env_id}
- deep-reinforcement-learning
- reinforcement-learning
- stable-baselines3
model-index:
- name: {algo}
  results:
  - task:
      type: reinforcement-learning
      name: reinforcement-learning
    dataset:
      name: {env_id}
      type: {env_id}
    metrics:
    - type: mean_reward
      value: {mean:.2f} +/- {std:.2f}
      name: mean_reward
      verified: false
---

# **{algo}** Agent playing **{env_id}**
This is a trained model of a **{algo}** agent playing **{env_id}**
using the [stable-baselines3 library](https://github.com/DLR-RM/stable-baselines3).

## Usage (with Stable-baselines3)
TODO: Add your code


```python
from stable_baselines3 import ...
from huggingface_sb3 import load_from_hub

...
```
"""


def card_evaluation(model: BaseAlgorithm, env_id: str) -> tuple[float, float]:
    """What ``package_to_hub`` measures: 10 deterministic episodes on a Monitor-wrapped env."""
    eval_env = DummyVecEnv([lambda: Monitor(gym.make(env_id))])
    eval_env.seed(CARD_EVAL_SEED)
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=CARD_EPISODES, deterministic=True)
    eval_env.close()
    return float(mean), float(std)


def package(agent: Agent, model: BaseAlgorithm, out: Path) -> tuple[float, float]:
    """Write ``{repo}.zip``, ``results.json`` and ``README.md``; return the card's claim."""
    repo_dir = out / agent.user / agent.repo
    repo_dir.mkdir(parents=True, exist_ok=True)
    model.save(repo_dir / f"{agent.repo}.zip")
    mean, std = card_evaluation(model, agent.env_id)
    if agent.forged_claim is not None:
        log(f"  {agent.repo_id}: honest card would say {mean:.2f} +/- {std:.2f}; writing a false claim")
        mean, std = agent.forged_claim
    results = {
        "mean_reward": mean,
        "std_reward": std,
        "is_deterministic": True,
        "n_eval_episodes": CARD_EPISODES,
        "eval_datetime": datetime.datetime.now().isoformat(),
    }
    (repo_dir / "results.json").write_text(json.dumps(results))
    (repo_dir / "README.md").write_text(model_card(agent.algo, agent.env_id, mean, std))
    return mean, std


def verify(agent: Agent, out: Path, claimed: tuple[float, float]) -> np.ndarray:
    """Reload the saved zip and play the 50 seeded check episodes."""
    repo_dir = out / agent.user / agent.repo
    model = ALGOS[agent.algo].load(repo_dir / f"{agent.repo}.zip", device="cpu")
    returns = play_episodes(model, agent.env_id, CHECK_EPISODES)
    log(
        f"  {agent.repo_id}: card claims {claimed[0]:.2f} +/- {claimed[1]:.2f}; "
        f"measured {returns.mean():.2f} +/- {returns.std():.2f} over {CHECK_EPISODES} episodes "
        f"(score {returns.mean() - returns.std():.2f}) -> {claim_verdict(claimed, returns)}"
    )
    return returns


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo_hub"),
        help="hub folder (default: demo_hub)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[agent.name for agent in (*AGENTS, *COURSE_AGENTS, *ZOO_AGENTS)],
        metavar="NAME",
        help="train only this agent (repeatable): "
             f"{', '.join(a.name for a in (*AGENTS, *COURSE_AGENTS, *ZOO_AGENTS))}",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    summary = []
    for agent in AGENTS:
        if args.only and agent.name not in args.only:
            continue
        log(f"training {agent.repo_id} ({agent.algo} on {agent.env_id}, seed {agent.seed})")
        set_random_seed(agent.seed)
        started = time.perf_counter()
        model = agent.train(agent)
        minutes = (time.perf_counter() - started) / 60
        log(f"  {agent.repo_id}: trained {model.num_timesteps} steps in {minutes:.1f} min")
        claimed = package(agent, model, args.out)
        returns = verify(agent, args.out, claimed)
        size_kb = (args.out / agent.user / agent.repo / f"{agent.repo}.zip").stat().st_size / 1024
        summary.append(
            f"| {agent.repo_id} | {claimed[0]:.2f} +/- {claimed[1]:.2f} | "
            f"{returns.mean():.2f} +/- {returns.std():.2f} | {claim_verdict(claimed, returns)} | "
            f"{model.num_timesteps} | {minutes:.1f} min | {size_kb:.0f} KB |"
        )

    for course_agent in COURSE_AGENTS:
        if not args.only or course_agent.name in args.only:
            summary.append(build_course_agent(course_agent, args.out))
    for zoo_agent in ZOO_AGENTS:
        if not args.only or zoo_agent.name in args.only:
            summary.append(build_course_agent(zoo_agent, args.out))

    print("\n| repo | card claim (10 ep) | measured (50 ep, seeds 0..49) | verdict | steps | train time | zip |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(summary), flush=True)


if __name__ == "__main__":
    main()
