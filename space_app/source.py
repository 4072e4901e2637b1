"""Where the Space reads its rows: a store folder (a head's SQLite store) or a Hub dataset (its
published `leaderboard.parquet` and replays; a deployed Space). One interface, two sources.

Every read goes through `Guarded`: a read that fails (a locked or damaged database, a Hub that
does not answer) serves the last good answer to the same question and sets a banner saying what
failed and since when; the next good read clears it. Nothing here raises into the app.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from leaderboard.certify import certify_entries, check_user, of_user
from leaderboard.intake import MemoryRateLimit, Outcome, submit_to_dataset, submit_to_store
from leaderboard.ranking import SORTS
from leaderboard.rows import clean_text

log = logging.getLogger(__name__)
CACHE_ENTRIES = 512
DATASET_REFRESH_SECONDS = 30.0


class Guarded:
    """Remembers the last good answer of each read, and what failed since."""

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.failure: str | None = None
        self.failed_since: float | None = None

    def read(self, key: tuple, fn: Callable[[], Any], empty: Any) -> Any:
        try:
            value = fn()
        except Exception as err:  # any failure of a read: serve the last good data, say so
            log.warning("read %s failed (serving the last good data): %s: %s", key[0], type(err).__name__, err)
            with self._lock:
                if self.failed_since is None:
                    self.failed_since = time.time()
                self.failure = f"{type(err).__name__}: {clean_text(str(err), limit=300) or ''}"
                return self._cache.get(key, empty)
        with self._lock:
            self.failure, self.failed_since = None, None
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value

    @property
    def banner(self) -> str | None:
        if self.failure is None:
            return None
        since = time.strftime("%H:%M:%S UTC", time.gmtime(self.failed_since))
        return f"The data source cannot be read since {since} ({self.failure}): showing the last good data."


def _filter(frame: pd.DataFrame, env_key: str | None, search: str | None, algo: str | None,
            verdict: str | None) -> pd.DataFrame:
    if frame.empty:
        return frame
    keep = pd.Series(True, index=frame.index)
    if env_key:
        keep &= frame["env_key"] == env_key
    if search:
        keep &= frame["repo_id"].str.lower().str.contains(search.lower(), regex=False)
    if algo:
        keep &= frame["algo"].fillna("").str.lower() == algo.lower()
    if verdict:
        keep &= frame["claim_verdict"] == verdict
    return frame[keep]


class StoreSource:
    """A store folder on this machine: reads go to its database, submissions to its queue."""

    mode = "store"

    def __init__(self, root: str | Path, *, endpoint: str | None = None, token: Any = None):
        from leaderboard.store import Store

        self.store = Store(root)
        self.endpoint, self.token = endpoint, token
        self.guard = Guarded()
        self.limiter = MemoryRateLimit()
        self.where = str(root)

    def env_keys(self) -> list[str]:
        return self.guard.read(("envs",), self.store.env_keys, [])

    def algos(self, env_key: str | None) -> list[str]:
        return self.guard.read(("algos", env_key), lambda: self.store.algos(env_key), [])

    def page(self, env_key: str | None, *, search: str | None = None, algo: str | None = None,
             verdict: str | None = None, sort: str | None = None, limit: int = 25,
             offset: int = 0) -> tuple[pd.DataFrame, int]:
        def run():
            frame = self.store.ranking(env_key, search=search, algo=algo, verdict=verdict, sort=sort, limit=limit,
                                       offset=offset)
            return frame, self.store.count(env_key, search=search, algo=algo, verdict=verdict)

        return self.guard.read(("page", env_key, search, algo, verdict, sort, limit, offset), run,
                               (pd.DataFrame(), 0))

    def entry(self, env_key: str, repo_id: str) -> dict[str, Any] | None:
        return self.guard.read(("entry", env_key, repo_id), lambda: self.store.entry(env_key, repo_id), None)

    def scores(self, env_key: str) -> list[float]:
        return self.guard.read(("scores", env_key), lambda: self.store.scores(env_key), [])

    def replay(self, row: dict[str, Any]) -> str | None:
        video = row.get("video")
        if not video:
            return None
        path = (self.store.root / video).resolve()
        inside = path.is_relative_to(self.store.replays_dir.resolve())
        return str(path) if inside and path.is_file() else None

    def user_entries(self, user: str) -> pd.DataFrame:
        user = check_user(user)
        return self.guard.read(("user", user), lambda: of_user(self.store.ranking(search=user + "/"), user),
                               pd.DataFrame())

    def certification(self, user: str) -> pd.DataFrame:
        return certify_entries(self.user_entries(user))

    def submit(self, repo_id: str, env_id: str | None, submitter: str) -> Outcome:
        try:
            return submit_to_store(self.store, repo_id, env_id, submitter=submitter, endpoint=self.endpoint,
                                   token=self.token, limiter=self.limiter)
        except Exception as err:  # a store that cannot be written: say so, keep serving
            return Outcome(False, f"the request could not be queued ({type(err).__name__}: "
                                  f"{clean_text(str(err), limit=200)}); try again later")

    def requests(self, limit: int = 20) -> list[dict[str, Any]]:
        def run():
            with self.store.database.read() as db:
                ids = [r[0] for r in db.execute("SELECT id FROM requests ORDER BY id DESC LIMIT ?", (limit,))]
            queue = self.store.queue()
            return [queue.get(i).to_dict() for i in ids]

        return self.guard.read(("requests", limit), run, [])

    def request(self, request_id: int) -> dict[str, Any] | None:
        def run():
            found = self.store.queue().get(int(request_id))
            return found.to_dict() if found else None

        return self.guard.read(("request", request_id), run, None)


class DatasetSource:
    """A Hub dataset a head publishes to (`leaderboard.publish`): `leaderboard.parquet` is read
    again when older than `refresh` seconds; submissions become `requests/*.json` files."""

    mode = "dataset"

    def __init__(self, dataset_id: str, *, endpoint: str | None = None, token: Any = None,
                 refresh: float = DATASET_REFRESH_SECONDS, cache_dir: str | Path | None = None):
        self.dataset_id, self.endpoint, self.token = dataset_id, endpoint, token
        self.refresh, self.cache_dir = refresh, cache_dir
        self.guard = Guarded()
        self.where = f"dataset {dataset_id}"
        self.limiter = MemoryRateLimit()
        self._frame: pd.DataFrame | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self._submitted: list[dict[str, Any]] = []

    def _download(self, path: str) -> str:
        from huggingface_hub import hf_hub_download

        return hf_hub_download(self.dataset_id, path, repo_type="dataset", endpoint=self.endpoint, token=self.token,
                               cache_dir=self.cache_dir)

    def frame(self) -> pd.DataFrame:
        with self._lock:
            if self._frame is None or time.monotonic() - self._loaded_at > self.refresh:
                def load():
                    from leaderboard.publish import LEADERBOARD_FILE

                    return pd.read_parquet(self._download(LEADERBOARD_FILE))

                loaded = self.guard.read(("frame",), load, None)
                if loaded is not None:
                    self._frame = loaded
                self._loaded_at = time.monotonic()
            return self._frame if self._frame is not None else pd.DataFrame()

    def env_keys(self) -> list[str]:
        frame = self.frame()
        return sorted(frame["env_key"].dropna().unique()) if not frame.empty else []

    def algos(self, env_key: str | None) -> list[str]:
        frame = _filter(self.frame(), env_key, None, None, None)
        return sorted(frame["algo"].dropna().str.lower().unique()) if not frame.empty else []

    def page(self, env_key: str | None, *, search: str | None = None, algo: str | None = None,
             verdict: str | None = None, sort: str | None = None, limit: int = 25,
             offset: int = 0) -> tuple[pd.DataFrame, int]:
        sort = sort or "score"
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
        frame = _filter(self.frame(), env_key, search, algo, verdict)
        if frame.empty:
            return frame, 0
        by = [c.split()[0] for c in SORTS[sort].split(", ")]
        ascending = [not c.endswith("DESC") for c in SORTS[sort].split(", ")]
        ordered = frame.sort_values(["env_key", *by], ascending=[True, *ascending], kind="stable",
                                    na_position="last")
        return ordered.iloc[offset:offset + limit].reset_index(drop=True), len(ordered)

    def entry(self, env_key: str, repo_id: str) -> dict[str, Any] | None:
        frame = self.frame()
        if frame.empty:
            return None
        found = frame[(frame["env_key"] == env_key) & (frame["repo_id"] == repo_id)]
        return found.iloc[0].to_dict() if len(found) else None

    def scores(self, env_key: str) -> list[float]:
        frame = _filter(self.frame(), env_key, None, None, None)
        return sorted(frame["score"].dropna().tolist(), reverse=True) if not frame.empty else []

    def replay(self, row: dict[str, Any]) -> str | None:
        video = row.get("video")
        if not video:
            return None
        return self.guard.read(("replay", video), lambda: self._download(str(video)), None)

    def user_entries(self, user: str) -> pd.DataFrame:
        return of_user(self.frame(), check_user(user))

    def certification(self, user: str) -> pd.DataFrame:
        return certify_entries(self.user_entries(user))

    def submit(self, repo_id: str, env_id: str | None, submitter: str) -> Outcome:
        outcome = submit_to_dataset(self.dataset_id, repo_id, env_id, submitter=submitter, limiter=self.limiter,
                                    endpoint=self.endpoint, token=self.token)
        if outcome.ok and outcome.request:
            self._submitted.insert(0, {**outcome.request, "id": len(self._submitted) + 1})
        return outcome

    def requests(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._submitted[:limit]

    def request(self, request_id: int) -> dict[str, Any] | None:
        return next((r for r in self._submitted if r["id"] == int(request_id)), None)


def open_source(store: str | Path | None = None, hub_dataset: str | None = None, *, endpoint: str | None = None,
                token: Any = None) -> StoreSource | DatasetSource:
    if hub_dataset:
        return DatasetSource(hub_dataset, endpoint=endpoint, token=token)
    from leaderboard.store import default_store_dir

    return StoreSource(store or default_store_dir(), endpoint=endpoint, token=token)
