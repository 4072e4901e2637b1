"""Batches of observations as rows: the runner's buffer (each slot's row written in place) and
the rows an actor picks out of it."""

from __future__ import annotations

from typing import Any

import numpy as np


def take_rows(batch: Any, idx: np.ndarray) -> Any:
    """Rows `idx` of a batch (an array, or a dict of arrays for Dict spaces)."""
    if isinstance(batch, dict):
        return {k: np.asarray(v)[idx] for k, v in batch.items()}
    return np.asarray(batch)[idx]


def row_buffer(first: Any, n: int) -> Any:
    """Room for `n` rows shaped like `first` (an array, or a dict of arrays for Dict spaces): the
    runner writes each slot's observation into its row as it arrives instead of stacking a
    batch per call."""
    if isinstance(first, dict):
        return {k: np.zeros((n, *np.shape(v)), dtype=np.asarray(v).dtype) for k, v in first.items()}
    a = np.asarray(first)
    return np.zeros((n, *a.shape), dtype=a.dtype)


def put_row(buffer: Any, slot: int, observation: Any) -> None:
    """Row `slot` of `buffer` set to `observation` (None: zeros, a row of no episode)."""
    if isinstance(buffer, dict):
        for k, rows in buffer.items():
            rows[slot] = 0 if observation is None else observation[k]
    else:
        buffer[slot] = 0 if observation is None else observation

