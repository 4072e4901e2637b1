"""`python -m leaderboard COMMAND`: submit, worker, sweep, show, requests, remove, export, publish,
certify, backup, restore (parse, call, print).

Every command takes `--store DIR` (default: $RL_LEADERBOARD_STORE or
~/.local/share/rl-leaderboard) and `--endpoint URL` (default: HF_ENDPOINT, else the Hub).
Exit codes: 0 done, 1 the agent or the input was at fault, 2 usage, 3 transient (retry).
With --json, stdout is exactly one JSON document; logs go to stderr.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
from typing import Any

from evaluator.errors import EvaluationError, ExitCode

from .cli_parser import build_parser
from .queue import Request
from .ranking import DISPLAY_COLUMNS
from .store import Store, StoreBusyError, StoreCorruptError, StoreError, default_store_dir, iso, row_to_result
from .worker import WorkerConfig, run_pool

log = logging.getLogger("leaderboard")


_READS_STORE = frozenset({"show", "requests", "remove", "export", "publish", "backup", "restore", "certify"})


class StoreLocationError(Exception):
    """--store names no folder (usage error, exit 2)."""


def _store(args) -> Store:
    root = args.store or default_store_dir()
    if root.exists() and not root.is_dir():
        raise StoreLocationError(f"the store {root} is not a folder (a file is in the way): pass --store DIR")
    if not root.exists() and args.command in _READS_STORE and not getattr(args, "hub_dataset", None):
        raise StoreLocationError(f"the store folder {root} does not exist: pass --store DIR with an existing store "
                                 "(submit or worker create one)")
    return Store(root)


def _publisher(args, store: Store):
    if not getattr(args, "hub_dataset", None):
        return None
    from .publish import Publisher

    return Publisher(store, args.hub_dataset, endpoint=args.endpoint, create=args.create)


def _publish_error(args, err) -> int:
    code = ExitCode.TRANSIENT if err.transient else ExitCode.FAILED
    return _error(args, code, str(err), error_code="hub_unavailable" if err.transient else "hub_dataset")


def _request_line(request: Request) -> str:
    line = (f"#{request.id} {request.repo_id} @ {request.revision[:10]} on {request.env_key}: {request.status.value}"
            f" (attempts {request.attempts}/{request.max_attempts})")
    if request.error:
        line += f" [{request.error_code}] {request.error}"
    return line


def _error(args, code: int, message: str, **fields: Any) -> int:
    """Report a command's failure: stderr, and one JSON document on stdout with --json."""
    if getattr(args, "json", False):
        print(json.dumps({"status": "error", **fields, "error": message}))
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_submit(args) -> int:
    import getpass

    from .rows import clean_text
    from .submit import check_submission

    store = _store(args)
    try:
        found = check_submission(args.repo_id, revision=args.revision, env_id=args.env_id, endpoint=args.endpoint)
    except EvaluationError as err:
        return _error(args, err.exit_code, f"not queued: {err}", repo_id=args.repo_id, error_code=err.code.value)
    submitter = clean_text(args.submitter) or f"cli:{getpass.getuser()}"
    request, created = store.queue().submit(found.repo_id, found.revision, found.env_key, env_id=found.env_id,
                                            episodes=args.episodes, commit_date=found.commit_date,
                                            submitter=submitter)
    if args.json:
        print(json.dumps({**request.to_dict(), "queued": created}))
    else:
        print(("queued " if created else "already requested ") + _request_line(request))
    return ExitCode.OK


def cmd_worker(args) -> int:
    from .progress import Progress
    from .publish import PublishError

    store = _store(args)
    publisher = _publisher(args, store)
    if publisher is not None:  # fail fast on a missing dataset or a refused token, before any work
        try:
            publisher.publish()
        except PublishError as err:
            if not err.transient:
                return _publish_error(args, err)
            log.error("%s (retried at the next round)", err)
    config = WorkerConfig(lease_seconds=args.lease, poll_seconds=args.poll, endpoint=args.endpoint,
                          video=not args.no_video)
    pool = run_pool
    if args.backend == "ray":
        from .ray_backend import RayOptions, RayUnavailableError, ray_pool

        try:
            pool = ray_pool(RayOptions(address=args.address, num_cpus=args.num_cpus, max_in_flight=args.max_in_flight))
        except RayUnavailableError as err:
            return _error(args, ExitCode.USAGE, str(err), error_code="ray_missing")
    elif args.address or args.num_cpus or args.max_in_flight:
        return _error(args, ExitCode.USAGE, "--address, --num-cpus and --max-in-flight need --backend ray")
    counts = store.queue().counts()
    progress = Progress(total=counts["pending"] + counts["running"] if args.once else None, quiet=args.quiet)
    stop = threading.Event()
    # SIGTERM (a service manager stopping us): finish the requests in hand, then exit.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stats = pool(store, concurrency=args.concurrency, once=args.once, config=config,
                         publish=publisher.publish if publisher else None, sync_seconds=args.sync_interval,
                         stop=stop, report=progress)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return ExitCode.OK
    finally:
        progress.close()
    print(f"worker done: {stats.finished} finished, {stats.failed} failed, {stats.retried} to retry, "
          f"{stats.lost} dropped (lease lost)", file=sys.stderr)
    return ExitCode.OK


def cmd_sweep(args) -> int:
    from .progress import SweepBar
    from .sweep import SweepQuery, requeue_older_protocol, sweep

    store = _store(args)
    bar = SweepBar(quiet=args.quiet)
    try:
        if args.protocol_changed:
            if args.filters:
                return _error(args, ExitCode.USAGE, "--protocol-changed queues from the store: --filter does not apply")
            report = requeue_older_protocol(store, env_id=args.env_id, author=args.author, search=args.search,
                                            limit=args.limit, dry_run=args.dry_run, progress=bar)
        else:
            query = SweepQuery(filters=tuple(args.filters) if args.filters else SweepQuery.filters,
                               author=args.author, env_id=args.env_id, search=args.search, limit=args.limit)
            report = sweep(store, query, endpoint=args.endpoint, dry_run=args.dry_run, progress=bar, total=bar.total)
    except EvaluationError as err:
        return _error(args, err.exit_code, f"sweep stopped: {err} (run it again: it resumes)",
                      error_code=err.code.value)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(report.to_dict()))
    print(report.summary(), file=sys.stderr)
    return ExitCode.OK


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
        if isinstance(value, pd.Timestamp):
            return iso(value)
    except ImportError:  # pragma: no cover
        pass
    return value


def _env_key(env_id: str | None) -> str | None:
    if env_id is None:
        return None
    from evaluator.envs import resolve_env

    return resolve_env(env_id).env_key


def _published(args):
    """The ranking a Hub dataset publishes, filtered like the store's."""
    from .publish import read_published

    ranked = read_published(args.hub_dataset, endpoint=args.endpoint)
    if args.env_key is not None:
        ranked = ranked[ranked["env_key"] == args.env_key]
    if args.search:
        ranked = ranked[ranked["repo_id"].str.lower().str.contains(args.search.lower(), regex=False)]
    if args.algo:
        ranked = ranked[ranked["algo"].str.lower() == args.algo.lower()]
    if args.verdict:
        ranked = ranked[ranked["claim_verdict"] == args.verdict]
    end = None if args.limit is None else args.offset + args.limit
    return ranked.iloc[args.offset:end].reset_index(drop=True)


def cmd_show(args) -> int:
    try:
        args.env_key = _env_key(args.env_id)
    except EvaluationError as err:
        return _error(args, ExitCode.FAILED, str(err), error_code=err.code.value)
    if args.hub_dataset:
        from evaluator.hub import hub_errors

        try:
            with hub_errors(args.hub_dataset, None):
                ranked = _published(args)
        except EvaluationError as err:
            return _error(args, err.exit_code, f"cannot read {args.hub_dataset}: {err}", error_code=err.code.value)
    else:
        ranked = _store(args).ranking(args.env_key, search=args.search, algo=args.algo, verdict=args.verdict,
                                      sort=args.sort, limit=args.limit, offset=args.offset)
    if args.json:
        rows = []
        for data in ranked.to_dict("records"):
            if args.hub_dataset:  # the published columns, as they are
                rows.append({k: _cell(v) for k, v in data.items()})
                continue
            rows.append({"rank": int(data["rank"]), "commit_date": iso(data.get("commit_date")),
                         **row_to_result(data).to_dict()})
        print(json.dumps(rows))
        return ExitCode.OK
    table = ranked[[c for c in DISPLAY_COLUMNS if c in ranked.columns]].copy()
    for column in table.columns:
        table[column] = [(_cell(v) if not isinstance(_cell(v), list) else json.dumps(_cell(v)))
                         for v in table[column]]
    if args.csv:
        table.to_csv(sys.stdout, index=False)
        return ExitCode.OK
    if table.empty:
        print("no ranked results" + (f" for {args.env_key}" if args.env_key else ""))
        return ExitCode.OK
    for key, group in table.groupby("env_key", sort=True):
        print(f"== {key} ==")
        view = group.assign(revision=group["revision"].str[:10])
        columns = ["rank", "repo_id", "revision", "score", "mean_reward", "std_reward", "iqm", "n_episodes",
                   "claim_verdict", "video"]
        print(view[columns].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return ExitCode.OK


def cmd_requests(args) -> int:
    queue = _store(args).queue()
    queue.reap()
    requests = queue.list(args.status)
    if args.json:
        print(json.dumps([r.to_dict() for r in requests]))
    elif not requests:
        print("no requests")
    else:
        for request in requests:
            print(_request_line(request))
    return ExitCode.OK


def cmd_remove(args) -> int:
    from .publish import PublishError

    store = _store(args)
    reason = args.reason or "removed by the operator"
    rows, cancelled = store.takedown(args.repo_id, reason=reason)  # one transaction
    if not rows and not cancelled:
        print(f"{args.repo_id}: nothing to remove (no visible rows, no pending or running requests)",
              file=sys.stderr)
        return ExitCode.FAILED
    print(f"{args.repo_id}: {rows} rows hidden from the ranking (kept in history), {cancelled} pending or running "
          "requests cancelled")
    publisher = _publisher(args, store)
    if publisher:
        try:
            publisher.publish()
        except PublishError as err:
            return _publish_error(args, err)
    return ExitCode.OK


def cmd_export(args) -> int:
    from .export import export

    for path in export(_store(args), args.directory, fmt=args.format):
        print(path)
    return ExitCode.OK


def cmd_publish(args) -> int:
    from dataclasses import asdict

    from .publish import PublishError

    if not args.hub_dataset:
        return _error(args, ExitCode.USAGE, "publish needs --hub-dataset NS/NAME")
    try:
        report = _publisher(args, _store(args)).publish()
    except PublishError as err:
        return _publish_error(args, err)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        print(f"{report.dataset}: " + (f"commit {report.commit}" if report.commit else "up to date") +
              f" ({report.history_rows} rows, {report.takedowns} takedowns, {report.replays_uploaded} replays up, "
              f"{report.replays_deleted} down, {report.requests_ingested} requests ingested, "
              f"{report.requests_rejected} refused)")
    return ExitCode.OK


def cmd_certify(args) -> int:
    from .certify import certification, summary

    try:
        frame = certification(args.user, _store(args))
    except ValueError as err:
        return _error(args, ExitCode.USAGE, str(err), error_code="invalid_user")
    totals = summary(frame)
    if args.json:
        records = json.loads(frame.to_json(orient="records"))
        print(json.dumps({"user": args.user, **totals, "parts": records}))
        return ExitCode.OK
    for row in frame.itertuples():
        state = "PASSED" if row.passed else "not verifiable" if not row.verifiable else "not passed"
        threshold = "-" if row.threshold is None or row.threshold != row.threshold else f">= {row.threshold:g}"
        best = "" if row.best_score is None or row.best_score != row.best_score else f" best {row.best_score:.2f}"
        evidence = f" ({row.repo_id} @ {str(row.revision)[:10]})" if row.repo_id else ""
        why = f": {row.reason}" if row.reason and not row.passed else ""
        print(f"{row.unit:<14} {row.env_id:<30} {threshold:<10} {state}{best}{evidence}{why}")
    print(f"{args.user}: {totals['passed']} of {totals['units']} units passed on verified scores "
          f"({totals['verifiable']} verifiable here)")
    return ExitCode.OK


def cmd_backup(args) -> int:
    print(f"backed up to {_store(args).backup()}")
    return ExitCode.OK


def cmd_restore(args) -> int:
    store = _store(args)
    kept = store.restore()
    print(f"restored {store.db_path} from {store.backup_path}; the damaged file is kept as {kept}")
    return ExitCode.OK


COMMANDS = {"submit": cmd_submit, "worker": cmd_worker, "sweep": cmd_sweep, "show": cmd_show, "requests": cmd_requests,
            "remove": cmd_remove, "export": cmd_export, "publish": cmd_publish, "certify": cmd_certify,
            "backup": cmd_backup, "restore": cmd_restore}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except StoreLocationError as err:
        return _error(args, ExitCode.USAGE, str(err), error_code="store_missing")
    except StoreCorruptError as err:
        return _error(args, ExitCode.FAILED, str(err), error_code="store_corrupt")
    except StoreBusyError as err:
        return _error(args, ExitCode.TRANSIENT, str(err), error_code="store_busy")
    except StoreError as err:
        return _error(args, ExitCode.FAILED, str(err), error_code="store_error")


if __name__ == "__main__":
    sys.exit(main())
