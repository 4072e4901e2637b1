"""The Deep RL course's own agents, trained small (seconds) and packaged as its notebooks push
them to the Hub: a Q-table (unit 2), a REINFORCE module (unit 4), a CleanRL PPO state dict
(unit 8). Used by `scripts/train_demo_agents.py` (demo_hub) and by the tests.

Each `package_*` writes what the course's `push_to_hub` writes (minus the video): the agent
file, `results.json`, `hyperparameters.json` where the course has one, and the model card,
whose claim is what the course's own `evaluate_agent` measured (or a forged one, on request).
The REINFORCE module is pickled as the notebook's `__main__.Policy`, exactly as `torch.save`
writes it from a notebook.
"""

from __future__ import annotations

import datetime
import io
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from torch import nn
from torch.nn import functional

# --------------------------------------------------------------------------- the model card


def model_card(repo_name: str, env_name: str, tags: list[str], mean: float, std: float,
               forged: tuple[float, float] | None = None, library: str | None = None) -> str:
    """The card `metadata_eval_result` + `metadata_save` produce in the course notebooks."""
    m, s = forged or (mean, std)
    meta: dict[str, Any] = {"tags": tags, "model-index": [{"name": repo_name, "results": [{
        "task": {"type": "reinforcement-learning", "name": "reinforcement-learning"},
        "dataset": {"name": env_name, "type": env_name},
        "metrics": [{"type": "mean_reward", "value": f"{m:.2f} +/- {s:.2f}", "name": "mean_reward",
                     "verified": False}]}]}]}
    if library:
        meta["library_name"] = library
    body = f"# **{repo_name}** playing **{env_name}**\nAn agent trained in the Deep RL course.\n"
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body


def _write(out: Path, files: dict[str, str | bytes]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (out / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return out


def gym_id(env_id: str) -> str:
    """The course's env ids that gymnasium 1.x renamed (same game)."""
    return {"LunarLander-v2": "LunarLander-v3", "Taxi-v3": "Taxi-v4"}.get(env_id, env_id)


def _now() -> str:
    return datetime.datetime(2026, 1, 1).isoformat()  # fixed: the demo hub's files stay the same


# --------------------------------------------------------------------------- unit 2: Q-learning


def make_qlearning_env(env_id: str, map_name: str | None = None, slippery: bool = True) -> gym.Env:
    if env_id.startswith("FrozenLake"):
        return gym.make("FrozenLake-v1", map_name=map_name or "4x4", is_slippery=slippery)
    return gym.make("Taxi-v4")  # Taxi-v3's game: v4 only changed opt-in modes


def train_qtable(env: gym.Env, n_episodes: int, *, seed: int, learning_rate: float = 0.7, gamma: float = 0.95,
                 max_steps: int = 99, max_epsilon: float = 1.0, min_epsilon: float = 0.05,
                 decay_rate: float = 0.0005) -> np.ndarray:
    """The course's Q-learning loop (epsilon-greedy, decaying epsilon), seeded."""
    rng = np.random.default_rng(seed)
    env.action_space.seed(seed)
    table = np.zeros((env.observation_space.n, env.action_space.n))
    for episode in range(n_episodes):
        epsilon = min_epsilon + (max_epsilon - min_epsilon) * np.exp(-decay_rate * episode)
        state, _ = env.reset(seed=seed + episode)
        for _ in range(max_steps):
            if rng.uniform(0, 1) > epsilon:
                action = int(np.argmax(table[state]))
            else:
                action = int(env.action_space.sample())
            new_state, reward, terminated, truncated, _ = env.step(action)
            table[state][action] += learning_rate * (
                reward + gamma * np.max(table[new_state]) - table[state][action])
            if terminated or truncated:
                break
            state = new_state
    return table


def plan_qtable(env: gym.Env, *, gamma: float = 0.95, sweeps: int = 100) -> np.ndarray:
    """Q-value iteration on the env's own transition table (`env.unwrapped.P`): the Q-table
    Q-learning converges to, in a fraction of a second (8x8 FrozenLake's reward is too sparse
    for a few seconds of epsilon-greedy exploration)."""
    transitions = env.unwrapped.P
    table = np.zeros((env.observation_space.n, env.action_space.n))
    for _ in range(sweeps):
        best = table.max(axis=1)
        table = np.array([[sum(p * (r + gamma * best[s2] * (not done)) for p, s2, r, done in transitions[s][a])
                           for a in range(table.shape[1])] for s in range(table.shape[0])])
    return table


def course_evaluate_qtable(env: gym.Env, max_steps: int, n_eval_episodes: int, table: np.ndarray,
                           seed: list[int]) -> list[float]:
    """The course's `evaluate_agent` for Q-tables: per-episode returns (greedy, `max_steps` cap)."""
    returns = []
    for episode in range(n_eval_episodes):
        state, _ = env.reset(seed=seed[episode]) if seed else env.reset()
        total = 0.0
        for _ in range(max_steps):
            state, reward, terminated, truncated, _ = env.step(int(np.argmax(table[state])))
            total += reward
            if terminated or truncated:
                break
        returns.append(total)
    return returns


def package_qlearning(out: Path, *, env_id: str, table: np.ndarray, map_name: str | None = None,
                      slippery: bool = True, n_training_episodes: int = 0, eval_seed: list[int] | None = None,
                      forged: tuple[float, float] | None = None, repo_name: str | None = None) -> Path:
    """`q-learning.pkl`, `results.json` and the card, as unit 2's `push_to_hub` writes them."""
    model = {"env_id": env_id, "max_steps": 99, "n_training_episodes": n_training_episodes, "n_eval_episodes": 100,
             "eval_seed": list(eval_seed or []), "learning_rate": 0.7, "gamma": 0.95, "max_epsilon": 1.0,
             "min_epsilon": 0.05, "decay_rate": 0.0005, "qtable": table}
    env_name = env_id
    if env_id.startswith("FrozenLake"):
        model["map_name"] = map_name or "4x4"
        env_name += f"-{model['map_name']}"
        if not slippery:
            model["slippery"] = False
            env_name += "-no_slippery"
    env = make_qlearning_env(env_id, map_name, slippery)
    returns = course_evaluate_qtable(env, 99, 100, table, model["eval_seed"])
    mean, std = float(np.mean(returns)), float(np.std(returns))
    results = {"env_id": env_id, "mean_reward": mean, "n_eval_episodes": 100, "eval_datetime": _now()}
    name = repo_name or f"q-{env_name}"
    return _write(out, {
        "q-learning.pkl": pickle.dumps(model),
        "results.json": json.dumps(results),
        "README.md": model_card(name, env_name, [env_name, "q-learning", "reinforcement-learning",
                                                 "custom-implementation"], mean, std, forged),
    })


# --------------------------------------------------------------------------- unit 4: REINFORCE


class Policy(nn.Module):
    """The notebook's Policy: fc1, fc2 (CartPole) or fc1, fc2, fc3 (Pixelcopter), ReLU, softmax."""

    def __init__(self, s_size: int, a_size: int, h_size: int, layers: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(s_size, h_size)
        if layers == 3:
            self.fc2 = nn.Linear(h_size, h_size * 2)
            self.fc3 = nn.Linear(h_size * 2, a_size)
        else:
            self.fc2 = nn.Linear(h_size, a_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = functional.relu(self.fc1(x))
        if hasattr(self, "fc3"):
            x = functional.relu(self.fc2(x))
            return functional.softmax(self.fc3(x), dim=1)
        return functional.softmax(self.fc2(x), dim=1)

    def act(self, state: np.ndarray) -> tuple[int, torch.Tensor]:
        probs = self.forward(torch.from_numpy(state).float().unsqueeze(0))
        dist = torch.distributions.Categorical(probs)
        action = dist.sample()
        return int(action.item()), dist.log_prob(action)


def train_reinforce(env_id: str, *, seed: int, h_size: int = 16, layers: int = 2, n_episodes: int = 200,
                    max_t: int = 1000, gamma: float = 1.0, lr: float = 1e-2) -> Policy:
    """The course's `reinforce` loop (returns-to-go, normalised), seeded."""
    torch.manual_seed(seed)
    env = gym.make(gym_id(env_id))
    policy = Policy(env.observation_space.shape[0], env.action_space.n, h_size, layers)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    for episode in range(n_episodes):
        log_probs, rewards = [], []
        state, _ = env.reset(seed=seed + episode)
        for _ in range(max_t):
            action, log_prob = policy.act(state)
            log_probs.append(log_prob)
            state, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            if terminated or truncated:
                break
        returns: list[float] = []
        total = 0.0
        for reward in reversed(rewards):
            total = reward + gamma * total
            returns.insert(0, total)
        ret = torch.tensor(returns)
        ret = (ret - ret.mean()) / (ret.std() + 1e-8) if len(ret) > 1 else ret
        loss = torch.cat([-lp * r for lp, r in zip(log_probs, ret, strict=True)]).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy


def course_evaluate_policy(env: gym.Env, max_t: int, n_episodes: int, act) -> list[float]:
    """The course's `evaluate_agent` for REINFORCE / CleanRL: sampled actions, per-episode returns."""
    returns = []
    for episode in range(n_episodes):
        state, _ = env.reset(seed=episode)
        total = 0.0
        for _ in range(max_t):
            state, reward, terminated, truncated, _ = env.step(act(state))
            total += reward
            if terminated or truncated:
                break
        returns.append(total)
    return returns


def save_as_main(module: nn.Module) -> bytes:
    """`torch.save(model)` as a notebook writes it: the class pickled as `__main__.Policy`."""
    cls = type(module)
    main = sys.modules["__main__"]
    saved_module, had = cls.__module__, hasattr(main, cls.__name__)
    previous = getattr(main, cls.__name__, None)
    cls.__module__ = "__main__"
    setattr(main, cls.__name__, cls)
    try:
        buffer = io.BytesIO()
        torch.save(module, buffer)
        return buffer.getvalue()
    finally:
        cls.__module__ = saved_module
        if had:
            setattr(main, cls.__name__, previous)
        else:
            delattr(main, cls.__name__)


def package_reinforce(out: Path, policy: Policy, *, env_id: str, h_size: int, n_training_episodes: int,
                      forged: tuple[float, float] | None = None, repo_name: str | None = None,
                      n_evaluation_episodes: int = 10) -> Path:
    """`model.pt`, `hyperparameters.json`, `results.json` and the card, as unit 4 pushes them."""
    torch.manual_seed(0)
    hyper = {"h_size": h_size, "n_training_episodes": n_training_episodes, "n_evaluation_episodes":
             n_evaluation_episodes, "max_t": 1000, "gamma": 1.0, "lr": 1e-2, "env_id": env_id,
             "state_space": policy.fc1.in_features, "action_space": 2}
    returns = course_evaluate_policy(gym.make(gym_id(env_id)), 1000, n_evaluation_episodes, lambda s: policy.act(s)[0])
    mean, std = float(np.mean(returns)), float(np.std(returns))
    results = {"env_id": env_id, "mean_reward": mean, "n_evaluation_episodes": n_evaluation_episodes,
               "eval_datetime": _now()}
    name = repo_name or f"Reinforce-{env_id}"
    return _write(out, {
        "model.pt": save_as_main(policy),
        "hyperparameters.json": json.dumps(hyper),
        "results.json": json.dumps(results),
        "README.md": model_card(name, env_id, [env_id, "reinforce", "reinforcement-learning",
                                               "custom-implementation", "deep-rl-class"], mean, std, forged),
    })


# --------------------------------------------------------------------------- unit 8: CleanRL PPO


def _layer(layer: nn.Linear, std: float = float(np.sqrt(2))) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


class Agent(nn.Module):
    """CleanRL `ppo.py`'s Agent: critic and actor MLPs of 64 Tanh units."""

    def __init__(self, n_obs: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.critic = nn.Sequential(_layer(nn.Linear(n_obs, hidden)), nn.Tanh(), _layer(nn.Linear(hidden, hidden)),
                                    nn.Tanh(), _layer(nn.Linear(hidden, 1), 1.0))
        self.actor = nn.Sequential(_layer(nn.Linear(n_obs, hidden)), nn.Tanh(), _layer(nn.Linear(hidden, hidden)),
                                   nn.Tanh(), _layer(nn.Linear(hidden, n_actions), 0.01))

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        dist = torch.distributions.Categorical(logits=self.actor(x))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(x)


def train_cleanrl(env_id: str, *, seed: int, updates: int = 4, num_envs: int = 4, num_steps: int = 128,
                  lr: float = 2.5e-4, gamma: float = 0.99, gae_lambda: float = 0.95, epochs: int = 4,
                  clip: float = 0.2) -> Agent:
    """CleanRL's PPO loop (GAE, clipped objective, value loss), a few updates only."""
    torch.manual_seed(seed)
    envs = [gym.make(gym_id(env_id)) for _ in range(num_envs)]
    agent = Agent(envs[0].observation_space.shape[0], envs[0].action_space.n)
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    for _ in range(updates):
        buf_obs, buf_act, buf_logp, buf_rew, buf_done, buf_val = [], [], [], [], [], []
        for _ in range(num_steps):
            x = torch.as_tensor(obs, dtype=torch.float32)
            with torch.no_grad():
                action, logp, _, value = agent.get_action_and_value(x)
            steps = [e.step(int(a)) for e, a in zip(envs, action, strict=True)]
            done = np.array([s[2] or s[3] for s in steps])
            buf_obs.append(x), buf_act.append(action), buf_logp.append(logp), buf_val.append(value.flatten())
            buf_rew.append(torch.tensor([s[1] for s in steps], dtype=torch.float32))
            buf_done.append(torch.tensor(done, dtype=torch.float32))
            obs = np.stack([e.reset()[0] if d else s[0] for e, s, d in zip(envs, steps, done, strict=True)])
        with torch.no_grad():
            next_value = agent.critic(torch.as_tensor(obs, dtype=torch.float32)).flatten()
        advantages, last = torch.zeros(num_steps, num_envs), torch.zeros(num_envs)
        for t in reversed(range(num_steps)):
            nxt = next_value if t == num_steps - 1 else buf_val[t + 1]
            nonterminal = 1.0 - buf_done[t]
            delta = buf_rew[t] + gamma * nxt * nonterminal - buf_val[t]
            last = delta + gamma * gae_lambda * nonterminal * last
            advantages[t] = last
        returns = advantages + torch.stack(buf_val)
        b_obs, b_act = torch.cat(buf_obs), torch.cat(buf_act)
        b_logp, b_adv, b_ret = torch.cat(buf_logp), advantages.flatten(), returns.flatten()
        for _ in range(epochs):
            _, newlogp, entropy, newvalue = agent.get_action_and_value(b_obs, b_act)
            ratio = (newlogp - b_logp).exp()
            adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
            loss = pg + 0.5 * ((newvalue.flatten() - b_ret) ** 2).mean() - 0.01 * entropy.mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return agent


def package_cleanrl(out: Path, agent: Agent, *, env_id: str, forged: tuple[float, float] | None = None,
                    repo_name: str | None = None) -> Path:
    """`model.pt` (the state dict), `results.json` and the card, as unit 8's `package_to_hub` writes them."""
    torch.manual_seed(0)

    def act(state: np.ndarray) -> int:
        with torch.no_grad():
            return int(agent.get_action_and_value(torch.as_tensor(state, dtype=torch.float32))[0])

    returns = course_evaluate_policy(gym.make(gym_id(env_id)), 1000, 10, act)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    results = {"env_id": env_id, "mean_reward": mean, "std_reward": std, "n_evaluation_episodes": 10,
               "eval_datetime": _now()}
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    name = repo_name or f"ppo-{env_id}"
    return _write(out, {
        "model.pt": buffer.getvalue(),
        "results.json": json.dumps(results),
        "README.md": model_card(name, env_id, [env_id, "ppo", "deep-reinforcement-learning", "reinforcement-learning",
                                               "custom-implementation", "deep-rl-course"], mean, std, forged),
    })
