"""Agent formats, registered by name and imported lazily (lm-evaluation-harness style).

`find_agent` picks the format and the agent file from a repo's file list; `load_agent` imports
only that format's module (so torch / SB3 load only when an SB3 agent is loaded) and returns a
`LoadedAgent`. A new format is one registry line plus one detector.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable

import gymnasium as gym

from evaluator.agents.base import AgentFiles, FormatLoader, LoadedAgent
from evaluator.agents.course_detect import MODEL_PT, PENDING, QLEARNING_FILE, settle
from evaluator.errors import NoAgentError, UnsupportedFormatError

__all__ = ["CODE_BEARING", "FORMATS", "STOCHASTIC_FORMATS", "SUPPORTED_FORMATS", "AgentFiles", "LoadedAgent",
           "acts_deterministically", "describe_agent", "find_agent", "get_loader", "load_agent", "settle"]

# format name -> "module:function" (a FormatLoader). "torchscript" (agent.pt) is code: its loader
# refuses to run outside a sandbox process (evaluator.sandbox). The course's own formats:
# "qlearning" (q-learning.pkl), "reinforce" (a pickled Policy module), "cleanrl_ppo" (a state dict).
FORMATS: dict[str, str] = {
    "sb3": "evaluator.agents.sb3:load_sb3",
    "torchscript": "evaluator.agents.torchscript:load_torchscript",
    "qlearning": "evaluator.agents.qlearning:load_qlearning",
    "reinforce": "evaluator.agents.reinforce:load_reinforce",
    "cleanrl_ppo": "evaluator.agents.cleanrl:load_cleanrl",
}
SUPPORTED_FORMATS: frozenset[str] = frozenset(FORMATS)

# Formats whose course evaluation samples its actions (REINFORCE's `Categorical(probs).sample()`,
# CleanRL's `get_action_and_value`): determinism is a property of (env family, format).
STOCHASTIC_FORMATS: frozenset[str] = frozenset({"reinforce", "cleanrl_ppo"})


def acts_deterministically(family_deterministic: bool, format_name: str) -> bool:
    """Whether the protocol asks `format_name` for deterministic actions in an env family whose
    convention is `family_deterministic` (DESIGN.md, protocol)."""
    return family_deterministic and format_name not in STOCHASTIC_FORMATS

# format name -> "module:function" giving (algo, details) from the files, read as data on the
# trusted side (the referee): what the result records never comes from the player.
DESCRIBERS: dict[str, str] = {
    "sb3": "evaluator.agents.sb3_identity:describe_sb3",
    "torchscript": "evaluator.agents.torchscript:describe_torchscript",
    "qlearning": "evaluator.agents.course_detect:describe_qlearning",
    "reinforce": "evaluator.agents.course_detect:describe_reinforce",
    "cleanrl_ppo": "evaluator.agents.course_detect:describe_cleanrl",
}

# Formats whose files are code (run by the format's own interpreter): played only under the
# full confinement, one player per evaluation (a code-bearing agent may keep state).
CODE_BEARING: frozenset[str] = frozenset({"torchscript"})

TORCHSCRIPT_FILE = "agent.pt"  # the Open RL Leaderboard's name, at the repo's top level
# The course's files, at the repo's top level: format (PENDING: decided by `settle` from the bytes)
_COURSE_FILES = {QLEARNING_FILE: "qlearning", MODEL_PT: PENDING}

_KNOWN_ALGOS = ("ppo", "a2c", "dqn", "sac", "td3", "ddpg", "qrdqn", "tqc", "trpo", "ars")
_ALGO_ENV_NAME = re.compile(rf"^({'|'.join(_KNOWN_ALGOS)})-.+\.zip$", re.IGNORECASE)
# Zips that are not agents, seen on the Hub beside them.
_NOT_AGENT = re.compile(r"(replay|video|buffer|vec_normalize|tensorboard|logs?)", re.IGNORECASE)


def _sb3_candidate(filenames: list[str], repo_name: str | None) -> str | None:
    zips = [f for f in filenames if "/" not in f and f.lower().endswith(".zip")]
    if not zips:
        return None
    if repo_name:
        named = [f for f in zips if f[: -len(".zip")].lower() == repo_name.lower()]
        if len(named) == 1:
            return named[0]
    algo_env = [f for f in zips if _ALGO_ENV_NAME.match(f)]
    if len(algo_env) == 1:
        return algo_env[0]
    agents = [f for f in zips if not _NOT_AGENT.search(f)]
    if len(agents) == 1:
        return agents[0]
    if len(zips) == 1:
        return zips[0]
    raise NoAgentError(
        f"The repo has several .zip files ({', '.join(sorted(zips))}) and none is clearly the agent: "
        "name the agent `{algo}-{env}.zip` (as `package_to_hub` does) or keep a single .zip."
    )


def find_agent(filenames: Iterable[str], *, repo_id: str | None = None) -> tuple[str, str]:
    """(format name, agent file path) for a repo's file list.

    An SB3 agent is a top-level `.zip`; with several, the one named like the repo, else the one
    named `{algo}-{env}.zip`, else the only one that is not a replay/buffer/log archive. Without
    one, a top-level `agent.pt` is a TorchScript agent, a `q-learning.pkl` a course Q-table and a
    `model.pt` a course REINFORCE or CleanRL agent (`PENDING` until `settle` reads its opcodes)."""
    names = sorted({str(f).removeprefix("./") for f in filenames})
    repo_name = repo_id.rsplit("/", 1)[-1] if repo_id else None
    agent_zip = _sb3_candidate(names, repo_name)
    if agent_zip is not None:
        return "sb3", agent_zip
    if TORCHSCRIPT_FILE in names:
        return "torchscript", TORCHSCRIPT_FILE
    for name, format_name in _COURSE_FILES.items():
        if name in names:
            return format_name, name
    nested = [n for n in names if n.lower().endswith(".zip")]
    hint = f" (zips found only in sub-folders: {', '.join(nested[:5])})" if nested else ""
    raise NoAgentError(
        "No agent found in the repo: expected a Stable-Baselines3 `.zip` at its top level, as "
        f"written by `model.save()` / `package_to_hub`{hint}, or the course's `q-learning.pkl` / "
        f"`model.pt`. Files: {', '.join(names[:20]) or 'none'}."
    )


def get_loader(format_name: str) -> FormatLoader:
    """Import the loader of `format_name` (only now: formats are imported lazily)."""
    try:
        target = FORMATS[format_name]
    except KeyError:
        raise UnsupportedFormatError(
            f"Unknown agent format {format_name!r} (supported: {', '.join(sorted(FORMATS))})."
        ) from None
    module_name, function_name = target.split(":")
    return getattr(importlib.import_module(module_name), function_name)


def load_agent(
    format_name: str, files: AgentFiles, observation_space: gym.Space, action_space: gym.Space
) -> LoadedAgent:
    """Load the agent in `files` with the evaluation env's own spaces; nothing from the repo runs."""
    return get_loader(format_name)(files, observation_space, action_space)


def describe_agent(format_name: str, files: AgentFiles) -> tuple[str, dict]:
    """(algo, details) of the agent in `files`, read as data in this (trusted) process."""
    if format_name not in DESCRIBERS:
        get_loader(format_name)  # raises the unknown-format error
    module_name, function_name = DESCRIBERS[format_name].split(":")
    return getattr(importlib.import_module(module_name), function_name)(files)
