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
    (padding rows' actions are discarded), whether its episode starts with this call, its
    episode's action seed, and the position its episode takes in a policy batch (episode i:
    i % N_SLOTS; None: each row's own index % N_SLOTS). A call has `window_rows` rows, a
    multiple of `N_SLOTS`."""

    live: np.ndarray  # bool (rows,)
    started: np.ndarray  # bool (rows,)
    action_seeds: np.ndarray  # uint64 (rows,)
    positions: np.ndarray | None = None  # uint8 (rows,), each < N_SLOTS


def row_positions(rows: Rows, n: int) -> np.ndarray:
    """Each of the `n` rows' position in its policy batch: `rows.positions`, checked (n integers
    below N_SLOTS: ValueError otherwise), or each row's own index % N_SLOTS when it gives none."""
    if rows.positions is None:
        return np.arange(n, dtype=np.intp) % N_SLOTS
    positions = np.asarray(rows.positions)
    if positions.shape != (n,) or positions.dtype.kind not in "iu" or (positions >= N_SLOTS).any():
        raise ValueError(f"row positions must be {n} integers below {N_SLOTS}")
    return positions


def placement(live: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(idx, at): the rows of whole policy batches, `idx` (a multiple of N_SLOTS long: batch c is
    idx[c*N_SLOTS:(c+1)*N_SLOTS]), in which live row live[j] sits at index at[j], at its
    position in its batch; unused places hold a copy of a live row (their actions are
    discarded). As few batches as the most live rows sharing one position."""
    pos = positions[live].astype(np.intp)
    if len(live) <= N_SLOTS and len(np.unique(pos)) == len(live):  # one batch (the tail of a window)
        idx = np.full(N_SLOTS, live[0], dtype=np.intp)
        idx[pos] = live
        return idx, pos
    order = np.argsort(pos, kind="stable")
    ordered = pos[order]
    rank = np.arange(len(live)) - np.searchsorted(ordered, ordered)  # how many before it share its position
    at = np.empty(len(live), dtype=np.intp)
    at[order] = rank * N_SLOTS + ordered
    idx = np.full((int(rank.max()) + 1) * N_SLOTS, live[0], dtype=np.intp)
    idx[at] = live
    return idx, at


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
    """Calls a `Policy` in this process, `N_SLOTS` rows at a time: a call's live rows are placed
    in full batches, each at its episode's position (`placement`; unused places padded with a
    copy of a live row), so the policy sees the batch size the protocol fixes and each episode
    its row of the batch, whatever the window. A stochastic policy gets one generator per live
    row, seeded from its episode's action seed when the episode starts, so its draws do not
    depend on which row, process or machine plays the episode."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.rngs: list[np.random.Generator | None] = []
        self.many = getattr(policy, "act_many", None)  # deterministic calls of many rows at once
        self._last_key: tuple | None = None  # the last call's live rows and positions
        self._last: tuple = ()  # and what `_placed` made of them

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

    def _placed(self, rows: Rows) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(live rows, `placement` of them, whether that is the call's own 8 rows as they are),
        kept while the live rows and their positions stay the same (most rounds of a window:
        episodes start and end only now and then)."""
        n = len(rows.live)
        key = (rows.live.tobytes(), None if rows.positions is None else np.asarray(rows.positions).tobytes())
        if self._last_key != key:
            positions = row_positions(rows, n)
            live = np.flatnonzero(rows.live)
            whole = n == N_SLOTS and len(live) == n and (positions == np.arange(n)).all()
            if not len(live):
                live = np.zeros(1, dtype=np.intp)
            self._last_key, self._last = key, (live, *placement(live, positions), whole)
        return self._last

    def act_rows(self, obs: Any, rows: Rows, *, deterministic: bool) -> Any:
        if not deterministic:
            self._seed_rows(rows)
        live, idx, at, whole = self._placed(rows)
        if whole:
            return self._call(obs, deterministic, None if deterministic else list(self.rngs))
        if deterministic and len(idx) == N_SLOTS:  # one batch: the tail of a window
            actions = self._call(take_rows(obs, idx), True, None)
        elif deterministic and self.many is not None:
            # One call of every batch where the policy can fuse them: the same actions, by its contract.
            actions = one_per_row(self.many(take_rows(obs, idx), batch=N_SLOTS), len(idx))
        else:
            actions = self._batch_by_batch(obs, idx, at, deterministic)
        out = np.empty((len(rows.live), *actions.shape[1:]), dtype=actions.dtype)
        out[:] = actions[0]  # rows of no episode: any valid action (discarded)
        out[live] = actions[at]
        return out

    def _batch_by_batch(self, obs: Any, idx: np.ndarray, at: np.ndarray, deterministic: bool) -> np.ndarray:
        placed = np.zeros(len(idx), dtype=bool)
        placed[at] = True  # padding places draw nothing
        parts = []
        for first in range(0, len(idx), N_SLOTS):
            batch = idx[first:first + N_SLOTS]
            rngs = None if deterministic else [
                self.rngs[r] if placed[first + k] else None for k, r in enumerate(batch.tolist())]
            parts.append(self._call(take_rows(obs, batch), deterministic, rngs))
            if parts[-1].dtype != parts[0].dtype or parts[-1].shape != parts[0].shape:
                raise InvalidActionError(
                    f"The policy returned actions of dtype {parts[-1].dtype} and shape {parts[-1].shape} after "
                    f"{parts[0].dtype} and {parts[0].shape}: one policy must answer alike.")
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def as_actor(policy: Policy | Actor) -> Actor:
    return policy if hasattr(policy, "act_rows") else LocalActor(policy)
