"""One unit of agent work: the episodes of an evaluation (or a part of them) for an agent in a
local snapshot, optionally with the replay of the first. Plain data in and out. It is played by
the referee against a confined player (`evaluator.sandbox.referee.play`), or all in this
process (`execute`, data-only formats), with the same per-episode results either way."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .agents import acts_deterministically, describe_agent, load_agent
from .agents.base import AgentFiles
from .env_wrappers import decide_view
from .envs import ATARI, EnvSpec, make_env, resolve_env
from .runner import EpisodeResults, run_episodes

if TYPE_CHECKING:
    from .video import ReplayRecorder


@dataclass(frozen=True)
class Job:
    root: str  # the pinned snapshot folder (read-only for the job)
    agent_format: str
    agent_file: str
    files: tuple[str, ...]
    env_id: str  # as requested; resolved through the env table again where the job runs
    n_episodes: int
    seeds: tuple[int, ...]
    episode_indices: tuple[int, ...] | None = None  # None: all episodes
    video_path: str | None = None  # record the replay of episode 0 here (mp4)
    seed_set: str = "public"  # the set `seeds` come from
    action_key: str | None = None  # hex; the private set's action-seed key (never the salt)

    def seed_set_of(self):
        """`seeds` as the runner's SeedSet: on the private set, the action seeds are keyed with
        `action_key` (without it the runner would derive them with the public key)."""
        from .runner import SeedSet

        return SeedSet(self.seed_set, tuple(self.seeds), bytes.fromhex(self.action_key) if self.action_key else None)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Job:
        data = json.loads(text)
        for key in ("files", "seeds", "episode_indices"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


@dataclass
class JobOutcome:
    algo: str
    format: str
    episodes: EpisodeResults
    details: dict[str, Any] = field(default_factory=dict)
    video: str | None = None  # the mp4 written, if any
    video_error: str | None = None  # why a requested replay was not recorded

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["details"] = json.loads(json.dumps(self.details, default=str))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobOutcome:
        return cls(**{**data, "episodes": EpisodeResults(**data["episodes"])})


def single_thread() -> None:
    """One intra-op thread: small-batch policies run fastest so (no spin-waiting on a busy
    second core), and the protocol's numbers never depend on the machine's core count."""
    import torch

    torch.set_num_threads(1)


def describe(job: Job) -> tuple[EnvSpec, str, dict[str, Any]]:
    """(env spec, algo, details) of `job`, decided in this (trusted) process from the repo's files
    read as data. The env wrappers and frame stack come from here, never from a player."""
    spec = resolve_env(job.env_id)
    algo, details = describe_agent(job.agent_format, AgentFiles(Path(job.root), job.agent_file, job.files))
    view = decide_view(spec.family == ATARI, details)  # allowlisted wrappers + frame stack, from config.yml
    if view is not None:
        details = {**details, **view.describe()}
    # Determinism is a property of (env family, format): the course samples REINFORCE and CleanRL actions.
    spec = replace(spec, view=view, deterministic=acts_deterministically(spec.deterministic, job.agent_format))
    return spec, algo, details


def recorded_outcome(job: Job, spec: EnvSpec, algo: str, details: dict[str, Any],
                     run: Callable[[ReplayRecorder | None], EpisodeResults]) -> JobOutcome:
    """Run the episodes (`run(recorder)`), recording the replay of the first one when the job
    asks for it, during the scored run itself."""
    recorder = None
    if job.video_path:
        from .video import ReplayRecorder

        recorder = ReplayRecorder(Path(job.video_path))
    try:
        episodes = run(recorder)
    finally:
        if recorder is not None:
            recorder.abort()
    outcome = JobOutcome(algo, job.agent_format, episodes, dict(details))
    if recorder is not None:
        outcome.video = str(recorder.replay.path) if recorder.replay else None
        outcome.video_error = None if recorder.replay else (recorder.error or "the replay was not recorded")
    return outcome


def execute(job: Job, progress: Callable[[int, int], None] | None = None) -> JobOutcome:
    """The whole job in THIS process (no confinement): for data-only formats, trusted callers,
    benchmarks and tests. Code-bearing formats refuse to load here. Raises EvaluationError."""
    spec, algo, details = describe(job)
    single_thread()
    env = make_env(spec)
    try:
        files = AgentFiles(Path(job.root), job.agent_file, job.files)
        agent = load_agent(job.agent_format, files, env.observation_space, env.action_space)
    finally:
        env.close()
    return recorded_outcome(job, spec, algo, details, lambda recorder: run_episodes(
        agent.policy, spec, n_episodes=job.n_episodes, seeds=job.seed_set_of(), episode_indices=job.episode_indices,
        progress=progress, recorder=recorder))
