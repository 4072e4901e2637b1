"""panda-gym (course unit 6: A2C on PandaReachDense, Dict observations, VecNormalize).

`import panda_gym` registers its v3 ids. PyBullet prints its build banner and arguments with C
`printf` on file descriptor 1 when a physics client connects (buffered by libc when stdout is a
pipe): with `--json`, stdout must carry one JSON document only, so env creation runs with fd 1
pointed at stderr and libc's buffers flushed before it is pointed back.

The RL Zoo's older agents name `PandaReach-v1` (panda-gym 1.x, on gym) and the course's earlier
editions `PandaReachDense-v2` (panda-gym 2.x): aliased to v3, the same task with the same Dict
observation keys and 50-step limit. Measured against panda-gym 1.1.1 in a throwaway venv (it
needs gym 0.21 and numpy<2; scripts/panda_drift.py): the simulation agrees (a reaching
controller's 50-step return to 1e-3), but v3 ends an episode at success where v1 ran all 50
steps, so dense returns are higher here: such agents get a drift note (evaluator.drift).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import gymnasium as gym


def register_panda() -> None:
    with quiet_stdout():
        import panda_gym  # noqa: F401 - registers the Panda* ids


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Point fd 1 at stderr (C-level prints included) for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        _flush_c_stdio()  # C printf is buffered (a pipe is not a tty): flush it while fd 1 is stderr
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdio() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):  # no libc symbols here: nothing buffered we could flush
        pass


def make_panda(env_id: str, **kwargs: Any) -> gym.Env:
    register_panda()
    with quiet_stdout():
        return gym.make(env_id, **kwargs)
