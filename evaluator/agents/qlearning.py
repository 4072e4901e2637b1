"""Q-learning agents of the Deep RL course (unit 2): `q-learning.pkl`, a pickled dict with
`env_id`, `max_steps`, `n_eval_episodes`, `eval_seed`, hyperparameters and `qtable` (a numpy
array `(n_states, n_actions)`), plus `map_name` / `slippery` for FrozenLake.

It goes through the one restricted unpickler with numpy's array, dtype and scalar stand-ins
only (plain containers need no global). The table must be numeric, finite and shaped for the
env; actions are greedy, ties to the lowest index (`np.argmax`, as the course's
`greedy_policy`). The course caps episodes at `max_steps` (99); the protocol keeps the env's own
time limit (FrozenLake 100 or 200, Taxi 200): a passing agent finishes well before either.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from evaluator.agents.base import AgentFiles, LoadedAgent
from evaluator.agents.pickle_numpy import NUMPY_ALLOWLIST, to_array
from evaluator.envs import resolve_env
from evaluator.errors import CorruptFileError, EvaluationError, InvalidWeightsError, SpaceMismatchError
from evaluator.pickle_scan import PickleScan
from evaluator.restricted_pickle import restricted_load
from evaluator.text import clean_text

QLEARNING_FILE = "q-learning.pkl"
MAX_QTABLE_BYTES = 16 * 1024 * 1024
MAX_CELLS = 1_000_000
ALLOWLIST: dict[tuple[str, str], Any] = dict(NUMPY_ALLOWLIST)
_HINT = " (a Q-learning pickle holds only numpy arrays, numbers and plain containers)"


def _table(value: Any) -> np.ndarray:
    what = f"{QLEARNING_FILE}: `qtable`"
    if isinstance(value, list):  # a table of Python lists is plain data too
        if not all(isinstance(row, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
                   for row in value):
            raise CorruptFileError(f"{what} is a list, but not of rows of numbers.")
        try:
            table = np.asarray(value, dtype=np.float64)
        except ValueError as err:
            raise CorruptFileError(f"{what} has rows of different lengths.") from err
    else:
        table = to_array(value, what)
    if table.ndim != 2:
        raise CorruptFileError(f"{what} has shape {table.shape}: expected (n_states, n_actions).")
    if table.size > MAX_CELLS:
        raise CorruptFileError(f"{what} has {table.size:,} cells (limit {MAX_CELLS:,}).")
    table = table.astype(np.float64)
    if not np.all(np.isfinite(table)):
        raise InvalidWeightsError(f"{what} holds NaN or infinite values.")
    return table


def read_qtable(raw: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    """(Q-table as float64, the dict's plain entries) from `q-learning.pkl` bytes; nothing runs."""
    model = restricted_load(raw, ALLOWLIST, what=QLEARNING_FILE, max_bytes=MAX_QTABLE_BYTES, hint=_HINT)
    if not isinstance(model, dict) or "qtable" not in model:
        raise CorruptFileError(f"{QLEARNING_FILE} is not the course's model dict (no `qtable` key).")
    table = _table(model["qtable"])
    plain = {k: v for k, v in model.items()
             if isinstance(k, str) and k != "qtable" and isinstance(v, (str, int, float, bool, type(None)))}
    return table, plain


class QTablePolicy:
    """Greedy actions from the table (deterministic whatever the protocol asks: no draws)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def act(self, obs: np.ndarray, *, deterministic: bool = True, rngs: Any = None) -> np.ndarray:
        states = np.asarray(obs).astype(np.int64).reshape(-1)
        return np.argmax(self.table[states], axis=1).astype(np.int64)


def load_qlearning(files: AgentFiles, observation_space: gym.Space, action_space: gym.Space) -> LoadedAgent:
    """The course's Q-table for the env's spaces (Discrete x Discrete, shape (n_states, n_actions))."""
    if not (isinstance(observation_space, gym.spaces.Discrete) and isinstance(action_space, gym.spaces.Discrete)):
        raise SpaceMismatchError(
            f"A Q-table needs Discrete observations and actions; the env has {observation_space} and {action_space}.")
    path = files.path(files.agent_file)
    try:
        if path.stat().st_size > MAX_QTABLE_BYTES:
            from evaluator.errors import TooLargeError

            raise TooLargeError(f"{QLEARNING_FILE} is {path.stat().st_size:,} bytes (limit {MAX_QTABLE_BYTES:,}).")
        raw = path.read_bytes()
    except OSError as err:
        raise CorruptFileError(f"cannot read {QLEARNING_FILE}: {err}") from None
    table, plain = read_qtable(raw)
    expected = (int(observation_space.n), int(action_space.n))
    if table.shape != expected:
        raise SpaceMismatchError(
            f"The Q-table is {table.shape[0]} states x {table.shape[1]} actions; this env has {expected[0]} x "
            f"{expected[1]} (the pickle says env_id {clean_text(plain.get('env_id'), 60)!r}, map_name "
            f"{clean_text(plain.get('map_name'), 20)!r}).")
    env_id = plain.get("env_id")
    details = {"qtable_shape": list(table.shape),
               "pickle_env_id": clean_text(env_id, 60) if isinstance(env_id, str) else None,
               "course_max_steps": plain.get("max_steps")}
    return LoadedAgent(QTablePolicy(table), "q-learning", "qlearning", details)


# ---------------------------------------------------------------------------------------------
# The env, from the pickle's opcodes (trusted side: nothing decoded) and the repo's env tag

_FROZEN = "FrozenLake-v1"


def course_env_id(scan: PickleScan, stated: str | None) -> str | None:
    """The env id to evaluate: the repo's (card, tag, name), made precise for FrozenLake by the
    pickle's `map_name` / `slippery` (the course writes `slippery` only when False; older
    notebooks did not write it at all). A precise stated id that the pickle explicitly
    contradicts (another map, or `slippery` False against a slippery tag) is a `space_mismatch`."""
    items = scan.items
    pickled = items.get("env_id") if isinstance(items.get("env_id"), str) else None
    map_name = items.get("map_name") if isinstance(items.get("map_name"), str) else None
    slippery = items.get("slippery") if isinstance(items.get("slippery"), bool) else None
    base = stated or pickled
    if base is None or not base.startswith(_FROZEN) or map_name is None:
        return base
    if base == _FROZEN:  # the bare id says nothing of map or slipperiness: the pickle does
        return f"{_FROZEN}-{map_name}" + ("-no_slippery" if slippery is False else "")
    if not base.startswith(f"{_FROZEN}-"):
        return base
    try:
        kwargs = resolve_env(base).eval_env_kwargs
    except EvaluationError:
        return base  # an id outside the table fails later with the list of supported ids
    if kwargs.get("map_name") != map_name or (slippery is not None and kwargs.get("is_slippery") != slippery):
        raise SpaceMismatchError(
            f"The repo says {base!r} but its q-learning.pkl was trained on map {clean_text(map_name, 20)!r}"
            f"{', not slippery' if slippery is False else ''}: fix the card's env tag.")
    return base
