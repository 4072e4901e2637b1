"""Starting a confined process, watching it, ending it.

`ConfinedProcess` is one process under `confinement()`: its own leased uid (root), its limits
(applied by the process itself from the environment, first thing), stdin/stdout pipes for the
caller, stderr kept as a bounded tail for diagnostics (never parsed for anything that counts),
killed with its whole process group on exit. `run_in_sandbox` runs a program to completion
(tests, machine checks); the player (`evaluator.sandbox.referee`) keeps one open.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .. import errors
from .confine import BWRAP, bwrap_argv, confinement, environment
from .uids import lease_uid

log = logging.getLogger("evaluator.sandbox")

GiB = 1 << 30
MiB = 1 << 20
# Address space, not resident memory: importing torch alone maps ~760 MB, a CartPole evaluation
# peaks near 1.3 GB.
DEFAULT_MEMORY_BYTES = 3 * GiB
MAX_FILE_BYTES = 512 * MiB  # RLIMIT_FSIZE: any file the process writes (only its tmpfs is writable)
MAX_OPEN_FILES = 256
MAX_PROCESSES = 64  # RLIMIT_NPROC, per uid: applied only when the process has a uid of its own
MAX_OUTPUT_BYTES = 8 * MiB  # what `run_in_sandbox` keeps of a program's stdout
KILL_GRACE = 10.0


@dataclass
class SandboxRun:
    """What came back from one sandbox process run to completion."""

    returncode: int | None
    stdout: bytes
    stderr_tail: str
    timed_out: bool = False
    output_too_large: bool = False
    seconds: float = 0.0
    confinement: str = ""

    @property
    def signal(self) -> int | None:
        return exit_signal(self.returncode, self.confinement)


def exit_signal(code: int | None, kind: str) -> int | None:
    """The signal that ended a process (bwrap reports a signalled child as 128 + signal)."""
    if code is None:
        return None
    if code < 0:
        return -code
    if kind == BWRAP and 128 < code < 128 + 65:
        return code - 128
    return None


def limits_json(memory_bytes: int, cpu_seconds: float, *, own_uid: bool) -> str:
    limits = {"as": int(memory_bytes), "cpu": max(1, math.ceil(cpu_seconds)), "nofile": MAX_OPEN_FILES,
              "fsize": MAX_FILE_BYTES, "core": 0}
    if own_uid:
        limits["nproc"] = MAX_PROCESSES
    return json.dumps(limits)


def _pump_stderr(stream, tail: collections.deque) -> None:
    while True:
        line = stream.readline(8192)
        if not line:
            break
        text = line.decode("utf-8", errors="replace").rstrip("\n")
        tail.append(text[:2000])
        log.debug("sandbox: %s", text[:2000])


class ConfinedProcess:
    """`python [-P] -s -B ARGS` under this machine's confinement; use as a context manager."""

    def __init__(self, args: Sequence[str], *, memory_bytes: int, cpu_seconds: float,
                 files: Mapping[str, str] | None = None, ro_paths: Sequence[str] = (), isolated_path: bool = True,
                 single_process: bool = False, zygote: bool = False, stdin_fd: int | None = None):
        self.conf = confinement()
        self.args = list(args)
        self.memory_bytes, self.cpu_seconds = memory_bytes, cpu_seconds
        self.files, self.ro_paths = dict(files or {}), list(ro_paths)
        self.isolated_path = isolated_path
        self.single_process = single_process  # the player's seccomp filter: threads, no processes
        self.zygote = zygote  # a warm player's zygote: no uid of its own, forks jailed jobs (warm.py)
        self.stdin_fd = stdin_fd  # its control socket instead of a pipe
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self.proc: subprocess.Popen | None = None
        self.uid: int | None = None
        self._stack = contextlib.ExitStack()
        self._scratch: str | None = None
        self._reader: threading.Thread | None = None
        self.started = 0.0

    def __enter__(self) -> ConfinedProcess:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        conf = self.conf
        if conf.drops_root and not self.zygote:
            self.uid = self._stack.enter_context(lease_uid())
        env = environment(limits_json(self.memory_bytes, self.cpu_seconds, own_uid=self.uid is not None))
        # -P: no script/working directory on sys.path; -s: no user site; -B: no .pyc writes
        python = [sys.executable, *(["-P"] if self.isolated_path else []), "-s", "-B", *self.args]
        cwd = None
        pass_fds: tuple[int, ...] = ()
        if conf.kind == BWRAP:
            seccomp_fd = self._seccomp_fd() if self.single_process else None
            pass_fds = (seccomp_fd,) if seccomp_fd is not None else ()
            argv = bwrap_argv(conf, uid=self.uid, ro=self.ro_paths, files=self.files, seccomp_fd=seccomp_fd,
                              zygote=self.zygote) + python
        else:
            self._scratch = tempfile.mkdtemp(prefix="evaluator-sandbox-")
            argv = [*conf.unshare_argv, *python]
            cwd = self._scratch
            env.update(environment(env["EVALUATOR_SANDBOX_LIMITS"], home=self._scratch))
        self.started = time.monotonic()
        try:
            stdin = subprocess.PIPE if self.stdin_fd is None else self.stdin_fd
            self.proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=env, cwd=cwd, start_new_session=True, close_fds=True, pass_fds=pass_fds)
        except OSError as err:
            raise errors.SandboxCrashError(f"the sandbox process could not start: {err}") from err
        self._reader = threading.Thread(target=_pump_stderr, args=(self.proc.stderr, self.tail), daemon=True)
        self._reader.start()

    def channel_fds(self) -> tuple[int, int]:
        """(write to the process, read from it): its stdin and stdout pipes."""
        return self.proc.stdin.fileno(), self.proc.stdout.fileno()

    def _seccomp_fd(self) -> int | None:
        """An open file holding the player's BPF filter, for bwrap's `--seccomp` (closed on exit)."""
        from .seccomp import program

        code = program()
        if code is None:
            return None
        fd = os.memfd_create("evaluator-seccomp", 0)
        self._stack.callback(os.close, fd)
        os.write(fd, code)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None when still running after `timeout` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def drain_stderr(self, timeout: float = 5.0) -> None:
        """Wait until everything the process wrote on stderr is in `tail` (after it exited)."""
        if self._reader is not None:
            self._reader.join(timeout=timeout)

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self.tail)

    def close(self) -> None:
        """Kill the process group (if still running), reap it, free the uid and scratch folder."""
        if self.proc is not None:
            self.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=KILL_GRACE)
            if self._reader is not None:
                self._reader.join(timeout=KILL_GRACE)
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                with contextlib.suppress(OSError, ValueError, AttributeError):  # no stdin pipe: a zygote
                    stream.close()
        if self._scratch:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        self._stack.close()


def run_in_sandbox(args: Sequence[str], *, stdin: bytes = b"", timeout: float, memory_bytes: int,
                   ro_paths: Sequence[str] = (), files: Mapping[str, str] | None = None,
                   max_output: int = MAX_OUTPUT_BYTES) -> SandboxRun:
    """Run `python ARGS` (the project's interpreter) confined to completion; never raises for what
    the program does. `files` maps paths inside the sandbox to host files (read-only)."""
    proc = ConfinedProcess(args, memory_bytes=memory_bytes, cpu_seconds=timeout + 10, files=files,
                           ro_paths=ro_paths, isolated_path=False)
    run = SandboxRun(None, b"", "", confinement=proc.conf.kind)
    with proc:
        chunks: list[bytes] = []

        def pump() -> None:
            size = 0
            while chunk := proc.proc.stdout.read1(65536):
                size += len(chunk)
                if size > max_output:
                    run.output_too_large = True
                    proc.kill()
                    return
                chunks.append(chunk)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.proc.stdin.write(stdin)
            proc.proc.stdin.close()
        if proc.wait(timeout) is None:
            run.timed_out = True
            proc.kill()
            proc.wait(KILL_GRACE)
        reader.join(timeout=KILL_GRACE)
        run.stdout = b"".join(chunks)
        run.returncode = proc.proc.returncode
        run.seconds = time.monotonic() - proc.started
    run.stderr_tail = proc.stderr_tail
    return run


def run_snippet(code: str, *, files: Mapping[str, str | os.PathLike] | None = None, timeout: float = 60.0,
                memory_bytes: int = DEFAULT_MEMORY_BYTES) -> SandboxRun:
    """Run a tiny Python program under exactly the confinement of a player (same namespaces,
    binds, uid, environment and limits): for tests and for checking a machine's sandbox."""
    prelude = ("from evaluator.sandbox.limits import apply_limits_from_env as _limits; _limits(); "
               "del _limits\n")
    mapped = {inside: os.path.realpath(host) for inside, host in (files or {}).items()}
    return run_in_sandbox(["-c", prelude + code], timeout=timeout, memory_bytes=memory_bytes, files=mapped)
