"""Throughput per core: env steps per CPU-second of referee plus player (issue 15, target 1).

    .venv/bin/python bench/throughput.py [--agents ppo-LunarLander-v2 ppo-CartPole-v1] [--repeat 3]

For each RL Zoo agent of ../shared, the same 50-episode protocol, CPU seconds (process time,
so other jobs on the machine count less than in wall time), medians of `--repeat`:
  env alone        the env stepped with the agent's own actions, recorded beforehand (no policy),
                   in a fresh env per episode where the protocol makes one (Box2D)
  evaluate_policy  SB3's `evaluate_policy` on the rebuilt policy, one env (what the issue compares)
  SB3 predict      the project's runner calling SB3's `predict` (the path before issue 15)
  lean             the project's runner, lean policy calls, in this process
  refereed warm    the real path: this process referees a warm confined player (CPU of both,
                   the player's measured by the zygote with wait4; the agent load included)
Ratios are against the env alone and against evaluate_policy, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._zoo import ZOO, zoo_agent, zoo_missing  # noqa: E402, F401 (ZOO re-exported)
from evaluator.agents import load_agent  # noqa: E402
from evaluator.agents.base import AgentFiles  # noqa: E402
from evaluator.envs import make_env, resolve_env  # noqa: E402
from evaluator.job import Job, single_thread  # noqa: E402
from evaluator.runner import N_SLOTS, reuses_envs, run_episodes  # noqa: E402


def cpu(fn) -> tuple[float, object]:
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def recorded_actions(policy, spec, seeds) -> list[list]:
    """Each episode's actions as the protocol plays them (a full batch, the row copied)."""
    env = make_env(spec)
    episodes = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        actions, done = [], False
        while not done:
            batch = np.stack([obs] * N_SLOTS)
            action = np.asarray(policy.act(batch, deterministic=True))[0]
            actions.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
        episodes.append(actions)
    env.close()
    return episodes


def replay(spec, seeds, episodes) -> int:
    """The env alone under the protocol's rules: a fresh env for each episode where the protocol
    makes one (`runner.reuses_envs`), the recorded actions stepped."""
    env = make_env(spec)
    steps = 0
    for k, (seed, actions) in enumerate(zip(seeds, episodes, strict=True)):
        if k and not reuses_envs(spec):
            env.close()
            env = make_env(spec)
        env.reset(seed=seed)
        for action in actions:
            env.step(action)
        steps += len(actions)
    env.close()
    return steps


class PredictPolicy:
    """The runner's policy as before issue 15: SB3's own `predict` per call."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def act(self, obs, *, deterministic=True, rngs=None):
        import torch

        obs = self.policy.obs_stats.normalize(obs) if self.policy.obs_stats is not None else obs
        with torch.no_grad():
            return self.policy.policy.predict(obs, deterministic=True)[0]


def evaluate_policy_steps(policy, spec, n: int) -> int:
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import DummyVecEnv

    venv = DummyVecEnv([lambda: make_env(spec)])
    _, lengths = evaluate_policy(policy, venv, n_eval_episodes=n, deterministic=True, return_episode_rewards=True)
    venv.close()
    return int(sum(lengths))


def refereed(job: Job) -> tuple[float, int]:
    from evaluator.sandbox import referee, warm

    start = time.process_time()
    outcome = referee.play(job)
    ref_cpu = time.process_time() - start
    player_cpu = warm.pool().last_job_cpu or 0.0
    return ref_cpu + player_cpu, int(sum(outcome.episodes.lengths))


def measure(name: str, repeat: int) -> dict:
    zoo = zoo_agent(name)
    spec = resolve_env(zoo.env_id)
    job = zoo.job()
    n, seeds = job.n_episodes, list(job.seeds)
    env = make_env(spec)
    agent = load_agent(zoo.agent_format, AgentFiles(zoo.root, zoo.agent_file, zoo.files), env.observation_space,
                       env.action_space)
    env.close()
    episodes = recorded_actions(agent.policy, spec, seeds)
    if agent.policy.obs_stats is not None:
        raise SystemExit(f"{name}: evaluate_policy would need VecNormalize; pick an agent without it")
    runs: dict[str, list[float]] = {k: [] for k in ("env", "evaluate_policy", "predict", "lean", "refereed")}
    steps: dict[str, int] = {}
    refereed(job)  # a warm player started (its start-up is bench/player_overhead.py's)
    for _ in range(repeat):
        t, steps["env"] = cpu(lambda: replay(spec, seeds, episodes))
        runs["env"].append(t)
        t, steps["evaluate_policy"] = cpu(lambda: evaluate_policy_steps(agent.policy.policy, spec, n))
        runs["evaluate_policy"].append(t)
        t, r = cpu(lambda: run_episodes(PredictPolicy(agent.policy), spec, n_episodes=n))
        runs["predict"].append(t)
        steps["predict"] = sum(r.lengths)
        t, r = cpu(lambda: run_episodes(agent.policy, spec, n_episodes=n))
        runs["lean"].append(t)
        steps["lean"] = sum(r.lengths)
        t, steps["refereed"] = refereed(job)
        runs["refereed"].append(t)
    return {"name": name, "rate": {k: steps[k] / statistics.median(v) for k, v in runs.items()},
            "steps": steps["lean"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["ppo-LunarLander-v2", "ppo-CartPole-v1"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if zoo_missing():
        return 2
    single_thread()
    rows = [measure(name, args.repeat) for name in args.agents]
    print(f"\nenv steps per CPU-second, 50-episode protocol, medians of {args.repeat}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| agent | steps | env alone | evaluate_policy | runner + SB3 predict | lean, in process "
          "| refereed, warm player | refereed / env alone | refereed / evaluate_policy |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        r = row["rate"]
        print(f"| {row['name']} | {row['steps']:,} | {r['env']:,.0f} | {r['evaluate_policy']:,.0f} | "
              f"{r['predict']:,.0f} | {r['lean']:,.0f} | {r['refereed']:,.0f} | {r['refereed'] / r['env']:.2f}x | "
              f"{r['refereed'] / r['evaluate_policy']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
