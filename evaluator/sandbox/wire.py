"""The referee <-> player wire: fixed binary frames whose sizes follow from the env's spaces.

Referee -> player (the player's stdin):
    HELLO  tag b"HEL1", u32 length, then a small JSON object: which agent files to load, for
           which env id and protocol, and `rows`, the R rows of every call (a multiple of
           N_SLOTS: a window of episodes in flight); never seeds, the job, the store or the
           result channel
    OBS    tag b"OBS1", u32 sequence number, then R row flags (u8: 1 live, 2 episode start,
           bits 2-4 the row's position in a policy batch: `runner`'s rule, episode i % N_SLOTS),
           R action seeds (u64) and R observations in the observation layout
Player -> referee (the player's stdout):
    READY  tag b"RDY1", u32 0: the agent is loaded
    ACT    tag b"ACT1", u32 the OBS's sequence number, then R actions in the action layout
    ERROR  tag b"ERR1", u32 length (<= MAX_ERROR_BYTES), then u16 code index + UTF-8 message

Every size is known before a byte is read, so the referee reads exactly that many bytes with a
deadline and refuses anything else (`invalid_output`); a late frame is a `timeout`.
Observations travel in the dtype of the observation space (the env's contract), actions in a
lossless wide dtype (int64 for discrete spaces, float64 for Box) so that the referee casts and
checks them exactly as an in-process run does.
"""

from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from ..errors import ErrorCode, SpaceMismatchError

HEADER = struct.Struct("<4sI")
HELLO, OBS, READY, ACT, ERROR = b"HEL1", b"OBS1", b"RDY1", b"ACT1", b"ERR1"
MAX_HELLO_BYTES = 1 << 16
MAX_ERROR_BYTES = 4096
LIVE, EPISODE_START = 1, 2
POSITION_SHIFT, POSITION_MASK = 2, 0b111  # flags >> 2 & 7: the row's position in its policy batch

# What a player may say went wrong (its own load or act). Never a timeout, a crash, an invalid
# answer or a Hub failure: those are the referee's to decide.
PLAYER_ERROR_CODES: tuple[str, ...] = tuple(c.value for c in (
    ErrorCode.NO_AGENT, ErrorCode.UNSUPPORTED_FORMAT, ErrorCode.UNSAFE_CONTENT, ErrorCode.CORRUPT_FILE,
    ErrorCode.SPACE_MISMATCH, ErrorCode.INVALID_WEIGHTS, ErrorCode.INVALID_ACTION, ErrorCode.TOO_LARGE,
    ErrorCode.MEMORY_LIMIT, ErrorCode.INTERNAL))


@dataclass(frozen=True)
class Field:
    key: str | None  # the Dict key, None for a plain space
    dtype: np.dtype
    shape: tuple[int, ...]

    @functools.cached_property
    def row_items(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @functools.cached_property
    def row_bytes(self) -> int:
        return self.row_items * self.dtype.itemsize


@dataclass(frozen=True)
class Layout:
    """How one batch of observations or actions is laid out in a frame."""

    fields: tuple[Field, ...]
    is_dict: bool = False

    def batch_bytes(self, n: int) -> int:
        return n * sum(f.row_bytes for f in self.fields)

    def encode(self, batch: Any, n: int) -> bytes:
        """Bytes of `batch` ((n, *shape) array, or a dict of them), cast to the layout's dtypes.
        Raises ValueError when the batch does not have the layout's shapes."""
        data = bytearray(self.batch_bytes(n))
        self.encode_into(batch, n, self.decode(data, n, copy=False))
        return bytes(data)

    def encode_into(self, batch: Any, n: int, views: Any) -> None:
        """`batch` cast into `views` (what `decode(..., copy=False)` gave for a frame buffer);
        ValueError when the batch does not have the layout's shapes."""
        for f in self.fields:
            a = np.asarray(batch[f.key] if self.is_dict else batch)
            if a.shape != (n, *f.shape):
                raise ValueError(f"shape {a.shape}, expected {(n, *f.shape)}")
            (views[f.key] if self.is_dict else views)[...] = a

    def decode(self, data: bytes | bytearray | memoryview, n: int, *, copy: bool = True) -> Any:
        """The batch in `data`; `copy=False` returns views of `data` (valid while it is)."""
        out, offset = {}, 0
        for f in self.fields:
            view = np.frombuffer(data, dtype=f.dtype, count=n * f.row_items, offset=offset).reshape((n, *f.shape))
            out[f.key] = view.copy() if copy else view
            offset += n * f.row_bytes
        return out if self.is_dict else out[None]


def _field(key: str | None, space: spaces.Space) -> Field:
    if isinstance(space, spaces.Box):
        return Field(key, np.dtype(space.dtype).newbyteorder("<"), tuple(space.shape))
    if isinstance(space, spaces.Discrete):
        return Field(key, np.dtype("<i8"), ())
    if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
        return Field(key, np.dtype("<i8"), tuple(space.shape))
    raise SpaceMismatchError(f"the evaluator cannot pass observations of {space} to an agent")


def observation_layout(space: spaces.Space) -> Layout:
    if isinstance(space, spaces.Dict):
        fields = []
        for key in sorted(space.spaces):
            if isinstance(space.spaces[key], (spaces.Dict, spaces.Tuple)):
                raise SpaceMismatchError(f"nested observation spaces ({space}) are not supported")
            fields.append(_field(str(key), space.spaces[key]))
        return Layout(tuple(fields), is_dict=True)
    return Layout((_field(None, space),))


def action_layout(space: spaces.Space) -> Layout:
    if isinstance(space, spaces.Box):
        return Layout((Field(None, np.dtype("<f8"), tuple(space.shape)),))
    if isinstance(space, spaces.Discrete):
        return Layout((Field(None, np.dtype("<i8"), ()),))
    if isinstance(space, (spaces.MultiDiscrete, spaces.MultiBinary)):
        return Layout((Field(None, np.dtype("<i8"), tuple(space.shape)),))
    raise SpaceMismatchError(f"the evaluator cannot take actions of {space} from an agent")


def obs_frame_bytes(layout: Layout, n: int) -> int:
    return n + 8 * n + layout.batch_bytes(n)


def decode_obs_body(data: bytes | bytearray | memoryview, layout: Layout, n: int, *,
                    copy: bool = True) -> tuple[np.ndarray, np.ndarray, Any]:
    """(flags, action seeds, observations) of an OBS body; `copy=False`: views of `data` (the
    player reads each frame into one preallocated buffer and uses it before the next)."""
    flags = np.frombuffer(data, "<u1", count=n, offset=0)
    seeds = np.frombuffer(data, "<u8", count=n, offset=n)
    obs = layout.decode(memoryview(data)[9 * n:], n, copy=copy)
    return (flags.copy(), seeds.copy(), obs) if copy else (flags, seeds, obs)


def encode_hello(doc: dict[str, Any]) -> bytes:
    body = json.dumps(doc).encode()
    if len(body) > MAX_HELLO_BYTES:
        raise ValueError(f"the player's hello is {len(body)} bytes (limit {MAX_HELLO_BYTES})")
    return HEADER.pack(HELLO, len(body)) + body


def encode_error(code: str, message: str) -> bytes:
    index = PLAYER_ERROR_CODES.index(code) if code in PLAYER_ERROR_CODES else PLAYER_ERROR_CODES.index("internal_error")
    text = message.encode("utf-8", errors="replace")[:MAX_ERROR_BYTES - 2]
    body = struct.pack("<H", index) + text
    return HEADER.pack(ERROR, len(body)) + body


def decode_error(body: bytes) -> tuple[str, str]:
    """(code, message) of an ERROR body; ValueError for a code outside PLAYER_ERROR_CODES."""
    if len(body) < 2:
        raise ValueError("an error frame without a code")
    (index,) = struct.unpack("<H", body[:2])
    if index >= len(PLAYER_ERROR_CODES):
        raise ValueError(f"error code index {index} out of range")
    return PLAYER_ERROR_CODES[index], body[2:].decode("utf-8", errors="replace")
