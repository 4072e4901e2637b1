"""What every agent format gives the runner: a batched, deterministic-by-protocol policy.

A format loader turns the files of a downloaded repo plus the *evaluation env's own spaces*
into a `LoadedAgent`. It never executes anything from the repo (DESIGN.md, security model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np


@dataclass(frozen=True)
class AgentFiles:
    """A repo snapshot on local disk: `root` holds the files, `agent_file` is the agent's path."""

    root: Path
    agent_file: str
    files: tuple[str, ...] = ()

    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return name in self.files or (self.root / name).is_file()


class Policy(Protocol):
    def act(self, obs: np.ndarray, *, deterministic: bool = True, rngs: Any = None) -> np.ndarray:
        """Map a batch of raw env observations (slots, *obs_shape) to a batch of env actions,
        after the format's own post-processing (obs normalization, clipping, unscaling).
        Stochastic calls (`deterministic=False`) get `rngs`: one numpy Generator per row (None
        for padding rows), seeded per episode by the protocol; draw from them only."""


@dataclass
class LoadedAgent:
    """A loaded agent: its policy plus what the result records about it."""

    policy: Policy
    algo: str
    format: str
    details: dict[str, Any] = field(default_factory=dict)


class FormatLoader(Protocol):
    def __call__(
        self,
        files: AgentFiles,
        observation_space: gym.Space,
        action_space: gym.Space,
    ) -> LoadedAgent: ...
