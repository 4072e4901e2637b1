"""A bounded, streaming JSON reader for request bodies that may be huge (commit payloads: one
NDJSON line per file, its content inline in base64).

Values are read from a binary file in chunks; a string longer than `spill` bytes is written to a
temporary file instead of memory and returned as a `Spilled` (path and length), so a 700 MB
upload costs a few hundred KB of memory. Nesting is bounded (`max_depth`) and so are numbers
(`MAX_NUMBER_CHARS`): a hostile body is a `JsonError` (HTTP 400), never a recursion or a
quadratic integer conversion.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

CHUNK = 1 << 16
MAX_NUMBER_CHARS = 64
DEFAULT_MAX_DEPTH = 32
DEFAULT_SPILL = 1 << 20
_WS = b" \t\r"
_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f", ord("n"): "\n",
            ord("r"): "\r", ord("t"): "\t"}


class JsonError(ValueError):
    """The body is not (bounded) JSON."""


@dataclass
class Spilled:
    """A long JSON string kept on disk (its UTF-8 bytes at `path`); delete it when done."""

    path: Path
    length: int

    def open(self) -> IO[bytes]:
        return open(self.path, "rb")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class JsonLines:
    """Reads one JSON value per line from `source` (a binary file)."""

    def __init__(self, source: IO[bytes], *, max_depth: int = DEFAULT_MAX_DEPTH, spill: int = DEFAULT_SPILL,
                 spill_dir: Path | None = None) -> None:
        self.source, self.max_depth, self.spill, self.spill_dir = source, max_depth, spill, spill_dir
        self.buf = b""
        self.pos = 0
        self.line = 1
        self.spilled: list[Spilled] = []  # every spill made, so a caller can discard them all

    # ------------------------------------------------------------ buffer

    def _fill(self) -> bool:
        chunk = self.source.read(CHUNK)
        if not chunk:
            return False
        self.buf = self.buf[self.pos:] + chunk
        self.pos = 0
        return True

    def _peek(self) -> int | None:
        if self.pos >= len(self.buf) and not self._fill():
            return None
        return self.buf[self.pos]

    def _take(self) -> int:
        ch = self._peek()
        if ch is None:
            raise JsonError(f"line {self.line}: unexpected end of the body")
        self.pos += 1
        return ch

    def _skip_ws(self) -> int | None:
        while (ch := self._peek()) is not None and ch in _WS:
            self.pos += 1
        return ch

    # ------------------------------------------------------------ lines

    def __iter__(self):
        while True:
            ch = self._skip_ws()
            while ch == ord("\n"):
                self.pos += 1
                self.line += 1
                ch = self._skip_ws()
            if ch is None:
                return
            value = self._value(0)
            ch = self._skip_ws()
            if ch not in (None, ord("\n")):
                raise JsonError(f"line {self.line}: extra data after the JSON value")
            yield self.line, value

    # ------------------------------------------------------------ values

    def _value(self, depth: int) -> Any:
        if depth > self.max_depth:
            raise JsonError(f"line {self.line}: JSON nested more than {self.max_depth} levels deep")
        ch = self._skip_ws()
        if ch == ord("{"):
            return self._object(depth)
        if ch == ord("["):
            return self._array(depth)
        if ch == ord('"'):
            self.pos += 1
            return self._string(allow_spill=True)
        if ch is not None and (ch in b"-0123456789"):
            return self._number()
        for word, value in ((b"true", True), (b"false", False), (b"null", None)):
            if ch == word[0]:
                for expected in word:
                    if self._take() != expected:
                        break
                else:
                    return value
        raise JsonError(f"line {self.line}: not JSON")

    def _object(self, depth: int) -> dict:
        self.pos += 1
        out: dict[str, Any] = {}
        if self._skip_ws() == ord("}"):
            self.pos += 1
            return out
        while True:
            if self._skip_ws() != ord('"'):
                raise JsonError(f"line {self.line}: an object key must be a string")
            self.pos += 1
            key = self._string(allow_spill=False)
            if self._skip_ws() != ord(":"):
                raise JsonError(f"line {self.line}: ':' expected")
            self.pos += 1
            out[key] = self._value(depth + 1)
            ch = self._skip_ws()
            self.pos += 1
            if ch == ord("}"):
                return out
            if ch != ord(","):
                raise JsonError(f"line {self.line}: ',' or '}}' expected")

    def _array(self, depth: int) -> list:
        self.pos += 1
        out: list[Any] = []
        if self._skip_ws() == ord("]"):
            self.pos += 1
            return out
        while True:
            out.append(self._value(depth + 1))
            ch = self._skip_ws()
            self.pos += 1
            if ch == ord("]"):
                return out
            if ch != ord(","):
                raise JsonError(f"line {self.line}: ',' or ']' expected")

    def _number(self) -> int | float:
        token = bytearray()
        while (ch := self._peek()) is not None and ch in b"+-0123456789.eE":
            token.append(ch)
            self.pos += 1
            if len(token) > MAX_NUMBER_CHARS:
                raise JsonError(f"line {self.line}: a number of more than {MAX_NUMBER_CHARS} characters")
        try:
            return json.loads(bytes(token))
        except ValueError:
            raise JsonError(f"line {self.line}: malformed number") from None

    def _string(self, *, allow_spill: bool) -> str | Spilled:
        parts: list[bytes] = []
        size = 0
        sink: IO[bytes] | None = None
        spilled: Spilled | None = None
        while True:
            if self.pos >= len(self.buf) and not self._fill():
                raise JsonError(f"line {self.line}: unterminated string")
            quote = self.buf.find(b'"', self.pos)
            slash = self.buf.find(b"\\", self.pos)
            stop = min(i for i in (quote, slash, len(self.buf)) if i >= 0)
            segment = self.buf[self.pos:stop]
            if b"\n" in segment:  # a raw newline ends an NDJSON line: never inside a string
                raise JsonError(f"line {self.line}: raw newline inside a string")
            parts.append(segment)
            size += len(segment)
            self.pos = stop
            if stop < len(self.buf):
                self.pos += 1
                if stop == quote:
                    break
                parts.append(self._escape())
                size += len(parts[-1])
            if size > self.spill:
                if not allow_spill:
                    raise JsonError(f"line {self.line}: an object key of more than {self.spill} bytes")
                if sink is None:
                    fd, name = tempfile.mkstemp(dir=self.spill_dir, prefix=".spill-", suffix=".tmp")
                    sink = os.fdopen(fd, "wb")
                    spilled = Spilled(Path(name), 0)
                    self.spilled.append(spilled)
                for part in parts:
                    sink.write(part)
                parts, size = [], 0
        if sink is not None and spilled is not None:
            for part in parts:
                sink.write(part)
            spilled.length = sink.tell()
            sink.close()
            return spilled
        try:
            text = b"".join(parts).decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            raise JsonError(f"line {self.line}: a string that is not UTF-8") from None
        if not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text):  # \u escaped pairs -> one char
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        return text

    def _escape(self) -> bytes:
        ch = self._take()
        if ch in _ESCAPES:
            return _ESCAPES[ch].encode()
        if ch != ord("u"):
            raise JsonError(f"line {self.line}: unknown escape")
        digits = bytes(self._take() for _ in range(4))
        try:
            code = int(digits, 16)
        except ValueError:
            raise JsonError(f"line {self.line}: malformed \\u escape") from None
        return chr(code).encode("utf-8", errors="surrogatepass")
