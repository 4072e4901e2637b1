"""The work of one Ray task, on whichever node Ray placed it: the same confined referee/player
evaluation a local queue worker runs (`evaluator.evaluate`), with the seeds chosen by the head.

Why plain data in and out: the task gets a repo id and a commit sha (the node downloads the
agent from the Hub itself, into a download cache slot of its own: no snapshot travels through
Ray's object store), the seed list and the episode count; it returns the EvalResult as a dict
and the replay's bytes, and the head records both. It never touches the store or the queue,
and it never sees the private salt: it is removed from the task process's environment, so a
node's stray `EVALUATOR_PRIVATE_SALT` cannot change which seeds are played either.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NODE_CACHE_ENV = "RL_LEADERBOARD_RAY_CACHE"  # where a node keeps its download cache slots

_slot = None  # this Ray worker process's download cache slot (leased on its first task)


def node_cache_dir() -> Path:
    """A node's download cache: $RL_LEADERBOARD_RAY_CACHE, else ~/.cache/rl-leaderboard/ray."""
    given = os.environ.get(NODE_CACHE_ENV)
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rl-leaderboard" / "ray"


def _cache(cache_dir: str | None, max_bytes: int | None):
    global _slot
    if _slot is None:
        from .cache import lease_slot

        _slot = lease_slot(Path(cache_dir) if cache_dir else node_cache_dir(), max_bytes)
    return _slot


def run_evaluation(task: dict[str, Any]) -> dict[str, Any]:
    """Evaluate `task` (see `ray_backend.task_of`); {"result": EvalResult dict, "replay": bytes
    or None, "node": host, "pid": the task process, "seconds": wall time}."""
    from evaluator.evaluate import evaluate
    from evaluator.runner import PRIVATE_SALT_ENV, SeedSet

    os.environ.pop(PRIVATE_SALT_ENV, None)
    started = time.monotonic()
    slot = _cache(task.get("cache_dir"), task.get("cache_max_bytes"))
    replay = None
    with tempfile.TemporaryDirectory(prefix="rl-ray-replay-") as tmp:
        video = Path(tmp) / "replay.mp4" if task.get("video") else None
        result = evaluate(task["repo_id"], revision=task["revision"], env_id=task.get("env_id"),
                          episodes=task.get("episodes"), endpoint=task.get("endpoint"), token=task.get("token"),
                          cache_dir=slot.path, video_path=video,
                          seeds=SeedSet(task["seed_set"], tuple(task["seeds"]),
                                        bytes.fromhex(task["action_key"]) if task.get("action_key") else None))
        if result.video and Path(result.video).is_file():
            replay = Path(result.video).read_bytes()
    try:
        slot.used(task["repo_id"], result.revision or task["revision"])
        slot.trim()
    except Exception:  # a full or odd cache folder must not lose the result
        log.warning("could not trim the download cache %s", slot.path, exc_info=True)
    return {"result": result.to_dict(), "replay": replay, "node": socket.gethostname(), "pid": os.getpid(),
            "seconds": time.monotonic() - started}
