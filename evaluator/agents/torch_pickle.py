"""`torch.save` files (`model.pt`) read as data: the zip checked, its `data.pkl` through the one
restricted unpickler, its tensors rebuilt by torch's own `_rebuild_tensor_v2` from bytes read
here, always on the CPU (what `map_location="cpu"` does: a module saved on a GPU loads the same).

Storage references (`BINPERSID`) become `StorageRecord`s, tensor and parameter rebuilds become
records, and only `materialize` turns a record into a tensor, after checking its dtype, shape,
strides and that its bytes are really in the file. A plain state dict (CleanRL) goes through
`load_weights_only`, i.e. `torch.load(weights_only=True, map_location="cpu")`.
"""

from __future__ import annotations

import io
import math
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from evaluator.errors import CorruptFileError, InvalidWeightsError, TooLargeError, UnsupportedFormatError
from evaluator.restricted_pickle import RecordedOrderedDict, StandIn
from evaluator.text import clean_text

MAX_TORCH_BYTES = 64 * 1024 * 1024  # a course policy is a few KB to a few MB
MAX_MEMBERS = 4096
MAX_ELEMENTS = 10_000_000
MAX_DIMS = 8


class StorageType:
    """Stands for `torch.FloatStorage` & co. inside a storage reference: it only names a dtype."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce__(self) -> Any:
        raise TypeError("not picklable")


_STORAGE_DTYPES = {"FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
                   "BFloat16Storage": "bfloat16"}
STORAGE_TYPES = {name: StorageType(name) for name in _STORAGE_DTYPES}


class TensorRecord(StandIn):
    """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`."""


class ParameterRecord(StandIn):
    """`torch._utils._rebuild_parameter(data, requires_grad, hooks)`."""


TENSOR_ALLOWLIST: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): TensorRecord,
    ("torch._utils", "_rebuild_parameter"): ParameterRecord,
    ("collections", "OrderedDict"): RecordedOrderedDict,
    **{("torch", name): marker for name, marker in STORAGE_TYPES.items()},
}


@dataclass(frozen=True)
class StorageRecord:
    key: str
    dtype: str
    numel: int
    location: str


@dataclass
class TorchZip:
    """An opened `torch.save` zip: its `data.pkl` bytes and its storage members."""

    archive: zipfile.ZipFile
    prefix: str
    pickle: bytes
    what: str
    locations: set[str] = field(default_factory=set)
    _cache: dict[str, Any] = field(default_factory=dict)

    def persistent_load(self, pid: Any) -> StorageRecord:
        """A `('storage', StorageType, key, location, numel)` reference, checked, not read yet."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CorruptFileError(f"{self.what} has a persistent reference that is not a storage.")
        _, kind, key, location, numel = pid
        if not isinstance(kind, StorageType):
            raise CorruptFileError(f"{self.what} has a storage of an unknown type.")
        if not (isinstance(key, str) and key.isalnum() and len(key) <= 32):
            raise CorruptFileError(f"{self.what} has a malformed storage key.")
        if not (isinstance(location, str) and location.isprintable() and len(location) <= 32):
            raise CorruptFileError(f"{self.what} has a malformed storage location.")
        if not (isinstance(numel, int) and not isinstance(numel, bool) and 0 <= numel <= MAX_ELEMENTS):
            raise TooLargeError(f"{self.what} has a storage of {numel!r} elements (limit {MAX_ELEMENTS:,}).")
        self.locations.add(location.split(":")[0])
        return StorageRecord(key, _STORAGE_DTYPES[kind.name], numel, location)

    def _storage(self, record: StorageRecord) -> Any:
        import torch

        if record.key in self._cache:
            return self._cache[record.key]
        dtype = getattr(torch, record.dtype)
        name = f"{self.prefix}data/{record.key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise CorruptFileError(f"{self.what} refers to storage {record.key}, which the file does not hold.") \
                from None
        itemsize = torch.empty((), dtype=dtype).element_size()
        if info.file_size != record.numel * itemsize:
            raise CorruptFileError(f"{self.what}: storage {record.key} holds {info.file_size} bytes, "
                                   f"not the {record.numel * itemsize} its {record.numel} elements need.")
        raw = bytearray(self.archive.read(info))
        flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        storage = torch.storage.TypedStorage(wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True)
        self._cache[record.key] = storage
        return storage

    def materialize(self, record: Any, name: str) -> Any:
        """The tensor a Tensor/ParameterRecord stands for, on the CPU, after every check."""
        import torch

        if isinstance(record, ParameterRecord):
            if len(record.args) != 3 or not _empty_hooks(record.args[2]):
                raise UnsupportedFormatError(f"{self.what}: parameter `{name}` carries hooks or extra state.")
            record = record.args[0]
        if not isinstance(record, TensorRecord) or len(record.args) not in (6, 7):
            raise CorruptFileError(f"{self.what}: `{name}` is not a plain tensor.")
        storage_record, offset, size, stride, _requires_grad, hooks = record.args[:6]
        if not isinstance(storage_record, StorageRecord) or not _empty_hooks(hooks):
            raise CorruptFileError(f"{self.what}: `{name}` is not a plain tensor.")
        if len(record.args) == 7 and record.args[6] not in (None, {}) and not _empty_hooks(record.args[6]):
            raise UnsupportedFormatError(f"{self.what}: tensor `{name}` carries extra metadata.")
        if not (_ints(size) and _ints(stride) and len(size) == len(stride) <= MAX_DIMS and _ints((offset,))):
            raise CorruptFileError(f"{self.what}: tensor `{name}` has a malformed shape or strides.")
        numel = math.prod(size)
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if numel else 0
        if numel and extent >= storage_record.numel:
            raise CorruptFileError(f"{self.what}: tensor `{name}` reaches past its storage.")
        if numel > storage_record.numel:
            raise CorruptFileError(f"{self.what}: tensor `{name}` has more elements than its storage "
                                   "(a broadcast view, not saved weights).")
        tensor = torch._utils._rebuild_tensor_v2(self._storage(storage_record), offset, tuple(size), tuple(stride),
                                                 False, OrderedDict())
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidWeightsError(f"{self.what}: `{name}` holds NaN or infinite values; the training diverged.")
        return tensor.detach().to(torch.float32).clone()


def read_bounded(files: Any, limit: int) -> bytes:
    """The agent file's bytes, refused past `limit` before it is read."""
    path = files.path(files.agent_file)
    try:
        size = path.stat().st_size
        if size > limit:
            raise TooLargeError(f"{files.agent_file} is {size:,} bytes (limit {limit:,}).")
        return path.read_bytes()
    except OSError as err:
        raise CorruptFileError(f"cannot read {files.agent_file}: {err}") from None


def _ints(values: Any) -> bool:
    return isinstance(values, tuple) and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31
                                             for v in values)


def _empty_hooks(value: Any) -> bool:
    return isinstance(value, (dict, OrderedDict)) and len(value) == 0


def open_torch_zip(data: bytes, what: str) -> TorchZip:
    """The `data.pkl` and storages of a `torch.save` zip; TorchScript and legacy files refused."""
    if len(data) > MAX_TORCH_BYTES:
        raise TooLargeError(f"{what} is {len(data):,} bytes (limit {MAX_TORCH_BYTES:,}).")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        if data[:1] == b"\x80":
            raise UnsupportedFormatError(
                f"{what} is in the legacy torch.save format (torch < 1.6): re-save it with a current torch.") from None
        raise CorruptFileError(f"{what} is not a torch.save file (not a readable zip: {str(err)[:100]}).") from None
    if len(infos) > MAX_MEMBERS:
        raise TooLargeError(f"{what} has {len(infos)} members (limit {MAX_MEMBERS}).")
    if sum(i.file_size for i in infos) > 4 * MAX_TORCH_BYTES:
        raise TooLargeError(f"{what} inflates past {4 * MAX_TORCH_BYTES:,} bytes.")
    pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pickles) != 1:
        raise CorruptFileError(f"{what} is not a torch.save file (no single `archive/data.pkl`).")
    prefix = pickles[0].filename[: -len("data.pkl")]
    names = {i.filename for i in infos}
    if f"{prefix}constants.pkl" in names or any(n.startswith(f"{prefix}code/") for n in names):
        raise UnsupportedFormatError(
            f"{what} is a TorchScript module (code), not a pickled policy: TorchScript agents are `agent.pt`.")
    order = f"{prefix}byteorder"
    if order in names and archive.read(order)[:16].strip() not in (b"little", b""):
        raise UnsupportedFormatError(f"{what} was saved on a big-endian machine: not supported.")
    if pickles[0].file_size > MAX_TORCH_BYTES:
        raise TooLargeError(f"{what}'s data.pkl is {pickles[0].file_size:,} bytes.")
    return TorchZip(archive, prefix, archive.read(pickles[0]), what)


def load_weights_only(data: bytes, what: str) -> dict[str, Any]:
    """A plain state dict through `torch.load(weights_only=True, map_location="cpu")`: names to
    dense float tensors, bounded, finite."""
    import pickle  # safe: only for the exception type torch's weights-only loader raises

    import torch

    open_torch_zip(data, what)  # size, TorchScript and layout checks before torch reads it
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:  # safe: torch's weights-only refusal
        raise UnsupportedFormatError(f"{what} holds more than tensors (torch's weights-only loader refused it: "
                                     f"{str(err)[:200]})") from None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for an unreadable file
        raise CorruptFileError(f"{what} is not a readable torch file: {str(err)[:200]}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UnsupportedFormatError(f"{what} is not a state dict (a mapping of names to tensors).")
    total = 0
    for key, tensor in state.items():
        if (type(tensor) is not torch.Tensor or tensor.layout != torch.strided or tensor.device.type != "cpu"
                or tensor.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
                or tensor.dim() > MAX_DIMS):
            raise InvalidWeightsError(f"{what}: `{clean_text(key, 80)}` is not a dense float tensor.")
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            raise CorruptFileError(f"{what}: `{clean_text(key, 80)}` is a broadcast view, not saved weights.")
        total += tensor.numel()
    if total > MAX_ELEMENTS:
        raise TooLargeError(f"{what} holds {total:,} weights (limit {MAX_ELEMENTS:,}).")
    for key, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise InvalidWeightsError(f"{what}: `{clean_text(key, 80)}` holds NaN or infinite values; the training "
                                      "diverged.")
    return {k: v.to(torch.float32) for k, v in state.items()}
