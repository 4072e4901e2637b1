"""Publish a store to a Hub dataset repo: publication, not coordination (one head writes the
store; several machines are Ray's job, not the dataset's).

Dataset layout:

    store.json                               {"store_id": ...}: the one store that publishes here
    history/{first:012d}-{last:012d}.parquet  append-only shards: the rows with first <= seq <= last
    takedowns/{first:012d}-{last:012d}.parquet  append-only shards of the takedown events
    leaderboard.parquet                      the current ranking: what a deployed Space reads
    replays/{ns}/{name}/{sha}/{env_key}.mp4  the replays of ranked rows
    requests/*.json                          submissions from a deployed Space (ingested, deleted)

One round reads the dataset's file list at its head and makes one commit (parent_commit=head;
a 412, e.g. a Space adding a request meanwhile, restarts the round): the history rows and the
takedown events newer than the last shard (never the history again), `leaderboard.parquet`
when it changed, the replays of ranked rows the dataset lacks (and the deletion of those no
longer ranked), and the deletion of the request files it ingested into the queue. Rows on the
private seed set go out with `seeds` empty; rows taken down before they were published never
go out. A Hub that does not answer (or answers 5xx/429) is retried with backoff, then
PublishError; the store is never changed by a failed round (ingested requests are deduplicated).
The dataset is created only when asked (`create=True`, `--create`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .rows import COLUMNS, clean_text, rows_to_table
from .store import Store

log = logging.getLogger(__name__)

LEADERBOARD_FILE = "leaderboard.parquet"
STORE_FILE = "store.json"
SHARD_ROWS = 100_000
MAX_REQUEST_BYTES = 4096
DEFAULT_ATTEMPTS = int(os.environ.get("RL_LEADERBOARD_SYNC_ATTEMPTS") or 5)
DEFAULT_BACKOFF_SECONDS = float(os.environ.get("RL_LEADERBOARD_SYNC_BACKOFF") or 2.0)  # doubled each time
# The columns of leaderboard.parquet (what the Space shows, per-episode returns for its plots).
LEADERBOARD_COLUMNS = ("rank", "env_key", "repo_id", "revision", "score", "mean_reward", "std_reward", "iqm", "ci95",
                       "n_episodes", "episode_returns", "episode_lengths", "algo", "format", "claim_mean_reward",
                       "claim_std_reward", "claim_n_episodes", "claim_verdict", "seed_set", "protocol_version",
                       "commit_date", "evaluated_at", "video", "row_id", "evaluator_version",
                       "extra")  # extra: the schema's extensions as JSON (e.g. the unsafe-pickle report)
_SHARD = re.compile(r"^(history|takedowns)/(\d{12})-(\d{12})\.parquet$")
_REPLAY = re.compile(r"^replays/[A-Za-z0-9._=,-]+/[A-Za-z0-9._=,-]+/[A-Za-z0-9._=,-]+/[A-Za-z0-9._=,-]+\.mp4$")
_REQUEST = re.compile(r"^requests/[A-Za-z0-9._-]{1,128}\.json$")


class PublishError(RuntimeError):
    """The Hub dataset could not be published to; `transient` says whether retrying may help."""

    def __init__(self, message: str, *, transient: bool = True):
        super().__init__(message)
        self.transient = transient


class _Conflict(Exception):
    pass


@dataclass
class PublishReport:
    dataset: str
    commit: str | None = None  # None: the dataset was up to date
    history_rows: int = 0
    takedowns: int = 0
    leaderboard_rows: int | None = None  # None: leaderboard.parquet unchanged
    replays_uploaded: int = 0
    replays_deleted: int = 0
    requests_ingested: int = 0
    requests_rejected: int = 0
    attempts: int = 0


def _parquet(table: pa.Table) -> bytes:
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return buffer.getvalue().to_pybytes()


def history_table(rows: list[dict[str, Any]]) -> pa.Table:
    """History rows as published (and exported): the schema's columns plus `seq`; private seeds
    never leave the head."""
    for row in rows:
        if row.get("seed_set") == "private":
            row["seeds"] = []
    table = rows_to_table(rows, columns=COLUMNS)
    return table.append_column("seq", pa.array([r["seq"] for r in rows], pa.int64()))


def leaderboard_table(ranking: pd.DataFrame) -> pa.Table:
    frame = ranking[[c for c in LEADERBOARD_COLUMNS if c in ranking.columns]]
    return pa.Table.from_pandas(frame, preserve_index=False)


def read_published(dataset_id: str, *, endpoint: str | None = None, token: str | bool | None = None) -> pd.DataFrame:
    """The ranking a dataset publishes (its leaderboard.parquet) at its head commit, as a
    DataFrame. The head is asked first: a Hub that does not answer is an error, never a stale
    copy from the local cache."""
    from huggingface_hub import HfApi, hf_hub_download

    head = HfApi(endpoint=endpoint, token=token).dataset_info(dataset_id).sha
    path = hf_hub_download(dataset_id, LEADERBOARD_FILE, repo_type="dataset", revision=head, endpoint=endpoint,
                           token=token)
    return pq.read_table(path).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)


class Publisher:
    def __init__(self, store: Store | str | Path, dataset_id: str, *, endpoint: str | None = None,
                 token: str | bool | None = None, create: bool = False, attempts: int = DEFAULT_ATTEMPTS,
                 backoff_seconds: float = DEFAULT_BACKOFF_SECONDS, sleep: Callable[[float], None] = time.sleep,
                 check_submission: Callable[..., Any] | None = None):
        self.store = store if isinstance(store, Store) else Store(store)
        self.dataset_id, self.endpoint, self.token, self.create = dataset_id, endpoint, token, create
        self.attempts, self.backoff_seconds, self.sleep = attempts, backoff_seconds, sleep
        self._check = check_submission

    @property
    def where(self) -> str:
        return f"the Hub dataset {self.dataset_id} at {self.endpoint or os.environ.get('HF_ENDPOINT') or 'the Hub'}"

    def publish(self) -> PublishReport:
        """One round (see the module docstring); raises PublishError."""
        from huggingface_hub import errors as hf

        from evaluator.hub import _network_errors

        last: BaseException | None = None
        delay = self.backoff_seconds
        for attempt in range(1, self.attempts + 1):
            try:
                report = self._round()
                report.attempts = attempt
                return report
            except _Conflict as err:
                last = err
                log.info("%s moved during the round (attempt %d): retrying", self.dataset_id, attempt)
                continue
            except hf.RepositoryNotFoundError as err:
                raise PublishError(f"{self.where} does not exist: create it with --create (the dataset is never "
                                   "created silently)", transient=False) from err
            except hf.HfHubHTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if status is not None and status < 500 and status != 429:
                    raise PublishError(f"{self.where} refused the publication (HTTP {status}): {err}. Check the "
                                       "dataset id and that HF_TOKEN may write to it.", transient=False) from err
                last = err
            except (*_network_errors(), OSError) as err:
                last = err
            if attempt < self.attempts:
                log.warning("publishing to %s failed (attempt %d/%d: %s); retrying in %.1f s", self.where, attempt,
                            self.attempts, _short(last), delay)
                self.sleep(delay)
                delay *= 2
        raise PublishError(f"could not publish to {self.where} after {self.attempts} attempts (last error: "
                           f"{_short(last)}); the store is untouched, retry later") from last

    def _store_id(self) -> str:
        with self.store.database.write() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
            if row:
                return row[0]
            store_id = uuid.uuid4().hex
            db.execute("INSERT INTO meta (key, value) VALUES ('store_id', ?)", (store_id,))
            return store_id

    def _round(self) -> PublishReport:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
        from huggingface_hub import errors as hf

        api = HfApi(endpoint=self.endpoint, token=self.token)
        if self.create:
            api.create_repo(self.dataset_id, repo_type="dataset", exist_ok=True)
        info = api.dataset_info(self.dataset_id)
        head, files = info.sha, {s.rfilename for s in info.siblings or []}

        def download(path: str) -> Path:
            return Path(hf_hub_download(self.dataset_id, path, repo_type="dataset", revision=head,
                                        endpoint=self.endpoint, token=self.token))

        report, operations = PublishReport(self.dataset_id), []
        store_id = self._store_id()
        if STORE_FILE in files:
            published_by = json.loads(download(STORE_FILE).read_text()).get("store_id")
            if published_by != store_id:
                raise PublishError(f"{self.where} is published by another store (store id {published_by}, this one is "
                                   f"{store_id}): publish this store to a dataset of its own", transient=False)
        else:
            operations.append(CommitOperationAdd(STORE_FILE, json.dumps({"store_id": store_id}).encode()))

        done = {"history": 0, "takedowns": 0}
        for path in files:
            if match := _SHARD.match(path):
                done[match[1]] = max(done[match[1]], int(match[3]))
        operations += self._history_shards(done["history"], report)
        operations += self._takedown_shards(done["takedowns"], report)

        ranking = self.store.ranking()
        board = _parquet(leaderboard_table(ranking))
        if LEADERBOARD_FILE not in files or board != download(LEADERBOARD_FILE).read_bytes():
            operations.append(CommitOperationAdd(LEADERBOARD_FILE, board))
            report.leaderboard_rows = len(ranking)
        wanted = {v for v in ranking["video"].dropna() if _REPLAY.match(v) and (self.store.root / v).is_file()}
        for video in sorted(wanted - files):
            operations.append(CommitOperationAdd(video, str(self.store.root / video)))
            report.replays_uploaded += 1
        for video in sorted(p for p in files if p.startswith("replays/") and p not in wanted):
            operations.append(CommitOperationDelete(video))
            report.replays_deleted += 1
        for path in sorted(p for p in files if p.startswith("requests/")):
            if self._ingest(path, download, report):
                operations.append(CommitOperationDelete(path))

        if operations:
            message = (f"leaderboard: {report.history_rows} rows, {report.takedowns} takedowns, "
                       f"{report.replays_uploaded} replays, {report.requests_ingested} requests ingested")
            try:
                commit = api.create_commit(self.dataset_id, repo_type="dataset", operations=operations,
                                           parent_commit=head, commit_message=message)
            except hf.HfHubHTTPError as err:
                if err.response is not None and err.response.status_code == 412:
                    raise _Conflict(str(err)) from err
                raise
            report.commit = commit.oid
        return report

    def _history_shards(self, after: int, report: PublishReport) -> list:
        from huggingface_hub import CommitOperationAdd

        from . import history as hist

        operations = []
        with self.store.database.read() as db:
            last = hist.last_seq(db)
            if last <= after:
                return []
            for first in range(after + 1, last + 1, SHARD_ROWS):
                end = min(first + SHARD_ROWS - 1, last)
                rows = [r for batch in hist.select(db, "e.seq BETWEEN ? AND ?", (first, end)) for r in batch
                        if r["removed_at"] is None]
                for row in rows:
                    row["removed_at"] = row["removed_reason"] = None  # takedowns are in takedowns/
                report.history_rows += len(rows)
                operations.append(CommitOperationAdd(f"history/{first:012d}-{end:012d}.parquet",
                                                     _parquet(history_table(rows))))
        return operations

    def _takedown_shards(self, after: int, report: PublishReport) -> list:
        from huggingface_hub import CommitOperationAdd

        with self.store.database.read() as db:
            events = db.execute("SELECT id, repo_id, upto_seq, row_seq, removed_at, reason FROM takedowns "
                                "WHERE id > ? ORDER BY id", (after,)).fetchall()
        if not events:
            return []
        names = ("id", "repo_id", "upto_seq", "row_seq", "removed_at", "reason")
        table = pa.table({name: [e[i] for e in events] for i, name in enumerate(names)})
        table = table.set_column(4, "removed_at", table.column("removed_at").cast(pa.timestamp("us", tz="UTC")))
        report.takedowns = len(events)
        return [CommitOperationAdd(f"takedowns/{events[0][0]:012d}-{events[-1][0]:012d}.parquet", _parquet(table))]

    def _ingest(self, path: str, download: Callable[[str], Path], report: PublishReport) -> bool:
        """Queue one request file; True when it can be deleted (queued, or refused for good)."""
        from evaluator.errors import EvaluationError

        from .submit import check_submission

        if not _REQUEST.match(path):
            report.requests_rejected += 1
            log.warning("%s: not a request file name; deleted", path)
            return True
        try:
            local = download(path)
            if local.stat().st_size > MAX_REQUEST_BYTES:
                raise ValueError(f"larger than {MAX_REQUEST_BYTES} bytes")
            data = json.loads(local.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("repo_id"), str):
                raise ValueError("not a JSON object with a repo_id string")
            check = self._check or check_submission
            found = check(data["repo_id"][:200], revision=_text(data.get("revision")),
                          env_id=_text(data.get("env_id")), endpoint=self.endpoint, token=self.token)
        except (ValueError, UnicodeDecodeError) as err:
            report.requests_rejected += 1
            log.warning("%s: refused (%s); deleted", path, err)
            return True
        except EvaluationError as err:
            if err.exit_code == 3:
                log.warning("%s: the Hub did not answer (%s); kept for the next round", path, err)
                return False
            report.requests_rejected += 1
            log.warning("%s: refused (%s); deleted", path, err)
            return True
        submitter = clean_text(data.get("submitter")) or "hub-dataset"
        self.store.queue().submit(found.repo_id, found.revision, found.env_key, env_id=found.env_id,
                                  commit_date=found.commit_date, submitter=submitter)
        report.requests_ingested += 1
        return True


def _text(value: Any) -> str | None:
    return clean_text(value, limit=200) if isinstance(value, str) else None


def _short(err: BaseException | None) -> str:
    if err is None:
        return "none"
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__
