"""Load a Stable-Baselines3 / RL Zoo agent without executing anything from the repo.

`ALGO.load` unpickles the zip's `":serialized:"` fields (pickles: arbitrary code). Instead,
the policy class is named by the readable siblings in `data`, mapped through an allowlist to
the SB3 / sb3-contrib classes of *our* installed packages, rebuilt with the evaluation env's
own spaces and allowlisted kwargs, and filled from `policy.pth` via `torch.load(weights_only=True)`.
Acting goes through `sb3_lean.LeanSB3`: SB3's own actions, bit for bit, without `predict`'s
per-call bookkeeping.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from packaging.version import InvalidVersion, Version
from torch import nn

from evaluator.agents.base import AgentFiles, LoadedAgent
from evaluator.agents.rlzoo import VecNormalizeStats, read_vec_normalize, read_zoo_config
from evaluator.agents.sb3_identity import (  # noqa: F401 - re-exported: the allowlist's home moved
    FAMILY_ALGOS,
    POLICY_CLASSES,
    PolicySpec,
    identify_algo,
    identify_policy,
)
from evaluator.agents.sb3_kwargs import (
    NetArch,
    collect_policy_kwargs,
    lazy_attr,
    normalize_policy_kwargs,
)
from evaluator.agents.sb3_lean import LeanSB3
from evaluator.agents.sb3_spaces import check_space, describe_space
from evaluator.agents.sb3_stochastic import exploration_rate, sample_actions
from evaluator.agents.sb3_weights import (  # noqa: F401 - re-exported: the weights' home moved
    MAX_POLICY_PARAMS,
    MAX_STATE_ELEMENTS,
    check_weight_values,
    fit_state_dict,
    legacy_key_names,
    load_state_dict_bytes,
)
from evaluator.agents.sb3_zip import read_sb3_zip
from evaluator.agents.vec_normalize_dict import check_stats_fit
from evaluator.errors import (
    CorruptFileError,
    InvalidActionError,
    InvalidWeightsError,
    SpaceMismatchError,
    TooLargeError,
    UnsupportedFormatError,
)

# ---------------------------------------------------------------------------------------------
# Size, before anything is allocated


def _chain(dims: list[int]) -> int:
    return sum(a * b + b for a, b in zip(dims, dims[1:], strict=False))


def implied_parameter_count(
    family: str,
    net_arch: NetArch | None,
    kwargs: Mapping[str, Any],
    obs_space: gym.Space,
    action_space: gym.Space,
    *,
    cnn: bool = False,
) -> int:
    """An upper estimate of the rebuilt policy's parameter count, from sizes alone."""
    from stable_baselines3.common.preprocessing import get_action_dim, get_flattened_obs_dim

    extractor = kwargs.get("features_extractor_class")
    if (extractor is None and cnn) or (extractor is not None and extractor.__name__ == "NatureCNN"):
        in_dim = int((kwargs.get("features_extractor_kwargs") or {}).get("features_dim", 512))
    else:
        in_dim = int(get_flattened_obs_dim(obs_space))
    if isinstance(action_space, gym.spaces.Discrete):
        out = int(action_space.n)
    elif isinstance(action_space, gym.spaces.MultiDiscrete):
        out = int(np.sum(action_space.nvec))
    else:
        out = int(get_action_dim(action_space))
    quantiles = int(kwargs.get("n_quantiles", 1 if family not in ("qrdqn", "tqc") else 200))
    critics = int(kwargs.get("n_critics", 2))
    arch = net_arch or NetArch(as_list=(256, 256))
    shared = list(arch.shared)
    trunk = _chain([in_dim, *shared])
    top = shared[-1] if shared else in_dim
    actor = _chain([top, *arch.widths("pi"), out * quantiles * 2])
    value = _chain([top, *arch.widths("vf"), 1])
    critic = _chain([in_dim + out, *arch.widths("qf"), quantiles])
    return 2 * (trunk + actor + value) + 2 * max(critics, 1) * critic


# ---------------------------------------------------------------------------------------------
# Building the policy


class LegacyMlpExtractor(nn.Module):
    """SB3 < 1.8's MlpExtractor, whose `net_arch` could start with layers shared by actor and
    critic (`shared_net`): SB3 2.x removed them, so agents saved with them need this module."""

    def __init__(self, feature_dim: int, net_arch: NetArch, activation_fn: type[nn.Module]) -> None:
        super().__init__()

        def mlp(in_dim: int, widths: tuple[int, ...]) -> tuple[nn.Sequential, int]:
            layers: list[nn.Module] = []
            for width in widths:
                layers += [nn.Linear(in_dim, width), activation_fn()]
                in_dim = width
            return nn.Sequential(*layers), in_dim

        self.shared_net, shared_dim = mlp(feature_dim, net_arch.shared)
        self.policy_net, self.latent_dim_pi = mlp(shared_dim, net_arch.widths("pi"))
        self.value_net, self.latent_dim_vf = mlp(shared_dim, net_arch.widths("vf"))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.shared_net(features)
        return self.policy_net(shared), self.value_net(shared)

    def forward_actor(self, features: torch.Tensor) -> torch.Tensor:
        return self.policy_net(self.shared_net(features))

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(self.shared_net(features))


def _legacy_policy_class(base: type) -> type:
    class LegacySharedActorCriticPolicy(base):  # type: ignore[misc, valid-type]
        """An SB3 actor-critic policy whose MLP has SB3 < 1.8 shared layers."""

        def _build_mlp_extractor(self) -> None:
            self.mlp_extractor = LegacyMlpExtractor(self.features_dim, self.net_arch, self.activation_fn)

    return LegacySharedActorCriticPolicy


def _zero_lr(_progress_remaining: float) -> float:
    return 0.0


def _net_arch_argument(arch: NetArch | None) -> Any:
    if arch is None:
        return None
    if arch.legacy_shared:
        return arch  # read by LegacyMlpExtractor
    if arch.as_list is not None:
        return list(arch.as_list)
    return {key: list(widths) for key, widths in arch.nets}


def build_policy(spec: PolicySpec, kwargs: dict[str, Any], obs_space: gym.Space, action_space: gym.Space) -> nn.Module:
    """Construct our SB3 policy class with the env's spaces and the checked kwargs."""
    cls = lazy_attr(spec.target)
    kwargs = dict(kwargs)
    arch = kwargs.get("net_arch")
    if isinstance(arch, NetArch) and arch.legacy_shared:
        cls = _legacy_policy_class(cls)
    kwargs["net_arch"] = _net_arch_argument(arch) if "net_arch" in kwargs else None
    if kwargs["net_arch"] is None:
        del kwargs["net_arch"]
    if spec.family == "actor_critic":
        kwargs["ortho_init"] = False  # initial values are all overwritten by the strict load
    # The optimizer is never stepped during evaluation: its class was checked against the allowlist
    # (and is recorded in the details), but the policy is built with SB3's default and no kwargs,
    # so a repo's `optimizer_kwargs` (`fused` + `foreach`, malformed `betas`) cannot break the build.
    kwargs.pop("optimizer_class", None)
    kwargs.pop("optimizer_kwargs", None)
    args = (obs_space, action_space) if spec.family == "ars" else (obs_space, action_space, _zero_lr)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            policy = cls(*args, **kwargs)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of SB3's constructor is the saved kwargs' fault
        raise UnsupportedFormatError(
            f"Cannot rebuild {spec.target.split(':')[1]} with the saved policy_kwargs for this env: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    policy.set_training_mode(False)
    return policy


# ---------------------------------------------------------------------------------------------
# The agent


class SB3Policy:
    """RL Zoo obs normalization, then the actions SB3's `BasePolicy.predict` gives (Box actions
    clipped, or unscaled for squashed policies), computed lean (`sb3_lean`)."""

    def __init__(self, policy: nn.Module, obs_stats: VecNormalizeStats | None,
                 exploration_rate: float | None = None) -> None:
        self.policy = policy
        self.obs_stats = obs_stats
        self.lean = LeanSB3(policy)
        self.exploration_rate = exploration_rate  # DQN family: epsilon of its stochastic actions

    def act(self, obs: np.ndarray, *, deterministic: bool = True, rngs: Any = None) -> np.ndarray:
        obs = obs if isinstance(obs, dict) else np.asarray(obs)
        if self.obs_stats is not None:
            obs = self.obs_stats.normalize(obs)
        try:
            if not deterministic:  # per-episode generators, never SB3's global ones (sb3_stochastic)
                return sample_actions(self.policy, self.lean, obs, rngs, exploration_rate=self.exploration_rate)
            return self.lean.act(obs)
        except ValueError as err:  # torch.distributions refuses NaN parameters
            raise _nan_actions(err) from None

    def act_many(self, obs: np.ndarray, *, batch: int) -> np.ndarray:
        """Deterministic `act` on each `batch` rows in turn, concatenated (in one call where that
        gives the same numbers: `LeanSB3.act_many`). The obs normalisation is elementwise."""
        obs = obs if isinstance(obs, dict) else np.asarray(obs)
        if self.obs_stats is not None:
            obs = self.obs_stats.normalize(obs)
        try:
            return self.lean.act_many(obs, batch)
        except ValueError as err:
            raise _nan_actions(err) from None


def _nan_actions(err: ValueError) -> InvalidActionError:
    return InvalidActionError(
        "the policy's network produced NaN or infinite values instead of an action distribution "
        f"(its weights overflow on this env's observations): {str(err).splitlines()[0][:300]}")


def _version(text: str | None) -> Version:
    try:
        return Version(text) if text else Version("0")
    except InvalidVersion:
        return Version("0")


def _accepted_kwargs(spec: PolicySpec) -> set[str]:
    return set(inspect.signature(lazy_attr(spec.target).__init__).parameters) - {"self"}


def _describe_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, type):
            out[key] = value.__name__
        elif isinstance(value, NetArch):
            arg = _net_arch_argument(value)
            out[key] = {"shared": list(value.shared), **{k: list(v) for k, v in value.nets}} if arg is value else arg
        else:
            out[key] = value
    return out


def load_sb3(files: AgentFiles, observation_space: gym.Space, action_space: gym.Space) -> LoadedAgent:
    """Load an SB3 `.zip` (plus RL Zoo extras) for the given env spaces; nothing from the repo runs."""
    saved = read_sb3_zip(files.path(files.agent_file))
    data = saved.data
    config = read_zoo_config(files)
    module, class_name, spec = identify_policy(data.get("policy_class"))
    algo = identify_algo(spec.family, data, files.agent_file)
    obs_space = check_space(data.get("observation_space"), observation_space, "observation_space")
    act_space = check_space(data.get("action_space"), action_space, "action_space")
    if spec.family in ("sac", "td3", "tqc") and not isinstance(act_space, gym.spaces.Box):
        raise SpaceMismatchError(f"{algo.upper()} needs a Box action space; the env has {describe_space(act_space)}.")

    raw_kwargs, kwargs_source = collect_policy_kwargs(data, config)
    accepted = _accepted_kwargs(spec)
    kwargs = normalize_policy_kwargs(raw_kwargs, accepted=accepted)
    version = _version(saved.sb3_version)
    if "use_sde" in accepted and "use_sde" not in kwargs and isinstance(data.get("use_sde"), bool):
        kwargs["use_sde"] = data["use_sde"]  # on-policy algorithms pass it beside policy_kwargs
    if algo == "a2c" and "optimizer_class" not in kwargs:  # A2C's default, set beside policy_kwargs
        kwargs["optimizer_class"] = torch.optim.RMSprop
        kwargs["optimizer_kwargs"] = {"alpha": 0.99, "eps": 1e-5, "weight_decay": 0}
    if "share_features_extractor" in accepted and spec.family in ("sac", "td3", "tqc") and version < Version("2.0"):
        kwargs.setdefault("share_features_extractor", True)  # SB3 2.0 changed the default to False

    net_arch = kwargs.get("net_arch")
    count = implied_parameter_count(spec.family, net_arch, kwargs, obs_space, act_space, cnn=spec.cnn)
    if count > MAX_POLICY_PARAMS:
        raise TooLargeError(
            f"The policy the zip describes would have about {count:,} parameters "
            f"(limit {MAX_POLICY_PARAMS:,}); refused before allocating it."
        )
    state = legacy_key_names(spec.family, load_state_dict_bytes(saved.policy_pth, check_values=False))
    if (
        spec.family == "actor_critic"
        and isinstance(net_arch, NetArch)
        and net_arch.as_list is not None
        and any(k.startswith("mlp_extractor.shared_net.") for k in state)
    ):  # SB3 < 1.8: a plain list meant layers shared by actor and critic
        kwargs["net_arch"] = NetArch(shared=net_arch.as_list)
    policy = build_policy(spec, kwargs, obs_space, act_space)
    state = fit_state_dict(policy, state)
    check_weight_values(state)
    try:
        policy.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidWeightsError(f"policy.pth does not fit the rebuilt policy: {str(exc)[:300]}") from exc

    obs_stats = None
    if config is None or config.normalize is not None:
        obs_stats = read_vec_normalize(files)
        if obs_stats is None and config is not None:
            raise CorruptFileError(
                "config.yml says the agent was trained with `normalize`, but the repo has no "
                "vec_normalize.pkl: without its statistics the agent sees unnormalized inputs."
            )
    check_stats_fit(obs_stats, observation_space)  # per key for Dict observations
    details: dict[str, Any] = {
        "sb3_version": saved.sb3_version,
        "policy_class": f"{module}.{class_name}",
        "policy_kwargs": _describe_kwargs(kwargs),
        "policy_kwargs_source": kwargs_source,
        "vec_normalize": obs_stats is not None and obs_stats.norm_obs,
        "rl_zoo_config": config is not None,
    }
    if config is not None:
        details["env_wrappers"] = config.env_wrappers
        details["frame_stack"] = config.frame_stack
        details["env_kwargs"] = config.env_kwargs
    epsilon = exploration_rate(data) if spec.family in ("dqn", "qrdqn") else None
    return LoadedAgent(policy=SB3Policy(policy, obs_stats, epsilon), algo=algo, format="sb3", details=details)
