"""Per-episode lists stored compactly (one BLOB per list), losslessly.

A 50-episode row holds three lists; as JSON text they would be most of the database. Encodings,
chosen per value by the first byte: `r` an arithmetic run (public seeds: base, base+1, ...),
`i` int32 and `l` int64 little-endian, `d` float64 little-endian (bit for bit), `j` JSON for
anything else (a list with nulls, say). None stays NULL.
"""

from __future__ import annotations

import json
import struct
from typing import Any


def encode(values: list | tuple | None, kind: str) -> bytes | None:
    """`kind` is "int" or "float" (the column's element type)."""
    if values is None:
        return None
    values = list(values)
    n = len(values)
    try:
        if kind == "float":
            if not set(map(type, values)) <= {float}:  # checked at C speed: this runs per row
                raise TypeError("not all floats")
            return b"d" + struct.pack(f"<{n}d", *values)
        if not set(map(type, values)) <= {int}:
            raise TypeError("not all ints")
        if n >= 3:
            start, step = values[0], values[1] - values[0]
            if step and values == list(range(start, start + step * n, step)):
                return b"r" + struct.pack("<qqq", start, step, n)
        try:
            return b"i" + struct.pack(f"<{n}i", *values)
        except struct.error:
            return b"l" + struct.pack(f"<{n}q", *values)
    except (struct.error, TypeError, OverflowError):
        return b"j" + json.dumps(values).encode()


def decode(blob: bytes | None) -> list[Any] | None:
    if blob is None:
        return None
    tag, body = blob[:1], blob[1:]
    if tag == b"d":
        return list(struct.unpack(f"<{len(body) // 8}d", body))
    if tag == b"i":
        return list(struct.unpack(f"<{len(body) // 4}i", body))
    if tag == b"l":
        return list(struct.unpack(f"<{len(body) // 8}q", body))
    if tag == b"r":
        start, step, n = struct.unpack("<qqq", body)
        return [start + step * i for i in range(n)]
    if tag == b"j":
        return json.loads(body)
    raise ValueError(f"unknown list encoding {tag!r}")
