"""The NDJSON payload of `POST /api/{type}s/{repo}/commit/{rev}`, read from the spooled body
line by line (localhub.jsonstream) and validated whole before anything is committed. File
contents (base64, inline) are decoded chunk by chunk into staged files in the state dir, so the
memory a commit costs does not grow with its size; the caller moves them into the blob store
once the whole payload is valid, and deletes them otherwise (`Payload.discard`)."""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import HttpError
from .jsonstream import JsonError, JsonLines, Spilled
from .names import check_path

B64_CHUNK = 1 << 18  # a multiple of 4 characters


@dataclass
class Payload:
    header: dict
    additions: dict[str, Path] = field(default_factory=dict)  # repo path -> staged file
    deletions: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    staged: list[Path] = field(default_factory=list)

    def discard(self) -> None:
        for path in self.staged:
            path.unlink(missing_ok=True)


def _b64_pieces(content: str | Spilled):
    if isinstance(content, str):
        for start in range(0, len(content), B64_CHUNK):
            yield content[start:start + B64_CHUNK].encode("ascii", errors="strict")
        return
    with content.open() as fh:
        while piece := fh.read(B64_CHUNK):
            yield piece


def _stage(content: str | Spilled, staging: Path, number: int, path: str) -> Path:
    fd, name = tempfile.mkstemp(dir=staging, prefix=".staged-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            carry = b""
            for piece in _b64_pieces(content):
                data = carry + piece
                cut = len(data) - len(data) % 4
                out.write(base64.b64decode(data[:cut], validate=True))
                carry = data[cut:]
            if carry:
                raise ValueError("truncated base64")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        Path(name).unlink(missing_ok=True)
        raise HttpError(400, f"line {number}: content of {path} is not valid base64") from None
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def parse_commit(body: IO[bytes], staging: Path) -> Payload:
    """Validate the whole payload; raise HttpError (400) with nothing left behind otherwise."""
    staging.mkdir(parents=True, exist_ok=True)
    lines = JsonLines(body, spill_dir=staging)
    payload = Payload(header={})
    header_seen = False
    try:
        for number, item in lines:
            if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
                raise HttpError(400, f"commit payload line {number} needs 'key' and an object 'value'")
            key, value = item.get("key"), item["value"]
            if key == "header":
                header_seen = True
                payload.header = {k: v for k, v in value.items() if not isinstance(v, Spilled)}
                parent = value.get("parentCommit")
                if parent is not None and not (isinstance(parent, str) and re.fullmatch(r"[0-9a-f]{40}", parent)):
                    raise HttpError(400, "parentCommit must be a 40-hex commit sha")
                continue
            path = value.get("path")
            if not isinstance(path, str):
                raise HttpError(400, f"commit payload line {number}: 'path' must be a string")
            path = check_path(path.rstrip("/") if key == "deletedFolder" else path)
            if key == "file":
                content = value.get("content")
                if value.get("encoding", "base64") != "base64" or not isinstance(content, (str, Spilled)):
                    raise HttpError(400, f"line {number}: file content must be a base64 string")
                staged = _stage(content, staging, number, path)
                payload.staged.append(staged)
                if path in payload.additions:
                    payload.additions[path].unlink(missing_ok=True)
                payload.additions[path] = staged
                if isinstance(content, Spilled):
                    content.discard()
            elif key == "deletedFile":
                payload.deletions.append(path)
            elif key == "deletedFolder":
                payload.folders.append(path)
            elif key == "lfsFile":
                raise HttpError(400, f"line {number}: localhub takes regular uploads only; "
                                     "its preupload answer never asks for LFS")
            else:
                raise HttpError(400, f"line {number}: unknown operation {str(key)[:40]!r}")
        if not header_seen:
            raise HttpError(400, "commit payload has no 'header' line")
    except JsonError as err:
        payload.discard()
        raise HttpError(400, f"commit payload is not NDJSON: {err}") from None
    except BaseException:
        payload.discard()
        raise
    finally:
        for spilled in lines.spilled:
            spilled.discard()
    return payload
