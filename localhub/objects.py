"""The value types of a local Hub's storage: repo references, commits and file entries (with
the content hashes that name them), the errors it raises, and atomic file writes."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .names import REPO_TYPES, InvalidName, check_repo_id, check_repo_part

HASH_CHUNK = 1 << 20


class NotFound(LookupError):
    """A repo, revision or file that does not exist; `kind` picks the Hub's X-Error-Code."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # "RepoNotFound" | "RevisionNotFound" | "EntryNotFound"


class Conflict(RuntimeError):
    """A write that lost a race: stale parentCommit (HTTP 412) or an existing repo (409)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status




@dataclass(frozen=True)
class FileEntry:
    oid: str  # git blob sha1, what the Hub calls the blob id
    sha256: str
    size: int


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, FileEntry]
    root: bool = False  # content lives under ROOT rather than in the blob store

    def to_json(self) -> dict:
        return {
            "sha": self.sha,
            "parent": self.parent,
            "title": self.title,
            "message": self.message,
            "date": self.date,
            "root": self.root,
            "files": {p: [f.oid, f.sha256, f.size] for p, f in sorted(self.files.items())},
        }

    @classmethod
    def from_json(cls, data: dict) -> Commit:
        files = {p: FileEntry(*v) for p, v in data["files"].items()}
        return cls(data["sha"], data["parent"], data["title"], data["message"], data["date"], files,
                   data.get("root", False))


@dataclass(frozen=True)
class RepoRef:
    repo_type: str
    repo_id: str

    @property
    def key(self) -> str:
        return f"{self.repo_type}s/{self.repo_id}"


def hash_file(path: Path) -> FileEntry:
    """git blob sha1 and sha256 of a file, read once."""
    size = path.stat().st_size
    git = hashlib.sha1(f"blob {size}\0".encode())
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            git.update(chunk)
            sha.update(chunk)
    return FileEntry(git.hexdigest(), sha.hexdigest(), size)


def hash_bytes(data: bytes) -> FileEntry:
    git = hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()
    return FileEntry(git, hashlib.sha256(data).hexdigest(), len(data))


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def repo_ref(repo_type: str, namespace: str, name: str) -> RepoRef:
    if repo_type not in REPO_TYPES:
        raise InvalidName(f"unknown repo type {repo_type!r}")
    check_repo_part(namespace, "namespace")
    check_repo_part(name, "repo name")
    return RepoRef(repo_type, check_repo_id(f"{namespace}/{name}"))
