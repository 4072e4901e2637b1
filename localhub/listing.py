"""`GET /api/models` and `/api/datasets`: filtered listings, paged by a `Link: <...>; rel="next"`
header as on the Hub.

Why a module of its own: a sweep lists thousands of repos, and a repo's info (its card parsed,
its head commit resolved) is the costly part. In the default order (by repo id) a page is built
by scanning the sorted repo names from the cursor on and computing infos only until the page is
full, so listing N repos costs N infos whatever the page size (the cursor is the index of the
next repo name to scan: numeric, as before). A `sort` other than by id needs every info first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .storage import RepoRef, Storage

_SORT_FIELDS = {"lastModified": "lastModified", "createdAt": "createdAt", "downloads": "downloads",
                "likes": "likes", "trendingScore": "likes", "id": "id"}


class ListQuery:
    """The filters of a listing request, read once from its query string."""

    def __init__(self, query: dict[str, list[str]]):
        self.query = query
        self.search = (query.get("search") or [""])[0].lower()
        self.author = (query.get("author") or [""])[0]
        self.filters = [f for value in query.get("filter", []) for f in value.split(",") if f]
        self.full = (query.get("full") or ["false"])[0].lower() in ("1", "true")
        self.card = (query.get("cardData") or ["false"])[0].lower() in ("1", "true")
        sort = (query.get("sort") or [""])[0]
        self.sort = _SORT_FIELDS.get(sort)
        self.descending = (query.get("direction") or ["-1"])[0] != "1" and self.sort != "id"

    def named(self, ref: RepoRef) -> bool:
        """The filters that need no info (search, author)."""
        if self.search and self.search not in ref.repo_id.lower():
            return False
        return not (self.author and ref.repo_id.split("/")[0] != self.author)

    def info(self, storage: Storage, ref: RepoRef) -> dict | None:
        """The repo's listing entry, or None when a tag filter leaves it out."""
        info = storage.info(ref, storage.resolve(ref, None), full=self.full)
        if any(f not in info["tags"] and f != ref.repo_id for f in self.filters):
            return None
        if not self.card:
            info.pop("cardData", None)
        return info


def list_page(storage: Storage, repo_type: str, query: dict[str, list[str]], *, size: int, start: int,
              next_url: Callable[[list[tuple[str, str]]], str]) -> tuple[list[dict], dict[str, str]]:
    """(page of infos, response headers) for a listing from cursor `start`; `next_url(params)`
    builds the URL of the next page from its query parameters."""
    wanted = ListQuery(query)
    refs = [ref for ref in storage.list_repos(repo_type) if wanted.named(ref)]
    if wanted.sort not in (None, "id"):
        items = [i for i in (wanted.info(storage, ref) for ref in refs) if i is not None]
        items.sort(key=lambda i: i.get(wanted.sort) or "", reverse=wanted.descending)
        page, after = items[start:start + size], start + size
        more = after < len(items)
    else:
        page, after = [], start
        while after < len(refs) and len(page) < size:
            info = wanted.info(storage, refs[after])
            after += 1
            if info is not None:
                page.append(info)
        more = after < len(refs)
    headers: dict[str, Any] = {}
    if more:
        params = [(k, v) for k, values in query.items() if k != "cursor" for v in values]
        params.append(("cursor", str(after)))
        headers["Link"] = f'<{next_url(params)}>; rel="next"'
    return page, headers
