"""Who an SB3 zip says its agent is, read as data (no torch): the policy-class allowlist, the
algorithm, and what the referee must know before any player starts (`describe_sb3`: the RL Zoo
env wrappers and frame stack decided on the trusted side, the SB3 version for drift notes)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from evaluator.agents.base import AgentFiles
from evaluator.agents.rlzoo import read_zoo_config
from evaluator.agents.sb3_zip import read_sb3_zip
from evaluator.errors import CorruptFileError, UnsafeContentError, UnsupportedFormatError

# ---------------------------------------------------------------------------------------------
# Allowlists


@dataclass(frozen=True)
class PolicySpec:
    family: str  # actor_critic, dqn, qrdqn, sac, td3, tqc, ars
    target: str  # "module:Class" in our installed packages
    cnn: bool = False


_SB3 = "stable_baselines3"
# (module, class) as the zip names them -> what we build. Module paths are the same in SB3 1.x/2.x.
POLICY_CLASSES: dict[tuple[str, str], PolicySpec] = {
    (f"{_SB3}.common.policies", "ActorCriticPolicy"): PolicySpec(
        "actor_critic", f"{_SB3}.common.policies:ActorCriticPolicy"
    ),
    (f"{_SB3}.common.policies", "ActorCriticCnnPolicy"): PolicySpec(
        "actor_critic", f"{_SB3}.common.policies:ActorCriticCnnPolicy", cnn=True
    ),
    (f"{_SB3}.dqn.policies", "DQNPolicy"): PolicySpec("dqn", f"{_SB3}.dqn.policies:DQNPolicy"),
    (f"{_SB3}.dqn.policies", "CnnPolicy"): PolicySpec("dqn", f"{_SB3}.dqn.policies:CnnPolicy", cnn=True),
    (f"{_SB3}.sac.policies", "SACPolicy"): PolicySpec("sac", f"{_SB3}.sac.policies:SACPolicy"),
    (f"{_SB3}.sac.policies", "CnnPolicy"): PolicySpec("sac", f"{_SB3}.sac.policies:CnnPolicy", cnn=True),
    (f"{_SB3}.td3.policies", "TD3Policy"): PolicySpec("td3", f"{_SB3}.td3.policies:TD3Policy"),
    (f"{_SB3}.td3.policies", "CnnPolicy"): PolicySpec("td3", f"{_SB3}.td3.policies:CnnPolicy", cnn=True),
    ("sb3_contrib.qrdqn.policies", "QRDQNPolicy"): PolicySpec("qrdqn", "sb3_contrib.qrdqn.policies:QRDQNPolicy"),
    ("sb3_contrib.qrdqn.policies", "CnnPolicy"): PolicySpec("qrdqn", "sb3_contrib.qrdqn.policies:CnnPolicy", cnn=True),
    ("sb3_contrib.tqc.policies", "TQCPolicy"): PolicySpec("tqc", "sb3_contrib.tqc.policies:TQCPolicy"),
    ("sb3_contrib.tqc.policies", "CnnPolicy"): PolicySpec("tqc", "sb3_contrib.tqc.policies:CnnPolicy", cnn=True),
    # Dict observations (panda-gym, course unit 6): SB3's CombinedExtractor over the env's Dict space
    (f"{_SB3}.common.policies", "MultiInputActorCriticPolicy"): PolicySpec(
        "actor_critic", f"{_SB3}.common.policies:MultiInputActorCriticPolicy"
    ),
    (f"{_SB3}.dqn.policies", "MultiInputPolicy"): PolicySpec("dqn", f"{_SB3}.dqn.policies:MultiInputPolicy"),
    (f"{_SB3}.sac.policies", "MultiInputPolicy"): PolicySpec("sac", f"{_SB3}.sac.policies:MultiInputPolicy"),
    (f"{_SB3}.td3.policies", "MultiInputPolicy"): PolicySpec("td3", f"{_SB3}.td3.policies:MultiInputPolicy"),
    ("sb3_contrib.tqc.policies", "MultiInputPolicy"): PolicySpec("tqc", "sb3_contrib.tqc.policies:MultiInputPolicy"),
    ("sb3_contrib.qrdqn.policies", "MultiInputPolicy"): PolicySpec(
        "qrdqn", "sb3_contrib.qrdqn.policies:MultiInputPolicy"
    ),
    ("sb3_contrib.ars.policies", "ARSPolicy"): PolicySpec("ars", "sb3_contrib.ars.policies:ARSPolicy"),
    ("sb3_contrib.ars.policies", "ARSLinearPolicy"): PolicySpec("ars", "sb3_contrib.ars.policies:ARSLinearPolicy"),
}
FAMILY_ALGOS = {
    "actor_critic": ("ppo", "a2c", "trpo"),
    "dqn": ("dqn",),
    "qrdqn": ("qrdqn",),
    "sac": ("sac",),
    "td3": ("td3", "ddpg"),
    "tqc": ("tqc",),
    "ars": ("ars",),
}


_FUNCTION_REPR = re.compile(r"^<function ([A-Za-z_]\w*)\.(\w+) at 0x[0-9a-fA-F]+>$")

# ---------------------------------------------------------------------------------------------
# Policy class and algorithm


def identify_policy(policy_class: Any) -> tuple[str, str, PolicySpec]:
    """(module, class name, spec) from `data["policy_class"]`'s readable siblings."""
    if not isinstance(policy_class, dict):
        raise CorruptFileError("The agent zip's `data` has no readable `policy_class`.")
    module = policy_class.get("__module__")
    name = None
    init = policy_class.get("__init__")
    match = _FUNCTION_REPR.match(init) if isinstance(init, str) else None
    if match:
        name = match.group(1)
    else:  # a class without its own __init__: any of its own methods names it
        owners = {m.group(1) for v in policy_class.values() if isinstance(v, str) and (m := _FUNCTION_REPR.match(v))}
        name = owners.pop() if len(owners) == 1 else None
    if not isinstance(module, str) or not name:
        raise UnsafeContentError(
            "The agent's policy class cannot be identified from the zip's readable fields; "
            "only Stable-Baselines3 / sb3-contrib policy classes are accepted."
        )
    spec = POLICY_CLASSES.get((module, name))
    if spec is not None:
        return module, name, spec
    if module.split(".")[0] in ("stable_baselines3", "sb3_contrib"):
        raise UnsupportedFormatError(
            f"The agent uses {module}.{name}, a Stable-Baselines3 policy this evaluator does not "
            f"support yet (supported: {', '.join(sorted({n for _, n in POLICY_CLASSES}))})."
        )
    raise UnsafeContentError(
        f"The agent uses the custom policy class {module}.{name}: custom classes are code from the "
        "repo and are never run. Save the agent with a built-in SB3 policy (MlpPolicy, CnnPolicy)."
    )


def identify_algo(family: str, data: Mapping[str, Any], agent_file: str) -> str:
    """The algorithm's lowercase name: from `data`'s hyperparameters, the zip's name as a tie-break."""
    stem = agent_file.rsplit("/", 1)[-1].lower()
    hint = stem.split("-", 1)[0].split("_", 1)[0]
    candidates = FAMILY_ALGOS[family]
    if len(candidates) == 1:
        return candidates[0]
    if family == "actor_critic":
        if "cg_max_steps" in data or "line_search_shrinking_factor" in data:
            return "trpo"
        if "clip_range" in data or "n_epochs" in data:
            return "ppo"
        if "n_steps" in data and "batch_size" not in data:
            return "a2c"
    if hint in candidates:
        return hint
    if family == "td3":
        is_ddpg = (
            data.get("policy_delay") == 1
            and data.get("target_noise_clip") == 0.0
            and data.get("target_policy_noise") == 0.1
        )
        return "ddpg" if is_ddpg else "td3"
    return candidates[0]


def describe_sb3(files: AgentFiles) -> tuple[str, dict[str, Any]]:
    """(algo, details) of an SB3 zip, read on the trusted side: the zip's `data` JSON and the
    repo's RL Zoo `config.yml`, both parsed as data. The env wrappers and frame stack the
    evaluation applies come from here, never from what a player reports."""
    saved = read_sb3_zip(files.path(files.agent_file))
    config = read_zoo_config(files)
    module, class_name, spec = identify_policy(saved.data.get("policy_class"))
    details: dict[str, Any] = {
        "sb3_version": saved.sb3_version,
        "policy_class": f"{module}.{class_name}",
        "rl_zoo_config": config is not None,
    }
    if config is not None:
        details["env_wrappers"] = config.env_wrappers
        details["frame_stack"] = config.frame_stack
        details["env_kwargs"] = config.env_kwargs
    return identify_algo(spec.family, saved.data, files.agent_file), details
