"""Issue 11, Atari: the RL Zoo's evaluation reproduced. The env stack bit for bit against SB3's own
(`make_vec_env(wrapper_class=AtariWrapper)` + `VecFrameStack`, Monitor scores), agents trained here
in seconds scored as SB3's `evaluate_policy` scores them (bitwise deterministic, within the
statistics stochastic), through the referee/player too; bad Atari repos refused."""

from __future__ import annotations

import io
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evaluator.agents import load_agent
from evaluator.agents.base import AgentFiles
from evaluator.envs import make_env, resolve_env
from evaluator.errors import InvalidWeightsError, SpaceMismatchError, UnsafeContentError, UnsupportedFormatError
from evaluator.job import Job, describe, execute
from evaluator.runner import BASE_SEED, public_seeds, run_episodes
from scripts.zoo_agents import ATARI_WRAPPER, atari_vec_env, reference_returns, train_atari, zoo_config_text

GAME = "SpaceInvadersNoFrameskip-v4"


def _job(root: Path, algo: str, n: int, **kw) -> Job:
    files = tuple(sorted(p.name for p in root.iterdir()))
    return Job(str(root), "sb3", f"{algo}-{GAME}.zip", files, GAME, n, public_seeds(n).seeds, **kw)


def test_env_stack_is_sb3s_bit_for_bit_full_games_unclipped():
    """Same seed, same actions: our one env shows the agent exactly what SB3's vector stack shows
    (frame stack cleared at each lost life) and scores the Monitor's full-game unclipped return."""
    spec = resolve_env(GAME)
    seed = BASE_SEED + 3
    ours = make_env(spec)
    ref = atari_vec_env(GAME, 1, seed)
    rng = np.random.default_rng(0)
    try:
        obs, _ = ours.reset(seed=seed)
        ref_obs = ref.reset()
        assert np.array_equal(obs, ref_obs[0])
        total, steps, restarts, clipped = 0.0, 0, 0, 0.0
        while True:
            action = int(rng.integers(6))
            obs, reward, terminated, truncated, info = ours.step(action)
            ref_obs, ref_reward, ref_done, ref_info = ref.step(np.array([action]))
            total += reward
            clipped += float(ref_reward[0])
            steps += 1
            restarts += bool(info.get("restarted"))
            if ref_done[0] and "episode" in ref_info[0]:  # game over: the vector env reset (a new game)
                assert terminated or truncated
                assert np.array_equal(obs, ref_info[0]["terminal_observation"])
                assert total == ref_info[0]["episode"]["r"]
                break
            assert np.array_equal(obs, ref_obs[0]), f"step {steps}"
            assert not (terminated or truncated), f"step {steps}: our episode ended before the game"
    finally:
        ours.close()
        ref.close()
    assert restarts == 2  # three lives: the game went on twice after a lost life
    assert total > clipped > 0  # the score is unclipped (SpaceInvaders pays 5-30 a hit)


@pytest.fixture(scope="module")
def atari_agents(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("atari")
    return {"ppo": train_atari(root / "ppo", algo="ppo", steps=64, seed=1),
            "dqn": train_atari(root / "dqn", algo="dqn", steps=150, seed=1)}


def _load(root: Path, algo: str, n: int):
    spec, _, _ = describe(_job(root, algo, n))
    env = make_env(spec)
    try:
        agent = load_agent("sb3", AgentFiles(root, f"{algo}-{GAME}.zip", tuple(p.name for p in root.iterdir())),
                           env.observation_space, env.action_space)
    finally:
        env.close()
    return spec, agent


def _sb3_model(root: Path, algo: str):
    from stable_baselines3 import DQN, PPO

    return {"ppo": PPO, "dqn": DQN}[algo].load(root / f"{algo}-{GAME}.zip")  # our own file: SB3's loader is fine


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_deterministic_returns_are_evaluate_policys_bit_for_bit(atari_agents, algo):
    root = atari_agents[algo]
    spec, agent = _load(root, algo, 8)
    ours = run_episodes(agent.policy, replace(spec, deterministic=True), n_episodes=8)
    ref = reference_returns(_sb3_model(root, algo), atari_vec_env(GAME, 8, BASE_SEED), deterministic=True)
    assert ours.returns == ref
    assert all(length > 100 for length in ours.lengths)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_stochastic_actions_are_per_episode_and_match_sb3_in_distribution(atari_agents, algo):
    """DQN: epsilon-greedy at its saved exploration rate; PPO: draws from its categorical policy."""
    root = atari_agents[algo]
    spec, agent = _load(root, algo, 8)
    assert not spec.deterministic
    assert agent.policy.exploration_rate == (pytest.approx(0.05) if algo == "dqn" else None)
    first = run_episodes(agent.policy, spec, n_episodes=8)
    again = run_episodes(agent.policy, spec, n_episodes=8, episode_indices=[7, 3])  # other slots, other batches
    assert again.returns == [first.returns[7], first.returns[3]]
    ref = reference_returns(_sb3_model(root, algo), atari_vec_env(GAME, 8, BASE_SEED), deterministic=False)
    m, s = np.mean(first.returns), np.std(first.returns)
    rm, rs = np.mean(ref), np.std(ref)
    assert abs(m - rm) <= 3 * np.sqrt((s**2 + rs**2) / 8) + 1e-9, (first.returns, ref)


def test_stochastic_actor_critic_draws_from_the_policy_distribution(atari_agents):
    """Each live row draws from its own generator; padding rows (None) draw nothing and get the mode."""
    spec, agent = _load(atari_agents["ppo"], "ppo", 8)
    obs = np.stack([make_env(spec).reset(seed=s)[0] for s in range(8)])
    rngs = [np.random.default_rng(i) for i in range(4)] + [None] * 4
    a = agent.policy.act(obs, deterministic=False, rngs=rngs)
    b = agent.policy.act(obs, deterministic=False, rngs=[np.random.default_rng(i) for i in range(4)] + [None] * 4)
    assert np.array_equal(a, b)
    assert np.array_equal(a[4:], agent.policy.act(obs, deterministic=True)[4:])
    draws = [int(agent.policy.act(obs, deterministic=False, rngs=[np.random.default_rng(k)] + [None] * 7)[0])
             for k in range(60)]
    assert len(set(draws)) > 1  # a sample, not the mode


@pytest.mark.slow
def test_atari_through_the_referee_and_player_matches_in_process(atari_agents):
    from evaluator.sandbox.referee import play

    job = _job(atari_agents["ppo"], "ppo", 10, episode_indices=(0, 9))
    played = play(job)
    assert played.details["env_wrappers"] == [["AtariWrapper", {}]] and played.details["frame_stack"] == 4
    assert played.episodes.returns == execute(job).episodes.returns
    assert not played.episodes.deterministic  # the RL Zoo samples Atari actions


def test_replay_is_in_colour_from_the_unprocessed_frames(tmp_path):
    from evaluator.video import ReplayRecorder

    spec = resolve_env(GAME)
    env = make_env(spec, render_mode="rgb_array")
    try:
        env.reset(seed=1)
        frame = env.render()
        assert frame.shape == (210, 160, 3) and len(np.unique(frame.reshape(-1, 3), axis=0)) > 2
        assert env.metadata["render_fps"] == 15  # one frame per agent step (60 Hz / frame skip 4)
        recorder = ReplayRecorder(tmp_path / "r.mp4")
        recorder.frame(env)
        for _ in range(5):
            env.step(1)
            recorder.frame(env)
        recorder.finish(0.0, 5)
    finally:
        env.close()
    assert recorder.replay is not None and (tmp_path / "r.mp4").stat().st_size > 0


# ------------------------------------------------------------------------------------------ bad input


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_frame_stack_that_does_not_match_the_zip_is_refused(atari_agents, tmp_path):
    root = _copy(atari_agents["ppo"], tmp_path / "r")
    (root / "config.yml").write_text(zoo_config_text({"env_wrapper": [ATARI_WRAPPER], "frame_stack": 2,
                                                      "policy": "CnnPolicy"}))
    with pytest.raises(SpaceMismatchError, match="observation"):
        _load(root, "ppo", 2)


def test_observation_shape_that_does_not_match_the_config_is_refused(atari_agents, tmp_path):
    root = _copy(atari_agents["ppo"], tmp_path / "r")
    (root / "config.yml").write_text(zoo_config_text({"env_wrapper": [{ATARI_WRAPPER: {"screen_size": 64}}],
                                                      "frame_stack": 4, "policy": "CnnPolicy"}))
    with pytest.raises(SpaceMismatchError, match="observation"):
        _load(root, "ppo", 2)


def test_cnn_whose_layers_do_not_fit_84x84x4_is_refused(atari_agents, tmp_path):
    """A zip claiming (4, 84, 84) observations whose CNN weights were trained on 64x64 frames."""
    import torch

    root = _copy(atari_agents["ppo"], tmp_path / "r")
    zpath = root / f"ppo-{GAME}.zip"
    with zipfile.ZipFile(zpath) as z:
        members = {name: z.read(name) for name in z.namelist()}
    state = torch.load(io.BytesIO(members["policy.pth"]), weights_only=True)
    key = next(k for k in state if k.endswith("linear.0.weight"))
    state[key] = torch.zeros(state[key].shape[0], 64 * 4 * 4)  # NatureCNN's flatten size at 64x64
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(zpath, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(InvalidWeightsError):
        _load(root, "ppo", 2)


def test_wrapper_outside_the_allowlist_is_refused_naming_it(atari_agents, tmp_path):
    root = _copy(atari_agents["ppo"], tmp_path / "r")
    (root / "config.yml").write_text(zoo_config_text({"env_wrapper": [ATARI_WRAPPER, "my_pkg.wrappers.Cheat"],
                                                      "frame_stack": 4}))
    with pytest.raises(UnsafeContentError, match="my_pkg.wrappers.Cheat"):
        describe(_job(root, "ppo", 2))


def test_wrapper_kwargs_are_checked_on_the_trusted_side(atari_agents, tmp_path):
    root = _copy(atari_agents["ppo"], tmp_path / "r")
    for kwargs, match in (({"clip_reward": "yes"}, "clip_reward"), ({"os_system": 1}, "no parameter")):
        (root / "config.yml").write_text(zoo_config_text({"env_wrapper": [{ATARI_WRAPPER: kwargs}],
                                                          "frame_stack": 4}))
        with pytest.raises(UnsupportedFormatError, match=match):
            describe(_job(root, "ppo", 2))
    (root / "config.yml").write_text(zoo_config_text({"env_wrapper": [ATARI_WRAPPER], "frame_stack": 99}))
    with pytest.raises(UnsupportedFormatError, match="frame_stack"):
        describe(_job(root, "ppo", 2))


def test_atari_wrapper_on_a_non_atari_env_is_refused(tmp_path):
    from stable_baselines3 import PPO

    root = tmp_path / "r"
    root.mkdir()
    PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8).save(root / "ppo-CartPole-v1.zip")
    (root / "config.yml").write_text(zoo_config_text({"env_wrapper": [ATARI_WRAPPER]}))
    job = Job(str(root), "sb3", "ppo-CartPole-v1.zip", ("config.yml", "ppo-CartPole-v1.zip"), "CartPole-v1", 2,
              (1, 2))
    with pytest.raises(UnsupportedFormatError, match="not an Atari game"):
        describe(job)
