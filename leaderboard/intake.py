"""Submissions from the Space (or any front end): validate, rate-limit, then queue or write a
request file, and say in one sentence what happened.

Everything is checked before anything is queued: the repo id's form, the submitter's rate, the
repo itself (exists, readable, not gated without a token, holds a supported agent, plays an env
the evaluator knows; `leaderboard.submit.check_submission`). A duplicate points at the existing
request (and its result row when it finished). With a store, the request goes into its queue;
with a Hub dataset (a deployed Space), a small JSON file goes into the dataset's `requests/`,
which the head ingests (`leaderboard.publish`); when that write fails the caller is told so and
nothing else happens (a failed write never takes the Space down).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from evaluator.errors import EvaluationError

from .rows import clean_text
from .store import Store
from .submit import InvalidRepoIdError, check_repo_id, check_submission

RATE_LIMIT = int(os.environ.get("RL_SPACE_RATE_LIMIT") or 10)  # submissions per submitter per window
RATE_WINDOW_SECONDS = float(os.environ.get("RL_SPACE_RATE_WINDOW") or 3600)


@dataclass
class Outcome:
    ok: bool
    message: str
    request: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "request": self.request, **self.extra}


class MemoryRateLimit:
    """Per-submitter sliding window kept in this process (the dataset mode has no queue here)."""

    def __init__(self, limit: int = RATE_LIMIT, window: float = RATE_WINDOW_SECONDS):
        self.limit, self.window = limit, window
        self._seen: dict[str, deque] = {}
        self._lock = threading.Lock()

    def count(self, submitter: str, now: float) -> int:
        with self._lock:
            seen = self._seen.setdefault(submitter, deque())
            while seen and seen[0] < now - self.window:
                seen.popleft()
            return len(seen)

    def add(self, submitter: str, now: float) -> None:
        with self._lock:
            self._seen.setdefault(submitter, deque()).append(now)


def _rate_message(limit: int, window: float) -> str:
    return (f"rate limit: at most {limit} submissions per {window / 60:g} minutes per submitter; "
            "try again later")


def _form(repo_id: str, env_id: str | None, submitter: str) -> tuple[str, str | None, str, Outcome | None]:
    """The form's fields as data (stripped, the submitter sanitised), and the refusal of an id
    that is not a Hub repo id (said before any rate or Hub call)."""
    repo_id, env_id = (repo_id or "").strip(), (env_id or "").strip() or None
    submitter = clean_text(submitter, limit=120) or "anonymous"
    try:
        check_repo_id(repo_id)
    except InvalidRepoIdError as err:
        return repo_id, env_id, submitter, Outcome(False, str(err))
    return repo_id, env_id, submitter, None


def _check(repo_id: str, env_id: str | None, endpoint: str | None, token: Any):
    """(Submission, None) or (None, the reason as a sentence)."""
    try:
        check_repo_id(repo_id)
        return check_submission(repo_id, env_id=env_id or None, endpoint=endpoint, token=token), None
    except InvalidRepoIdError as err:
        return None, str(err)
    except EvaluationError as err:
        reason = clean_text(str(err), limit=400) or type(err).__name__
        if err.exit_code == 3:
            return None, f"the Hub did not answer, nothing was queued; try again: {reason}"
        return None, f"not queued: {reason}"


def submit_to_store(store: Store, repo_id: str, env_id: str | None = None, *, submitter: str,
                    endpoint: str | None = None, token: Any = None, limiter: MemoryRateLimit | None = None,
                    limit: int = RATE_LIMIT, window: float = RATE_WINDOW_SECONDS) -> Outcome:
    """Queue a checked submission. The rate counts the submitter's requests in the queue (kept
    across restarts) and, with `limiter`, every attempt this process checked (duplicates and
    refusals cost Hub calls too)."""
    repo_id, env_id, submitter, refused = _form(repo_id, env_id, submitter)
    if refused:
        return refused
    queue, now = store.queue(), time.time()
    if limiter is not None:
        limit, window = limiter.limit, limiter.window
    attempts = limiter.count(submitter, now) if limiter is not None else 0
    if max(attempts, queue.submitted_since(submitter, now - window)) >= limit:
        return Outcome(False, _rate_message(limit, window))
    if limiter is not None:
        limiter.add(submitter, now)
    found, reason = _check(repo_id, env_id, endpoint, token)
    if found is None:
        return Outcome(False, reason)
    request, created = queue.submit(found.repo_id, found.revision, found.env_key, env_id=found.env_id,
                                    commit_date=found.commit_date, submitter=submitter)
    data = request.to_dict()
    where = f"{request.repo_id} @ {request.revision[:10]} on {request.env_key}"
    if created:
        return Outcome(True, f"queued as request #{request.id}: {where}", data)
    message = f"already requested as #{request.id} ({request.status.value}): {where}"
    if request.result_id:
        message += f"; its result row is {request.result_id[:12]}"
    return Outcome(True, message, data, {"duplicate": True})


def submit_to_dataset(dataset_id: str, repo_id: str, env_id: str | None = None, *, submitter: str,
                      limiter: MemoryRateLimit, endpoint: str | None = None, token: Any = None) -> Outcome:
    """Write `requests/{uuid}.json` to the dataset, after the same checks (the head checks again
    when it ingests the file: this side is a courtesy, not the trust boundary)."""
    from huggingface_hub import HfApi

    repo_id, env_id, submitter, refused = _form(repo_id, env_id, submitter)
    if refused:
        return refused
    now = time.time()
    if limiter.count(submitter, now) >= limiter.limit:
        return Outcome(False, _rate_message(limiter.limit, limiter.window))
    limiter.add(submitter, now)
    found, reason = _check(repo_id, env_id, endpoint, token)
    if found is None:
        return Outcome(False, reason)
    name = f"requests/{uuid.uuid4().hex}.json"
    body = {"repo_id": found.repo_id, "revision": found.revision, "env_id": found.env_id, "submitter": submitter}
    try:
        HfApi(endpoint=endpoint, token=token).upload_file(
            path_or_fileobj=json.dumps(body).encode(), path_in_repo=name, repo_id=dataset_id, repo_type="dataset",
            commit_message=f"request: {found.repo_id}")
    except Exception as err:  # any failure of the write is reported, never raised into the app
        return Outcome(False, f"could not write the request to {dataset_id} ({type(err).__name__}: "
                              f"{clean_text(str(err), limit=200)}); nothing was queued, try again later")
    request = {**body, "status": "submitted", "file": name, "env_key": found.env_key}
    return Outcome(True, f"request written to {dataset_id}/{name}: {found.repo_id} @ {found.revision[:10]} on "
                         f"{found.env_key}; the head queues it at its next sync", request)
