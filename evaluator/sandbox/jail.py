"""What a warm player's fork does to itself before it reads a byte of the agent: the cold
player's confinement, applied from inside (stdlib only).

A cold player gets its uid drop from `setpriv` and its seccomp filter from bubblewrap, before
its program starts. A warm job is a fork of the zygote (`evaluator.sandbox.zygote`), which
runs in the same bubblewrap sandbox but keeps uid 0 with only CAP_SETUID, CAP_SETGID and
CAP_SETPCAP (root only; `confine.ZYGOTE_CAPS`). The fork then, in this order:

1. drops every capability from its bounding set (CAP_SETPCAP), clears its groups and takes the
   job's own leased uid and `nogroup` (all three ids), which clears every capability it had;
   verified from `/proc/self/status` (a fork that still holds any capability exits);
2. sets `no_new_privs` and the parent-death signal (SIGKILL);
3. applies the job's rlimits (memory, CPU, files, processes per its own uid: as cold);
4. loads the player's seccomp filter (`seccomp.program()`: no fork, no namespaces, no
   setsid, ...) with `prctl(PR_SET_SECCOMP)`: the same BPF program bubblewrap loads.

Without root (a user namespace) steps 1's uid change is skipped, as for a cold player there.
Any failure raises `JailError`: the fork exits without loading anything.
"""

from __future__ import annotations

import ctypes
import os
import signal

from .limits import apply_limits

PR_SET_PDEATHSIG = 1
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2
SANDBOX_GID = 65534
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"


class JailError(RuntimeError):
    pass


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg: int | ctypes.c_void_p = 0) -> None:
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise JailError(f"prctl({option}) failed: {os.strerror(err)}")


def capabilities() -> dict[str, int]:
    """The capability sets of this process, from /proc/self/status."""
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Cap"):
                key, _, value = line.partition(":")
                out[key] = int(value.strip(), 16)
    return out


def drop_to(uid: int) -> None:
    """Become `uid` with no capability left (as root in the zygote's sandbox)."""
    libc = _libc()
    try:
        last = int(open(CAP_LAST_CAP_FILE).read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        _prctl(libc, PR_CAPBSET_DROP, cap)
    os.setgroups([])
    os.setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (SANDBOX_GID,) * 3:
        raise JailError("the uid drop did not take")
    left = {k: v for k, v in capabilities().items() if v}
    if left:
        raise JailError(f"capabilities left after the uid drop: {left}")


def install_seccomp(program: bytes) -> None:
    """Load a BPF program (struct sock_filter[]) for this thread and every thread it creates."""
    libc = _libc()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise JailError(f"the seccomp filter could not be loaded: {os.strerror(ctypes.get_errno())}")


def enter(uid: int | None, limits: dict[str, int]) -> None:
    """The whole jail, in order (module docstring). `uid` None: no uid of its own (no root)."""
    from .seccomp import program

    if uid is not None:
        drop_to(uid)
    libc = _libc()
    _prctl(libc, PR_SET_NO_NEW_PRIVS, 1)
    _prctl(libc, PR_SET_PDEATHSIG, signal.SIGKILL)
    apply_limits(limits)
    code = program()
    if code is not None:
        install_seccomp(code)
