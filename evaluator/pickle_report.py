"""The unsafe-content report: which globals the repo's pickles would import if someone loaded
them the usual way (`PPO.load`, `torch.load`, `pickle.load`), and whether any of them is
outside a benign list. Nothing is unpickled: every pickle is read opcode by opcode
(evaluator.pickle_scan), and the evaluation itself stays data-only whatever the report says.

Scanned: the agent file and the side files downloaded for the evaluation (`vec_normalize.pkl`,
`q-learning.pkl`, `model.pt`, ...): a zip's pickles and those of the zips it holds (an SB3
zip's `policy.pth`, a torch zip's `data.pkl`), a raw pickle or a legacy `torch.save` stream,
the base64 `":serialized:"` fields of an SB3 zip's `data` (cloudpickle, decoded to bytes and  # safe: prose
scanned, never loaded), and the pickles inside a pickle's byte constants that
`torch.storage._load_from_bytes` would load.

Benign: what the agent formats themselves pickle (numpy arrays, dtypes and random states,
containers, torch tensors, storages, modules and optimizers, gym/gymnasium spaces, SB3 and
sb3-contrib classes, the cloudpickle helpers that rebuild a function or a class without calling  # safe: prose
it, and a course REINFORCE script's own `__main__.Policy`-style class). Anything else, `os.system`,
`subprocess.Popen`, `builtins.exec`/`eval`/`getattr`, `posix.system`, `runpy`, `importlib`, or a
name the bytes do not state (`<dynamic STACK_GLOBAL>`), makes `pickle_unsafe` true.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import pickletools
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .pickle_scan import ScanLimitError, is_zip, scan_archive, scan_pickle
from .text import clean_text

log = logging.getLogger(__name__)

MAX_SCAN_BYTES = 600 * 1024 * 1024  # what hub.fetch downloads at most
MAX_DATA_BYTES = 64 * 1024 * 1024  # an SB3 zip's `data` member
MAX_IMPORTS = 200  # recorded in a result
MAX_EMBEDDED = 256  # pickles or zips inside one pickle's byte constants (torch tensors pickled by pickle)
MAX_NESTING = 3
MAX_MEMBERS = 10_000
MAX_MEMBER = 256 * 1024 * 1024
_BYTES_OPS = frozenset({"BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"})
_PICKLE_FILES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".zip")

BENIGN_GLOBALS = frozenset({
    # containers and plain values
    "builtins.set", "builtins.frozenset", "builtins.dict", "builtins.list", "builtins.tuple", "builtins.float",
    "builtins.int", "builtins.bool", "builtins.complex", "builtins.str", "builtins.bytes", "builtins.bytearray",
    "builtins.slice", "builtins.range", "builtins.object", "builtins.NoneType",
    "collections.OrderedDict", "collections.deque", "collections.defaultdict", "collections.Counter",
    "_codecs.encode", "copyreg._reconstructor",
    # numpy arrays, scalars, dtypes and random states
    "numpy.dtype", "numpy.ndarray",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__bit_generator_ctor", "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator", "numpy.random.bit_generator.SeedSequence",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence", "numpy.random._pcg64.PCG64",
    "numpy.random._mt19937.MT19937", "numpy.random._philox.Philox", "numpy.random._sfc64.SFC64",
    # torch tensors, parameters, storages, devices
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state", "torch.device", "torch.Size", "torch.storage.UntypedStorage",
    "torch.nn.parameter.Parameter",
    "torch.storage._load_from_bytes",  # a tensor pickled by pickle: its bytes (a torch.load) are scanned too
    # safe: names compared as strings, nothing unpickled. cloudpickle rebuilding a function or class
    # (SB3's schedules) without calling it
    "cloudpickle.cloudpickle._builtin_type", "cloudpickle.cloudpickle._make_cell",  # safe: a name
    "cloudpickle.cloudpickle._make_empty_cell", "cloudpickle.cloudpickle._make_function",  # safe: a name
    "cloudpickle.cloudpickle._make_skel_func", "cloudpickle.cloudpickle._fill_function",  # safe: a name
    "cloudpickle.cloudpickle._function_setstate", "cloudpickle.cloudpickle_fast._function_setstate",  # safe: a name
    "cloudpickle.cloudpickle._class_setstate", "cloudpickle.cloudpickle_fast._class_setstate",  # safe: a name
    "cloudpickle.cloudpickle._make_skeleton_class", "cloudpickle.cloudpickle._make_dict_keys",  # safe: a name
    "cloudpickle.cloudpickle._make_dict_values", "cloudpickle.cloudpickle._make_dict_items",  # safe: a name
})
_TORCH_DTYPE_STORAGE = re.compile(
    r"^torch\.(?:cuda\.)?(?:Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool|ComplexFloat|ComplexDouble)Storage$")
_TORCH_DTYPE = re.compile(r"^torch\.(?:float|double|half|bfloat16|int|long|short|bool|uint8|int8|int16|int32|int64|"
                          r"float16|float32|float64|complex64|complex128)$")
# classes of the libraries the formats are built on (a class, looked up; not a call of code)
_BENIGN_MODULES = re.compile(
    r"^(?:stable_baselines3|sb3_contrib|gym\.spaces|gymnasium\.spaces|torch\.nn\.modules|torch\.optim|"
    r"torch\.distributions)\.[A-Za-z_][\w.]*\.[A-Z]\w*$")
# a course REINFORCE script's own module class (`torch.save(policy)` from a notebook)
_SCRIPT_CLASS = re.compile(r"^__main__\.[A-Z]\w*$")


def is_benign(name: str) -> bool:
    """Whether importing the global `name` ("module.qualname") while loading is harmless."""
    return (name in BENIGN_GLOBALS or bool(_TORCH_DTYPE_STORAGE.match(name)) or bool(_TORCH_DTYPE.match(name))
            or bool(_BENIGN_MODULES.match(name)) or bool(_SCRIPT_CLASS.match(name)))


def unsafe_imports(names: Iterable[str]) -> list[str]:
    """The names outside the benign list, in order."""
    return [name for name in names if not is_benign(name)]


@dataclass
class PickleReport:
    imports: list[str] = field(default_factory=list)  # every global named, first seen first (capped)
    unsafe: list[str] = field(default_factory=list)  # those outside the benign list
    unscanned: list[str] = field(default_factory=list)  # files or fields the scan could not read, and why


def _serialized_fields(value, found: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == ":serialized:" and isinstance(item, str):
                found.append(item)
            else:
                _serialized_fields(item, found)
    elif isinstance(value, list):
        for item in value:
            _serialized_fields(item, found)


def _zip_serialized(data: bytes) -> list[bytes]:
    """The decoded `":serialized:"` fields of an SB3 zip's `data` member (bytes, never loaded)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("data")
            if info.file_size > MAX_DATA_BYTES:
                return []
            with archive.open(info) as member:
                document = json.loads(member.read(MAX_DATA_BYTES + 1))
    except (KeyError, zipfile.BadZipFile, ValueError, OSError, RecursionError, UnicodeDecodeError):
        return []
    fields: list[str] = []
    _serialized_fields(document, fields)
    out = []
    for text in fields:
        try:
            out.append(base64.b64decode(text, validate=False))
        except (binascii.Error, ValueError):
            continue
    return out


def _embedded(data: bytes) -> list[bytes]:
    """Byte constants of a pickle: what `torch.storage._load_from_bytes` (a tensor pickled with
    plain pickle) hands to `torch.load(..., weights_only=False)` when loaded. They are scanned  # safe: prose
    too (as a zip or as pickles of any protocol)."""
    found: list[bytes] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in _BYTES_OPS and isinstance(arg, bytes | bytearray) and arg:
                found.append(bytes(arg))  # torch.load unpickles any protocol (its legacy path too)
                if len(found) >= MAX_EMBEDDED:
                    break
    except Exception:  # noqa: BLE001 - a malformed stream: scan_pickle reports what it can
        pass
    return found


def _members(data: bytes):
    """The raw bytes of a zip's members that may hold pickles (bounded as pickle_scan bounds them)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for info in archive.infolist()[:MAX_MEMBERS]:
                if info.is_dir() or not info.filename.lower().endswith(_PICKLE_FILES) or info.file_size > MAX_MEMBER:
                    continue
                with archive.open(info) as member:
                    yield member.read(MAX_MEMBER + 1)[:MAX_MEMBER]
    except (zipfile.BadZipFile, ValueError, OSError, RuntimeError, NotImplementedError):
        return


def _globals_of(data: bytes, depth: int = 0) -> list[str]:
    names: list[str] = []
    if is_zip(data):
        for scan in scan_archive(data).values():
            names.extend(scan.globals)
        for blob in _zip_serialized(data):
            names.extend(_globals_of(blob, depth + 1) if depth < MAX_NESTING else scan_pickle(blob).globals)
        if depth < MAX_NESTING and any(n.endswith("._load_from_bytes") for n in names):
            for member in _members(data):  # their byte constants, as torch.load would get them
                names.extend(_globals_of(member, depth + 1))
        return names
    names.extend(scan_pickle(data).globals)
    if depth < MAX_NESTING and any(n.endswith("._load_from_bytes") for n in names):
        for blob in _embedded(data):
            names.extend(_globals_of(blob, depth + 1))
    return names


def scan_repo(root: Path, files: Iterable[str]) -> PickleReport:
    """The report for the downloaded files `files` under `root` (never raises for bad input)."""
    seen: dict[str, None] = {}
    report = PickleReport()
    for name in files:
        if not name.lower().endswith(_PICKLE_FILES):
            continue
        path = Path(root) / name
        try:
            if path.stat().st_size > MAX_SCAN_BYTES:
                raise ScanLimitError(f"{path.stat().st_size} bytes (limit {MAX_SCAN_BYTES})")
            for found in _globals_of(path.read_bytes()):
                seen.setdefault(clean_text(found, 200), None)
        except (ScanLimitError, ValueError, OSError, RecursionError, MemoryError) as err:
            # What could not be read is unknown, hence outside the benign list (as pickle_scan's
            # `<dynamic STACK_GLOBAL>`): the report never says "benign" about unread bytes.
            report.unscanned.append(f"{clean_text(name, 200)}: {clean_text(str(err), 200)}")
            seen.setdefault(f"<unscanned {clean_text(name, 100)}>", None)
            log.info("pickle scan of %s stopped: %s", name, err)
    report.imports = list(seen)[:MAX_IMPORTS]
    report.unsafe = unsafe_imports(seen)
    return report


def loader_call(format_name: str | None, algo: str | None) -> str:
    """How people load this format, for the report's sentence."""
    if format_name == "sb3":
        return f"{(algo or 'PPO').upper()}.load"
    if format_name in ("qtable",):
        return "pickle.load"
    return "torch.load"
