"""Which globals a pickle would import, read opcode by opcode without executing anything.

Format detection and unsafe-content reports must know what a pickle *names* (`__main__.Policy`,
`torch._utils._rebuild_tensor_v2`, `posix.system`) without ever loading it. This walks the bytes
with `pickletools.genops` (a pure parser) and simulates only the stack and the memo, enough to
resolve `STACK_GLOBAL` operands pushed as strings or fetched back from the memo.

API (all pure functions of bytes, nothing is imported or called):

- `scan_pickle(data) -> PickleScan`: one pickle stream, or several back to back (the legacy
  `torch.save` layout). `PickleScan.globals` holds `"module.name"` strings in first-seen order,
  unique; `complete` is False and `error` says why when the bytes end early or are malformed
  (the globals seen up to there are still reported).
- `scan_archive(data) -> dict[str, PickleScan]`: every pickle in a zip (a torch zip's
  `archive/data.pkl`, TorchScript `constants.pkl`, and the same one level down in nested zips
  such as an SB3 zip's `policy.pth`), keyed by member path (`"policy.pth/archive/data.pkl"`).
  `keys` and `items` are the string keys (and constant values: str, int, float, bool, None)
  set on the outermost object, e.g. a state dict's tensor names or a Q-learning dict's
  `map_name`: read from the opcodes, never by building the object.
- `scan_globals(data) -> list[str]`: the union of the globals of a raw pickle or of every
  pickle in a zip, in first-seen order. The entry for a global that cannot be known from the
  bytes alone is `"<dynamic STACK_GLOBAL>"` (operands computed, not constant strings) or
  `"<extension N>"` (`EXT1/2/4`, resolved through `copyreg`'s registry at load time): treat
  them as unknown, hence refused by any allowlist.

Python 2 names in protocols 0-2 are mapped as the unpickler maps them (`__builtin__.exec` is
reported as `builtins.exec`). Names are data from a repo: ones that are not printable are escaped, long ones cut, so the
result can be shown as is.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickletools
import zipfile
from dataclasses import dataclass, field

from evaluator.text import clean_text

__all__ = ["PickleScan", "ScanLimitError", "is_zip", "scan_archive", "scan_globals", "scan_pickle"]

MAX_OPCODES = 5_000_000  # a Q-table or a state dict is a few thousand opcodes
MAX_NAME = 200
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a pickle member read out of a zip
MAX_MEMBERS = 10_000
MAX_ZIP_DEPTH = 2  # a zip (SB3) holding zips (torch) holding pickles
DYNAMIC = "<dynamic STACK_GLOBAL>"
_PICKLE_SUFFIXES = (".pkl", ".pickle")
_ZIP_SUFFIXES = (".pth", ".pt", ".zip", ".bin", ".ckpt", ".tar")
_ZIP_MAGIC = b"PK\x03\x04"
_PROTO = 0x80
_HIGHEST_PROTOCOL = 5


class ScanLimitError(ValueError):
    """The input is larger than the scanner will read (opcodes, members or member bytes)."""


@dataclass(frozen=True)
class PickleScan:
    """What one pickle stream names and does, read from its opcodes."""

    globals: tuple[str, ...] = ()
    protocol: int = 0  # highest PROTO seen (0: protocol 0/1, which has no PROTO opcode)
    opcodes: dict[str, int] = field(default_factory=dict)  # opcode name -> count
    pickles: int = 0  # streams read back to back (legacy torch.save writes several)
    complete: bool = False  # every stream reached STOP
    error: str | None = None  # why the walk stopped early, when it did
    max_stack: int = 0  # deepest the stack got (marks included): a bound on nesting
    memo_entries: int = 0  # values memoized (PUT, BINPUT, LONG_BINPUT, MEMOIZE)
    keys: tuple[str, ...] = ()  # string keys set on the outermost object (a dict), first stream only
    items: dict[str, object] = field(default_factory=dict)  # those of them whose value is a constant

    @property
    def persistent_ids(self) -> int:
        """Persistent references (torch storages are `BINPERSID`)."""
        return self.opcodes.get("PERSID", 0) + self.opcodes.get("BINPERSID", 0)

    @property
    def calls(self) -> int:
        """Opcodes that call a global (REDUCE, NEWOBJ, NEWOBJ_EX, OBJ, INST)."""
        return sum(self.opcodes.get(name, 0) for name in ("REDUCE", "NEWOBJ", "NEWOBJ_EX", "OBJ", "INST"))


def _clean(name: str) -> str:
    return clean_text(name, MAX_NAME)  # the one sanitiser of repo text (evaluator.text)


class _Mark:
    __slots__ = ()


class _Unknown:
    __slots__ = ()


_MARK = _Mark()
_UNKNOWN = _Unknown()
_STRINGS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                      "BINUNICODE8"})
_INTS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"})
_CONSTANTS = {"NEWTRUE": True, "NEWFALSE": False, "NONE": None}
MAX_KEYS = 10_000
_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


class _Walker:
    """Simulates the pickle machine's stack and memo with placeholders; only strings are kept."""

    def __init__(self, max_opcodes: int) -> None:
        self.stack: list[object] = []
        self.memo: dict[int, object] = {}
        self.found: dict[str, None] = {}
        self.counts: dict[str, int] = {}
        self.protocol = 0
        self.budget = max_opcodes
        self.max_stack = 0
        self.memo_entries = 0
        self.keys: dict[str, None] = {}
        self.items: dict[str, object] = {}
        self.first = True  # keys are read from the first stream only

    def _pop_to_mark(self) -> None:
        while self.stack:
            if self.stack.pop() is _MARK:
                return
        raise ValueError("pops to a MARK that is not on the stack")

    def _pop_mark_items(self) -> list[object]:
        items: list[object] = []
        while self.stack:
            item = self.stack.pop()
            if item is _MARK:
                items.reverse()
                return items
            items.append(item)
        raise ValueError("pops to a MARK that is not on the stack")

    def _key(self, key: object, value: object) -> None:
        if not isinstance(key, str) or len(self.keys) >= MAX_KEYS:
            return
        key = _clean(key)
        self.keys.setdefault(key, None)
        if value is None or isinstance(value, (str, int, float, bool)):
            self.items.setdefault(key, _clean(value) if isinstance(value, str) else value)

    def _pop(self, n: int) -> list[object]:
        if n > len(self.stack):
            raise ValueError("pops more than the stack holds")
        if n == 0:
            return []
        items = self.stack[-n:]
        del self.stack[-n:]
        return items

    def _add_global(self, module: str, name: str) -> None:
        # As `pickle.Unpickler.find_class` does for protocols < 3 (fix_imports): Python 2 names.
        if self.protocol < 3:
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        self._add(f"{module}.{name}")

    def _add(self, name: str) -> None:
        self.found.setdefault(_clean(name), None)

    def step(self, op: pickletools.OpcodeInfo, arg: object) -> None:
        self._step(op, arg)
        if len(self.stack) > self.max_stack:
            self.max_stack = len(self.stack)

    def _step(self, op: pickletools.OpcodeInfo, arg: object) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise ScanLimitError(f"more than {MAX_OPCODES} opcodes")
        name = op.name
        self.counts[name] = self.counts.get(name, 0) + 1
        if name == "PROTO":
            self.protocol = max(self.protocol, int(arg))  # type: ignore[arg-type]
            return
        if name in _STRINGS:
            self.stack.append(arg if isinstance(arg, str) else (arg.decode("latin-1") if isinstance(arg, bytes)
                                                                 else _UNKNOWN))
            return
        if name in _INTS:
            self.stack.append(arg if isinstance(arg, (int, float)) else _UNKNOWN)
            return
        if name in _CONSTANTS:
            self.stack.append(_CONSTANTS[name])
            return
        if name in _PUTS:
            self.memo_entries += 1
            self.memo[int(arg)] = self.stack[-1] if self.stack else _UNKNOWN  # type: ignore[arg-type]
            return
        if name == "MEMOIZE":
            self.memo_entries += 1
            self.memo[len(self.memo)] = self.stack[-1] if self.stack else _UNKNOWN
            return
        if name in ("SETITEM", "SETITEMS"):
            pairs = self._pop(2) if name == "SETITEM" else self._pop_mark_items()
            if self.first and len(self.stack) == 1:  # set on the outermost object
                for key, value in zip(pairs[::2], pairs[1::2], strict=False):
                    self._key(key, value)
            return
        if name in _GETS:
            self.stack.append(self.memo.get(int(arg), _UNKNOWN))  # type: ignore[arg-type]
            return
        if name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            self._add_global(module, qualname)
            if name == "INST":
                self._pop_to_mark()
            self.stack.append(_UNKNOWN)
            return
        if name == "STACK_GLOBAL":
            module, qualname = self._pop(2)
            if isinstance(module, str) and isinstance(qualname, str):
                self._add_global(module, qualname)
            else:
                self._add(DYNAMIC)
            self.stack.append(_UNKNOWN)
            return
        if name in ("EXT1", "EXT2", "EXT4"):
            self._add(f"<extension {int(arg)}>")  # type: ignore[arg-type]
            self.stack.append(_UNKNOWN)
            return
        if name == "DUP":
            self.stack.append(self.stack[-1] if self.stack else _UNKNOWN)
            return
        self._generic(op)

    def _generic(self, op: pickletools.OpcodeInfo) -> None:
        before = op.stack_before
        if pickletools.markobject in before:
            below = before.index(pickletools.markobject)
            self._pop_to_mark()
            self._pop(below)
        else:
            self._pop(len(before))
        for kind in op.stack_after:
            self.stack.append(_MARK if kind is pickletools.markobject else _UNKNOWN)


def scan_pickle(data: bytes, *, max_opcodes: int = MAX_OPCODES) -> PickleScan:
    """The globals and opcodes of `data`: one pickle, or several written back to back."""
    walker = _Walker(max_opcodes)
    stream = io.BytesIO(data)
    pickles, complete, error = 0, False, None
    while True:
        try:
            for op, arg, _pos in pickletools.genops(stream):
                walker.step(op, arg)
        except ScanLimitError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse failure is a finding, not a crash
            error = f"stopped at byte {stream.tell()}: {_clean(str(exc))[:200]}"
            complete = False
            break
        pickles += 1
        complete = True
        walker.first = False
        walker.stack.clear()
        walker.memo.clear()
        rest = data[stream.tell(): stream.tell() + 2]
        # Another stream follows only if it starts like one (legacy torch.save: several pickles,
        # then raw storage bytes, which are not scanned).
        if len(rest) < 2 or rest[0] != _PROTO or not 2 <= rest[1] <= _HIGHEST_PROTOCOL:
            break
    return PickleScan(globals=tuple(walker.found), protocol=walker.protocol, opcodes=dict(walker.counts),
                      pickles=pickles, complete=complete, error=error, max_stack=walker.max_stack,
                      memo_entries=walker.memo_entries, keys=tuple(walker.keys), items=dict(walker.items))


def is_zip(data: bytes) -> bool:
    """Whether `data` is a zip archive (torch's default format since 1.6, SB3 saves)."""
    return data[:4] == _ZIP_MAGIC


def scan_archive(data: bytes, *, _depth: int = 0, _prefix: str = "") -> dict[str, PickleScan]:
    """Every pickle in the zip `data` (and in zips it holds, one level down), by member path."""
    found: dict[str, PickleScan] = {}
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(f"not a readable zip: {_clean(str(exc))[:200]}") from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise ScanLimitError(f"{len(infos)} zip members (limit {MAX_MEMBERS})")
        for info in infos:
            lower = info.filename.lower()
            is_pickle = lower.endswith(_PICKLE_SUFFIXES)
            nested = _depth + 1 < MAX_ZIP_DEPTH and lower.endswith(_ZIP_SUFFIXES)
            if not (is_pickle or nested) or info.is_dir():
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                raise ScanLimitError(f"{_clean(info.filename)} is {info.file_size} bytes (limit {MAX_MEMBER_BYTES})")
            with archive.open(info) as member:
                raw = member.read(MAX_MEMBER_BYTES + 1)
            if len(raw) > MAX_MEMBER_BYTES:
                raise ScanLimitError(f"{_clean(info.filename)} inflates past {MAX_MEMBER_BYTES} bytes")
            path = _prefix + _clean(info.filename)
            if is_pickle:
                found[path] = scan_pickle(raw)
            elif is_zip(raw):
                found.update(scan_archive(raw, _depth=_depth + 1, _prefix=path + "/"))
            elif raw[:1] == bytes([_PROTO]):  # legacy (non-zip) torch.save inside a zip
                found[path] = scan_pickle(raw)
    return found


def scan_globals(data: bytes) -> list[str]:
    """The globals `data` would import if unpickled: a raw pickle, or every pickle in a zip."""
    scans = scan_archive(data).values() if is_zip(data) else (scan_pickle(data),)
    seen: dict[str, None] = {}
    for scan in scans:
        for name in scan.globals:
            seen.setdefault(name, None)
    return list(seen)
