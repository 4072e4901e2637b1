"""The one restricted unpickler for every pickle a repo holds: `vec_normalize.pkl`,
`q-learning.pkl` and the `data.pkl` of a REINFORCE `model.pt` (DESIGN.md, security model).

Why ours rather than torch's weights-only unpickler with `safe_globals`: torch's implements the
opcodes of protocol 2 only (no STACK_GLOBAL, SHORT_BINUNICODE, BINBYTES, FRAME, MEMOIZE,
BYTEARRAY8), while `pickle.dump` writes protocol 4 or 5, which is what the course's Q-tables and
SB3's `vec_normalize.pkl` are. Torch zips are unpickled here too; their tensors are then rebuilt
by torch's own rebuild function from bytes read on the CPU (`evaluator.agents.torch_pickle`).

How it is restricted, in order:
1. Size, then an opcode scan (`evaluator.pickle_scan`, nothing built): every global the pickle
   names must be on the format's allowlist (else `UnsafeContentError` naming it, before anything
   is unpickled); the stack depth and the memo are bounded; a truncated pickle is refused.
2. The stdlib's pure-Python unpickler, with its opcode table overridden: `find_class` hands
   out only the allowlist's values (inert stand-ins, or plain containers); REDUCE, NEWOBJ, OBJ
   and INST call only those; BUILD sets state only on a `StandIn` instance (never a class, a
   function, or a real object of a library); persistent ids only through the caller's
   `persistent_load`; memo and nesting bounded again as they grow.
"""

from __future__ import annotations

import io
import pickle  # safe: only the pure-Python machinery, behind the allowlist below
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from evaluator.errors import CorruptFileError, EvaluationError, TooLargeError, UnsafeContentError
from evaluator.pickle_scan import ScanLimitError, scan_pickle

__all__ = ["Allowlist", "RecordedOrderedDict", "StandIn", "restricted_load"]

MAX_STACK = 10_000  # deepest stack (pickle batches 1,000 items per APPENDS/SETITEMS)
MAX_MEMO = 100_000
MAX_OPCODES = 2_000_000

Allowlist = Mapping[tuple[str, str], Any]  # (module, name) -> the stand-in handed out for it


class StandIn:
    """An inert stand-in for an allowlisted class: it keeps its construction arguments and the
    state a BUILD gives it, once, and does nothing else."""

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def build(self, state: Any) -> None:
        if self.state is not None:
            raise CorruptFileError(f"the pickle sets the state of a {type(self).__name__} twice")
        self.state = state


class RecordedOrderedDict(OrderedDict, StandIn):
    """`collections.OrderedDict` as pickled (torch state dicts carry a `_metadata` attribute,
    set by BUILD): the items, plus that state kept aside."""

    def __init__(self, *args: Any) -> None:
        OrderedDict.__init__(self, *args)
        self.args = ()
        self.state = None


def _refuse(what: str, message: str) -> UnsafeContentError:
    return UnsafeContentError(f"{what} {message}: refused without running it.")


class _Unpickler(pickle._Unpickler):  # safe: every way to reach a global is overridden below
    def __init__(self, data: bytes, allowlist: Allowlist, what: str, hint: str,
                 persistent_load: Callable[[Any], Any] | None) -> None:
        super().__init__(io.BytesIO(data))
        self.allowlist = allowlist
        self.allowed_ids = {id(value) for value in allowlist.values()}
        self.what, self.hint = what, hint
        self.loader = persistent_load

    # --- the only way to a global ----------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:  # safe: allowlist lookup, nothing imported
        if self.proto < 3:  # what pickle's fix_imports does for Python 2 names
            import _compat_pickle

            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return self.allowlist[(module, name)]
        except (KeyError, TypeError):
            raise _refuse(self.what, f"refers to {_name(module, name)}, which is not on the allowlist{self.hint}") \
                from None

    def persistent_load(self, pid: Any) -> Any:
        if self.loader is None:
            raise _refuse(self.what, "uses persistent ids")
        return self.loader(pid)

    def _callable(self, func: Any, opcode: str) -> Any:
        if id(func) not in self.allowed_ids:
            raise _refuse(self.what, f"calls a {type(func).__name__} ({opcode}) that is not an allowlisted global")
        return func

    # --- opcodes that call, build or grow -----------------------------------------------------------
    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self._callable(self.stack[-1], "REDUCE")
        if not isinstance(args, tuple):
            raise CorruptFileError(f"{self.what}: REDUCE without an argument tuple")
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self._callable(self.stack.pop(), "NEWOBJ")
        if not isinstance(args, tuple):
            raise CorruptFileError(f"{self.what}: NEWOBJ without an argument tuple")
        self.append(cls(*args) if isinstance(cls, type) and issubclass(cls, StandIn) else cls.__new__(cls, *args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self._callable(self.stack.pop(), "NEWOBJ_EX")
        if kwargs or not isinstance(args, tuple):
            raise _refuse(self.what, "creates an object with keyword arguments (NEWOBJ_EX)")
        self.append(cls(*args) if isinstance(cls, type) and issubclass(cls, StandIn) else cls.__new__(cls, *args))

    def _instantiate(self, klass: Any, args: Any) -> None:  # OBJ and INST
        self.append(self._callable(klass, "OBJ/INST")(*args))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, StandIn) or isinstance(inst, type):
            raise _refuse(self.what, f"sets state on a {type(inst).__name__} itself (a pickle BUILD on it)")
        inst.build(state)

    def load_mark(self) -> None:
        if len(self.metastack) >= MAX_STACK:
            raise TooLargeError(f"{self.what} nests deeper than {MAX_STACK} levels")
        super().load_mark()

    def _memo_room(self) -> None:
        if len(self.memo) >= MAX_MEMO:
            raise TooLargeError(f"{self.what} memoizes more than {MAX_MEMO} values")

    def load_put(self) -> None:
        self._memo_room()
        super().load_put()

    def load_binput(self) -> None:
        self._memo_room()
        super().load_binput()

    def load_long_binput(self) -> None:
        self._memo_room()
        super().load_long_binput()

    def load_memoize(self) -> None:
        self._memo_room()
        super().load_memoize()

    dispatch = dict(pickle._Unpickler.dispatch)  # safe: the table of the overridden methods above
    for _opcode, _method in (
        (pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
        (pickle.BUILD, load_build), (pickle.MARK, load_mark), (pickle.PUT, load_put),
        (pickle.BINPUT, load_binput), (pickle.LONG_BINPUT, load_long_binput), (pickle.MEMOIZE, load_memoize),
    ):
        dispatch[_opcode[0]] = _method
    del _opcode, _method


def _name(module: str, name: str) -> str:
    text = f"{module}.{name}"
    if not text.isprintable():
        text = text.encode("unicode_escape", "backslashreplace").decode("ascii")
    return text[:200]


def restricted_load(data: bytes, allowlist: Allowlist, *, what: str, max_bytes: int, hint: str = "",
                    persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Unpickle `data` with only `allowlist`'s stand-ins, after the checks of the module docstring.

    `what` names the file in every message; `hint` is added after "not on the allowlist"
    (e.g. what the format needs). Raises UnsafeContentError, TooLargeError or CorruptFileError."""
    if len(data) > max_bytes:
        raise TooLargeError(f"{what} is {len(data):,} bytes (limit {max_bytes:,}).")
    try:
        scan = scan_pickle(data, max_opcodes=MAX_OPCODES)
    except ScanLimitError as err:
        raise TooLargeError(f"{what} is too large a pickle: {err}") from None
    allowed = {f"{module}.{name}" for module, name in allowlist}
    refused = [name for name in scan.globals if name not in allowed]
    if refused:
        raise _refuse(what, f"refers to {', '.join(refused[:5])}, which {'is' if len(refused) == 1 else 'are'} "
                            f"not on the allowlist{hint}")
    if scan.persistent_ids and persistent_load is None:
        raise _refuse(what, "uses persistent ids")
    if not scan.complete:
        raise CorruptFileError(f"{what} is truncated or not a pickle ({scan.error}).")
    if scan.max_stack > MAX_STACK or scan.memo_entries > MAX_MEMO:
        raise TooLargeError(f"{what} nests {scan.max_stack} deep with {scan.memo_entries} memo entries "
                            f"(limits {MAX_STACK} and {MAX_MEMO}).")
    try:
        return _Unpickler(data, allowlist, what, hint, persistent_load).load()
    except EvaluationError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a malformed pickle makes the machinery raise
        raise CorruptFileError(f"{what} is not a readable pickle ({type(err).__name__}: {str(err)[:200]}).") from err
