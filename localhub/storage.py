"""Repos, commits and blobs of a local Hub.

A repo's first commit is the folder as found under ROOT (its sha derives from the content, so
it survives restarts); later commits live in the state dir: content-addressed blobs, one JSON
file per commit and a `main` ref replaced atomically under a lock. ROOT itself is never
written, so a read-only folder can be served.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .cards import front_matter, tags_from_card
from .names import SHA1, InvalidName, check_path, check_repo_id
from .objects import (  # noqa: F401 (re-exported: the storage's types are imported from here)
    Commit,
    Conflict,
    FileEntry,
    NotFound,
    RepoRef,
    atomic_write,
    hash_bytes,
    hash_file,
    now_iso,
    repo_ref,
)

DEFAULT_BRANCH = "main"
CARD_CACHE_ENTRIES = 20_000  # parsed cards kept (cleared when full): a few KB each


def default_state_dir(root: Path) -> Path:
    """Inside ROOT when writable, else a per-user cache keyed by ROOT's absolute path.

    Root passes every permission check, so a folder whose mode says read-only (like
    `../shared`) counts as read-only here too: we never write where the owner said not to."""
    writable = os.access(root, os.W_OK) and (os.geteuid() != 0 or root.stat().st_mode & 0o200)
    if writable:
        return root / ".localhub"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache / "localhub" / digest


@dataclass
class Storage:
    root: Path
    state: Path
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _root_cache: dict[str, tuple[tuple, Commit]] = field(default_factory=dict)
    _card_cache: dict[str, dict] = field(default_factory=dict)  # README oid -> front matter

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.state = Path(self.state).resolve()
        (self.state / "blobs").mkdir(parents=True, exist_ok=True)
        (self.state / "repos").mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- discovery

    def root_dir(self, ref: RepoRef) -> Path:
        prefix = self.root / "datasets" if ref.repo_type == "dataset" else self.root
        return prefix.joinpath(*ref.repo_id.split("/"))

    def state_dir(self, ref: RepoRef) -> Path:
        return self.state / "repos" / f"{ref.repo_type}s" / ref.repo_id

    def _in_root(self, ref: RepoRef) -> bool:
        """A repo folder under ROOT, really: no symlink anywhere on the way (a linked namespace
        or `datasets` folder would serve files from outside ROOT), not inside the state dir."""
        path = self.root_dir(ref)
        if not path.is_dir() or path.is_symlink():
            return False
        real = Path(os.path.realpath(path))
        return real.is_relative_to(self.root) and real == path and self.state not in (path, *path.parents)

    def exists(self, ref: RepoRef) -> bool:
        return self._in_root(ref) or (self.state_dir(ref) / "refs" / DEFAULT_BRANCH).is_file()

    def list_repos(self, repo_type: str) -> list[RepoRef]:
        found: set[str] = set()
        base = self.root / "datasets" if repo_type == "dataset" else self.root
        for ns in _subdirs(base):
            if repo_type == "model" and ns.name == "datasets":
                continue
            for name in _subdirs(ns):
                found.add(f"{ns.name}/{name.name}")
        state_base = self.state / "repos" / f"{repo_type}s"
        for ns in _subdirs(state_base):
            for name in _subdirs(ns):
                if (name / "refs" / DEFAULT_BRANCH).is_file():
                    found.add(f"{ns.name}/{name.name}")
        refs = []
        for repo_id in sorted(found):
            try:
                ref = RepoRef(repo_type, check_repo_id(repo_id))
            except InvalidName:
                continue  # a folder whose name no client could ask for
            if self.exists(ref):  # e.g. not behind a symlinked `datasets` folder
                refs.append(ref)
        return refs

    # ---------------------------------------------------------------- commits

    def root_commit(self, ref: RepoRef) -> Commit:
        """The commit of the files under ROOT, cached while no file's size or mtime changes."""
        base = self.root_dir(ref)
        paths = sorted(_walk_files(base))
        stamp = tuple((p, (base / p).stat().st_size, (base / p).stat().st_mtime_ns) for p in paths)
        cached = self._root_cache.get(ref.key)
        if cached and cached[0] == stamp:
            return cached[1]
        files = {p: hash_file(base / p) for p in paths}
        manifest = json.dumps({p: f.oid for p, f in sorted(files.items())}, sort_keys=True)
        sha = hashlib.sha1(f"localhub-root\0{ref.key}\0{manifest}".encode()).hexdigest()
        newest = max((s[2] for s in stamp), default=0)
        date = dt.datetime.fromtimestamp(newest / 1e9, dt.UTC).isoformat().replace("+00:00", "Z")
        commit = Commit(sha, None, "Initial commit", "Files found under the served root", date, files, True)
        self._root_cache[ref.key] = (stamp, commit)
        return commit

    def head(self, ref: RepoRef) -> str:
        """The sha `main` points at. The ref records the root commit its history grew from, in
        the same atomic file: when the files under ROOT change, the history restarts from them."""
        if not self.exists(ref):
            raise NotFound("RepoNotFound", f"repository {ref.repo_id} ({ref.repo_type}) not found")
        head, base = self._read_ref(ref)
        if self._in_root(ref):
            root = self.root_commit(ref)
            return head if head is not None and base == root.sha else root.sha
        return head

    def _ref_file(self, ref: RepoRef) -> Path:
        return self.state_dir(ref) / "refs" / DEFAULT_BRANCH

    def _read_ref(self, ref: RepoRef) -> tuple[str | None, str | None]:
        """(head sha, root sha it grew from) of `main`, (None, None) when never written."""
        path = self._ref_file(ref)
        if not path.is_file():
            return None, None
        text = path.read_text().strip()
        if not text.startswith("{"):  # a bare sha: written by an older localhub
            return text, None
        data = json.loads(text)
        return data["head"], data.get("root")

    def commit(self, ref: RepoRef, sha: str) -> Commit:
        if self._in_root(ref):
            root = self.root_commit(ref)
            if sha == root.sha:
                return root
        path = self.state_dir(ref) / "commits" / f"{sha}.json"
        if not SHA1.match(sha) or not path.is_file():
            raise NotFound("RevisionNotFound", f"revision {sha} not found in {ref.repo_id}")
        return Commit.from_json(json.loads(path.read_text()))

    def resolve(self, ref: RepoRef, revision: str | None) -> Commit:
        """A branch name (only `main`) or a full commit sha -> the commit."""
        head = self.head(ref)
        if revision in (None, DEFAULT_BRANCH, "refs/heads/main", head):
            return self.commit(ref, head)
        if SHA1.match(revision or ""):
            return self.commit(ref, revision)
        raise NotFound("RevisionNotFound", f"revision {revision!r} not found in {ref.repo_id}")

    def history(self, ref: RepoRef, revision: str | None) -> list[Commit]:
        commits = [self.resolve(ref, revision)]
        while commits[-1].parent:
            commits.append(self.commit(ref, commits[-1].parent))
        return commits

    # ---------------------------------------------------------------- blobs

    def blob_path(self, sha256: str) -> Path:
        return self.state / "blobs" / sha256[:2] / sha256[2:]

    def open_file(self, ref: RepoRef, commit: Commit, path: str) -> tuple[FileEntry, Path]:
        entry = commit.files.get(path)
        if entry is None:
            raise NotFound("EntryNotFound", f"{path} not found in {ref.repo_id} at {commit.sha}")
        blob = self.blob_path(entry.sha256)
        if blob.is_file():
            return entry, blob
        if commit.root:
            base = self.root_dir(ref)
            file_path = base.joinpath(*path.split("/"))
            real = Path(os.path.realpath(file_path))
            if not self._in_root(ref) or not real.is_relative_to(base) or real != file_path:
                raise NotFound("EntryNotFound", f"{path} is not a file under the served root")
            return entry, file_path
        raise NotFound("EntryNotFound", f"content of {path} is missing from the state dir")

    def staging_dir(self) -> Path:
        """Where request bodies are staged before they are valid (same disk as the blobs)."""
        path = self.state / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put_blob_file(self, staged: Path) -> FileEntry:
        """Move a staged file into the blob store (content-addressed; hashed by streaming)."""
        entry = hash_file(staged)
        path = self.blob_path(entry.sha256)
        if path.is_file():
            staged.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(staged, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, path)
        return entry

    def put_blob(self, data: bytes) -> FileEntry:
        entry = hash_bytes(data)
        path = self.blob_path(entry.sha256)
        if not path.is_file():
            atomic_write(path, data)
        return entry

    def _ingest_root(self, ref: RepoRef, commit: Commit) -> None:
        """Copy a root commit's content into the blob store before history moves past it, so
        older revisions stay downloadable whatever happens to ROOT later."""
        base = self.root_dir(ref)
        for path, entry in commit.files.items():
            if not self.blob_path(entry.sha256).is_file():
                data = base.joinpath(*path.split("/")).read_bytes()
                if hash_bytes(data).sha256 != entry.sha256:
                    raise Conflict(409, f"{path} changed on disk while being committed; retry")
                atomic_write(self.blob_path(entry.sha256), data)
        atomic_write(self.state_dir(ref) / "commits" / f"{commit.sha}.json",
                     json.dumps(commit.to_json()).encode())

    # ---------------------------------------------------------------- writes

    @contextlib.contextmanager
    def locked(self, ref: RepoRef):
        """One writer per repo: a thread lock in this process plus a file lock across processes."""
        with self._locks_guard:
            lock = self._locks.setdefault(ref.key, threading.Lock())
        with lock:
            lock_file = self.state_dir(ref).parent / f".{ref.repo_id.split('/')[1]}.lock"
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            with lock_file.open("a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def create_repo(self, ref: RepoRef) -> bool:
        """Create an empty repo with the Hub's initial `.gitattributes`; False if it exists."""
        check_repo_id(ref.repo_id)
        with self.locked(ref):
            if self.exists(ref):
                return False
            data = GITATTRIBUTES.encode()
            entry = self.put_blob(data)
            self._write_commit(ref, None, "initial commit", "", {".gitattributes": entry})
            return True

    def delete_repo(self, ref: RepoRef) -> None:
        """Delete a repo created through the API; ROOT folders are the operator's, not ours."""
        with self.locked(ref):
            if not self.exists(ref):
                raise NotFound("RepoNotFound", f"repository {ref.repo_id} not found")
            if self._in_root(ref):
                raise Conflict(403, f"{ref.repo_id} is served from the root folder: remove it there")
            shutil.rmtree(self.state_dir(ref))

    def commit_changes(self, ref: RepoRef, *, parent: str | None, title: str, message: str,
                       additions: dict[str, bytes | FileEntry], deletions: list[str],
                       folder_deletions: list[str]) -> Commit:
        """Apply one commit atomically: content first, then the commit file, then the ref."""
        for path in [*additions, *deletions, *folder_deletions]:
            check_path(path)
        with self.locked(ref):
            head = self.head(ref)
            if parent is not None and parent != head:
                raise Conflict(412, f"parentCommit {parent} is not the head of main ({head}): "
                                    "fetch the new head and retry")
            current = self.commit(ref, head)
            files = dict(current.files)
            for path in deletions:
                if path not in files:
                    raise NotFound("EntryNotFound", f"cannot delete {path}: not in {ref.repo_id}")
                del files[path]
            for folder in folder_deletions:
                doomed = [p for p in files if p.startswith(folder + "/")]
                if not doomed:
                    raise NotFound("EntryNotFound", f"cannot delete folder {folder}: not in {ref.repo_id}")
                for path in doomed:
                    del files[path]
            base = self._read_ref(ref)[1]
            if current.root:  # the history moves past the ROOT files: keep their content
                self._ingest_root(ref, current)
                base = current.sha
            for path, data in additions.items():  # a FileEntry is already in the blob store
                files[path] = data if isinstance(data, FileEntry) else self.put_blob(data)
            return self._write_commit(ref, head, title, message, files, base)

    def _write_commit(self, ref: RepoRef, parent: str | None, title: str, message: str,
                      files: dict[str, FileEntry], base: str | None = None) -> Commit:
        date = now_iso()
        manifest = json.dumps({p: f.oid for p, f in sorted(files.items())}, sort_keys=True)
        seed = f"{ref.key}\0{parent}\0{title}\0{date}\0{os.getpid()}\0{manifest}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(sha, parent, title, message, date, files)
        directory = self.state_dir(ref)
        atomic_write(directory / "commits" / f"{sha}.json", json.dumps(commit.to_json()).encode())
        atomic_write(self._ref_file(ref), json.dumps({"head": sha, "root": base}).encode())
        return commit

    # ---------------------------------------------------------------- metadata

    def card(self, ref: RepoRef, commit: Commit) -> dict:
        """The README's front matter, parsed once per README content (its oid): listings of
        thousands of repos ask for every card on every sweep."""
        if "README.md" not in commit.files:
            return {}
        oid = commit.files["README.md"].oid
        cached = self._card_cache.get(oid)
        if cached is None:
            _, path = self.open_file(ref, commit, "README.md")
            cached = front_matter(path.read_text(encoding="utf-8", errors="replace"))
            if len(self._card_cache) >= CARD_CACHE_ENTRIES:
                self._card_cache.clear()
            self._card_cache[oid] = cached
        return copy.deepcopy(cached)

    def info(self, ref: RepoRef, commit: Commit, *, blobs: bool = False, full: bool = True) -> dict:
        card = self.card(ref, commit)
        created = self.history(ref, commit.sha)[-1].date
        data = {
            "_id": hashlib.sha1(ref.key.encode()).hexdigest()[:24],
            "id": ref.repo_id,
            "author": ref.repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.date,
            "createdAt": created,
            "private": False,
            "gated": gated_mode(card),
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": tags_from_card(card),
            "cardData": card or None,
        }
        if ref.repo_type == "model":
            data["modelId"] = ref.repo_id
            data["library_name"] = card.get("library_name")
            data["pipeline_tag"] = card.get("pipeline_tag")
        if full:
            siblings = []
            for path, entry in sorted(commit.files.items()):
                sib = {"rfilename": path}
                if blobs:
                    sib.update(size=entry.size, blobId=entry.oid)
                siblings.append(sib)
            data["siblings"] = siblings
        return data


def gated_mode(card: dict) -> str | bool:
    """localhub's stand-in for the Hub's gating setting: `gated: auto|manual` in the front matter
    (a repo that requires accepting conditions before its files can be downloaded)."""
    value = card.get("gated")
    if value is True:
        return "manual"
    return value if value in ("auto", "manual") else False


GITATTRIBUTES = "*.zip filter=lfs diff=lfs merge=lfs -text\n*.pth filter=lfs diff=lfs merge=lfs -text\n"


def _subdirs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir()
                  if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def _walk_files(base: Path) -> list[str]:
    """Regular files under a repo folder, as repo paths; `.git` and symlinks are skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != ".git" and not os.path.islink(os.path.join(dirpath, d))]
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            rel = full.relative_to(base).as_posix()
            try:
                out.append(check_path(rel))
            except InvalidName:
                continue
    return out
