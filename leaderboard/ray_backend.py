"""`worker --backend ray`: the head claims requests from the queue and runs each evaluation as a
Ray task (`ray_task.run_evaluation`); results stream back as they finish (`ray.wait`) and the head
records them. Ray is an optional extra (`requirements-ray.txt`).

Why this split: the head is the single writer of the store and the queue (SQLite on its disk);
Ray only places work. One retry policy, the queue's: every task runs with Ray's retries off
(`max_retries=0`), the head renews the lease of every request in flight, and a task whose
process or node died (a Ray error instead of a result) goes back to the queue as `worker_lost`
(transient: retried after the queue's backoff, `max_attempts` in all). A result is recorded only
while the head holds the request's lease, in the transaction that ends the request, so nothing
is recorded twice; a killed head stops renewing, its leases expire and the next head takes the
requests again. Tasks in flight are bounded (`max_in_flight`, default the cluster's CPUs + 1).
A local Ray (no `--address`) listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluator.result import EvalResult

from .progress import RequestReport
from .queue import Request, Status
from .store import Store
from .worker import DEFAULT_SYNC_SECONDS, Worker, WorkerConfig, WorkerStats, _Chores, new_worker_id

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2  # results and replays only: agents never travel through it
WAIT_SECONDS = 1.0  # how long one ray.wait blocks before the head looks at its queue again
RESOURCES_SECONDS = 30.0  # how often the head asks Ray how many CPUs the cluster has


class RayUnavailableError(RuntimeError):
    """Ray is not installed (it is an optional extra)."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster ("ray://...", "host:port", "auto"); None: a local Ray
    num_cpus: int | None = None  # CPUs of the local Ray (default: this machine's)
    max_in_flight: int | None = None  # tasks submitted at once (default: the cluster's CPUs + 1)
    object_store_bytes: int = LOCAL_OBJECT_STORE_BYTES


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise RayUnavailableError("the Ray backend needs Ray: pip install -c constraints.txt -r requirements-ray.txt"
                                  ) from err
    return ray


@contextlib.contextmanager
def _local_ray_env() -> Iterator[None]:
    """The environment a local Ray's processes inherit while `ray.init` starts them: loopback
    only, no usage reporting, workers at the head's priority, this project importable, and never
    the private salt."""
    from evaluator.runner import PRIVATE_SALT_ENV

    saved = dict(os.environ)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node IP = 127.0.0.1: servers bind loopback only
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray runs its workers at nice 15; evaluations are this machine's work, as in a local worker.
    os.environ["RAY_worker_niceness"] = "0"
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), saved.get("PYTHONPATH")) if p)
    os.environ.pop(PRIVATE_SALT_ENV, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_ray(options: RayOptions) -> bool:
    """Join `options.address`, or start a local Ray on 127.0.0.1; True when this call started
    it (and should shut it down)."""
    if options.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is first imported
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = logging.getLogger().getEffectiveLevel() > logging.INFO
    if options.address:
        ray.init(address=options.address, log_to_driver=not quiet, configure_logging=False)
        return True
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # loopback even when ray was imported before the env var was set
    with _local_ray_env():
        ray.init(num_cpus=options.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 object_store_memory=options.object_store_bytes, log_to_driver=not quiet, configure_logging=False)
    return True


def task_of(request: Request, config: WorkerConfig) -> dict[str, Any]:
    """A request as a task: the repo id and sha the node downloads, and the seeds it plays (as
    many as the request's episodes: chosen here, where the private salt is)."""
    from evaluator.envs import FAMILY_EPISODES, resolve_env
    from evaluator.errors import UnknownEnvError
    from evaluator.evaluate import _choose_seeds

    try:
        n = request.episodes or resolve_env(request.env_key).n_episodes
    except UnknownEnvError:  # the node says why it cannot evaluate; seeds are a prefix, so the most any env plays
        n = max(FAMILY_EPISODES.values())
    seeds = _choose_seeds(n)
    return {"request_id": request.id, "repo_id": request.repo_id, "revision": request.revision,
            "env_id": request.env_id, "episodes": request.episodes, "seed_set": seeds.name,
            "seeds": list(seeds.seeds), "action_key": seeds.action_key.hex() if seeds.action_key else None,
            "endpoint": config.endpoint,
            "token": config.token if isinstance(config.token, str | bool) else None,
            "video": config.video, "cache_dir": config.cache_dir, "cache_max_bytes": config.cache_max_bytes}


class _Leases:
    """Renews the lease of every request in flight every lease/4 seconds (one thread)."""

    def __init__(self, head: RayHead):
        self.head = head
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-leases", daemon=True)

    def _run(self) -> None:
        lease = self.head.config.lease_seconds
        while not self._stop.wait(lease / 4):
            for request in list(self.head.in_flight.values()):
                try:
                    if not self.head.queue.renew(request.id, self.head.owner, lease_seconds=lease):
                        log.warning("request %s: lease lost while its task ran", request.id)
                except Exception:  # a busy database: try again at the next beat
                    log.warning("could not renew the lease of request %s", request.id, exc_info=True)

    def __enter__(self) -> _Leases:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class RayHead:
    """Claims requests, submits them as Ray tasks (bounded), records results as they come."""

    def __init__(self, store: Store, config: WorkerConfig, options: RayOptions,
                 report: Callable[[RequestReport], Any] | None = None):
        self.ray = import_ray()
        self.store, self.config, self.options, self.report = store, config, options, report
        self.owner = new_worker_id() + ":ray-head"
        self.queue = store.queue(**config.queue_options)
        self.in_flight: dict[Any, Request] = {}
        self.started: dict[Any, float] = {}
        self.stats = WorkerStats()
        self._bound: tuple[float, int] | None = None  # (when, max in flight)
        # The recording path of a local worker, fed the task's result: one way to end a request.
        self.recorder = Worker(store, config=config, owner=self.owner)
        from .ray_task import run_evaluation

        self.remote = self.ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(run_evaluation)

    def max_in_flight(self) -> int:
        """The bound on tasks in flight: given, or the cluster's CPUs + 1 (asked of Ray at most
        every `RESOURCES_SECONDS`: nodes come and go)."""
        if self.options.max_in_flight:
            return self.options.max_in_flight
        now = time.monotonic()
        if self._bound is None or now - self._bound[0] > RESOURCES_SECONDS:
            cpus = int(self.ray.cluster_resources().get("CPU", 1))
            self._bound = (now, max(cpus, 1) + 1)
        return self._bound[1]

    def submit(self, request: Request) -> None:
        ref = self.remote.remote(task_of(request, self.config))
        self.in_flight[ref] = request
        self.started[ref] = time.monotonic()

    def fill(self) -> None:
        limit = self.max_in_flight()
        while len(self.in_flight) < limit:
            request = self.queue.claim(self.owner, lease_seconds=self.config.lease_seconds)
            if request is None:
                return
            self.submit(request)

    def collect(self, timeout: float = WAIT_SECONDS) -> int:
        """Record the tasks that finished within `timeout`; how many."""
        if not self.in_flight:
            return 0
        refs = list(self.in_flight)
        ready, rest = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:  # and whatever else finished meanwhile, without waiting
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        for ref in ready:
            self._conclude(ref)
        return len(ready)

    def _conclude(self, ref: Any) -> None:
        request = self.in_flight.pop(ref)
        seconds = time.monotonic() - self.started.pop(ref)
        try:
            output = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:  # the task's process or node died, or it was cancelled
            self._lost(request, err, seconds)
            return
        result = EvalResult.from_dict(output["result"])
        status = self._record(request, result, output.get("replay"))
        self._count(status)
        if self.report is not None:
            self.report(RequestReport.of(request, status, result, seconds))

    def _lost(self, request: Request, err: Exception, seconds: float) -> None:
        what = type(err).__name__
        log.warning("request %s (%s): its Ray task died (%s); back to the queue", request.id, request.repo_id, what)
        again = self.queue.retry(request.id, self.owner, error_code="worker_lost",
                                 error=f"the Ray task evaluating it died ({what}): its process or node was lost")
        status = again.status if again else None
        self._count(status)
        if self.report is not None:
            report = RequestReport(request.id, request.repo_id, request.env_key,
                                   "lost" if status is None else str(status), None, "worker_lost", seconds)
            self.report(report)

    def _record(self, request: Request, result: EvalResult, replay: bytes | None) -> Status | None:
        """The local worker's path from a result to an ended request (retry if transient, record
        with the lease held, takedowns), with the replay written under the store first."""
        def given(*_args, video_path: Path | None = None, **_kwargs) -> EvalResult:
            if replay is not None and video_path is not None:
                video_path.write_bytes(replay)
                result.video = str(video_path)
            else:
                result.video = None
            return result

        self.recorder.evaluate_fn = given
        return self.recorder.process(request)

    def _count(self, status: Status | None) -> None:
        if status is None:
            self.stats.lost += 1
        elif status == Status.FINISHED:
            self.stats.finished += 1
        elif status == Status.FAILED:
            self.stats.failed += 1
        else:
            self.stats.retried += 1

    def give_back(self) -> None:
        """Stop at once (Ctrl-C): cancel the tasks in flight, give their requests back untouched."""
        for ref, request in list(self.in_flight.items()):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            self.queue.release(request.id, self.owner)
        self.in_flight.clear()

    def run(self, *, once: bool = False, stop: Any = None, chores: Callable[[], Any] | None = None) -> WorkerStats:
        """Until `stop` is set (then the tasks in flight are finished and recorded) or, with
        `once`, until nothing is due and nothing is in flight."""
        self.store.cleanup_tmp()
        with _Leases(self):
            try:
                while True:
                    if chores is not None:
                        chores()
                    stopping = stop is not None and stop.is_set()
                    if not stopping:
                        self.fill()
                    if not self.in_flight:
                        if stopping or once:
                            break
                        (stop.wait if stop is not None else time.sleep)(self.config.poll_seconds)
                        continue
                    self.collect()
            except KeyboardInterrupt:
                self.give_back()
                raise
        return self.stats


def ray_pool(options: RayOptions) -> Callable[..., WorkerStats]:
    """A `run_pool` stand-in (same keyword arguments) that evaluates on Ray with `options`."""
    import_ray()  # fail before any work when Ray is missing

    def run(store: Store | str | Path, *, concurrency: int = 1, once: bool = False,
            config: WorkerConfig | None = None, publish: Callable[[], Any] | None = None,
            sync_seconds: float = DEFAULT_SYNC_SECONDS, stop: threading.Event | None = None,
            report: Callable[[RequestReport], Any] | None = None) -> WorkerStats:
        store = store if isinstance(store, Store) else Store(store)
        chores = _Chores(store, publish, sync_seconds)
        chores.run(force=True)
        started = start_ray(options)
        try:
            stats = RayHead(store, config or WorkerConfig(), options, report).run(once=once, stop=stop,
                                                                                 chores=chores.run)
        finally:
            if started:
                import_ray().shutdown()
        chores.run(force=True)
        return stats

    return run
