"""Who chooses the actions of a window's rows: an `Actor`. `LocalActor` calls a `Policy` in this
process (the confined player runs one too), `N_SLOTS` rows at a time or fused where that is
bitwise the same; the referee's `RemotePlayer` asks a confined player over the wire."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from evaluator.agents.base import Policy
from evaluator.batch_rows import take_rows
from evaluator.errors import InvalidActionError
from evaluator.protocol import N_SLOTS


@dataclass
class Rows:
    """What the actor knows of each row of a call besides its observation: whether it is live
    (padding rows' actions are discarded), whether its episode starts with this call, and its
    episode's action seed. A call has `window_rows` rows, a multiple of `N_SLOTS`."""

    live: np.ndarray  # bool (rows,)
    started: np.ndarray  # bool (rows,)
    action_seeds: np.ndarray  # uint64 (rows,)


def one_per_row(actions: Any, n: int) -> np.ndarray:
    """`actions` as an array of `n` rows; InvalidActionError saying so for any other count."""
    actions = np.asarray(actions)
    if actions.ndim == 0 or actions.shape[0] != n:
        raise InvalidActionError(
            f"The policy returned actions of shape {actions.shape} for a batch of {n} observations: "
            f"expected {n} actions, one per row.")
    return actions


class Actor(Protocol):
    def act_rows(self, obs: Any, rows: Rows, *, deterministic: bool) -> Any: ...


class LocalActor:
    """Calls a `Policy` in this process, `N_SLOTS` rows at a time: a call's live rows are cut into
    full batches (the last one padded with a copy of one of its live rows), so the policy sees
    the batch size the protocol fixes whatever the window. A stochastic policy gets one
    generator per live row, seeded from its episode's action seed when the episode starts, so
    its draws do not depend on which row, process or machine plays the episode."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rngs: list[np.random.Generator | None] = []
        self.many = getattr(policy, "act_many", None)  # deterministic calls of many rows at once
        self._batch_idx = np.zeros(N_SLOTS, dtype=np.intp)  # the rows of a one-batch call (reused)

    def _seed_rows(self, rows: Rows) -> None:
        n = len(rows.live)
        if len(self.rngs) != n:
            self.rngs = [None] * n
        for slot in range(n):
            if not rows.live[slot]:
                self.rngs[slot] = None
            elif rows.started[slot] or self.rngs[slot] is None:
                self.rngs[slot] = np.random.Generator(np.random.PCG64(int(rows.action_seeds[slot])))

    def _call(self, obs: Any, deterministic: bool, rngs: list | None) -> np.ndarray:
        if deterministic:
            return one_per_row(self.policy.act(obs, deterministic=True), N_SLOTS)
        return one_per_row(self.policy.act(obs, deterministic=False, rngs=rngs), N_SLOTS)

    def act_rows(self, obs: Any, rows: Rows, *, deterministic: bool) -> Any:
        if not deterministic:
            self._seed_rows(rows)
        n = len(rows.live)
        if n == N_SLOTS and rows.live.all():
            return self._call(obs, deterministic, None if deterministic else list(self.rngs))
        live = np.flatnonzero(rows.live)
        if not len(live):
            live = np.zeros(1, dtype=np.intp)
        if deterministic and len(live) <= N_SLOTS:
            return self._act_batch(obs, live, n)
        if deterministic and self.many is not None:
            return self._act_many(obs, live, n)
        out: np.ndarray | None = None
        for first in range(0, len(live), N_SLOTS):
            real = live[first:first + N_SLOTS]
            idx = real if len(real) == N_SLOTS else np.concatenate(
                [real, np.full(N_SLOTS - len(real), real[0], dtype=real.dtype)])
            rngs = None if deterministic else [self.rngs[i] for i in real] + [None] * (N_SLOTS - len(real))
            actions = self._call(take_rows(obs, idx), deterministic, rngs)
            if out is None:
                out = np.empty((n, *actions.shape[1:]), dtype=actions.dtype)
                out[:] = actions[0]  # rows of no episode: any valid action (discarded)
            elif actions.dtype != out.dtype or actions.shape[1:] != out.shape[1:]:
                raise InvalidActionError(
                    f"The policy returned actions of dtype {actions.dtype} and shape {actions.shape} after "
                    f"{out.dtype} and {(N_SLOTS, *out.shape[1:])}: one policy must answer alike.")
            out[real] = actions[:len(real)]
        return out

    def _act_batch(self, obs: Any, live: np.ndarray, n: int) -> np.ndarray:
        """Deterministic actions of up to `N_SLOTS` live rows: one policy call, padded with copies
        of the first (the tail of a window, where one call per round is all there is)."""
        idx = self._batch_idx
        k = len(live)
        idx[:k] = live
        idx[k:] = live[0]
        actions = self._call(take_rows(obs, idx), True, None)
        out = np.empty((n, *actions.shape[1:]), dtype=actions.dtype)
        out[:] = actions[0]  # rows of no episode: any valid action (discarded)
        out[live] = actions[:k]
        return out

    def _act_many(self, obs: Any, live: np.ndarray, n: int) -> np.ndarray:
        """The live rows (padded to whole batches with copies of the first) in one `act_many`
        call of a policy that offers it: the same actions as batch-by-batch calls, by its contract."""
        pad = -len(live) % N_SLOTS
        idx = np.concatenate([live, np.full(pad, live[0], dtype=live.dtype)]) if pad else live
        actions = one_per_row(self.many(take_rows(obs, idx), batch=N_SLOTS), len(idx))
        out = np.empty((n, *actions.shape[1:]), dtype=actions.dtype)
        out[:] = actions[0]  # rows of no episode: any valid action (discarded)
        out[live] = actions[:len(live)]
        return out


def as_actor(policy: Policy | Actor) -> Actor:
    return policy if hasattr(policy, "act_rows") else LocalActor(policy)
