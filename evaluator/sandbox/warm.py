"""Warm players: the referee's side of `evaluator.sandbox.zygote`.

Why: a cold player costs ~2-3 s of start-up per evaluation; a zygote pays it once and forks a
jailed player per job in milliseconds. Equal safety to a cold player, point by point:

- confinement: the zygote runs under the same bubblewrap namespaces, binds and environment as a
  cold player; each job's fork takes the job's own leased uid (`uids.lease_uid`, held here for
  the job's life), drops every capability, applies the job's rlimits and loads the same seccomp
  filter before reading a byte of the agent (`jail.py`);
- files: bwrap binds files when a sandbox starts, so a job's files travel as bytes over the
  control socket into a fresh random folder of the zygote's private tmpfs, root-owned and
  read-only to the job, capped at `zygote.MAX_JOB_BYTES` (larger agents get a cold player);
- isolation between jobs: one job at a time per zygote; its fork is reaped (SIGKILL after a
  grace) and /tmp emptied before the next; the fork never holds the control socket, only its
  own three pipes (created here per job, so nothing a job wrote can be read as the next job's);
- retirement: after any failure (an error, a timeout, a crash, a status other than 0, anything
  left behind in /tmp or SysV IPC) and after `max_jobs` jobs, the zygote is killed with its
  whole sandbox; code-bearing formats (TorchScript) never get a warm player.

`EVALUATOR_WARM_PLAYERS=0` turns the pool off (every evaluation then gets a cold player);
`EVALUATOR_WARM_JOBS` sets `max_jobs`. Results are the same either way (tests/evaluator/test_warm.py).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .. import errors
from .confine import BWRAP, confinement
from .launcher import run_in_launcher
from .process import DEFAULT_MEMORY_BYTES, ConfinedProcess, _pump_stderr, limits_json
from .uids import lease_uid
from .wire import HEADER
from .zygote import MAX_CONTROL_BYTES, MAX_JOB_BYTES, MAX_JOB_FILES

log = logging.getLogger("evaluator.sandbox")

ENABLED_ENV = "EVALUATOR_WARM_PLAYERS"
MAX_JOBS_ENV = "EVALUATOR_WARM_JOBS"
DEFAULT_MAX_JOBS = 200
ZYGOTE_MODULE = ("-m", "evaluator.sandbox.zygote")
ZYGOTE_CPU_SECONDS = 24 * 3600.0  # its own CPU (imports, bookkeeping); each job has its own limit
START_SECONDS = 120.0
CONTROL_SECONDS = 30.0
END_GRACE = 5.0


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1").strip() not in ("0", "false", "no", "off")


def max_jobs() -> int:
    try:
        return max(1, int(os.environ.get(MAX_JOBS_ENV, DEFAULT_MAX_JOBS)))
    except ValueError:
        return DEFAULT_MAX_JOBS


class WarmUnavailable(Exception):
    """This job or machine gets a cold player instead (not an evaluation failure)."""


def job_payload(root: str, names: Sequence[str]) -> list[tuple[str, str, int]]:
    """(name, host path, size) of a job's files, checked as the cold path checks them; raises
    WarmUnavailable past the warm cap (the cold player binds them instead)."""
    from .referee import downloaded_file

    out, total = [], 0
    if len(names) > MAX_JOB_FILES:
        raise WarmUnavailable("too many files")
    for name in names:
        name, host, info = downloaded_file(Path(root), name)
        total += info.st_size
        if total > MAX_JOB_BYTES:
            raise WarmUnavailable("the files exceed the warm cap")
        out.append((name, host, info.st_size))
    return out


class Zygote:
    """One started zygote: its sandbox process and its control socket."""

    def __init__(self, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.jobs = 0
        self.broken = False
        self.memory_bytes = memory_bytes
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = ours
        self.proc = ConfinedProcess(ZYGOTE_MODULE, memory_bytes=memory_bytes, cpu_seconds=ZYGOTE_CPU_SECONDS,
                                    zygote=True, stdin_fd=theirs.fileno())
        try:
            run_in_launcher(self.proc.__enter__)
        finally:
            theirs.close()
        try:
            tag, _ = self.receive(START_SECONDS)
            if tag != b"RDY1":
                raise errors.SandboxCrashError(f"the warm player's zygote answered {tag!r} instead of ready")
        except BaseException:
            self.close()
            raise
        self.started = time.monotonic()

    # ------------------------------------------------------------------ the control channel
    def send(self, tag: bytes, doc: dict, fds: Sequence[int] = ()) -> None:
        body = json.dumps(doc).encode()
        self.sock.settimeout(CONTROL_SECONDS)
        data = HEADER.pack(tag, len(body)) + body
        if fds:
            sent = socket.send_fds(self.sock, [data], list(fds))
            if sent < len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)

    def receive(self, timeout: float) -> tuple[bytes, dict]:
        self.sock.settimeout(timeout)
        try:
            head = self._exact(HEADER.size)
            tag, length = HEADER.unpack(head)
            if length > MAX_CONTROL_BYTES:
                raise errors.SandboxCrashError("the warm player's zygote sent an oversized message")
            return tag, json.loads(self._exact(length))
        except (OSError, ValueError, EOFError) as err:  # socket.timeout is an OSError
            self.proc.drain_stderr(0.5)
            raise errors.SandboxCrashError(
                f"the warm player's zygote did not answer ({type(err).__name__}: {err}). "
                f"{self.proc.stderr_tail[-1500:]}".strip()) from None

    def _exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = self.sock.recv(n - got)
            if not chunk:
                raise EOFError("the zygote closed its channel")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def kill(self) -> None:
        self.broken = True
        self.proc.kill()

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError):
            self.sock.close()
        self.proc.close()


class WarmJob:
    """One job on a zygote: what `referee.RemotePlayer` needs of a player process (its pipes,
    start time, kill, wait, stderr), backed by the job's jailed fork."""

    def __init__(self, zygote: Zygote, files: list[tuple[str, str, int]], *, uid: int | None,
                 cpu_seconds: float) -> None:
        self.zygote = zygote
        self.conf = zygote.proc.conf
        self.root = f"/tmp/job-{secrets.token_hex(16)}"
        self.tail: collections.deque[str] = collections.deque(maxlen=60)
        self.status: int | None = None
        self.cpu: float | None = None
        self.ended = False
        obs_r, self._obs_w = os.pipe()  # referee -> player
        self._act_r, act_w = os.pipe()  # player -> referee
        err_r, err_w = os.pipe()
        self._err = os.fdopen(err_r, "rb")
        self.started = time.monotonic()
        try:
            limits = json.loads(limits_json(zygote.memory_bytes, cpu_seconds, own_uid=uid is not None))
            zygote.send(b"JOB1", {"root": self.root, "files": [[n, size] for n, _, size in files], "uid": uid,
                                  "limits": limits}, fds=(obs_r, act_w, err_w))
        except BaseException:
            self.ended = True
            self._close_fds()
            raise
        finally:
            for fd in (obs_r, act_w, err_w):
                os.close(fd)
        self._reader = threading.Thread(target=_pump_stderr, args=(self._err, self.tail), daemon=True)
        self._reader.start()
        try:
            self._send_files(files)
            tag, doc = zygote.receive(CONTROL_SECONDS)
            if tag != b"FRK1":
                raise errors.SandboxCrashError(f"the warm player could not take the job: {doc.get('message', tag)!r}")
        except BaseException:
            self.ended = True
            zygote.kill()
            self._close_fds()
            raise
        zygote.jobs += 1

    def _send_files(self, files: list[tuple[str, str, int]]) -> None:
        self.zygote.sock.settimeout(CONTROL_SECONDS)
        for _, host, size in files:
            with open(host, "rb") as handle:
                data = handle.read(size + 1)
            if len(data) != size:
                raise errors.CorruptFileError("a downloaded file changed size while it was sent to the player")
            self.zygote.sock.sendall(data)

    @property
    def hello_root(self) -> str:
        return self.root

    def channel_fds(self) -> tuple[int, int]:
        return self._obs_w, self._act_r

    def kill(self) -> None:
        self.zygote.kill()  # the fork dies with the zygote's sandbox (its pid namespace)

    def end(self, grace: float = END_GRACE) -> int | None:
        """Reap the fork (SIGKILL after `grace`); its status (-signal when killed), None when the
        zygote did not answer (then it is killed)."""
        if self.ended:
            return self.status
        self.ended = True
        if self.zygote.broken:
            return None
        try:
            self.zygote.send(b"END1", {"grace": grace})
            tag, doc = self.zygote.receive(grace + CONTROL_SECONDS)
        except (errors.SandboxCrashError, OSError):
            self.zygote.kill()
            return None
        if tag != b"STA1":
            self.zygote.kill()
            return None
        self.status, self.cpu = int(doc["status"]), float(doc["cpu"])
        if self.status != 0 or doc.get("recycle"):
            self.zygote.broken = True
        return self.status

    def wait(self, timeout: float) -> int | None:
        return self.end(grace=timeout)

    def drain_stderr(self, timeout: float = 5.0) -> None:
        self._reader.join(timeout=timeout)

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self.tail)

    def _close_fds(self) -> None:
        for fd in (self._obs_w, self._act_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._obs_w = self._act_r = -1

    def close(self) -> None:
        """Close the job's pipes (the player sees the end of its input), then reap it."""
        self._close_fds()
        self.end()
        self.drain_stderr(1.0)
        with contextlib.suppress(OSError):
            self._err.close()


class WarmPool:
    """Idle zygotes of this process, taken one job at a time (thread-safe)."""

    def __init__(self, max_idle: int = 4) -> None:
        self.max_idle = max_idle
        self._idle: list[Zygote] = []
        self._lock = threading.Lock()
        self.started = 0  # zygotes started (for tests and benchmarks)
        self.last_job_cpu: float | None = None  # CPU seconds of the last job's fork (bench/)

    @contextlib.contextmanager
    def job(self, files: list[tuple[str, str, int]], *, cpu_seconds: float) -> Iterator[WarmJob]:
        """A warm job on an idle (or new) zygote, under a uid leased for it; the zygote goes back
        to the pool only when the job ended cleanly."""
        zygote = self._take_idle()
        if zygote is None:
            try:
                zygote = Zygote()
            except errors.SandboxCrashError as err:  # the cold player says what is wrong, if anything
                log.warning("a warm player could not start (%s): a cold player plays this job", err)
                raise WarmUnavailable(str(err)) from None
            self.started += 1
        ok = False
        try:
            with contextlib.ExitStack() as stack:
                uid = stack.enter_context(lease_uid()) if zygote.proc.conf.drops_root else None
                try:
                    job = WarmJob(zygote, files, uid=uid, cpu_seconds=cpu_seconds)
                except BaseException as err:
                    zygote.close()  # before the uid lease ends
                    if isinstance(err, OSError):  # the channel broke: this zygote is gone, not the agent's fault
                        raise errors.SandboxCrashError(
                            f"the warm player could not take the job ({type(err).__name__}: {err})") from None
                    raise
                try:
                    yield job
                    ok = True
                finally:
                    job.close()  # reaped before the uid lease ends
                    self.last_job_cpu = job.cpu
                    if zygote.broken:  # its sandbox (and the fork in it) gone before the uid is free again
                        zygote.close()
                ok = ok and job.status == 0
        finally:
            self._put_back(zygote, ok)

    def _take_idle(self) -> Zygote | None:
        """An idle zygote still alive (one that died while idle is closed and skipped)."""
        while True:
            with self._lock:
                zygote = self._idle.pop() if self._idle else None
            if zygote is None or zygote.proc.proc.poll() is None:
                return zygote
            log.warning("an idle warm player had exited (status %s): a new one takes the job",
                        zygote.proc.proc.returncode)
            zygote.close()

    def _put_back(self, zygote: Zygote, ok: bool) -> None:
        if ok and not zygote.broken and zygote.jobs < max_jobs():
            with self._lock:
                if len(self._idle) < self.max_idle:
                    self._idle.append(zygote)
                    return
        zygote.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for zygote in idle:
            zygote.close()


_POOL: WarmPool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> WarmPool:
    """This process's pool (zygotes die with it: `--die-with-parent`)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            import atexit

            _POOL = WarmPool()
            atexit.register(_POOL.close)
        return _POOL


def usable(agent_format: str, player_args: tuple[str, ...], default_args: tuple[str, ...]) -> bool:
    """Whether a job may get a warm player: pool on, full confinement, a data-only format, the
    real player program."""
    from ..agents import CODE_BEARING

    if not enabled() or agent_format in CODE_BEARING or tuple(player_args) != tuple(default_args):
        return False
    try:
        return confinement().kind == BWRAP
    except RuntimeError:
        return False
