"""Sweeps: discover agents on the Hub and queue every one the evaluator can score.

Why a listing rather than `submit` per repo: `list_models(full=True, cardData=True)` returns, per
page of repos, what `submit` asks three calls per repo for (commit sha and date, file names, card
metadata and tags, gating). So a repo is classified from the listing alone (agent format from its
file names, env from its card and tags, as `submit` does) and a per-repo call is made only when
the listing lacks the sha or the file names.

Resumable by construction: requests are unique by (repo, sha, env key, protocol, seed set), so
a sweep killed half-way and run again queues only what is missing; a second run over an
unchanged Hub queues nothing. A repo taken down (`remove`) is never queued again by a sweep (an
explicit `submit` may). `requeue_older_protocol` queues every ranked row of an older protocol
again, from the store alone (no Hub call: the rows say repo, sha and env).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from evaluator import errors
from evaluator.agents import find_agent
from evaluator.card import infer_env_id
from evaluator.envs import resolve_env
from evaluator.hub import check_repo_id, hub_errors
from evaluator.text import clean_text, clean_tree

from .queue import TRANSIENT_CODES, Queue, Status, current_protocol
from .rows import iso
from .store import Store

log = logging.getLogger(__name__)

DEFAULT_FILTER = "reinforcement-learning"  # the tag every RL Zoo and Deep RL course card carries
SUBMITTER = "sweep"
EXAMPLES_PER_REASON = 3
# Agent libraries whose repos hold no file the evaluator reads (their tag says why it is skipped).
FOREIGN_LIBRARIES = ("ml-agents", "sample-factory", "rl-games", "cleanrl", "keras", "onnx", "tensorflow")


class Skip(StrEnum):
    """Why a listed repo was not queued."""

    NO_AGENT = "no_agent"  # no file the evaluator reads as an agent
    UNSUPPORTED_FORMAT = "unsupported_format"  # an agent of a library the evaluator cannot load
    UNKNOWN_ENV = "unknown_env"  # no env stated, or one outside the env table
    GATED = "gated"  # its files need accepting conditions: a sweep does not ask for access
    TAKEN_DOWN = "taken_down"  # removed by the operator: only an explicit submit brings it back
    OTHER_ENV = "other_env"  # plays another env than --env
    HUB_ERROR = "hub_error"  # a per-repo look-up failed: the next sweep tries again


@dataclass(frozen=True)
class Found:
    """A listed repo the evaluator can score: what its request needs."""

    repo_id: str
    revision: str
    env_key: str
    commit_date: str | None
    agent_format: str


@dataclass(frozen=True)
class SweepQuery:
    filters: tuple[str, ...] = (DEFAULT_FILTER,)  # Hub tags, all required
    author: str | None = None
    env_id: str | None = None  # also listed as a tag filter, then checked by env key
    search: str | None = None  # substring of the repo id
    limit: int | None = None  # at most this many listed repos

    def hub_filters(self) -> list[str]:
        return [*self.filters, *([self.env_id] if self.env_id else [])]

    def key(self) -> str:
        text = json.dumps([sorted(self.hub_filters()), self.author, self.search, self.limit])
        return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class SweepReport:
    protocol_version: int
    seed_set: str
    dry_run: bool = False
    listed: int = 0
    queued: int = 0  # new requests (with --dry-run: would be queued)
    known: int = 0  # already queued or done at that sha and protocol
    looked_up: int = 0  # per-repo Hub calls made because the listing said too little
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)  # a few repo ids per reason
    seconds: float = 0.0
    complete: bool = True  # False when the listing stopped early (the Hub failed)

    def skip(self, reason: Skip, repo_id: str, why: str = "") -> None:
        self.skipped[reason.value] += 1
        shown = self.examples.setdefault(reason.value, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(f"{repo_id}: {why}" if why else repo_id)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol_version": self.protocol_version, "seed_set": self.seed_set, "dry_run": self.dry_run,
                "listed": self.listed, "queued": self.queued, "known": self.known, "looked_up": self.looked_up,
                "skipped": dict(sorted(self.skipped.items())), "examples": self.examples,
                "seconds": round(self.seconds, 3), "complete": self.complete}

    def summary(self) -> str:
        verb = "would queue" if self.dry_run else "queued"
        lines = [f"sweep: {self.listed} repos listed, {verb} {self.queued}, {self.known} already queued or done "
                 f"(protocol {self.protocol_version}, {self.seed_set} seeds), {self.looked_up} per-repo look-ups, "
                 f"{sum(self.skipped.values())} skipped, {self.seconds:.1f} s"]
        for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  skipped {count:>6} {reason}: e.g. {'; '.join(self.examples.get(reason, []))}")
        if not self.complete:
            lines.append("  the listing stopped early: run the sweep again (it resumes, queueing only what is missing)")
        return "\n".join(lines)


# ---------------------------------------------------------------- classification


def _card(info: Any) -> dict:
    data = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    if data is not None and hasattr(data, "to_dict"):
        data = data.to_dict()
    return clean_tree(data) if isinstance(data, dict) else {}


def _library(info: Any, card: dict) -> str | None:
    name = getattr(info, "library_name", None) or card.get("library_name")
    return name.lower() if isinstance(name, str) else None


def classify(info: Any, *, env_key: str | None = None) -> Found | tuple[Skip, str] | None:
    """A listing entry -> Found, (Skip reason, why), or None when the listing lacks the sha or
    the file names (the caller looks the repo up)."""
    repo_id = check_repo_id(clean_text(str(info.id), 200))
    if getattr(info, "gated", False):
        return Skip.GATED, f"gated ({info.gated})"
    if not getattr(info, "sha", None) or getattr(info, "siblings", None) is None:
        return None
    card = _card(info)
    names = [s.rfilename for s in info.siblings if isinstance(getattr(s, "rfilename", None), str)]
    try:
        agent_format, _ = find_agent([clean_text(n, 1000) for n in names], repo_id=repo_id)
    except errors.NoAgentError:
        library = _library(info, card)
        if library and any(library.startswith(f) for f in FOREIGN_LIBRARIES):
            return Skip.UNSUPPORTED_FORMAT, f"a {library} agent"
        return Skip.NO_AGENT, "no agent file"
    tags = [clean_text(t, 200) for t in getattr(info, "tags", None) or [] if isinstance(t, str)]
    stated = infer_env_id(card, tags, repo_id)
    if not stated:
        return Skip.UNKNOWN_ENV, "no env stated"
    try:
        spec = resolve_env(stated)
    except errors.UnknownEnvError:
        return Skip.UNKNOWN_ENV, clean_text(stated, 100)
    if env_key is not None and spec.env_key != env_key:
        return Skip.OTHER_ENV, spec.env_key
    return Found(repo_id, info.sha, spec.env_key, iso(getattr(info, "last_modified", None)), agent_format)


_SKIP_OF_CODE = {errors.ErrorCode.NO_AGENT: Skip.NO_AGENT, errors.ErrorCode.UNSUPPORTED_FORMAT: Skip.UNSUPPORTED_FORMAT,
                 errors.ErrorCode.UNKNOWN_ENV: Skip.UNKNOWN_ENV, errors.ErrorCode.GATED_REPO: Skip.GATED}


def look_up(repo_id: str, *, env_key: str | None, endpoint: str | None,
            token: str | bool | None) -> Found | tuple[Skip, str]:
    """What `submit` checks, for a repo the listing said too little about (per-repo calls)."""
    from .submit import check_submission

    try:
        found = check_submission(repo_id, endpoint=endpoint, token=token)
    except errors.EvaluationError as err:
        return _SKIP_OF_CODE.get(err.code, Skip.HUB_ERROR), clean_text(str(err), 200)
    if env_key is not None and found.env_key != env_key:
        return Skip.OTHER_ENV, found.env_key
    return Found(found.repo_id, found.revision, found.env_key, found.commit_date, found.agent_format)


# ---------------------------------------------------------------- queueing


def taken_down_repos(store: Store) -> set[str]:
    """Repos the operator removed (a takedown event, or a request a takedown cancelled)."""
    with store.database.read() as db:
        rows = db.execute("SELECT repo_id FROM takedowns UNION SELECT repo_id FROM requests WHERE error_code = ?",
                          ("removed",)).fetchall()
    return {r[0] for r in rows}


class _Queuer:
    """Queues Found repos at the current protocol, counting new and known ones."""

    def __init__(self, queue: Queue, report: SweepReport, *, dry_run: bool, submitter: str):
        self.queue, self.report, self.dry_run, self.submitter = queue, report, dry_run, submitter

    def __call__(self, found: Found, env_id: str | None = None) -> None:
        report = self.report
        existing = self.queue.lookup(found.repo_id, found.revision, found.env_key,
                                     protocol_version=report.protocol_version, seed_set=report.seed_set)
        requeue = existing is not None and existing.status == Status.FAILED and existing.error_code in TRANSIENT_CODES
        if existing is not None and not requeue:
            report.known += 1
            return
        if self.dry_run:
            report.queued += 1
            return
        _, created = self.queue.submit(found.repo_id, found.revision, found.env_key, env_id=env_id,
                                       commit_date=found.commit_date, protocol_version=report.protocol_version,
                                       seed_set=report.seed_set, submitter=self.submitter)
        if created:
            report.queued += 1
        else:
            report.known += 1


def _history_file(store: Store, query: SweepQuery) -> Path:
    return store.root / "sweeps" / f"{query.key()}.json"


def _expected_total(store: Store, query: SweepQuery) -> int | None:
    """How many repos this query listed last time (for the progress bar's ETA)."""
    if query.limit:
        return query.limit
    try:
        return int(json.loads(_history_file(store, query).read_text())["listed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember(store: Store, query: SweepQuery, report: SweepReport) -> None:
    path = _history_file(store, query)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"query": query.__dict__, **report.to_dict()}, default=list))
    tmp.replace(path)


def list_repos(query: SweepQuery, *, endpoint: str | None, token: str | bool | None) -> Iterable[Any]:
    """The Hub's listing for `query`, page by page (huggingface_hub follows the `Link` headers)."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    return api.list_models(filter=query.hub_filters() or None, author=query.author, search=query.search,
                           limit=query.limit, full=True, cardData=True)


def sweep(store: Store, query: SweepQuery, *, endpoint: str | None = None, token: str | bool | None = None,
          dry_run: bool = False, submitter: str = SUBMITTER,
          progress: Callable[[SweepReport], Any] | None = None, total: Callable[[int | None], Any] | None = None,
          listing: Iterable[Any] | None = None) -> SweepReport:
    """List the Hub for `query` and queue every repo the evaluator can score (see the module
    docstring). `total(n)` is told how many repos are expected (None: unknown) and
    `progress(report)` is called after each listed repo. Raises EvaluationError
    (HubUnavailableError: exit 3) when the listing itself fails; what was queued stays queued."""
    protocol_version, seed_set = current_protocol()
    report = SweepReport(protocol_version, seed_set, dry_run=dry_run)
    started = time.monotonic()
    env_key = resolve_env(query.env_id).env_key if query.env_id else None
    removed = taken_down_repos(store)
    queue_it = _Queuer(store.queue(), report, dry_run=dry_run, submitter=submitter)
    if total is not None:
        total(_expected_total(store, query))
    entries = listing if listing is not None else list_repos(query, endpoint=endpoint, token=token)
    try:
        with hub_errors("the model listing", None, endpoint=endpoint):
            for info in entries:
                report.listed += 1
                _one(info, report, queue_it, removed=removed, env_key=env_key, endpoint=endpoint, token=token)
                if progress is not None:
                    progress(report)
    except errors.EvaluationError:
        report.complete = False
        raise
    finally:
        report.seconds = time.monotonic() - started
    if not dry_run and query.limit is None:
        _remember(store, query, report)
    return report


def _one(info: Any, report: SweepReport, queue_it: _Queuer, *, removed: set[str], env_key: str | None,
         endpoint: str | None, token: str | bool | None) -> None:
    try:
        verdict = classify(info, env_key=env_key)
    except errors.InvalidRepoIdError as err:
        report.skip(Skip.NO_AGENT, clean_text(str(getattr(info, "id", "?")), 100), str(err))
        return
    repo_id = check_repo_id(clean_text(str(info.id), 200))
    if repo_id in removed:
        report.skip(Skip.TAKEN_DOWN, repo_id)
        return
    if verdict is None:
        report.looked_up += 1
        verdict = look_up(repo_id, env_key=env_key, endpoint=endpoint, token=token)
    if isinstance(verdict, Found):
        queue_it(verdict)
    else:
        report.skip(verdict[0], repo_id, verdict[1])


# ---------------------------------------------------------------- protocol change


def requeue_older_protocol(store: Store, *, env_id: str | None = None, author: str | None = None,
                           search: str | None = None, limit: int | None = None, dry_run: bool = False,
                           submitter: str = SUBMITTER,
                           progress: Callable[[SweepReport], Any] | None = None) -> SweepReport:
    """Queue again, at the current protocol, every ranked row of an older protocol version (the
    store's ranking: the newest ranked revision of each repo per env, never a taken-down one).
    No Hub call."""
    protocol_version, seed_set = current_protocol()
    report = SweepReport(protocol_version, seed_set, dry_run=dry_run)
    started = time.monotonic()
    env_key = resolve_env(env_id).env_key if env_id else None
    ranked = store.ranking(env_key, search=search)  # taken-down rows are not in it
    queue_it = _Queuer(store.queue(), report, dry_run=dry_run, submitter=submitter)
    for row in ranked.itertuples():
        if limit is not None and report.listed >= limit:
            break
        if int(row.protocol_version) >= protocol_version:
            continue
        if author and row.repo_id.split("/")[0] != author:
            continue
        report.listed += 1
        queue_it(Found(row.repo_id, row.revision, row.env_key, iso(row.commit_date), row.format))
        if progress is not None:
            progress(report)
    report.seconds = time.monotonic() - started
    return report
