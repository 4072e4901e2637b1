"""Machine-wide leases of the unprivileged uids confined processes run as (root only).

Why: a per-uid limit (RLIMIT_NPROC) is shared by every process of that uid. With one uid for
all sandboxes, an agent forking to the limit starves an honest evaluation running beside it.
So each confined process gets a uid nobody else holds: a lease is an exclusive `flock` on
`{LEASE_DIR}/{uid}.lock`, taken without blocking, held for the process's life and released by
the kernel even when the holder is killed. Two queue workers, or two threads of one, never
share a uid. The uids have no passwd entry and own no host file (nothing of the host is
writable inside the sandbox).

The search starts at a random uid, so back-to-back jobs rarely get the same one: whatever a
job could leave behind keyed by its uid (the kernel keyring, closed by the seccomp filter, is
one such place) is most likely not the next job's to find.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

UID_BASE = 2_000_000_000  # far above login users and the usual subuid ranges
UID_COUNT = 1024
LEASE_DIR_ENV = "EVALUATOR_UID_LEASE_DIR"
_WAIT_SECONDS = 120.0
_local = threading.Lock()


class NoFreeUidError(RuntimeError):
    pass


def lease_dir() -> Path:
    """The folder of lease files: root's own, not writable by anybody else."""
    configured = os.environ.get(LEASE_DIR_ENV)
    base = Path(configured) if configured else (
        Path("/run/evaluator-sandbox-uids") if os.path.isdir("/run") and os.access("/run", os.W_OK)
        else Path(tempfile.gettempdir()) / f"evaluator-sandbox-uids-{os.geteuid()}")
    base.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(base)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise NoFreeUidError(f"{base} is not a private folder of this user: refusing to lease sandbox uids there")
    return base


@contextlib.contextmanager
def lease_uid(wait: float = _WAIT_SECONDS) -> Iterator[int]:
    """Hold an unused sandbox uid for the duration of the block."""
    folder = lease_dir()
    deadline = time.monotonic() + wait
    while True:
        start = secrets.randbelow(UID_COUNT)
        with _local:  # flock is per open file: threads of one process need no extra care, but
            for offset in range(UID_COUNT):  # a lock keeps them from racing over the same files
                uid = UID_BASE + (start + offset) % UID_COUNT
                fd = os.open(folder / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                break
            else:
                fd = -1
        if fd >= 0:
            break
        if time.monotonic() > deadline:
            raise NoFreeUidError(f"all {UID_COUNT} sandbox uids are in use")
        time.sleep(0.2)
    try:
        yield uid
    finally:
        os.close(fd)  # releases the flock
