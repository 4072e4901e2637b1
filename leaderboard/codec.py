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

_I32 = (-(2**31), 2**31 - 1)


def encode(values: list | tuple | None, kind: str) -> bytes | None:
    """`kind` is "int" or "float" (the column's element type)."""
    if values is None:
        return None
    values = list(values)
    if any(v is None for v in values):
        return b"j" + json.dumps(values).encode()
    if kind == "float":
        return b"d" + struct.pack(f"<{len(values)}d", *values)
    if len(values) >= 3:
        step = values[1] - values[0]
        if -(2**63) <= step < 2**63 and all(values[i + 1] - values[i] == step for i in range(len(values) - 1)):
            return b"r" + struct.pack("<qqq", values[0], step, len(values))
    if all(_I32[0] <= v <= _I32[1] for v in values):
        return b"i" + struct.pack(f"<{len(values)}i", *values)
    return b"l" + struct.pack(f"<{len(values)}q", *values)


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
