"""The RL Zoo agents of ../shared as the benches use them: where they are, and one as a Job."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from evaluator.agents import find_agent
from evaluator.envs import resolve_env
from evaluator.job import Job
from evaluator.runner import public_seeds

ZOO = Path(__file__).resolve().parents[2] / "shared" / "agents" / "zoo" / "sb3"


def zoo_missing() -> bool:
    """True (and says so on stderr) when ../shared has no zoo agents: the bench cannot run."""
    if ZOO.is_dir():
        return False
    print(f"needs the RL Zoo agents in {ZOO}", file=sys.stderr)
    return True


@dataclass(frozen=True)
class ZooAgent:
    name: str  # e.g. ppo-LunarLander-v2
    root: Path
    files: tuple[str, ...]
    agent_format: str
    agent_file: str
    env_id: str

    def job(self, n: int = 0) -> Job:
        """Its public-seed evaluation of `n` episodes (0: the env's protocol)."""
        n = n or resolve_env(self.env_id).n_episodes
        return Job(str(self.root), self.agent_format, self.agent_file, self.files, self.env_id, n,
                   tuple(public_seeds(n)))


def zoo_agent(name: str) -> ZooAgent:
    root = ZOO / name
    files = tuple(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    fmt, agent_file = find_agent(files, repo_id=f"sb3/{name}")
    return ZooAgent(name, root, files, fmt, agent_file, name.split("-", 1)[1])
