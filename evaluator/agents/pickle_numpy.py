"""numpy arrays inside a restricted pickle (`vec_normalize.pkl`, `q-learning.pkl`), as data.

numpy pickles an array as `_reconstruct(ndarray, (0,), b'b')` plus a BUILD of (version, shape,
dtype, fortran, raw bytes) (protocols 2-4), or as `_frombuffer(buffer, dtype, shape, order)`
(protocol 5); a dtype as `dtype(code, False, True)` plus a BUILD of its byte order; a scalar as
`scalar(dtype, raw)`. The allowlist below maps those globals to inert records; `to_array`
then checks dtype, shape and byte count and only then makes an array from the bytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evaluator.errors import CorruptFileError, UnsafeContentError
from evaluator.restricted_pickle import StandIn

MAX_ARRAY_DIMS = 8
MAX_ARRAY_DIM = 2**31
NUMERIC_KINDS = frozenset("biuf")


class DTypeRecord(StandIn):
    pass


class ArrayRecord(StandIn):
    """`_reconstruct` gives one with no state; the BUILD that follows sets it."""


class ScalarRecord(StandIn):
    pass


class NdarrayMarker:
    """Stands for `numpy.ndarray` as `_reconstruct`'s first argument: one instance, not a class
    and not a StandIn, so a BUILD on it is refused and nothing shared can change."""

    __slots__ = ()

    def __reduce__(self) -> Any:
        raise TypeError("not picklable")


NDARRAY = NdarrayMarker()


def reconstruct(subtype: Any, shape: Any, dtype: Any) -> ArrayRecord:
    if subtype is not NDARRAY:
        raise UnsafeContentError("the pickle reconstructs an array of a non-numpy type: refused.")
    return ArrayRecord(shape, dtype)


def frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> ArrayRecord:
    """Protocol 5's form, turned into the state `_reconstruct`'s BUILD would have given."""
    record = ArrayRecord()
    record.build((1, shape, dtype, order == "F", bytes(buffer) if isinstance(buffer, (bytes, bytearray)) else buffer))
    return record


def latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """`_codecs.encode` as protocol 2 uses it to pickle bytes (an array's raw data, a scalar's
    value): a str and the latin-1 codec in, bytes out, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CorruptFileError("the pickle encodes something other than a byte string.")
    return text.encode("latin1")


_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
NUMPY_ALLOWLIST: dict[tuple[str, str], Any] = {
    ("numpy", "dtype"): DTypeRecord,
    ("numpy", "ndarray"): NDARRAY,
    **{(module, "_reconstruct"): reconstruct for module in _MULTIARRAY},
    **{(module, "scalar"): ScalarRecord for module in _MULTIARRAY},
    **{(module, "_frombuffer"): frombuffer for module in _NUMERIC},
    ("_codecs", "encode"): latin1_bytes,
}


def to_dtype(record: Any, what: str) -> np.dtype:
    """A plain numeric dtype from its record (byte order from its BUILD state)."""
    if not isinstance(record, DTypeRecord) or not record.args or not isinstance(record.args[0], str):
        raise CorruptFileError(f"{what} has an array without a plain dtype.")
    code = record.args[0]
    order = "|"
    state = record.state
    if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
        order = state[1]
    if len(code) > 4 or not code.isalnum():
        raise UnsafeContentError(f"{what} has an unsupported dtype {code[:20]!r}.")
    try:
        dtype = np.dtype(code)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptFileError(f"{what} has an unknown dtype {code!r}.") from exc
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafeContentError(f"{what} has an unsupported dtype {code!r} (numbers only).")
    return dtype.newbyteorder(order) if order in ("<", ">") else dtype


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    if isinstance(shape, list):
        shape = tuple(shape)
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not (
        isinstance(shape, tuple)
        and len(shape) <= MAX_ARRAY_DIMS
        and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_ARRAY_DIM for n in shape)
    ):
        raise CorruptFileError(f"{what} has a malformed shape {str(shape)[:80]}.")
    return shape


def to_array(value: Any, what: str) -> np.ndarray:
    """A recorded array (or recorded scalar, or plain number) as a numpy array, checked before
    any allocation: numeric dtype, at most 8 dims, exactly the bytes its shape needs."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.asarray(value, dtype=np.float64)
    if isinstance(value, ScalarRecord):
        if len(value.args) != 2 or not isinstance(value.args[1], bytes):
            raise CorruptFileError(f"{what} is a malformed numpy scalar.")
        dtype = to_dtype(value.args[0], what)
        if len(value.args[1]) != dtype.itemsize:
            raise CorruptFileError(f"{what} has the wrong byte count.")
        return np.frombuffer(value.args[1], dtype=dtype).reshape(())
    if not isinstance(value, ArrayRecord) or not isinstance(value.state, tuple):
        raise CorruptFileError(f"{what} is not a numpy array.")
    if len(value.state) != 5:
        raise CorruptFileError(f"{what} is not a plain numpy array.")
    _version, shape, dtype_record, fortran, raw = value.state
    dtype = to_dtype(dtype_record, what)
    if isinstance(raw, bytearray):
        raw = bytes(raw)
    if not isinstance(raw, bytes):
        raise CorruptFileError(f"{what} has no raw array data.")
    shape = _shape(shape, what)
    count = math.prod(shape)  # Python ints: no int64 wrap-around
    if count * dtype.itemsize != len(raw):
        raise CorruptFileError(f"{what} has {len(raw)} bytes for shape {shape}.")
    try:
        return np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
    except (ValueError, TypeError, OverflowError) as exc:
        raise CorruptFileError(f"{what} is not a readable array: {str(exc)[:200]}") from exc


def to_scalar(value: Any, what: str) -> float:
    arr = to_array(value, what)
    if arr.shape != () or not np.isfinite(arr):
        raise CorruptFileError(f"{what} is not a finite number.")
    return float(arr)
