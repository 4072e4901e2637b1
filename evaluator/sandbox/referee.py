"""The referee: the trusted side of an evaluation.

`play(job)` owns everything that makes a score: the envs, the env seeds, stepping, rewards,
episode bookkeeping, the wrappers (decided from the repo's files parsed here, as data), and the
replay, rendered during the scored run of episode 0. The player, a confined process
(`evaluator.sandbox.player`), is asked for one thing: actions for a batch of observations. Its
answers are frames of a size fixed by the action space, read with deadlines and checked inside
the space by the runner; anything else ends the evaluation (`invalid_output`, `timeout`,
`sandbox_crash`, `memory_limit`). So nothing a player does can change a score except through
the actions it returns.

Stateful agents: a data-only format is stateless by construction (its player maps each row to
an action with fixed weights), so its episodes may be split over several players. A
code-bearing format may keep state across calls: it is always played by ONE player, in the
protocol's canonical order, so its result does not depend on how the caller splits the work
(`evaluator.evaluate.run_job` enforces it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .. import errors
from ..actors import row_positions
from ..agents import CODE_BEARING
from ..envs import make_env, resolve_env
from ..job import Job, JobOutcome, describe, recorded_outcome
from ..runner import N_SLOTS, Rows, run_episodes, window_rows
from ..text import clean_text  # the one sanitiser (also used where repo strings enter)
from . import warm, wire
from .confine import SNAPSHOT_MOUNT, confinement
from .limits import mentions_allocation_failure
from .process import DEFAULT_MEMORY_BYTES, ConfinedProcess, exit_signal

STARTUP_SECONDS = 120.0  # interpreter, imports, agent load: until the player says READY
ACT_SECONDS = 60.0  # the longest one policy call may take
PER_STEP_SECONDS = 0.004  # BipedalWalker: 0.3-0.7 ms/step measured on a loaded 2-core VM
REPLAY_STEP_SECONDS = 0.05  # render + encode one frame
DEFAULT_MAX_EPISODE_STEPS = 1_000  # envs without a TimeLimit
PLAYER_MODULE = ("-m", "evaluator.sandbox.player")
log = logging.getLogger("evaluator.sandbox")

_ERROR_CLASSES: dict[str, type[errors.EvaluationError]] = {
    cls.code.value: cls
    for cls in (errors.NoAgentError, errors.UnsupportedFormatError, errors.UnsafeContentError,
                errors.CorruptFileError, errors.SpaceMismatchError, errors.InvalidWeightsError,
                errors.InvalidActionError, errors.TooLargeError, errors.MemoryLimitError)
}


def max_episode_steps(env_id: str) -> int:
    """The step limit of the env the job runs (from gymnasium's registry: no env is built)."""
    import gymnasium as gym

    spec = resolve_env(env_id)
    try:
        steps = gym.spec(spec.eval_env_id).max_episode_steps
    except Exception:  # an env the registry lacks fails later, when it is made, with its reason
        steps = None
    steps = spec.eval_env_kwargs.get("max_episode_steps", spec.max_episode_steps or steps)
    return int(steps) if steps else DEFAULT_MAX_EPISODE_STEPS


def job_timeout(job: Job) -> float:
    """Wall-clock seconds for `job`: start-up + every step its episodes may take (+ the replay)."""
    steps = max_episode_steps(job.env_id)
    episodes = len(job.episode_indices) if job.episode_indices is not None else job.n_episodes
    budget = STARTUP_SECONDS + episodes * steps * PER_STEP_SECONDS
    if job.video_path:
        budget += steps * REPLAY_STEP_SECONDS
    return budget


def _memory_words(text: str) -> bool:
    return "memoryerror" in text.lower() or mentions_allocation_failure(text)


class RemotePlayer:
    """The referee's end of the channel: an `Actor` for the runner whose actions come from the
    confined player, within deadlines."""

    def __init__(self, proc: ConfinedProcess, obs_space: Any, act_space: Any, *, budget: float,
                 rows: int = N_SLOTS) -> None:
        self.proc = proc
        self.rows = rows  # rows of every call (the hello tells the player)
        self.obs_layout = wire.observation_layout(obs_space)
        self.act_layout = wire.action_layout(act_space)
        self.deadline = proc.started + budget
        self.budget = budget
        self.seq = 0
        self.calls = 0
        self.wfd, self.rfd = proc.channel_fds()
        self._pending = b""  # bytes read ahead of the frame being parsed (at most one action frame's)
        self._readahead = wire.HEADER.size + self.act_layout.batch_bytes(rows)
        # Every OBS frame is written into this one buffer, through views of its parts.
        self._frame = bytearray(wire.HEADER.size + wire.obs_frame_bytes(self.obs_layout, rows))
        self._flags, self._seeds, self._obs = wire.decode_obs_body(
            memoryview(self._frame)[wire.HEADER.size:], self.obs_layout, rows, copy=False)
        self._pollers = {}
        for fd, event in ((self.wfd, select.POLLOUT), (self.rfd, select.POLLIN)):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
            poller = select.poll()
            poller.register(fd, event | select.POLLHUP | select.POLLERR)
            self._pollers[(fd, event)] = poller

    # ------------------------------------------------------------------ the channel, with deadlines
    def _wait(self, fd: int, event: int, until: float, what: str) -> None:
        poller = self._pollers[(fd, event)]
        left = until - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            self._timeout(what)

    def _timeout(self, what: str) -> None:
        self.proc.kill()
        if time.monotonic() >= self.deadline:
            raise errors.EvalTimeoutError(
                f"the agent did not finish within {self.budget:.0f} s (the budget for this evaluation): it was "
                "stopped. An agent that loops forever or is far too slow fails so.")
        raise errors.EvalTimeoutError(f"the agent took too long to {what}: it was stopped")

    def _send(self, data: bytes, until: float) -> None:
        view = memoryview(data)
        while view:  # write first, wait only when the pipe is full (non-blocking fds)
            try:
                view = view[os.write(self.wfd, view):]
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                self._died()
            self._wait(self.wfd, select.POLLOUT, until, "read its observations")

    def _recv(self, n: int, until: float, what: str) -> bytes:
        """`n` bytes of the player's answer. One read takes up to a whole action frame (header and
        actions in one system call); what it takes beyond `n` is kept for the next `_recv`."""
        chunks, got = [], 0
        if self._pending:
            chunks.append(self._pending[:n])
            self._pending = self._pending[n:]
            got = len(chunks[0])
        while got < n:  # read first, wait only when nothing is there yet
            try:
                chunk = os.read(self.rfd, max(n - got, self._readahead))
            except BlockingIOError:
                self._wait(self.rfd, select.POLLIN, until, what)
                continue
            if not chunk:
                self._died()
            if len(chunk) > n - got:
                chunk, self._pending = chunk[:n - got], chunk[n - got:]
            chunks.append(chunk)
            got += len(chunk)
        if time.monotonic() > until:  # an answer that arrived late is late, even if it was ready
            self._timeout(what)
        return b"".join(chunks)

    def _died(self) -> None:
        """The player closed its end: classify how it ended (it never answered)."""
        code = self.proc.wait(5.0)
        if code is None:
            self.proc.kill()
            code = self.proc.wait(5.0)
        self.proc.drain_stderr()
        sig = exit_signal(code, self.proc.conf.kind)
        tail = " | ".join(line for line in self.proc.stderr_tail.splitlines() if line.strip())[-1500:]
        tail = clean_text(tail)
        if sig == signal.SIGXCPU:
            raise errors.EvalTimeoutError("the agent used up its CPU-time budget and was stopped")
        if _memory_words(self.proc.stderr_tail):
            raise errors.MemoryLimitError(f"the agent ran out of memory (sandbox limit): {tail}")
        if sig == signal.SIGKILL:
            raise errors.SandboxCrashError(
                "the player was killed (SIGKILL) before it answered: the system ran out of memory or an "
                f"operator stopped it. {tail}".strip())
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
            raise errors.SandboxCrashError(f"the player crashed ({name}) before it answered. {tail}".strip())
        raise errors.SandboxCrashError(f"the player exited with status {code} without an answer. {tail}".strip())

    def _answer(self, expected: bytes, until: float, what: str) -> tuple[bytes, int]:
        tag, value = wire.HEADER.unpack(self._recv(wire.HEADER.size, until, what))
        if tag == wire.ERROR:
            if value > wire.MAX_ERROR_BYTES:
                raise errors.InvalidOutputError(f"the player sent an error frame of {value} bytes: refused")
            try:
                code, message = wire.decode_error(self._recv(value, until, what))
            except ValueError as err:
                raise errors.InvalidOutputError(f"the player sent a malformed error frame ({err})") from None
            cls = _ERROR_CLASSES.get(code)
            message = clean_text(message, 4000)
            if cls is None:
                raise errors.EvaluationError(message, code=errors.ErrorCode(code))
            raise cls(message)
        if tag != expected:
            raise errors.InvalidOutputError(
                f"the player answered a frame tagged {clean_text(repr(tag), 40)} where {expected!r} was due: refused")
        return tag, value

    # ------------------------------------------------------------------ the protocol
    def handshake(self, hello: dict[str, Any]) -> None:
        until = min(self.deadline, self.proc.started + STARTUP_SECONDS)
        self._send(wire.encode_hello(hello), until)
        _, value = self._answer(wire.READY, until, "load")
        if value != 0:
            raise errors.InvalidOutputError("the player's ready frame is malformed: refused")

    def act_rows(self, obs: Any, rows: Rows, *, deterministic: bool) -> np.ndarray:
        self.seq = (self.seq + 1) & 0xFFFF_FFFF
        shape = (self.rows,)
        if rows.live.shape != shape or rows.started.shape != shape or np.shape(rows.action_seeds) != shape:
            raise ValueError(f"a call of {len(rows.live)} rows on a channel of {self.rows}")
        if rows.live.dtype != np.bool_ or rows.started.dtype != np.bool_:  # masks, never indices
            raise ValueError(f"row flags of dtype {rows.live.dtype}/{rows.started.dtype}: expected bool")
        positions = row_positions(rows, self.rows)  # each < N_SLOTS: fits the flags' position bits
        try:
            self.obs_layout.encode_into(obs, self.rows, self._obs)
        except ValueError as err:
            raise errors.SpaceMismatchError(f"the env's observations do not fit its own space: {err}") from None
        np.left_shift(positions, wire.POSITION_SHIFT, out=self._flags, casting="unsafe")
        self._flags |= rows.live  # wire.LIVE
        if rows.started.any():
            self._flags[rows.started] |= wire.EPISODE_START
        self._seeds[:] = rows.action_seeds
        wire.HEADER.pack_into(self._frame, 0, wire.OBS, self.seq)
        until = min(self.deadline, time.monotonic() + ACT_SECONDS)
        self._send(self._frame, until)
        if not self._pending:  # the answer takes a policy call: wait for it rather than read in vain
            self._wait(self.rfd, select.POLLIN, until, "choose its actions")
        _, seq = self._answer(wire.ACT, until, "choose its actions")
        if seq != self.seq:
            raise errors.InvalidOutputError(f"the player answered observation {seq}, not {self.seq}: refused")
        self.calls += 1
        return self.act_layout.decode(self._recv(self.act_layout.batch_bytes(self.rows), until, "choose its actions"),
                                      self.rows)


# ------------------------------------------------------------------------------------------ files


def _check_name(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\x00" in name or name.startswith("-"):
        raise errors.CorruptFileError(f"the repo file name {clean_text(name, 200)!r} is not a plain relative path")
    return str(path)


def downloaded_file(root: Path, name: str) -> tuple[str, str, os.stat_result]:
    """(the checked repo path, the host file it resolves to, its stat) of a job's file: a plain
    relative name, a regular file that exists; else CorruptFileError."""
    name = _check_name(name)
    host = os.path.realpath(root / name)
    try:
        info = os.stat(host)
    except OSError as err:
        raise errors.CorruptFileError(f"the downloaded file {name} is missing: {err}") from err
    if not stat.S_ISREG(info.st_mode):
        raise errors.CorruptFileError(f"the downloaded {name} is not a regular file")
    return name, host, info


def stage_files(job: Job, staging: Path) -> tuple[dict[str, str], str]:
    """(inside path -> host file, the root the player sees). Each file is bound read-only on its
    own; one the sandbox uid could not read is copied into a private staging folder first."""
    conf = confinement()
    root = Path(job.root)
    mapped: dict[str, str] = {}
    for name in job.files:
        name, host, info = downloaded_file(root, name)
        if conf.drops_root and not info.st_mode & stat.S_IROTH:
            copy = staging / name
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(host, copy)
            os.chmod(copy, 0o644)
            host = str(copy)
        mapped[f"{SNAPSHOT_MOUNT}/{name}"] = host
    if not conf.isolated_fs:  # no mount namespace: the player reads the host paths themselves
        return {}, str(root)
    return mapped, SNAPSHOT_MOUNT


# ------------------------------------------------------------------------------------------ a job


def play(job: Job, *, timeout: float | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
         progress: Callable[[int, int], None] | None = None,
         player_args: tuple[str, ...] = PLAYER_MODULE) -> JobOutcome:
    """Referee `job` against a confined player; its outcome, or a typed EvaluationError.
    `player_args` replaces the player program (tests of hostile players only)."""
    spec, algo, details = describe(job)
    try:
        conf = confinement()
    except RuntimeError as err:  # no acceptable confinement here: every evaluation fails, saying why
        raise errors.SandboxCrashError(str(err)) from None
    if job.agent_format in CODE_BEARING and not conf.runs_code:
        raise errors.UnsafeContentError(
            f"the agent is {job.agent_format!r}, a code-bearing format, and this machine offers only a weak "
            f"sandbox ({conf.kind}: {conf.note}): refused. Install bubblewrap (scripts/install_system_deps.sh).")
    budget = job_timeout(job) if timeout is None else float(timeout)
    env = make_env(spec)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    rows = window_rows(spec, job.n_episodes if job.episode_indices is None else len(job.episode_indices))

    def hello(root: str) -> dict[str, Any]:  # the wrappers and frame stack decided here, never by the player
        return {"format": job.agent_format, "agent_file": job.agent_file, "files": list(job.files), "root": root,
                "env_id": job.env_id, "deterministic": spec.deterministic, "rows": rows,
                "env_view": spec.view.to_json() if spec.view else None}

    if warm.usable(job.agent_format, player_args, PLAYER_MODULE):
        try:
            payload = warm.job_payload(job.root, job.files)
            with warm.pool().job(payload, cpu_seconds=budget + 10) as proc:
                remote = RemotePlayer(proc, obs_space, act_space, budget=budget, rows=rows)
                remote.handshake(hello(proc.hello_root))
                return recorded_outcome(job, spec, algo, details, lambda recorder: run_episodes(
                    remote, spec, n_episodes=job.n_episodes, seeds=job.seed_set_of(),
                    episode_indices=job.episode_indices, progress=progress, recorder=recorder))
        except warm.WarmUnavailable as why:  # too large for a warm player, or none could start here
            log.info("cold player for this job: %s", why)
    staging = Path(tempfile.mkdtemp(prefix="evaluator-stage-"))
    try:
        files, root = stage_files(job, staging)
        with ConfinedProcess(player_args, memory_bytes=memory_bytes, cpu_seconds=budget + 10, files=files,
                             single_process=True) as proc:
            remote = RemotePlayer(proc, obs_space, act_space, budget=budget, rows=rows)
            remote.handshake(hello(root))
            return recorded_outcome(job, spec, algo, details, lambda recorder: run_episodes(
                remote, spec, n_episodes=job.n_episodes, seeds=job.seed_set_of(), episode_indices=job.episode_indices,
                progress=progress, recorder=recorder))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
