"""Protocol v1: seeded, batched episodes whose per-episode returns do not depend on how the work
is split (over slots, processes or machines).

Why each rule:
- Episode i always starts from `reset(seed=seeds[i])`, whichever slot runs it, in an env that
  played nothing before it (or one whose reset provably sets all its state).
- The policy is always called on a full batch of `N_SLOTS` rows (idle slots padded with a copy
  of a live observation, their actions discarded): torch's CPU kernels give bitwise different
  outputs for 1-3 rows than for >= 4, but the same output for a row at any fixed batch size
  and position.
- Episode i always sits at row `i % N_SLOTS` of its batch: some networks' outputs depend on the
  row (torch's CPU matrix product sums some rows of an 8-row batch in another order when an
  inner width is not a multiple of 4), and the row must not depend on which other episodes
  are in flight.
- Returns are summed in float64 in step order.
So same revision + protocol + library versions + CPU kind = the same returns, bit for bit.

How many episodes are in flight is not part of the protocol: a run keeps up to a window of
episodes going (`window_slots`), and each actor call carries a whole window of rows, which the
actor cuts into `N_SLOTS`-row policy calls of live rows (`LocalActor`). A wide window makes one
round trip to a confined player serve many env steps (the per-call cost that dominated).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from evaluator.action_checks import _show, check_action, check_actions
from evaluator.actors import Actor, LocalActor, Rows, as_actor, one_per_row  # noqa: F401 (re-exported)
from evaluator.agents.base import Policy
from evaluator.batch_rows import put_row, row_buffer, take_rows  # noqa: F401 (re-exported)
from evaluator.envs import EnvSpec, make_env, make_vector_env
from evaluator.errors import InvalidActionError
from evaluator.protocol import (  # noqa: F401 (re-exported: the protocol's constants are read from here)
    BASE_SEED,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CUSTOM,
    N_SLOTS,
    PRIVATE,
    PRIVATE_SALT_ENV,
    PROTOCOL_VERSION,
    PUBLIC,
    protocol_constants,
)

# Episodes in flight per run (not a protocol constant: results do not depend on it). Families
# whose envs are heavy (a pybullet client each) or whose policy calls dwarf the channel (Atari's
# CNN) keep one batch in flight.
MAX_WINDOW = 64
MAX_CALL_ROWS = 256  # the most rows one call may carry, whatever MAX_WINDOW says (the player refuses more)
NARROW_WINDOW_FAMILIES = frozenset({"atari", "panda"})
# Families whose `reset(seed=...)` sets every bit of the env's state (pure Python state drawn
# from the reseeded generator): an env of theirs may play one episode after another. Any other
# env plays one episode only: a Box2D world keeps allocator and contact state across resets
# (BipedalWalker's returns depend on the episodes its env played before), and the physics of
# ALE and pybullet are not ours to vouch for.
REUSABLE_ENV_FAMILIES = frozenset({"classic_control", "toy_text"})


def reuses_envs(spec: EnvSpec) -> bool:
    """Whether an env of this spec may play one episode after another (`REUSABLE_ENV_FAMILIES`);
    else each episode gets an env that played nothing before."""
    return spec.family in REUSABLE_ENV_FAMILIES


@dataclass(frozen=True)
class SeedSet(Sequence[int]):
    """Per-episode reset seeds plus the name of the set they come from, and, on the private set,
    the key of its action seeds (derived from the salt where the salt is: whoever runs the
    episodes elsewhere, a Ray node say, gets the key with the seeds, never the salt)."""

    name: str
    seeds: tuple[int, ...]
    action_key: bytes | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i):  # type: ignore[override]
        return self.seeds[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self.seeds)


def public_seeds(n: int) -> SeedSet:
    """Seeds `BASE_SEED + i`: published, used by local runs and the demo."""
    return SeedSet(PUBLIC, tuple(BASE_SEED + i for i in range(n)))


def private_seeds(n: int, salt: str | bytes | None = None) -> SeedSet:
    """Seeds nobody can train on: seed i = the first 31 bits (big-endian) of
    HMAC-SHA256(key=salt, msg=f"evaluator/protocol-v{PROTOCOL_VERSION}/seed/{i}").

    `salt` defaults to the `EVALUATOR_PRIVATE_SALT` env var (a deployment secret). Anyone with the
    salt reproduces the seeds; without it they cannot be guessed from published results.
    """
    if salt is None:
        salt = os.environ.get(PRIVATE_SALT_ENV)
    if not salt:
        raise ValueError(f"Private seeds need a secret salt: set {PRIVATE_SALT_ENV}.")
    key = salt.encode() if isinstance(salt, str) else bytes(salt)
    seeds = []
    for i in range(n):
        msg = f"evaluator/protocol-v{PROTOCOL_VERSION}/seed/{i}".encode()
        digest = hmac.new(key, msg, hashlib.sha256).digest()
        seeds.append(int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF)
    return SeedSet(PRIVATE, tuple(seeds), hmac.new(key, b"action-seeds", hashlib.sha256).digest())


@dataclass
class EpisodeResults:
    """Per-episode outcomes, aligned with `episode_indices` (indices into the full seed list)."""

    env_key: str
    seed_set: str
    n_episodes: int  # size of the whole evaluation, of which this run may be a part
    episode_indices: list[int]
    seeds: list[int]
    returns: list[float]
    lengths: list[int]
    n_slots: int = N_SLOTS
    protocol_version: int = PROTOCOL_VERSION
    deterministic: bool = True

    @classmethod
    def merge(cls, parts: Iterable[EpisodeResults]) -> EpisodeResults:
        """Join runs of disjoint index subsets of one evaluation, ordered by episode index."""
        parts = list(parts)
        if not parts:
            raise ValueError("nothing to merge")
        head = parts[0]
        for p in parts[1:]:
            same = (p.env_key, p.seed_set, p.n_episodes, p.n_slots, p.protocol_version,
                    p.deterministic)
            if same != (head.env_key, head.seed_set, head.n_episodes, head.n_slots,
                        head.protocol_version, head.deterministic):
                raise ValueError("cannot merge results of different evaluations")
        rows = sorted(
            (i, s, r, n) for p in parts
            for i, s, r, n in zip(p.episode_indices, p.seeds, p.returns, p.lengths, strict=True)
        )
        idx = [r[0] for r in rows]
        if len(set(idx)) != len(idx):
            raise ValueError("overlapping episode indices")
        return cls(
            head.env_key, head.seed_set, head.n_episodes, idx, [r[1] for r in rows],
            [r[2] for r in rows], [r[3] for r in rows], head.n_slots, head.protocol_version,
            head.deterministic,
        )


def _seed_set_name(seeds: Sequence[int], n: int) -> str:
    if isinstance(seeds, SeedSet):
        return seeds.name
    return PUBLIC if tuple(int(s) for s in seeds[:n]) == public_seeds(n).seeds else CUSTOM


def action_seed(env_seed: int, secret: bytes | None = None) -> int:
    """The per-episode seed of a stochastic policy's draws: HMAC-SHA256 of the episode's env seed,
    keyed with the private salt on the private seed set. A player cannot invert it: a plain hash
    of a 31-bit seed could be searched exhaustively within one evaluation's budget."""
    key = secret or f"evaluator/protocol-v{PROTOCOL_VERSION}/public-action-seeds".encode()
    digest = hmac.new(key, f"action-seed/{int(env_seed)}".encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big")


def _action_secret(seeds: Sequence[int]) -> bytes | None:
    """The key of a private seed set's action seeds (None on the public set: a public key)."""
    if not (isinstance(seeds, SeedSet) and seeds.name == PRIVATE):
        return None
    if seeds.action_key:
        return seeds.action_key
    salt = os.environ.get(PRIVATE_SALT_ENV)
    if not salt:
        raise ValueError(f"private seeds without their action key: set {PRIVATE_SALT_ENV} where they are chosen")
    return hmac.new(salt.encode(), b"action-seeds", hashlib.sha256).digest()


def window_slots(spec: EnvSpec, n_run: int) -> int:
    """Envs (episodes in flight) of a run of `n_run` episodes: up to `MAX_WINDOW`, one batch for
    the narrow families."""
    cap = N_SLOTS if spec.family in NARROW_WINDOW_FAMILIES else MAX_WINDOW
    return max(0, min(cap, n_run, MAX_CALL_ROWS))


def window_rows(spec: EnvSpec, n_run: int) -> int:
    """Rows of every actor call of such a run: its envs rounded up to whole policy batches."""
    return max(1, -(-window_slots(spec, n_run) // N_SLOTS)) * N_SLOTS


class EpisodeRecorder(Protocol):
    """Watches one episode as it is scored (the replay): `frame(env)` after its reset and after
    each of its steps, `finish(episode_return, length)` at its end. It never raises."""

    def frame(self, env: gym.Env) -> None: ...

    def finish(self, episode_return: float, length: int) -> None: ...


def run_episodes(
    policy: Policy | Actor,
    spec: EnvSpec,
    *,
    n_episodes: int | None = None,
    seeds: Sequence[int] | None = None,
    episode_indices: Iterable[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    recorder: EpisodeRecorder | None = None,
) -> EpisodeResults:
    """Run episodes `episode_indices` (default: all) of an `n_episodes` evaluation.

    `n_episodes` defaults to the spec's (or to `len(seeds)`), `seeds` to `public_seeds`. Each
    slot takes the next pending index in the given order; the result is in that order too.
    `progress(done, total)` is called after each episode. `recorder` watches the first episode
    of this run (slot 0's env renders for it). Raises InvalidActionError.
    """
    if n_episodes is None:
        n_episodes = len(seeds) if seeds is not None else spec.n_episodes
    if seeds is None:
        seeds = public_seeds(n_episodes)
    if len(seeds) < n_episodes:
        raise ValueError(f"{len(seeds)} seeds for {n_episodes} episodes")
    indices = list(range(n_episodes)) if episode_indices is None else [
        int(i) for i in episode_indices
    ]
    if len(set(indices)) != len(indices) or any(not 0 <= i < n_episodes for i in indices):
        raise ValueError(f"episode_indices must be distinct and in [0, {n_episodes})")

    actor = as_actor(policy)
    secret = None if spec.deterministic else _action_secret(seeds)
    ep_seeds = {i: int(seeds[i]) for i in indices}
    returns: dict[int, float] = {}
    lengths: dict[int, int] = {}
    pending = deque(indices)
    watched = indices[0] if recorder is not None and indices else None
    n_envs = window_slots(spec, len(indices))
    n_rows = window_rows(spec, len(indices))
    envs = make_vector_env(spec, n_envs) if n_envs else []
    if watched is not None:  # slot 0 plays the watched episode first: its env renders
        envs[0].close()
        envs[0] = make_env(spec, render_mode="rgb_array")
    try:
        space = envs[0].action_space if envs else None
        running: list[int | None] = [None] * len(envs)
        batch: Any = None  # the rows of every call, each slot's written in place (`row_buffer`)
        ret = [0.0] * len(envs)
        steps = [0] * len(envs)
        live = np.zeros(n_rows, dtype=bool)
        started = np.zeros(n_rows, dtype=bool)
        action_seeds = np.zeros(n_rows, dtype=np.uint64)
        positions = np.arange(n_rows, dtype=np.uint8) % N_SLOTS  # each episode's row in its policy batch

        reuse = reuses_envs(spec)
        played = [False] * len(envs)

        def start(slot: int) -> None:
            nonlocal batch
            if not pending:
                running[slot] = None
                live[slot] = False
                if batch is not None:  # its last episode's final observation is nobody's business
                    put_row(batch, slot, None)
                return
            i = pending.popleft()
            if played[slot] and not reuse:  # a fresh env: the episode owes nothing to the ones before
                envs[slot].close()
                envs[slot] = make_env(spec)
            played[slot] = True
            first, _ = envs[slot].reset(seed=ep_seeds[i])
            if batch is None:
                batch = row_buffer(first, n_rows)
            put_row(batch, slot, first)
            running[slot], ret[slot], steps[slot] = i, 0.0, 0
            live[slot], started[slot] = True, True
            positions[slot] = i % N_SLOTS
            # Deterministic protocols send no action seed at all: nothing derived from a seed
            # reaches the policy that does not need it.
            action_seeds[slot] = 0 if spec.deterministic else action_seed(ep_seeds[i], secret)
            if i == watched:
                recorder.frame(envs[slot])

        for slot in range(len(envs)):
            start(slot)
        rows = Rows(live, started, action_seeds, positions)  # the actor reads them during its call only
        in_place = isinstance(batch, np.ndarray)  # else a dict of arrays (Dict spaces): put_row
        while live.any():
            # Rows of no live episode hold stale observations: an actor passes live rows only.
            actions = one_per_row(actor.act_rows(batch, rows, deterministic=spec.deterministic), n_rows)
            started[:] = False
            live_slots = np.flatnonzero(live).tolist()
            checked = check_actions(space, actions, live_slots)
            for k, slot in enumerate(live_slots):
                i = running[slot]
                if checked is not None:
                    action = checked[k]
                else:
                    try:
                        action = check_action(space, actions[slot])
                    except ValueError as exc:
                        raise InvalidActionError(
                            f"Episode {i}, step {steps[slot]}: the policy's "
                            f"action {_show(actions[slot])} {exc}. The agent does not fit the "
                            f"action space {space} of {spec.env_key}."
                        ) from None
                observation, reward, terminated, truncated, _ = envs[slot].step(action)
                if in_place:
                    batch[slot] = observation
                else:
                    put_row(batch, slot, observation)
                ret[slot] += float(reward)
                steps[slot] += 1
                if i == watched:
                    recorder.frame(envs[slot])
                if terminated or truncated:
                    returns[i], lengths[i] = ret[slot], steps[slot]
                    if i == watched:
                        recorder.finish(ret[slot], steps[slot])
                    if progress is not None:
                        progress(len(returns), len(indices))
                    start(slot)
    finally:
        for env in envs:
            env.close()

    return EpisodeResults(
        env_key=spec.env_key,
        seed_set=_seed_set_name(seeds, n_episodes),
        n_episodes=n_episodes,
        episode_indices=indices,
        seeds=[ep_seeds[i] for i in indices],
        returns=[returns[i] for i in indices],
        lengths=[lengths[i] for i in indices],
        deterministic=spec.deterministic,
    )
