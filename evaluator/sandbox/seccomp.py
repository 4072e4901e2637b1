"""The player's seccomp filter: one process with threads, nothing more.

Why: rlimits are per process and per uid, and the scheduler shares CPU per session. A player
that may fork can hold `nproc x RLIMIT_AS` of memory and, with `setsid`, win CPU from the
evaluations beside it; one that may create user namespaces can mount an unbounded tmpfs. A
player never needs any of that (it loads an agent and answers frames), so the filter, loaded by
bubblewrap (`--seccomp FD`) before the player starts, refuses:

- new processes: `fork`, `vfork`, and `clone` without `CLONE_THREAD` (threads stay allowed);
  `clone3` answers ENOSYS, so the C library falls back to `clone` for threads;
- new namespaces and mounts: `unshare`, `setns`, `mount`, `umount2`, `pivot_root`, `chroot`;
- `setsid`, `setpgid` (no scheduling group of its own), `ptrace`, `process_vm_writev`;
- System V IPC objects (`shmget`, `semget`, `msgget`) and POSIX message queues (`mq_open`):
  they outlive the process in its IPC namespace, which the jobs of one warm zygote share, so
  they would be a channel from one job to the next (the zygote also retires itself when it
  finds SysV objects left behind); a player needs none of them;
- the kernel keyring (`add_key`, `request_key`, `keyctl`): a key in the user keyring belongs to
  the uid, not to the process, and outlives it and its sandbox, so a job could leave a note for
  a later job that leases the same uid (found by a red-team review);
- the 32-bit and x32 system call ABIs (their numbers differ and would skip the rules).

x86_64 only (the numbers are per architecture); elsewhere `program()` returns None and the
player runs without the filter (README, Confinement).
"""

from __future__ import annotations

import errno
import platform
import struct

_LD_ABS_W, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW = 0x7FFF_0000
_ERRNO = 0x0005_0000
_AUDIT_ARCH_X86_64 = 0xC000_003E
_X32_BIT = 0x4000_0000
_CLONE_THREAD = 0x0001_0000

# x86_64 system call numbers
_CLONE, _FORK, _VFORK, _CLONE3 = 56, 57, 58, 435
_REFUSED = {
    "ptrace": 101, "setpgid": 109, "setsid": 112, "chroot": 161, "mount": 165, "umount2": 166,
    "pivot_root": 155, "unshare": 272, "setns": 308, "process_vm_writev": 311,
    "fork": _FORK, "vfork": _VFORK,
    "shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240,
    "add_key": 248, "request_key": 249, "keyctl": 250,
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def program() -> bytes | None:
    """The compiled BPF filter (struct sock_filter[]), or None where it is not defined."""
    if platform.machine() != "x86_64":
        return None
    deny = _ERRNO | errno.EPERM
    out = [
        _insn(_LD_ABS_W, 4),  # arch
        _insn(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        _insn(_RET, deny),
        _insn(_LD_ABS_W, 0),  # syscall number
        _insn(_JGE, _X32_BIT, 0, 1),
        _insn(_RET, deny),
        _insn(_JEQ, _CLONE3, 0, 1),
        _insn(_RET, _ERRNO | errno.ENOSYS),
        _insn(_JEQ, _CLONE, 0, 4),
        _insn(_LD_ABS_W, 16),  # clone's flags (args[0], low 32 bits)
        _insn(_JSET, _CLONE_THREAD, 0, 1),
        _insn(_RET, _ALLOW),
        _insn(_RET, deny),  # reached from the flags test only
    ]
    # Each refused number: equal -> the shared deny at the end.
    refused = sorted(set(_REFUSED.values()))
    for i, nr in enumerate(refused):
        out.append(_insn(_JEQ, nr, len(refused) - i, 0))
    out.append(_insn(_RET, _ALLOW))
    out.append(_insn(_RET, deny))
    return b"".join(out)
