"""A warm player's zygote: `python -P -s -B -m evaluator.sandbox.zygote`, started once under the
player's bubblewrap confinement (no snapshot bound, no seccomp filter: it forks), imports done
once, then one jailed fork per job.

Why a zygote: a cold player pays ~2-3 s of interpreter start-up and torch/SB3/gymnasium imports
per evaluation, more than the episodes of most agents. Forking a process that already holds
those imports costs milliseconds. The player's seccomp filter forbids fork, so the filter is
loaded in each fork instead, after its uid drop (`evaluator.sandbox.jail`).

The control channel is a unix socket on fd 0, spoken only by the referee (trusted):
    JOB1 {root, files: [[name, size], ...], uid, limits} with three file descriptors attached
         (the job's observation pipe, action pipe and stderr pipe), then the files' bytes:
         written under `root` (a fresh random folder in the private tmpfs, root-owned and
         read-only to the job), then a fork is jailed and plays the job on those pipes;
         answered FRK1 {}, or ZER1 {message} when the files could not be written.
    END1 {grace}: the job's fork is reaped (SIGKILL after `grace` seconds), its files and
         anything else written in /tmp removed; answered STA1 {status, cpu, recycle}: the exit
         status (-signal when killed), its CPU seconds, and whether this zygote should be
         retired (SysV IPC objects or tmpfs space left behind).
The job never holds the control socket: a fork can reach only its own three pipes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import sys

MAX_JOB_BYTES = 48 << 20  # of the 64 MB tmpfs; larger agents get a cold player (warm.py)
MAX_JOB_FILES = 512
MAX_CONTROL_BYTES = 1 << 20
JOB_ROOT = re.compile(r"^/tmp/job-[0-9a-f]{32}$")
LEFTOVER_BYTES = 1 << 20  # tmpfs space still used after a cleanup that retires the zygote
HEADER_SIZE = 8


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the referee closed the control channel")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def send(sock: socket.socket, tag: bytes, doc: dict) -> None:
    from .wire import HEADER

    body = json.dumps(doc).encode()
    sock.sendall(HEADER.pack(tag, len(body)) + body)


def receive(sock: socket.socket) -> tuple[bytes, dict, list[int]]:
    """(tag, document, file descriptors attached to it)."""
    from .wire import HEADER

    data, fds, _flags, _addr = socket.recv_fds(sock, HEADER_SIZE, 3)
    if not data:
        raise EOFError("the referee closed the control channel")
    data += _recv_exact(sock, HEADER_SIZE - len(data))
    tag, length = HEADER.unpack(data)
    if length > MAX_CONTROL_BYTES:
        raise ValueError(f"control message of {length} bytes")
    return tag, json.loads(_recv_exact(sock, length)), list(fds)


def _plain(name: str) -> str:
    parts = name.split("/")
    if (not name or name.startswith("/") or "\x00" in name or any(p in ("", ".", "..") for p in parts)
            or len(name) > 1024):
        raise ValueError(f"not a plain relative file name: {name[:200]!r}")
    return name


def write_files(sock: socket.socket, root: str, files: list) -> None:
    """The job's files from the channel into `root`: root-owned, read-only to everyone."""
    if not JOB_ROOT.match(root) or len(files) > MAX_JOB_FILES:
        raise ValueError("malformed job")
    sizes = [int(size) for _, size in files]
    if any(s < 0 for s in sizes) or sum(sizes) > MAX_JOB_BYTES:
        raise ValueError("the job's files exceed the warm player's cap")
    os.mkdir(root, 0o755)  # fails if it exists: nobody prepared it
    for (name, _), size in zip(files, sizes, strict=True):
        path = os.path.join(root, _plain(str(name)))
        parent = os.path.dirname(path)
        if parent != root:
            os.makedirs(parent, 0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
        try:
            left = size
            while left:
                chunk = sock.recv(min(left, 1 << 20))
                if not chunk:
                    raise EOFError("the referee closed the control channel inside a file")
                os.write(fd, chunk)
                left -= len(chunk)
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)
    for dirpath, dirnames, _ in os.walk(root):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o555)
    os.chmod(root, 0o555)


def _child(fds: list[int], uid: int | None, limits: dict) -> None:
    """The job's fork: its own pipes on 0-2 only, jailed, then the player. Never returns."""
    rfd, wfd, efd = fds
    try:
        os.dup2(efd, 2)
        os.dup2(efd, 1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in (rfd, wfd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        sys.stdout = sys.stderr
        from . import jail

        jail.enter(uid, limits)
    except BaseException as err:  # fail closed: nothing of the agent is read
        with contextlib.suppress(Exception):
            os.write(2, f"warm player: the jail failed: {type(err).__name__}: {err}\n".encode())
        os._exit(70)
    from .player import answer

    answer(rfd, wfd, preload=False, code_bearing=False)
    os._exit(0)


def _reap(pid: int, grace: float) -> tuple[int, float]:
    """(status: exit code, or -signal; CPU seconds) of the job's fork, SIGKILLed after `grace`."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(max(0.0, grace) * 1000):
            os.kill(pid, signal.SIGKILL)
        _, status, usage = os.wait4(pid, 0)
    finally:
        os.close(pidfd)
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return code, usage.ru_utime + usage.ru_stime


def _ipc_left() -> bool:
    for kind in ("shm", "msg", "sem"):
        with contextlib.suppress(OSError), open(f"/proc/sysvipc/{kind}") as table:
            if len(table.read().strip().splitlines()) > 1:
                return True
    return False


def clean_tmp(keep: set[str]) -> bool:
    """Remove everything in /tmp the zygote did not find there at start; True when clean."""
    for name in os.listdir("/tmp"):
        if name in keep:
            continue
        path = os.path.join("/tmp", name)
        if os.path.isdir(path) and not os.path.islink(path):
            for dirpath, dirnames, _ in os.walk(path):  # read-only job folders: make them removable
                for d in [dirpath, *[os.path.join(dirpath, n) for n in dirnames]]:
                    with contextlib.suppress(OSError):
                        os.chmod(d, 0o700, follow_symlinks=False)
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    usage = os.statvfs("/tmp")
    used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
    return used < LEFTOVER_BYTES and not (set(os.listdir("/tmp")) - keep)


def serve(sock: socket.socket) -> None:
    keep = set(os.listdir("/tmp"))
    send(sock, b"RDY1", {})
    child: int | None = None
    while True:
        try:
            tag, doc, fds = receive(sock)
        except EOFError:
            return
        if tag == b"JOB1" and child is None and len(fds) == 3:
            try:
                write_files(sock, str(doc["root"]), list(doc["files"]))
            except (OSError, ValueError, KeyError, TypeError, EOFError) as err:
                for fd in fds:
                    os.close(fd)
                send(sock, b"ZER1", {"message": f"{type(err).__name__}: {err}"[:500]})
                return  # the referee retires this zygote
            uid = doc.get("uid")
            child = os.fork()
            if child == 0:
                _child(fds, None if uid is None else int(uid), dict(doc.get("limits") or {}))
            for fd in fds:
                os.close(fd)
            send(sock, b"FRK1", {})
        elif tag == b"END1" and child is not None:
            status, cpu = _reap(child, float(doc.get("grace", 5.0)))
            child = None
            clean = clean_tmp(keep)
            send(sock, b"STA1", {"status": status, "cpu": cpu, "recycle": (not clean) or _ipc_left()})
        else:
            for fd in fds:
                os.close(fd)
            raise ValueError(f"unexpected control message {tag!r}")


def _preload_envs() -> None:
    """The env families' modules (Box2D, classic control, toy text), so a job's first
    `make_env` does not import them."""
    import importlib

    for module in ("gymnasium.envs.classic_control", "gymnasium.envs.toy_text", "gymnasium.envs.box2d"):
        with contextlib.suppress(Exception):
            importlib.import_module(module)


def rehearse() -> None:
    """Do once, on our own objects, what loading an agent does: torch and SB3 import much of
    what a load needs lazily, on first use (torch.optim pulls in torch._dynamo and sympy: ~1 s
    of CPU), and a fork would pay that for every job. Policies of every allowlisted MLP class
    are built for a discrete and a continuous env, filled through the weights-only loader and
    asked for actions once; any one that does not fit its spaces is skipped."""
    import io

    import numpy as np
    import torch

    from evaluator.agents.sb3 import POLICY_CLASSES, build_policy, load_state_dict_bytes
    from evaluator.agents.sb3_lean import LeanSB3
    from evaluator.envs import make_env, resolve_env

    for env_id in ("CartPole-v1", "Pendulum-v1"):
        env = make_env(resolve_env(env_id))
        spaces = (env.observation_space, env.action_space)
        env.close()
        for spec in POLICY_CLASSES.values():
            if spec.cnn:
                continue
            with contextlib.suppress(Exception):
                policy = build_policy(spec, {}, *spaces)
                buffer = io.BytesIO()
                torch.save(policy.state_dict(), buffer)
                policy.load_state_dict(load_state_dict_bytes(buffer.getvalue()))
                LeanSB3(policy).act(np.stack([spaces[0].sample()] * 8))


def main() -> None:
    sock = socket.socket(fileno=os.dup(0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from .limits import apply_limits_from_env

    apply_limits_from_env()
    # Not dumpable: without root a job's fork has the zygote's uid, and a dumpable zygote's memory
    # would be writable through /proc/PID/mem by it (a fork that could rewrite the zygote would
    # reach every later job). Forks inherit it; as root they have another uid anyway.
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise OSError(ctypes.get_errno(), "PR_SET_DUMPABLE failed")
    from .player import _preload

    _preload()
    _preload_envs()
    rehearse()
    import gc

    gc.collect()
    gc.freeze()  # what the zygote holds now is never collected in a fork: fewer pages copied
    try:
        serve(sock)
    except BaseException:
        import traceback

        traceback.print_exc()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
