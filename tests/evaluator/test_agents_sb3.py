"""The SB3 loader: real RL Zoo agents act exactly as with SB3's own loader, agents trained here
round-trip, and hostile or broken zips fail with the right typed error without running anything."""

from __future__ import annotations

import base64
import io
import json
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import ARS, QRDQN
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from evaluator.agents import AgentFiles, find_agent, load_agent, sb3_kwargs
from evaluator.agents import sb3 as sb3_loader
from evaluator.errors import (
    CorruptFileError,
    InvalidWeightsError,
    NoAgentError,
    SpaceMismatchError,
    TooLargeError,
    UnsafeContentError,
    UnsupportedFormatError,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
ZOO = SHARED / "agents" / "zoo" / "sb3"

# repo -> (algorithm class for SB3's own loader, gymnasium env id, env kwargs)
REAL_AGENTS = {
    "a2c-LunarLander-v2": (A2C, "LunarLander-v3", {}),
    "ars-Pendulum-v1": (ARS, "Pendulum-v1", {}),
    "dqn-CartPole-v1": (DQN, "CartPole-v1", {}),
    "dqn-LunarLander-v2": (DQN, "LunarLander-v3", {}),
    "dqn-MountainCar-v0": (DQN, "MountainCar-v0", {}),
    "ppo-Acrobot-v1": (PPO, "Acrobot-v1", {}),
    "ppo-BipedalWalker-v3": (PPO, "BipedalWalker-v3", {}),
    "ppo-CartPole-v1": (PPO, "CartPole-v1", {}),
    "ppo-LunarLander-v2": (PPO, "LunarLander-v3", {}),
    "ppo-LunarLanderContinuous-v2": (PPO, "LunarLander-v3", {"continuous": True}),
    "qrdqn-CartPole-v1": (QRDQN, "CartPole-v1", {}),
    "sac-MountainCarContinuous-v0": (SAC, "MountainCarContinuous-v0", {}),
    "sac-Pendulum-v1": (SAC, "Pendulum-v1", {}),
}


def _zoo_repo(name: str) -> Path:
    repo = ZOO / name
    if not repo.is_dir():
        pytest.skip("../shared/agents/zoo is absent (a fresh checkout has no ../shared)")
    return repo


def _files(root: Path, agent_file: str | None = None) -> AgentFiles:
    names = tuple(sorted(p.name for p in root.iterdir()))
    if agent_file is None:
        _, agent_file = find_agent(names, repo_id=f"sb3/{root.name}")
    return AgentFiles(root=root, agent_file=agent_file, files=names)


def _load(root: Path, env: gym.Env, agent_file: str | None = None):
    files = _files(root, agent_file)
    return load_agent("sb3", files, env.observation_space, env.action_space)


def _observations(env: gym.Env, n: int = 64, seed: int = 0) -> np.ndarray:
    """Real observations: short random-action rollouts from seeded resets."""
    obs_list = []
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    while len(obs_list) < n:
        obs_list.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset(seed=seed + len(obs_list))
    return np.stack(obs_list)


def _run_episodes(agent, env: gym.Env, seeds: list[int]) -> list[float]:
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            action = agent.policy.act(obs[None], deterministic=True)[0]
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


# ---------------------------------------------------------------------------------------------
# Real RL Zoo agents


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(REAL_AGENTS))
def test_real_agent_acts_like_sb3_own_loader(name: str) -> None:
    repo = _zoo_repo(name)
    algo_cls, env_id, env_kwargs = REAL_AGENTS[name]
    env = gym.make(env_id, **env_kwargs)
    agent = _load(repo, env)
    assert agent.format == "sb3"
    assert agent.algo == name.split("-")[0]

    # SB3's own loader needs gym to unpickle the spaces and old-Python closures: override them.
    custom = {
        "observation_space": env.observation_space,
        "action_space": env.action_space,
        "lr_schedule": lambda _: 0.0,
        "clip_range": lambda _: 0.2,
        "exploration_schedule": lambda _: 0.0,
        "delta_std_schedule": lambda _: 0.0,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = algo_cls.load(repo / f"{name}.zip", custom_objects=custom, device="cpu")

    obs = _observations(env)
    reference_obs = obs
    stats = agent.policy.obs_stats
    if (repo / "vec_normalize.pkl").exists():
        assert stats is not None and stats.norm_obs
        # SB3's own VecNormalize code path, with the statistics read from the pickle.
        vec = VecNormalize(DummyVecEnv([lambda: gym.make(env_id, **env_kwargs)]), training=False)
        vec.obs_rms.mean, vec.obs_rms.var = stats.mean, stats.var
        vec.epsilon, vec.clip_obs = stats.epsilon, stats.clip_obs
        reference_obs = vec.normalize_obs(obs)
    else:
        assert stats is None
    expected, _ = model.predict(reference_obs, deterministic=True)
    actions = agent.policy.act(obs, deterministic=True)
    assert actions.dtype == expected.dtype
    np.testing.assert_array_equal(actions, expected)
    version = agent.details["sb3_version"]  # sac-Pendulum-v1 predates the version file
    assert version is None if name == "sac-Pendulum-v1" else version.startswith("1.")


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "threshold"),
    [("ppo-CartPole-v1", 475.0), ("ppo-LunarLander-v2", 150.0), ("ppo-Acrobot-v1", -100.0)],
)
def test_real_agent_plays_like_a_trained_agent(name: str, threshold: float) -> None:
    repo = _zoo_repo(name)
    _, env_id, env_kwargs = REAL_AGENTS[name]
    env = gym.make(env_id, **env_kwargs)
    returns = _run_episodes(_load(repo, env), env, seeds=[0, 1, 2])
    assert np.mean(returns) > threshold, returns


@pytest.mark.shared
def test_sb3_1x_details_are_recorded() -> None:
    env = gym.make("CartPole-v1")
    agent = _load(_zoo_repo("qrdqn-CartPole-v1"), env)
    assert agent.details["sb3_version"] == "1.0rc1"
    assert agent.details["policy_class"] == "sb3_contrib.qrdqn.policies.QRDQNPolicy"
    assert agent.details["policy_kwargs"]["n_quantiles"] == 10
    assert agent.details["policy_kwargs"]["optimizer_class"] == "Adam"


# ---------------------------------------------------------------------------------------------
# find_agent


def test_find_agent_picks_the_sb3_zip() -> None:
    assert find_agent(["README.md", "ppo-LunarLander-v2.zip", "replay.mp4"]) == ("sb3", "ppo-LunarLander-v2.zip")
    assert find_agent(["my agent.zip", "config.json"]) == ("sb3", "my agent.zip")
    assert find_agent(["replay.zip", "dqn-CartPole-v1.zip"]) == ("sb3", "dqn-CartPole-v1.zip")
    assert find_agent(["a.zip", "best.zip"], repo_id="user/best") == ("sb3", "best.zip")
    assert find_agent(["model.zip", "replay_buffer.zip"]) == ("sb3", "model.zip")


def test_find_agent_errors_say_what_is_expected() -> None:
    with pytest.raises(NoAgentError, match="top level"):
        find_agent(["README.md", "sub/ppo-CartPole-v1.zip"])
    with pytest.raises(NoAgentError, match="several"):
        find_agent(["a.zip", "b.zip"])
    assert find_agent(["q-learning.pkl", "README.md"]) == ("qlearning", "q-learning.pkl")
    with pytest.raises(UnsupportedFormatError, match="Unknown agent format"):
        load_agent("pickle", AgentFiles(Path("."), "x"), gym.spaces.Discrete(2), gym.spaces.Discrete(2))


# ---------------------------------------------------------------------------------------------
# Agents trained here (tiny)


@pytest.fixture(scope="module")
def cartpole_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PPO whose policy_kwargs hold a class (serialized, with readable siblings)."""
    folder = tmp_path_factory.mktemp("ppo-cartpole")
    model = PPO(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=256,
        batch_size=64,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": {"pi": [32], "vf": [32]}, "activation_fn": torch.nn.ReLU},
    )
    model.learn(total_timesteps=1024)
    model.save(folder / "ppo-CartPole-v1.zip")
    return folder / "ppo-CartPole-v1.zip"


@pytest.fixture(scope="module")
def pendulum_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sac-pendulum")
    model = SAC(
        "MlpPolicy",
        "Pendulum-v1",
        learning_starts=64,
        batch_size=32,
        seed=0,
        device="cpu",
        policy_kwargs={"net_arch": [32, 32]},
    )
    model.learn(total_timesteps=128)
    model.save(folder / "sac-Pendulum-v1.zip")
    return folder / "sac-Pendulum-v1.zip"


def _load_zip(path: Path, env: gym.Env):
    return load_agent("sb3", AgentFiles(path.parent, path.name, (path.name,)), env.observation_space, env.action_space)


def test_trained_discrete_agent_returns_equal_sb3_predict(cartpole_zip: Path, sb3_reference_returns) -> None:
    env = gym.make("CartPole-v1")
    agent = _load_zip(cartpole_zip, env)
    assert agent.algo == "ppo"
    assert agent.details["policy_kwargs_source"].startswith("data (readable siblings)")
    model = PPO.load(cartpole_zip, device="cpu")
    seeds = [0, 1, 2]
    assert _run_episodes(agent, env, seeds) == sb3_reference_returns(model, env, seeds)


def test_trained_continuous_agent_actions_agree(pendulum_zip: Path) -> None:
    env = gym.make("Pendulum-v1")
    agent = _load_zip(pendulum_zip, env)
    assert agent.algo == "sac"
    model = SAC.load(pendulum_zip, device="cpu")
    obs = _observations(env, n=32)
    expected, _ = model.predict(obs, deterministic=True)
    actions = agent.policy.act(obs)
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-5)
    assert np.all(actions >= -2.0) and np.all(actions <= 2.0)


# ---------------------------------------------------------------------------------------------
# Hostile and broken zips


def _rewrite(
    src: Path,
    dst: Path,
    *,
    data: dict | None = None,
    replace: dict[str, bytes] | None = None,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Copy an SB3 zip, optionally with another `data`, replaced or extra members."""
    replace = dict(replace or {})
    if data is not None:
        replace["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, replace.pop(info.filename, None) or zin.read(info))
        for name, content in {**replace, **(extra or {})}.items():
            zout.writestr(name, content)
    return dst


def _data(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("data"))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(path) as zf:
        return torch.load(io.BytesIO(zf.read("policy.pth")), weights_only=True)


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


CARTPOLE = gym.make("CartPole-v1")


def test_hostile_payload_pickles_are_real(hostile_pickles, tmp_path: Path) -> None:
    """Control: the payloads used below really run when a plain unpickler meets them."""
    import pickle

    for kind in ("os.system", "builtins.exec"):
        control = tmp_path / f"control-{kind}"
        pickle.loads(hostile_pickles(control)[kind])
        assert control.exists()


def test_custom_policy_class_is_refused(cartpole_zip: Path, tmp_path: Path) -> None:
    data = _data(cartpole_zip)
    data["policy_class"]["__module__"] = "__main__"
    data["policy_class"]["__init__"] = "<function CustomPolicy.__init__ at 0x7f00deadbeef>"
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", data=data)
    with pytest.raises(UnsafeContentError, match=r"__main__\.CustomPolicy"):
        _load_zip(bad, CARTPOLE)


def test_unsupported_sb3_policy_class_is_a_format_error(cartpole_zip: Path, tmp_path: Path) -> None:
    data = _data(cartpole_zip)
    data["policy_class"]["__module__"] = "sb3_contrib.common.recurrent.policies"
    data["policy_class"]["__init__"] = "<function RecurrentActorCriticPolicy.__init__ at 0x7f00deadbeef>"
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", data=data)
    with pytest.raises(UnsupportedFormatError, match="RecurrentActorCriticPolicy"):
        _load_zip(bad, CARTPOLE)


def test_serialized_payloads_are_never_decoded(cartpole_zip, tmp_path, hostile_pickles, marker) -> None:
    payloads = hostile_pickles(marker)
    data = _data(cartpole_zip)
    data["policy_class"][":serialized:"] = base64.b64encode(payloads["os.system"]).decode()
    data["policy_kwargs"][":serialized:"] = base64.b64encode(payloads["builtins.exec"]).decode()
    data["observation_space"][":serialized:"] = base64.b64encode(payloads["os.system"]).decode()
    data["invented_key"] = {":type:": "<class 'x'>", ":serialized:": base64.b64encode(payloads["os.system"]).decode()}
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", data=data)
    agent = _load_zip(bad, CARTPOLE)  # loading succeeds: the payloads are inert strings
    agent.policy.act(np.zeros((4, 4), dtype=np.float32))
    assert not marker.exists()


def test_serialized_payload_with_failing_load_does_not_run(cartpole_zip, tmp_path, hostile_pickles, marker) -> None:
    data = _data(cartpole_zip)
    data["policy_kwargs"] = {
        ":type:": "<class 'dict'>",
        ":serialized:": base64.b64encode(hostile_pickles(marker)["os.system"]).decode(),
        "activation_fn": "<class 'os.system'>",
    }
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", data=data)
    with pytest.raises(UnsafeContentError, match="os.system"):
        _load_zip(bad, CARTPOLE)
    assert not marker.exists()


def test_nan_weights_are_refused(cartpole_zip: Path, tmp_path: Path) -> None:
    state = _state_dict(cartpole_zip)
    state["action_net.weight"][0, 0] = float("nan")
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", replace={"policy.pth": _torch_bytes(state)})
    with pytest.raises(InvalidWeightsError, match="action_net.weight"):
        _load_zip(bad, CARTPOLE)


def test_weights_that_do_not_fit_are_refused(cartpole_zip: Path, tmp_path: Path) -> None:
    state = _state_dict(cartpole_zip)
    state["action_net.weight"] = torch.zeros(2, 33)
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", replace={"policy.pth": _torch_bytes(state)})
    with pytest.raises(InvalidWeightsError, match="shapes differ"):
        _load_zip(bad, CARTPOLE)


def test_space_mismatch_names_both_spaces(cartpole_zip: Path) -> None:
    lunar = gym.make("LunarLander-v3")
    with pytest.raises(SpaceMismatchError, match=r"Box\(shape=\(4,\).*Box\(shape=\(8,\)"):
        _load_zip(cartpole_zip, lunar)
    with pytest.raises(SpaceMismatchError, match=r"Discrete\(2\).*Discrete\(3\)"):
        load_agent(
            "sb3",
            AgentFiles(cartpole_zip.parent, cartpole_zip.name),
            CARTPOLE.observation_space,
            gym.spaces.Discrete(3),
        )


def test_action_bounds_mismatch_is_refused(pendulum_zip: Path) -> None:
    env = gym.make("Pendulum-v1")
    wider = gym.spaces.Box(-4.0, 4.0, (1,), np.float32)
    with pytest.raises(SpaceMismatchError, match="bounds"):
        load_agent("sb3", AgentFiles(pendulum_zip.parent, pendulum_zip.name), env.observation_space, wider)


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.9, 0.999])
def test_truncated_zip_is_corrupt(cartpole_zip: Path, tmp_path: Path, fraction: float) -> None:
    raw = cartpole_zip.read_bytes()
    bad = tmp_path / "ppo-CartPole-v1.zip"
    bad.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(CorruptFileError, match="zip"):
        _load_zip(bad, CARTPOLE)


def test_non_zip_is_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "agent.zip"
    bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n")
    with pytest.raises(CorruptFileError, match="not a readable zip"):
        _load_zip(bad, CARTPOLE)


def test_too_many_entries_is_refused(cartpole_zip: Path, tmp_path: Path) -> None:
    extra = {f"junk/{i}.txt": b"" for i in range(100)}
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", extra=extra)
    with pytest.raises(TooLargeError, match="entries"):
        _load_zip(bad, CARTPOLE)


def test_member_with_parent_path_is_refused(cartpole_zip: Path, tmp_path: Path) -> None:
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", extra={"../evil.sh": b"echo hi"})
    with pytest.raises(CorruptFileError, match=r"\.\./evil\.sh"):
        _load_zip(bad, CARTPOLE)


def test_missing_policy_is_not_an_sb3_zip(tmp_path: Path) -> None:
    bad = tmp_path / "agent.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("data", "{}")
    with pytest.raises(UnsupportedFormatError, match="policy.pth"):
        _load_zip(bad, CARTPOLE)


def test_policy_pth_pickle_payload_is_refused(cartpole_zip, tmp_path, marker) -> None:
    class Evil:  # pickled as a REDUCE of builtins.exec, beside the real tensors
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    state = dict(_state_dict(cartpole_zip))
    state["evil"] = Evil()
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", replace={"policy.pth": _torch_bytes(state)})
    with pytest.raises(UnsafeContentError, match="weights-only"):
        _load_zip(bad, CARTPOLE)
    assert not marker.exists()


def test_absurd_net_arch_is_refused_before_allocating(cartpole_zip, tmp_path, monkeypatch) -> None:
    data = _data(cartpole_zip)
    data["policy_kwargs"] = {"net_arch": [200000, 200000]}
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", data=data)

    def must_not_build(*args, **kwargs):
        raise AssertionError("the policy was built")

    monkeypatch.setattr(sb3_loader, "build_policy", must_not_build)
    monkeypatch.setattr(sb3_loader, "load_state_dict_bytes", must_not_build)
    with pytest.raises(TooLargeError, match="parameters"):
        _load_zip(bad, CARTPOLE)


def test_unknown_policy_kwarg_is_refused(cartpole_zip: Path, tmp_path: Path) -> None:
    data = _data(cartpole_zip)
    data["policy_kwargs"] = {"net_arch": [32], "features_extractor_class": "<class '__main__.Evil'>"}
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", data=data)
    with pytest.raises(UnsafeContentError, match=r"__main__\.Evil"):
        _load_zip(bad, CARTPOLE)
    data["policy_kwargs"] = {"my_kwarg": 1}
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1-2.zip", data=data)
    with pytest.raises(UnsupportedFormatError, match="my_kwarg"):
        _load_zip(bad, CARTPOLE)


# ---------------------------------------------------------------------------------------------
# SB3 1.x net_arch forms


@pytest.mark.parametrize(
    ("value", "shared", "pi", "vf"),
    [
        ([dict(pi=[64, 64], vf=[64, 64])], (), (64, 64), (64, 64)),  # SB3 1.x default
        ([128, dict(pi=[64], vf=[32])], (128,), (64,), (32,)),  # shared layers (SB3 < 1.8)
        ({"pi": [8], "vf": [16]}, (), (8,), (16,)),
        ([32, 32], (), (32, 32), (32, 32)),
    ],
)
def test_net_arch_forms(value, shared, pi, vf) -> None:
    arch = sb3_kwargs.parse_net_arch(value)
    assert arch.shared == shared and arch.widths("pi") == pi and arch.widths("vf") == vf


def test_legacy_shared_layers_load_strictly(tmp_path: Path) -> None:
    """An SB3 < 1.8 actor-critic with shared layers: `mlp_extractor.shared_net.*` keys."""
    env = gym.make("CartPole-v1")
    arch = sb3_kwargs.parse_net_arch([16, dict(pi=[8], vf=[4])])
    spec = sb3_loader.POLICY_CLASSES[("stable_baselines3.common.policies", "ActorCriticPolicy")]
    reference = sb3_loader.build_policy(spec, {"net_arch": arch}, env.observation_space, env.action_space)
    keys = set(reference.state_dict())
    assert "mlp_extractor.shared_net.0.weight" in keys and "mlp_extractor.policy_net.0.weight" in keys
    data = {
        "policy_class": {
            "__module__": "stable_baselines3.common.policies",
            "__init__": "<function ActorCriticPolicy.__init__ at 0x7f9acd15a158>",
        },
        "policy_kwargs": {"net_arch": [16, {"pi": [8], "vf": [4]}]},
        "observation_space": {":type:": "<class 'gym.spaces.box.Box'>", "dtype": "float32", "shape": [4]},
        "action_space": {":type:": "<class 'gym.spaces.discrete.Discrete'>", "n": 2},
        "clip_range": {":type:": "<class 'function'>", ":serialized:": "AAAA"},
        "use_sde": False,
    }
    path = tmp_path / "ppo-CartPole-v1.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data", json.dumps(data))
        zf.writestr("policy.pth", _torch_bytes(reference.state_dict()))
        zf.writestr("_stable_baselines3_version", "1.5.0")
    agent = _load_zip(path, env)
    obs = _observations(env, n=16)
    expected, _ = reference.predict(obs, deterministic=True)
    np.testing.assert_array_equal(agent.policy.act(obs), expected)


def test_corrupt_member_data_is_corrupt(cartpole_zip: Path, tmp_path: Path) -> None:
    raw = bytearray(cartpole_zip.read_bytes())
    with zipfile.ZipFile(cartpole_zip) as zf:
        info = zf.getinfo("data")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    raw[start : start + 16] = bytes(16)
    bad = tmp_path / "ppo-CartPole-v1.zip"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="data"):
        _load_zip(bad, CARTPOLE)


def test_loading_never_decodes_or_unpickles_repo_data(cartpole_zip: Path, monkeypatch) -> None:
    """With every decoder of `":serialized:"` fields booby-trapped, loading still works."""
    import base64 as base64_module
    import pickle

    import cloudpickle

    def trap(*args, **kwargs):
        raise AssertionError("repo data was decoded or unpickled")

    for module, name in [(cloudpickle, "loads"), (cloudpickle, "load"), (pickle, "loads"), (pickle, "load")]:
        monkeypatch.setattr(module, name, trap)
    monkeypatch.setattr(base64_module, "b64decode", trap)
    agent = _load_zip(cartpole_zip, CARTPOLE)
    assert agent.policy.act(np.zeros((4, 4), dtype=np.float32)).shape == (4,)


# ---------------------------------------------------------------------------------------------
# Review findings: every hostile input ends in a typed error, before any large allocation


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: torch.zeros(1).expand(100000, 100000), "bytes of data"),  # 1.5 KB file, 40 GB read
        (lambda: torch.zeros(1).expand(2, 1_000_000_000), "bytes of data"),
        (lambda: torch.empty(3, device="meta"), "dense CPU"),
        (lambda: torch.zeros(3, 3).to_sparse(), "dense CPU"),
    ],
)
def test_policy_pth_tensor_without_its_data_is_corrupt(make, words) -> None:
    raw = _torch_bytes({"w": make()})
    assert len(raw) < 4096
    with pytest.raises(CorruptFileError, match=words):
        sb3_loader.load_state_dict_bytes(raw)


def test_policy_pth_odd_dtypes_are_invalid_weights() -> None:
    for tensor in (torch.zeros(3, dtype=torch.complex64), torch.zeros(3, dtype=torch.int64)):
        with pytest.raises(InvalidWeightsError, match="dtype"):
            sb3_loader.load_state_dict_bytes(_torch_bytes({"w": tensor}))


def test_policy_pth_element_count_is_capped(monkeypatch) -> None:
    from evaluator.agents import sb3_weights  # the weights' checks moved there from sb3.py

    monkeypatch.setattr(sb3_weights, "MAX_STATE_ELEMENTS", 10)
    with pytest.raises(TooLargeError, match="weights"):
        sb3_loader.load_state_dict_bytes(_torch_bytes({"a": torch.zeros(6), "b": torch.zeros(6)}))


def test_broadcast_weights_in_a_zip_are_corrupt(cartpole_zip: Path, tmp_path: Path) -> None:
    state = dict(_state_dict(cartpole_zip))
    state["action_net.weight"] = torch.zeros(1).expand(100000, 100000)
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", replace={"policy.pth": _torch_bytes(state)})
    with pytest.raises(CorruptFileError, match="action_net.weight"):
        _load_zip(bad, CARTPOLE)


def test_shapes_are_checked_before_values(cartpole_zip: Path, tmp_path: Path) -> None:
    state = dict(_state_dict(cartpole_zip))
    state["action_net.weight"] = torch.full((2, 33), float("nan"))
    bad = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", replace={"policy.pth": _torch_bytes(state)})
    with pytest.raises(InvalidWeightsError, match="shapes differ"):
        _load_zip(bad, CARTPOLE)


OPTIMIZER_KWARGS = [{"fused": True, "foreach": True}, {"betas": [0.9]}, {"lr": "x", "weight_decay": -1}]


@pytest.mark.parametrize("optimizer_kwargs", OPTIMIZER_KWARGS)
def test_optimizer_kwargs_cannot_break_the_build(cartpole_zip: Path, tmp_path: Path, optimizer_kwargs) -> None:
    """Evaluation never steps the optimizer: its kwargs are recorded, not used."""
    data = _data(cartpole_zip)
    data["policy_kwargs"] = {
        "net_arch": {"pi": [32], "vf": [32]},
        "activation_fn": "<class 'torch.nn.modules.activation.ReLU'>",
        "optimizer_kwargs": optimizer_kwargs,
    }
    good = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip", data=data)
    agent = _load_zip(good, CARTPOLE)
    assert agent.details["policy_kwargs"]["optimizer_kwargs"] == optimizer_kwargs
    assert agent.policy.act(np.zeros((1, 4), dtype=np.float32)).shape == (1,)


def test_any_constructor_failure_is_a_format_error(monkeypatch) -> None:
    class Exploding:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("boom from the constructor")

    monkeypatch.setattr(sb3_loader, "lazy_attr", lambda target: Exploding)
    spec = sb3_loader.POLICY_CLASSES[("stable_baselines3.common.policies", "ActorCriticPolicy")]
    with pytest.raises(UnsupportedFormatError, match="boom from the constructor"):
        sb3_loader.build_policy(spec, {}, CARTPOLE.observation_space, CARTPOLE.action_space)


_BOX = "<class 'gym.spaces.box.Box'>"


@pytest.mark.parametrize(
    "desc",
    [
        {":type:": _BOX, "shape": "1" * 5000, "dtype": "float32"},  # int() refuses > 4300 digits
        {":type:": _BOX, "shape": "[" + "1 " * 5000 + "]", "dtype": "float32"},
        {":type:": _BOX, "shape": [4], "dtype": {"names": ["a"], "formats": ["f4"], "offsets": [-1]}},
        {":type:": _BOX, "shape": [4], "dtype": "(99999999999,)f8"},
        {":type:": _BOX, "shape": [4], "dtype": [["a", "f8", [99999999999, 99999999999]]]},
        {":type:": _BOX, "shape": [4], "dtype": "f4,f4x"},
        {":type:": _BOX, "shape": [4], "dtype": "abcd"},
        {":type:": _BOX, "shape": [4], "dtype": "V8"},
        {":type:": _BOX, "shape": [4], "dtype": 7},
    ],
)
def test_malformed_saved_spaces_are_corrupt(desc) -> None:
    from evaluator.agents import sb3_spaces

    with pytest.raises(CorruptFileError):
        sb3_spaces.check_space(desc, CARTPOLE.observation_space, "observation_space")


def test_saved_space_dtype_names_still_compare() -> None:
    from evaluator.agents import sb3_spaces

    box = {":type:": _BOX, "shape": [4], "dtype": "float32"}
    assert sb3_spaces.check_space(box, CARTPOLE.observation_space, "observation_space") is CARTPOLE.observation_space
    with pytest.raises(SpaceMismatchError):
        sb3_spaces.check_space({**box, "dtype": "<f8"}, CARTPOLE.observation_space, "observation_space")


def _zip_with_directory(path: Path, records: int, *, declared: int | None = None, directory_pad: int = 0,
                        zip64: bool = False) -> Path:
    """A zip whose central directory has `records` entries (all pointing at one local header)."""
    import struct

    name = b"a"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0) + name
    record = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0,
                         0, 0) + name
    directory = record * records
    count = records if declared is None else declared
    cd_offset = len(local)
    cd_size = len(directory) + directory_pad
    tail = b""
    if zip64:
        zip64_at = cd_offset + len(directory)
        tail = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_offset)
        tail += struct.pack("<4sLQL", b"PK\x06\x07", 0, zip64_at, 1)
        count, cd_size, cd_offset = 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF), cd_size,
                       cd_offset, 0)
    path.write_bytes(local + directory + tail + eocd)
    return path


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"records": 70_000}, "declares 65535 entries"),  # 3 MB of directory records
        ({"records": 1, "declared": 65}, "declares 65 entries"),
        ({"records": 1, "directory_pad": 2 << 20}, "central directory"),
        ({"records": 1, "declared": 1_000_000, "zip64": True}, "declares 1000000 entries"),
    ],
)
def test_zip_directory_is_checked_before_it_is_parsed(tmp_path: Path, monkeypatch, kwargs, words) -> None:
    from evaluator.agents import sb3_zip

    path = _zip_with_directory(tmp_path / "agent.zip", **kwargs)

    def must_not_parse(*args, **kw):
        raise AssertionError("zipfile parsed the central directory")

    monkeypatch.setattr(sb3_zip.zipfile, "ZipFile", must_not_parse)
    with pytest.raises(TooLargeError, match=words):
        sb3_zip.read_sb3_zip(path)


def test_zip_with_an_archive_comment_still_loads(cartpole_zip: Path, tmp_path: Path) -> None:
    path = _rewrite(cartpole_zip, tmp_path / "ppo-CartPole-v1.zip")
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = b"an archive comment " * 100
    assert _load_zip(path, CARTPOLE).algo == "ppo"


@pytest.mark.parametrize(
    "desc",
    [
        {":type:": "<class 'x'>" + "y" * 1_000_000},
        {":type:": _BOX, "shape": [5], "dtype": "z" * 1_000_000},
        {":type:": "<class 'gym.spaces.discrete.Discrete'>", "n": "9" * 1_000_000},
        {":type:": "<class 'gym.spaces.multi_discrete.MultiDiscrete'>", "nvec": list(range(100_000))},
    ],
)
def test_space_error_messages_are_bounded(desc) -> None:
    from evaluator.agents import sb3_spaces
    from evaluator.errors import EvaluationError

    with pytest.raises(EvaluationError) as info:
        sb3_spaces.check_space(desc, CARTPOLE.observation_space, "observation_space")
    assert len(str(info.value)) < 1000


def test_long_bounds_strings_are_not_parsed_whole() -> None:
    from evaluator.agents import sb3_spaces

    env = gym.make("Pendulum-v1")
    desc = {":type:": _BOX, "shape": [1], "dtype": "float32", "low": "[" + "-2. " * 1_000_000 + "]", "high": "[2.]"}
    assert sb3_spaces.check_space(desc, env.action_space, "action_space") is env.action_space


def test_net_arch_with_mixed_unknown_keys_is_unsupported() -> None:
    with pytest.raises(UnsupportedFormatError, match="unknown keys"):
        sb3_kwargs.parse_net_arch({1: [64], "x": [64], "pi": [64]})
