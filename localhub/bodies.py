"""Request bodies, read from the socket in chunks and spooled to an anonymous temporary file
(never held whole in memory), refused past a size cap; small JSON bodies parsed with bounds.

A body is always read in full (or the connection is closed), so the next request on a kept-alive
connection is never read from the middle of the last one's body.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import IO

from .errors import HttpError

CHUNK = 1 << 16
MAX_JSON_BODY = 16 * 1024 * 1024  # create, preupload, paths-info, validate-yaml: small documents
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


def _chunked(rfile: IO[bytes], limit: int):
    """The chunks of a `Transfer-Encoding: chunked` body (HttpError past `limit` or malformed)."""
    total = 0
    while True:
        line = rfile.readline(1024).strip()
        digits = line.split(b";")[0].strip()
        if not _CHUNK_SIZE.fullmatch(digits):
            raise HttpError(400, "malformed chunked body")
        size = int(digits, 16)
        if size == 0:
            while rfile.readline(1024).strip():
                pass
            return
        total += size
        if total > limit:
            raise HttpError(413, f"request body is over the {limit}-byte limit")
        while size:
            data = rfile.read(min(size, CHUNK))
            if not data:
                raise HttpError(400, "the body ended early")
            size -= len(data)
            yield data
        rfile.readline(1024)


def _sized(rfile: IO[bytes], length: int):
    remaining = length
    while remaining:
        data = rfile.read(min(remaining, CHUNK))
        if not data:
            raise HttpError(400, "the body ended early")
        remaining -= len(data)
        yield data


def body_chunks(headers, rfile: IO[bytes], limit: int):
    """The body's chunks, or HttpError (400, 413) before reading more than `limit` bytes."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        return _chunked(rfile, limit)
    text = (headers.get("Content-Length") or "0").strip()
    if not re.fullmatch(r"\d{1,19}", text):
        if re.fullmatch(r"-?\d+", text) and not text.startswith("-"):
            raise HttpError(413, f"request body of {text[:30]} bytes is over the {limit}-byte limit")
        raise HttpError(400, "malformed Content-Length")
    length = int(text)
    if length > limit:
        raise HttpError(413, f"request body of {length} bytes is over the {limit}-byte limit")
    return _sized(rfile, length)


def spool(chunks, directory: Path | None = None) -> IO[bytes]:
    """The chunks written to an anonymous temporary file (no name on disk), rewound."""
    fh = tempfile.TemporaryFile(dir=directory)
    try:
        for data in chunks:
            fh.write(data)
    except BaseException:
        fh.close()
        raise
    fh.seek(0)
    return fh


def parse_json_object(fh: IO[bytes], size: int) -> dict:
    """A small JSON object body (HttpError 400/413 otherwise; deep nesting is a 400, not a 500)."""
    if size > MAX_JSON_BODY:
        raise HttpError(413, f"a JSON body of {size} bytes is over the {MAX_JSON_BODY}-byte limit")
    body = fh.read()
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HttpError(400, "request body is not valid JSON (or is nested too deeply)") from None
    if not isinstance(data, dict):
        raise HttpError(400, "request body must be a JSON object")
    return data
