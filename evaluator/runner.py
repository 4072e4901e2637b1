"""Protocol v1: seeded, batched episodes whose per-episode returns do not depend on how the work
is split (over slots, processes or machines).

Why each rule:
- Episode i always starts from `reset(seed=seeds[i])`, whichever slot runs it.
- The policy is always called on a full batch of `N_SLOTS` rows (idle slots padded with a copy
  of a live observation, their actions discarded): torch's CPU kernels give bitwise different
  outputs for 1-3 rows than for >= 4, but the same output for a row at any fixed batch size.
- Returns are summed in float64 in step order.
So same revision + protocol + library versions + CPU kind = the same returns, bit for bit.
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
from gymnasium import spaces

from evaluator.agents.base import Policy
from evaluator.envs import EnvSpec, make_env, make_vector_env
from evaluator.errors import InvalidActionError

# Protocol constants: changing any of them changes results, so it bumps PROTOCOL_VERSION.
PROTOCOL_VERSION = 1
BASE_SEED = 10_000  # public seed set: episode i starts from reset(seed=BASE_SEED + i)
N_SLOTS = 8  # batch size of every policy call (>= 4, see module docstring)
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20_240_601
PRIVATE_SALT_ENV = "EVALUATOR_PRIVATE_SALT"

PUBLIC = "public"
PRIVATE = "private"
CUSTOM = "custom"  # seeds given explicitly that are neither set (not rankable)


def protocol_constants() -> dict[str, int]:
    """The constants a result is stamped with."""
    return {
        "protocol_version": PROTOCOL_VERSION,
        "base_seed": BASE_SEED,
        "n_slots": N_SLOTS,
        "bootstrap_resamples": BOOTSTRAP_RESAMPLES,
        "bootstrap_seed": BOOTSTRAP_SEED,
    }


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


def _show(a: np.ndarray) -> str:
    return np.array2string(np.asarray(a), threshold=20, precision=6)


def check_action(space: gym.Space, action: Any) -> Any:
    """Return `action` in the form `env.step` takes, or raise ValueError saying what is wrong."""
    a = np.asarray(action)
    if a.dtype == object:
        raise ValueError("is not numeric")
    if isinstance(space, spaces.Discrete):
        if a.shape != ():
            raise ValueError(f"has shape {a.shape}, expected a scalar")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"has dtype {a.dtype}, expected an integer")
        v = int(a)
        if not space.start <= v < space.start + space.n:
            raise ValueError(f"is outside {space}")
        return v
    if isinstance(space, spaces.Box):
        if a.shape != space.shape:
            raise ValueError(f"has shape {a.shape}, expected {space.shape}")
        if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            raise ValueError("is not a finite number")
        cast = a.astype(space.dtype)
        if not (np.all(np.isfinite(cast)) and np.all(cast >= space.low)
                and np.all(cast <= space.high)):
            raise ValueError(f"is outside {space}")
        return cast
    if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
        if a.shape != space.shape:
            raise ValueError(f"has shape {a.shape}, expected {space.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"has dtype {a.dtype}, expected integers")
        cast = a.astype(space.dtype)
        if not space.contains(cast):
            raise ValueError(f"is outside {space}")
        return cast
    if not space.contains(action):
        raise ValueError(f"is outside {space}")
    return action


def check_actions(space: gym.Space, actions: np.ndarray, slots: Sequence[int]) -> list[Any] | None:
    """`check_action` for the rows `slots` of a batch at once (Discrete and Box spaces): the
    same values `check_action` returns, or None when a row fails or the space is another kind
    (the caller then checks row by row, which names the first bad row)."""
    a = actions
    if not slots or a.dtype == object:
        return None
    rows = a[list(slots)]
    if isinstance(space, spaces.Discrete):
        if a.ndim != 1 or a.dtype.kind not in "iu":
            return None
        values = rows.tolist()  # a few Python ints: cheaper to check here than with numpy calls
        low, high = int(space.start), int(space.start) + int(space.n)
        return values if all(low <= v < high for v in values) else None
    if isinstance(space, spaces.Box):
        if a.shape[1:] != space.shape or not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(rows)):
            return None
        cast = rows.astype(space.dtype)
        if not (np.all(np.isfinite(cast)) and np.all(cast >= space.low) and np.all(cast <= space.high)):
            return None
        return list(cast)
    return None


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


@dataclass
class Rows:
    """What the policy call knows of each of the `N_SLOTS` rows besides its observation: whether it
    is live (padding rows' actions are discarded), whether its episode starts with this call, and
    its episode's action seed."""

    live: np.ndarray  # bool (N_SLOTS,)
    started: np.ndarray  # bool (N_SLOTS,)
    action_seeds: np.ndarray  # uint64 (N_SLOTS,)


class Actor(Protocol):
    def act_rows(self, obs: Any, rows: Rows, *, deterministic: bool) -> Any: ...


class LocalActor:
    """Calls a `Policy` in this process. A stochastic policy gets one generator per live row,
    seeded from its episode's action seed when the episode starts, so its draws do not depend on
    which slot, process or machine plays the episode."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rngs: list[np.random.Generator | None] = [None] * N_SLOTS

    def act_rows(self, obs: Any, rows: Rows, *, deterministic: bool) -> Any:
        if deterministic:
            return self.policy.act(obs, deterministic=True)
        for slot in range(N_SLOTS):
            if not rows.live[slot]:
                self.rngs[slot] = None
            elif rows.started[slot] or self.rngs[slot] is None:
                self.rngs[slot] = np.random.Generator(np.random.PCG64(int(rows.action_seeds[slot])))
        return self.policy.act(obs, deterministic=False, rngs=list(self.rngs))


def as_actor(policy: Policy | Actor) -> Actor:
    return policy if hasattr(policy, "act_rows") else LocalActor(policy)


class EpisodeRecorder(Protocol):
    """Watches one episode as it is scored (the replay): `frame(env)` after its reset and after
    each of its steps, `finish(episode_return, length)` at its end. It never raises."""

    def frame(self, env: gym.Env) -> None: ...

    def finish(self, episode_return: float, length: int) -> None: ...


def stack_observations(observations: Sequence[Any]) -> Any:
    """One batch from per-slot observations: an array, or a dict of arrays for Dict spaces."""
    if isinstance(observations[0], dict):
        return {k: np.stack([np.asarray(o[k]) for o in observations]) for k in observations[0]}
    return np.stack([np.asarray(o) for o in observations])


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
    n_envs = min(N_SLOTS, len(indices))
    envs = make_vector_env(spec, n_envs) if n_envs else []
    if watched is not None:  # slot 0 plays the watched episode first: its env renders
        envs[0].close()
        envs[0] = make_env(spec, render_mode="rgb_array")
    try:
        space = envs[0].action_space if envs else None
        running: list[int | None] = [None] * len(envs)
        obs: list[Any] = [None] * len(envs)
        ret = [0.0] * len(envs)
        steps = [0] * len(envs)
        live = np.zeros(N_SLOTS, dtype=bool)
        started = np.zeros(N_SLOTS, dtype=bool)
        action_seeds = np.zeros(N_SLOTS, dtype=np.uint64)

        def start(slot: int) -> None:
            if not pending:
                running[slot] = None
                live[slot] = False
                return
            i = pending.popleft()
            obs[slot], _ = envs[slot].reset(seed=ep_seeds[i])
            running[slot], ret[slot], steps[slot] = i, 0.0, 0
            live[slot], started[slot] = True, True
            # Deterministic protocols send no action seed at all: nothing derived from a seed
            # reaches the policy that does not need it.
            action_seeds[slot] = 0 if spec.deterministic else action_seed(ep_seeds[i], secret)
            if i == watched:
                recorder.frame(envs[slot])

        for slot in range(len(envs)):
            start(slot)
        while any(i is not None for i in running):
            pad = next(o for o, i in zip(obs, running, strict=True) if i is not None)
            batch = stack_observations(
                [o if i is not None else pad for o, i in zip(obs, running, strict=True)]
                + [pad] * (N_SLOTS - len(envs))
            )
            actions = actor.act_rows(batch, Rows(live.copy(), started.copy(), action_seeds.copy()),
                                     deterministic=spec.deterministic)
            started[:] = False
            actions = np.asarray(actions)
            if actions.ndim == 0 or actions.shape[0] != N_SLOTS:
                raise InvalidActionError(
                    f"The policy returned actions of shape {actions.shape} for a batch of "
                    f"{N_SLOTS} observations: expected {N_SLOTS} actions, one per row."
                )
            live_slots = [slot for slot, i in enumerate(running) if i is not None]
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
                obs[slot], reward, terminated, truncated, _ = envs[slot].step(action)
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
