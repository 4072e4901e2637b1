"""The queue worker: claim a request, evaluate it, record the result, end the request.

`Worker.run` is one long-lived loop (torch is imported once per process, then every request
reuses it); `run_pool` runs `concurrency` such loops as separate processes, restarts any that
dies, reports each request (one line on stderr, a progress bar on a terminal), backs the
database up on its cadence and publishes to a Hub dataset between requests when asked to.

Guarantees: an evaluation that raises, crashes or returns garbage is a `failed` request, never a
dead worker; a worker that dies (SIGKILL, OOM, power cut) stops renewing its lease, so its
request returns to `pending` and another worker takes it; transient failures (`hub_unavailable`)
are retried with backoff, everything else ends the request at once; a result is recorded only
by the worker that still holds the request's lease, in the same transaction that ends the
request (`Store.record_request`): recorded exactly once by construction.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluator.errors import ErrorCode
from evaluator.result import STATUS_FAILED, EvalResult

from .cache import CACHE_DIR, CacheSlot, lease_slot
from .progress import RequestReport
from .queue import DEFAULT_LEASE_SECONDS, TRANSIENT_CODES, Queue, Request, Status
from .store import LeaseLostError, Store, StoreError

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 5.0  # how often an idle worker looks for new requests
DEFAULT_SYNC_SECONDS = 60.0  # how often run_pool publishes to the Hub dataset (with --hub-dataset)
BACKUP_CHECK_SECONDS = 60.0  # how often run_pool checks whether a backup is due

EvaluateFn = Callable[..., EvalResult]


@dataclass
class WorkerConfig:
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    endpoint: str | None = None
    token: str | bool | None = None
    video: bool = True
    cache_dir: str | None = None  # download cache slots live here (default: STORE/cache; leaderboard.cache)
    cache_max_bytes: int | None = None  # per worker process (default: $RL_LEADERBOARD_CACHE_MAX_BYTES or 2 GiB)
    queue_options: dict[str, Any] = field(default_factory=dict)  # Queue(...) keyword arguments


@dataclass
class WorkerStats:
    finished: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0  # results dropped because the lease was lost meanwhile

    def add(self, other: WorkerStats) -> None:
        for name in ("finished", "failed", "retried", "lost"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _default_evaluate(*args, **kwargs) -> EvalResult:
    from evaluator.evaluate import evaluate

    return evaluate(*args, **kwargs)


class _Heartbeat:
    """Renews a request's lease every lease/4 seconds until the request has ended (evaluation,
    recording and the end of the request)."""

    def __init__(self, queue: Queue, request_id: int, owner: str, lease_seconds: float):
        self.queue, self.request_id, self.owner, self.lease = queue, request_id, owner, lease_seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{request_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                if not self.queue.renew(self.request_id, self.owner, lease_seconds=self.lease):
                    self.lost = True
                    return
            except Exception:  # a busy database: try again at the next beat
                log.warning("could not renew the lease of request %s", self.request_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class Worker:
    def __init__(self, store: Store | str | Path, *, config: WorkerConfig | None = None,
                 evaluate_fn: EvaluateFn | None = None, owner: str | None = None,
                 report: Callable[[RequestReport], Any] | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.config = config or WorkerConfig()
        self.queue = self.store.queue(**self.config.queue_options)
        self.evaluate_fn = evaluate_fn or _default_evaluate
        self.owner = owner or new_worker_id()
        self.report = report
        self._cache: CacheSlot | None = None

    @property
    def cache(self) -> CacheSlot:
        """This worker's download cache slot (leased on first use, kept under its size cap)."""
        if self._cache is None:
            base = Path(self.config.cache_dir) if self.config.cache_dir else self.store.root / CACHE_DIR
            self._cache = lease_slot(base, self.config.cache_max_bytes)
        return self._cache

    def _trim_cache(self, result: EvalResult | None, request: Request) -> None:
        try:
            self.cache.used(request.repo_id, (result.revision if result else None) or request.revision)
            self.cache.trim()
        except Exception:  # a full or odd cache folder must not stop the queue
            log.warning("could not trim the download cache %s", self.cache.path, exc_info=True)

    def _evaluate(self, request: Request, video_path: Path | None) -> EvalResult:
        try:
            result = self.evaluate_fn(
                request.repo_id, revision=request.revision, env_id=request.env_id, episodes=request.episodes,
                endpoint=self.config.endpoint, token=self.config.token, cache_dir=self.cache.path,
                video_path=video_path)
            if not isinstance(result, EvalResult):
                raise TypeError(f"the evaluator returned {type(result).__name__}, not an EvalResult")
        except Exception as err:  # evaluate() never raises by contract; a bug still must not kill us
            log.exception("evaluating request %s (%s) raised", request.id, request.repo_id)
            result = EvalResult(repo_id=request.repo_id, status=STATUS_FAILED, error_code=ErrorCode.INTERNAL.value,
                                error=f"internal error ({type(err).__name__}: {err}); please report it")
        if result.revision is None:
            result.revision = request.revision
        if result.env_key is None:
            result.env_key = request.env_key
        if result.repo_id is None:
            result.repo_id = request.repo_id
        return result

    def process(self, request: Request) -> Status | None:
        """Evaluate one claimed request and end it; returns its new status (None: lease lost).

        The lease is renewed until the request has ended, recording included. A repo taken
        down while its request ran (`remove`) is recorded hidden (kept in the history, never
        ranked), without its replay."""
        video_path = self.store.new_video_path() if self.config.video else None
        log.info("evaluating request %s: %s @ %s on %s", request.id, request.repo_id, request.revision[:10],
                 request.env_key)
        started, status, result = time.monotonic(), None, None
        try:
            with _Heartbeat(self.queue, request.id, self.owner, self.config.lease_seconds) as beat:
                status, result = self._process(request, video_path, beat)
            return status
        finally:
            if video_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    video_path.unlink()
            self._trim_cache(result, request)
            if self.report is not None:
                self.report(RequestReport.of(request, status, result, time.monotonic() - started))

    def _process(self, request: Request, video_path: Path | None,
                 beat: _Heartbeat) -> tuple[Status | None, EvalResult]:
        result = self._evaluate(request, video_path)
        removed = self.queue.taken_down(request.id)
        if result.error_code in TRANSIENT_CODES:
            if removed:  # the takedown ended the request; a transient failure records no row
                return Status.FAILED, result
            again = self.queue.retry(request.id, self.owner, error_code=result.error_code,
                                     error=result.error or "transient failure")
            return (again.status if again else None), result
        if removed:
            log.warning("request %s: %s was taken down during the evaluation; its result is kept hidden",
                        request.id, request.repo_id)
        elif beat.lost:
            log.warning("request %s: lease lost during the evaluation; result dropped", request.id)
            return None, result
        try:
            recorded = self.store.record_request(result, request_id=request.id, owner=self.owner,
                                                 commit_date=request.commit_date, now=self.queue.clock())
        except LeaseLostError:
            log.warning("request %s: lease lost before recording; another worker will redo it", request.id)
            return None, result
        except StoreError:  # the store needs its operator (full disk, damaged file): hand the request back
            with contextlib.suppress(Exception):
                self.queue.release(request.id, self.owner)
            raise
        except Exception as err:
            log.exception("recording the result of request %s failed", request.id)
            again = self.queue.retry(request.id, self.owner, error_code="store_error",
                                     error=f"recording the result failed ({type(err).__name__}: {err})")
            return (again.status if again else None), result
        if recorded.hidden:
            return Status.FAILED, result  # the takedown ended the request
        return (Status.FINISHED if result.finished else Status.FAILED), result

    def run(self, *, once: bool = False, stop: Any = None, max_requests: int | None = None,
            chores: Callable[[], Any] | None = None) -> WorkerStats:
        """Claim and process requests until `stop` is set (an Event), `max_requests` were done,
        or, with `once`, no request is due. `chores` runs between requests."""
        stats = WorkerStats()
        self.store.cleanup_tmp()
        done = 0
        while not (stop is not None and stop.is_set()):
            if chores is not None:
                chores()
            if max_requests is not None and done >= max_requests:
                break
            request = self.queue.claim(self.owner, lease_seconds=self.config.lease_seconds)
            if request is None:
                if once:
                    break
                (stop.wait if stop is not None else time.sleep)(self.config.poll_seconds)
                continue
            try:
                status = self.process(request)
            except KeyboardInterrupt:
                self.queue.release(request.id, self.owner)
                raise
            done += 1
            if status is None:
                stats.lost += 1
            elif status == Status.FINISHED:
                stats.finished += 1
            elif status == Status.FAILED:
                stats.failed += 1
            else:
                stats.retried += 1
        return stats


# ---------------------------------------------------------------- several processes


class _StopOrOrphaned:
    """A stop flag for a worker process that is also set when its parent has died (so a killed
    `worker --concurrency N` leaves no orphan evaluating forever)."""

    def __init__(self, stop, parent_pid: int):
        self.stop, self.parent_pid = stop, parent_pid

    def is_set(self) -> bool:
        return self.stop.is_set() or os.getppid() != self.parent_pid

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set() and time.monotonic() < deadline:
            self.stop.wait(min(1.0, max(deadline - time.monotonic(), 0.0)))
        return self.is_set()


def _child(store_dir: str, config: WorkerConfig, once: bool, stop, results, parent_pid: int,
           log_level: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s[%(process)d]: %(message)s")
    try:
        stats = Worker(store_dir, config=config, report=results.put).run(
            once=once, stop=_StopOrOrphaned(stop, parent_pid))
    except StoreError as err:  # the store needs its operator: stop every worker, say why
        results.put(str(err))
        return
    results.put(stats)


class _Chores:
    """The head's periodic work between requests: publish to the Hub dataset every
    `sync_seconds`, back the database up when due (checked every minute). A failure is logged
    and retried at the next round: it never stops the queue workers."""

    def __init__(self, store: Store, publish: Callable[[], Any] | None, sync_seconds: float):
        self.store, self.publish, self.sync_seconds = store, publish, sync_seconds
        self.last_publish = self.last_backup = -float("inf")

    def run(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.publish is not None and (force or now - self.last_publish >= self.sync_seconds):
            self.last_publish = now
            self._guarded("publishing to the Hub dataset", self.publish)
        if force or now - self.last_backup >= BACKUP_CHECK_SECONDS:
            self.last_backup = now
            self._guarded("backing up the database", self.store.maybe_backup)

    @staticmethod
    def _guarded(what: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as err:
            log.error("%s failed (retried at the next round): %s", what, err)


def run_pool(store: Store | str | Path, *, concurrency: int = 1, once: bool = False,
             config: WorkerConfig | None = None, publish: Callable[[], Any] | None = None,
             sync_seconds: float = DEFAULT_SYNC_SECONDS, stop: threading.Event | None = None,
             report: Callable[[RequestReport], Any] | None = None) -> WorkerStats:
    """Run `concurrency` workers (separate processes when more than one) until stopped or, with
    `once`, until the queue has nothing due. `report` receives one RequestReport per request.
    `publish` (a Hub dataset round) runs before, every `sync_seconds` and at the end; a backup
    of the database is made when due (at start, then checked every minute). Their failures are
    logged and retried at the next round."""
    store = store if isinstance(store, Store) else Store(store)
    config = config or WorkerConfig()
    stop = stop or threading.Event()
    chores = _Chores(store, publish, sync_seconds)
    chores.run(force=True)
    if concurrency <= 1:
        stats = Worker(store, config=config, report=report).run(once=once, stop=stop, chores=chores.run)
        chores.run(force=True)
        return stats
    context = multiprocessing.get_context("spawn")
    child_stop = context.Event()
    results = context.Queue()
    total = WorkerStats()

    def start() -> Any:
        process = context.Process(target=_child, args=(str(store.root), config, once, child_stop, results,
                                                       os.getpid(), logging.getLogger().getEffectiveLevel()),
                                  daemon=False)
        process.start()
        return process

    processes = [start() for _ in range(max(concurrency, 1))]
    fatal: list[str] = []

    def collect() -> None:
        while not results.empty():
            item = results.get()
            if isinstance(item, str):
                fatal.append(item)
                child_stop.set()
            elif isinstance(item, RequestReport):
                if report is not None:
                    report(item)
            else:
                total.add(item)

    try:
        while processes:
            for process in list(processes):
                process.join(timeout=0.2)
                if process.is_alive():
                    continue
                processes.remove(process)
                if process.exitcode != 0:
                    log.error("queue worker process %s exited with %s", process.pid, process.exitcode)
                    if not once and not stop.is_set() and not fatal:
                        processes.append(start())
            collect()
            if stop.is_set():
                child_stop.set()
            chores.run()
    except KeyboardInterrupt:
        child_stop.set()
        for process in processes:
            process.join()
        raise
    finally:
        collect()
    if fatal:
        raise StoreError(fatal[0])
    chores.run(force=True)
    return total
