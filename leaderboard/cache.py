"""A queue worker's download cache, kept under a size cap.

Every worker process leases a cache slot of its own, `CACHE/slot-{k}` (an exclusive `flock` on
`CACHE/slot-{k}.lock`, released by the kernel when the process ends, however it ends), so no
other process ever reads, writes or evicts in it while it holds it: eviction is safe with any
number of workers sharing the store, and a restarted worker reuses a freed slot (and its cached
files). `CACHE` is `WorkerConfig.cache_dir`, else `STORE/cache`.

After each evaluation the slot is trimmed to `max_bytes` (`RL_LEADERBOARD_CACHE_MAX_BYTES`,
default 2 GiB), least recently used revisions first: a revision is one snapshot folder of the
`huggingface_hub` cache layout (`models--ns--name/snapshots/{sha}`) with the blobs only it uses.
The revision just evaluated is the most recently used: it stays when it fits, and goes too when
it alone is over the cap. So a worker's disk use stays under about `max_bytes` plus one
evaluation's files, whatever it evaluates.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

CACHE_DIR = "cache"
MAX_CACHE_BYTES_ENV = "RL_LEADERBOARD_CACHE_MAX_BYTES"
DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3
MAX_SLOTS = 1024


def default_max_bytes() -> int:
    value = os.environ.get(MAX_CACHE_BYTES_ENV)
    return int(value) if value else DEFAULT_MAX_CACHE_BYTES


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def _size(path: Path) -> int:
    """Bytes held under `path` (regular files; symlinks count once, as their blobs)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if not os.path.islink(os.path.join(dirpath, name)):
                    total += st.st_size
    return total


@dataclass
class CacheSlot:
    """One worker's private download cache (see the module docstring)."""

    path: Path
    max_bytes: int
    _lock: IO | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def used(self, repo_id: str | None, revision: str | None) -> None:
        """Mark a revision as just used (the newest in the LRU order)."""
        if not repo_id or not revision:
            return
        snapshot = self.path / _repo_folder(repo_id) / "snapshots" / revision
        with contextlib.suppress(OSError):
            now = time.time()
            os.utime(snapshot, (now, now))

    def size(self) -> int:
        return _size(self.path)

    def trim(self) -> int:
        """Evict least recently used revisions until the slot holds at most `max_bytes`;
        returns the bytes it holds then."""
        total = self.size()
        if total <= self.max_bytes:
            return total
        revisions = []
        for repo in self.path.glob("models--*"):
            for snapshot in (repo / "snapshots").glob("*"):
                with contextlib.suppress(OSError):
                    revisions.append((snapshot.stat().st_mtime, str(snapshot), repo, snapshot))
        for _, _, repo, snapshot in sorted(revisions):
            if total <= self.max_bytes:
                break
            _evict(repo, snapshot)
            total = self.size()
        if total > self.max_bytes:  # leftovers outside any revision (interrupted downloads)
            for repo in self.path.glob("models--*"):
                _drop_unreferenced_blobs(repo)
            total = self.size()
        return total


def _evict(repo: Path, snapshot: Path) -> None:
    shutil.rmtree(snapshot, ignore_errors=True)
    _drop_unreferenced_blobs(repo)
    snapshots = repo / "snapshots"
    if not snapshots.is_dir() or not any(snapshots.iterdir()):
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(repo.parent / ".locks" / repo.name, ignore_errors=True)


def _drop_unreferenced_blobs(repo: Path) -> None:
    referenced = set()
    for dirpath, _dirnames, filenames in os.walk(repo / "snapshots"):
        for name in filenames:
            link = Path(dirpath) / name
            if link.is_symlink():
                with contextlib.suppress(OSError):
                    referenced.add(link.resolve())
    blobs = repo / "blobs"
    if blobs.is_dir():
        for blob in blobs.iterdir():
            if blob.resolve() not in referenced:
                with contextlib.suppress(OSError):
                    blob.unlink()


def lease_slot(base: Path, max_bytes: int | None = None) -> CacheSlot:
    """The first cache slot under `base` that no live process holds, held until `close()` or
    the end of this process."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    for k in range(MAX_SLOTS):
        handle = open(base / f"slot-{k}.lock", "a")  # noqa: SIM115 - held for the slot's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        path = base / f"slot-{k}"
        path.mkdir(exist_ok=True)
        return CacheSlot(path, default_max_bytes() if max_bytes is None else max_bytes, handle)
    raise RuntimeError(f"every one of the {MAX_SLOTS} download cache slots under {base} is held")
