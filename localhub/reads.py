"""The read routes of localhub: repo info, listings (paged), trees, paths-info, commits, refs,
file downloads (with `Range`) and gating, whoami."""

from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import parse_qs, quote, urlencode

from .errors import HttpError
from .names import check_path, check_revision
from .storage import Commit, NotFound, RepoRef

STREAM_CHUNK = 1 << 16


class ReadRoutes:
    """Mixed into the request handler (localhub.handler.HubHandler)."""

    def _info(self, ref: RepoRef, revision: str | None) -> None:
        commit = self._commit_for(ref, revision)
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        self._json(self.server.storage.info(ref, commit, blobs=blobs))

    def _list(self, repo_type: str) -> None:
        """A listing page (localhub.listing: filters, order, `Link` paging)."""
        from .listing import list_page

        q = self.query
        size = self.server.config.page_size
        limit = _query_int(q, "limit")
        if limit:
            size = min(size, limit)
        kind = "models" if repo_type == "model" else "datasets"
        page, headers = list_page(self.server.storage, repo_type, q, size=size, start=_query_int(q, "cursor") or 0,
                                  next_url=lambda params: f"{self._base_url()}/api/{kind}?{urlencode(params)}")
        self._json(page, headers=headers)

    def _tree(self, ref: RepoRef, revision: str, folder: str) -> None:
        commit = self._commit_for(ref, revision)
        if folder:
            check_path(folder)
        recursive = (self.query.get("recursive") or ["false"])[0].lower() in ("1", "true")
        prefix = f"{folder}/" if folder else ""
        entries: dict[str, dict] = {}
        for path, entry in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                sub = prefix + "/".join(parts[:depth])
                entries.setdefault(sub, {"type": "directory", "oid": _tree_oid(commit, sub), "path": sub})
            if recursive or len(parts) == 1:
                entries[path] = _file_entry(path, entry)
        if folder and not entries:
            raise NotFound("EntryNotFound", f"folder {folder} not found in {ref.repo_id}")
        self._json(list(entries.values()))

    def _paths_info(self, ref: RepoRef, revision: str) -> None:
        body = self._read_body()
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = self._json_body().get("paths", [])
        else:
            paths = parse_qs(body.decode("utf-8", "replace")).get("paths", [])
        commit = self._commit_for(ref, revision)
        out = []
        for path in paths if isinstance(paths, list) else []:
            path = check_path(str(path).strip("/"))
            if path in commit.files:
                out.append(_file_entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append({"type": "directory", "oid": _tree_oid(commit, path), "path": path})
        self._json(out)

    def _commits(self, ref: RepoRef, revision: str) -> None:
        check_revision(revision)
        commits = self.server.storage.history(ref, revision)
        self._json([
            {"id": c.sha, "title": c.title, "message": c.message, "date": c.date,
             "authors": [{"user": "localhub"}]}
            for c in commits
        ])

    def _refs(self, ref: RepoRef) -> None:
        head = self.server.storage.head(ref)
        branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": head}
        self._json({"branches": [branch], "converts": [], "tags": [], "pullRequests": []})

    def _resolve(self, method: str, ref: RepoRef, revision: str, path: str) -> None:
        commit = self._commit_for(ref, revision)
        check_path(path)
        self._check_gate(ref, commit)
        entry, file_path = self.server.storage.open_file(ref, commit, path)
        headers = {
            "ETag": f'"{entry.oid}"',
            "X-Repo-Commit": commit.sha,
            "Accept-Ranges": "bytes",
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}",
        }
        start, end = 0, entry.size - 1
        status = 200
        range_header = self.headers.get("Range")
        if range_header and entry.size > 0:
            start, end = _parse_range(range_header, entry.size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method == "HEAD":
            return
        with open(file_path, "rb") as fh:
            fh.seek(start)
            remaining = length
            while remaining > 0:
                chunk = fh.read(min(STREAM_CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _check_gate(self, ref: RepoRef, commit: Commit) -> None:
        """A gated repo's files need credentials: the server's token when it has one, else any
        bearer token (localhub has no accounts; the point is the anonymous refusal)."""
        from .storage import gated_mode

        if not gated_mode(self.server.storage.card(ref, commit)):
            return
        given = self.headers.get("Authorization", "")
        expected = self.server.config.token
        granted = (hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()) if expected
                   else given.startswith("Bearer ") and len(given) > len("Bearer "))
        if not granted:
            raise HttpError(401, f"access to {ref.repo_id} is restricted: accept its conditions and "
                                 "authenticate", "GatedRepo")

    def _whoami(self) -> None:
        expected = self.server.config.token
        given = self.headers.get("Authorization", "")
        if expected is not None and not hmac.compare_digest(given.encode(), f"Bearer {expected}".encode()):
            raise HttpError(401, "Invalid credentials in Authorization header")
        self._json({"type": "user", "name": "localhub", "fullname": "localhub user", "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}}})


def _file_entry(path: str, entry) -> dict:
    return {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}


def _tree_oid(commit: Commit, folder: str) -> str:
    prefix = folder + "/"
    listing = "".join(f"{p}\0{f.oid}\n" for p, f in sorted(commit.files.items()) if p.startswith(prefix))
    return hashlib.sha1(listing.encode()).hexdigest()


def _query_int(query: dict, name: str) -> int | None:
    """A non-negative integer query parameter (None when absent); HTTP 400 when it is not one
    or is longer than 18 digits (no paging cursor or limit is)."""
    value = (query.get(name) or [""])[0]
    if value == "":
        return None
    if not re.fullmatch(r"\d{1,18}", value):
        raise HttpError(400, f"query parameter {name!r} must be a non-negative integer of at most 18 digits")
    return int(value)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = re.fullmatch(r"bytes=(\d{0,18})-(\d{0,18})", header.strip())
    if not match or match.groups() == ("", ""):
        raise HttpError(416, f"unsupported Range {header!r}: one 'bytes=start-end' range only")
    first, last = match.groups()
    if first == "":
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HttpError(416, f"Range {header!r} is outside the file's {size} bytes")
    return start, end
