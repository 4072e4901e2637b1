"""RL Zoo-style agents of the families issue 11 added (Atari, panda-gym, an env wrapper), trained
small (seconds to minutes) and laid out as RL Zoo repos: the SB3 zip saved by SB3 itself, the
`config.yml` RL Zoo writes (its OrderedDict YAML), `vec_normalize.pkl` where the agent normalizes,
and a model card. Used by `scripts/train_demo_agents.py` (demo_hub) and by the tests, which also
use the reference stacks here (`make_vec_env` + the RL Zoo's wrappers, `evaluate_policy`).
No real agent of these families is in ../shared; the point is fidelity, not strength.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ATARI_WRAPPER = "stable_baselines3.common.atari_wrappers.AtariWrapper"
TIME_FEATURE = "sb3_contrib.common.wrappers.TimeFeatureWrapper"


def zoo_config_text(hyperparams: dict[str, Any]) -> str:
    """`config.yml` as RL Zoo writes it: `!!python/object/apply:collections.OrderedDict` pairs."""
    import yaml

    pairs = [[key, value] for key, value in sorted(hyperparams.items())]
    return "!!python/object/apply:collections.OrderedDict\n" + yaml.safe_dump([pairs], default_flow_style=False)


def write_repo(folder: Path, name: str, model: Any, hyperparams: dict[str, Any], *, venv: Any = None) -> Path:
    """`folder/name.zip` + `config.yml` (+ `vec_normalize.pkl`), as an RL Zoo repo lays them out."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / f"{name}.zip")
    (folder / "config.yml").write_text(zoo_config_text(hyperparams))
    if venv is not None:
        venv.save(str(folder / "vec_normalize.pkl"))
    return folder


def atari_vec_env(env_id: str, n_envs: int, seed: int, *, frame_stack: int = 4, wrapper_kwargs: dict | None = None):
    """The reference stack: `make_vec_env(wrapper_class=AtariWrapper)` (Monitor under it) + `VecFrameStack`."""
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.atari_wrappers import AtariWrapper
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack

    gym.register_envs(ale_py)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, wrapper_class=AtariWrapper,
                       wrapper_kwargs=wrapper_kwargs or {})
    return VecFrameStack(env, frame_stack) if frame_stack else env


def train_atari(folder: Path, *, algo: str = "dqn", env_id: str = "SpaceInvadersNoFrameskip-v4", steps: int = 300,
                frame_stack: int = 4, config_frame_stack: int | None = None, seed: int = 0) -> Path:
    """A CNN agent trained for a few hundred steps on the RL Zoo Atari stack."""
    from sb3_contrib import QRDQN
    from stable_baselines3 import A2C, DQN, PPO

    env = atari_vec_env(env_id, 1 if algo in ("dqn", "qrdqn") else 2, seed, frame_stack=frame_stack)
    if algo in ("dqn", "qrdqn"):
        cls = DQN if algo == "dqn" else QRDQN
        kwargs = {"n_quantiles": 8} if algo == "qrdqn" else {}
        model = cls("CnnPolicy", env, buffer_size=1_000, learning_starts=100, train_freq=8, batch_size=8,
                    exploration_fraction=0.5, exploration_final_eps=0.05, optimize_memory_usage=False,
                    seed=seed, policy_kwargs=kwargs or None)
    else:
        cls = PPO if algo == "ppo" else A2C
        extra = {"n_steps": 32, "batch_size": 32, "n_epochs": 1} if algo == "ppo" else {"n_steps": 16}
        model = cls("CnnPolicy", env, seed=seed, **extra)
    model.learn(steps)
    stack = frame_stack if config_frame_stack is None else config_frame_stack
    return write_repo(folder, f"{algo}-{env_id}", model, {
        "env_wrapper": [ATARI_WRAPPER], "frame_stack": stack, "policy": "CnnPolicy", "n_timesteps": steps})


def reference_returns(model: Any, venv: Any, *, deterministic: bool = True) -> list[float]:
    """SB3's `evaluate_policy` on `venv`, one episode per env: env i's first episode return as its
    Monitor summed it (unrounded: `Monitor.episode_returns`), by index. With `make_vec_env(seed=s)`,
    env i resets with seed s + i: the protocol's episode i."""
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    evaluate_policy(model, venv, n_eval_episodes=venv.num_envs, deterministic=deterministic)
    out = []
    for env in venv.unwrapped.envs:
        while not isinstance(env, Monitor):
            env = env.env
        out.append(float(env.episode_returns[0]))
    return out


def model_card(algo: str, env_id: str, mean: float, std: float, *, n_eval: int = 10) -> str:
    """An RL Zoo model card (README.md front matter) claiming `mean +/- std`."""
    return (f"---\nlibrary_name: stable-baselines3\ntags:\n- {env_id}\n- deep-reinforcement-learning\n"
            f"- reinforcement-learning\n- stable-baselines3\nmodel-index:\n- name: {algo.upper()}\n  results:\n"
            f"  - task:\n      type: reinforcement-learning\n      name: reinforcement-learning\n    dataset:\n"
            f"      name: {env_id}\n      type: {env_id}\n    metrics:\n    - type: mean_reward\n"
            f"      value: {mean:.2f} +/- {std:.2f}\n      name: mean_reward\n      verified: false\n---\n\n"
            f"# **{algo.upper()}** Agent playing **{env_id}**\n")


def time_feature_vec_env(env_id: str, n_envs: int, seed: int):
    """The reference stack of an RL Zoo agent with `env_wrapper: TimeFeatureWrapper`."""
    from sb3_contrib.common.wrappers import TimeFeatureWrapper
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(env_id, n_envs=n_envs, seed=seed, wrapper_class=TimeFeatureWrapper)


def train_time_feature(folder: Path, *, env_id: str = "Pendulum-v1", steps: int = 256, seed: int = 0) -> Path:
    """PPO with `TimeFeatureWrapper` and `normalize: true` (VecNormalize statistics saved)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(time_feature_vec_env(env_id, 2, seed), norm_obs=True, norm_reward=True)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=2, seed=seed,
                policy_kwargs={"net_arch": [32, 32]})
    model.learn(steps)
    return write_repo(folder, f"ppo-{env_id}", model, {
        "env_wrapper": [TIME_FEATURE], "normalize": True, "policy": "MlpPolicy", "n_timesteps": steps}, venv=venv)


def panda_vec_env(env_id: str, n_envs: int, seed: int):
    import panda_gym  # noqa: F401
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(env_id, n_envs=n_envs, seed=seed)


def train_panda(folder: Path, *, env_id: str = "PandaReachDense-v3", steps: int = 200, seed: int = 0) -> Path:
    """The course's unit 6 recipe, small: A2C, MultiInputPolicy, VecNormalize(norm_obs=True, norm_reward=True)."""
    from stable_baselines3 import A2C
    from stable_baselines3.common.vec_env import VecNormalize

    venv = VecNormalize(panda_vec_env(env_id, 2, seed), norm_obs=True, norm_reward=True, clip_obs=10.0)
    model = A2C("MultiInputPolicy", venv, n_steps=8, seed=seed, policy_kwargs={"net_arch": [32, 32]})
    model.learn(steps)
    return write_repo(folder, f"a2c-{env_id}", model, {
        "normalize": "dict(norm_obs=True, norm_reward=True)", "policy": "MultiInputPolicy", "n_timesteps": steps},
        venv=venv)


def write_card(folder: Path, algo: str, env_id: str, model: Any, venv: Any, *, deterministic: bool,
               n_episodes: int = 10) -> tuple[float, float]:
    """What the RL Zoo's card claims: `evaluate_policy` on the reference stack `venv` (the Monitor's
    scores: Atari's full games), written as README.md + results.json; the claim is returned."""
    import json

    from stable_baselines3.common.evaluation import evaluate_policy

    mean, std = evaluate_policy(model, venv, n_eval_episodes=n_episodes, deterministic=deterministic)
    (folder / "README.md").write_text(model_card(algo, env_id, float(mean), float(std)))
    (folder / "results.json").write_text(json.dumps({"mean_reward": float(mean), "std_reward": float(std),
                                                     "is_deterministic": deterministic,
                                                     "n_eval_episodes": n_episodes}))
    return float(mean), float(std)


def demo_atari(folder: Path, steps: int = 20_000, seed: int = 21) -> Path:
    """The demo's unit 3 agent: a PPO CnnPolicy on SpaceInvaders, trained for minutes."""
    from stable_baselines3 import PPO

    env_id = "SpaceInvadersNoFrameskip-v4"
    venv = atari_vec_env(env_id, 8, seed)
    # NatureCNN with a 32-wide feature layer (512 by default): a ~2 MB zip instead of ~20 MB in git
    policy_kwargs = "dict(features_extractor_kwargs=dict(features_dim=32))"
    model = PPO("CnnPolicy", venv, n_steps=128, batch_size=256, n_epochs=4, learning_rate=2.5e-4, clip_range=0.1,
                ent_coef=0.01, vf_coef=0.5, seed=seed,
                policy_kwargs={"features_extractor_kwargs": {"features_dim": 32}})
    model.learn(steps)
    write_repo(folder, f"ppo-{env_id}", model, {"env_wrapper": [ATARI_WRAPPER], "frame_stack": 4,
                                                 "policy": "CnnPolicy", "policy_kwargs": policy_kwargs,
                                                 "n_timesteps": steps})
    write_card(folder, "ppo", env_id, model, atari_vec_env(env_id, 1, 0), deterministic=False)
    return folder


def demo_panda(folder: Path, steps: int = 20_000, seed: int = 22) -> Path:
    """The demo's unit 6 agent: A2C MultiInputPolicy with VecNormalize on PandaReachDense-v3."""
    from stable_baselines3 import A2C
    from stable_baselines3.common.vec_env import VecNormalize

    env_id = "PandaReachDense-v3"
    venv = VecNormalize(panda_vec_env(env_id, 4, seed), norm_obs=True, norm_reward=True, clip_obs=10.0)
    model = A2C("MultiInputPolicy", venv, seed=seed)
    model.learn(steps)
    write_repo(folder, f"a2c-{env_id}", model, {"normalize": "dict(norm_obs=True, norm_reward=True)",
                                                 "policy": "MultiInputPolicy", "n_timesteps": steps}, venv=venv)
    eval_env = VecNormalize.load(str(folder / "vec_normalize.pkl"), panda_vec_env(env_id, 1, 0))
    eval_env.training, eval_env.norm_reward = False, False
    write_card(folder, "a2c", env_id, model, eval_env, deterministic=True)
    return folder


def demo_time_feature(folder: Path, steps: int = 20_000, seed: int = 23) -> Path:
    """The demo's env-wrapper agent: PPO with TimeFeatureWrapper and normalize on Pendulum-v1."""
    from stable_baselines3.common.vec_env import VecNormalize

    train_time_feature(folder, steps=steps, seed=seed)
    from stable_baselines3 import PPO

    model = PPO.load(folder / "ppo-Pendulum-v1.zip")
    eval_env = VecNormalize.load(str(folder / "vec_normalize.pkl"), time_feature_vec_env("Pendulum-v1", 1, 0))
    eval_env.training, eval_env.norm_reward = False, False
    write_card(folder, "ppo", "Pendulum-v1", model, eval_env, deterministic=True)
    return folder
