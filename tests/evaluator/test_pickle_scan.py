"""The opcode scanner names every global a pickle would import, in every protocol and layout,
and never runs anything (payloads would create a marker file)."""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import pytest
import torch

from evaluator.pickle_scan import DYNAMIC, PickleScan, is_zip, scan_archive, scan_globals, scan_pickle
from tests.evaluator.payloads import ExecPayload, SystemPayload


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_protocol_names_the_payload_global(protocol, marker):
    data = pickle.dumps(SystemPayload(f"touch '{marker}'"), protocol=protocol)
    found = scan_globals(data)
    assert found == ["posix.system"]
    scan = scan_pickle(data)
    assert scan.complete and scan.error is None and scan.calls == 1
    assert scan.protocol == (protocol if protocol >= 2 else 0)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_builtins_exec_and_plain_containers(protocol):
    data = pickle.dumps({"a": [1, 2.0, "x"], "p": ExecPayload("1"), "o": collections.OrderedDict(k=1)},
                        protocol=protocol)
    assert set(scan_globals(data)) == {"builtins.exec", "collections.OrderedDict"}


def test_stack_global_operands_fetched_back_from_the_memo():
    # Protocol 4 memoizes the module string once; the second STACK_GLOBAL gets it with BINGET.
    data = pickle.dumps([collections.OrderedDict, collections.Counter, collections.OrderedDict], protocol=4)
    scan = scan_pickle(data)
    assert scan.globals == ("collections.OrderedDict", "collections.Counter")
    assert scan.opcodes.get("BINGET", 0) >= 1 and scan.opcodes["STACK_GLOBAL"] == 2


def test_hand_written_stack_global_from_memo_puts():
    # \x80\x04 PROTO 4; module and name pushed, memoized with BINPUT, popped, then fetched again.
    data = (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94" b"0" b"0"  # MEMOIZE both, POP both
            b"h\x00h\x01\x93" b"\x8c\x04echo\x85R.")  # BINGET 0, BINGET 1, STACK_GLOBAL, call
    assert scan_globals(data) == ["os.system"]


def test_non_constant_stack_global_is_reported_as_unknown():
    # The module operand is the result of a call, not a string: it cannot be known statically.
    data = b"\x80\x04\x8c\x08builtins\x8c\x03str\x93)R\x8c\x06system\x93)R."
    assert scan_globals(data) == ["builtins.str", DYNAMIC]


def test_inst_and_obj_and_extension_codes():
    inst = b"(S'touch x'\nios\nsystem\n."
    assert scan_globals(inst) == ["os.system"]
    ext = b"\x80\x02\x82\x05)R."  # EXT1 5: whatever copyreg's registry maps 5 to
    assert scan_globals(ext) == ["<extension 5>"]


def test_truncated_pickle_reports_what_it_saw_and_why_it_stopped():
    data = pickle.dumps([collections.OrderedDict, SystemPayload("x")], protocol=4)
    cut = data[: data.index(b"system") + 6]
    scan = scan_pickle(cut)
    assert not scan.complete and scan.error
    assert "collections.OrderedDict" in scan.globals


def test_garbage_is_not_a_crash():
    scan = scan_pickle(b"\xff\xfe not a pickle")
    assert not scan.complete and scan.error and scan.globals == ()


def test_unprintable_names_are_escaped():
    data = b"\x80\x04\x8c\x04os\x1b[\x8c\x06system\x93."
    (name,) = scan_globals(data)
    assert name.isprintable() and "\\x1b" in name


def test_protocol_5_buffers():
    data = pickle.dumps(pickle.PickleBuffer(bytearray(b"abc")), protocol=5)
    scan = scan_pickle(data)
    assert scan.complete and scan.protocol == 5 and scan.opcodes.get("BYTEARRAY8") == 1
    oob = b"\x80\x05\x97\x98."  # NEXT_BUFFER, READONLY_BUFFER
    assert scan_pickle(oob).complete


def _torch_bytes(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


class Policy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 2)


def test_torch_zip_state_dict_and_whole_module():
    state = _torch_bytes(Policy().state_dict())
    assert is_zip(state)
    names = scan_globals(state)
    assert "collections.OrderedDict" in names and "torch._utils._rebuild_tensor_v2" in names
    assert not any(n.startswith("torch.nn") for n in names)
    (path,) = scan_archive(state)
    assert path.endswith("data.pkl") and scan_archive(state)[path].persistent_ids >= 4
    module = scan_globals(_torch_bytes(Policy()))
    assert f"{__name__}.Policy" in module and "torch.nn.modules.linear.Linear" in module


def test_legacy_torch_save_is_several_pickles_back_to_back():
    data = _torch_bytes(Policy().state_dict(), _use_new_zipfile_serialization=False)
    scan = scan_pickle(data)
    assert scan.pickles >= 4 and scan.complete
    assert "torch._utils._rebuild_tensor_v2" in scan.globals


def test_nested_zip_member_is_scanned():
    inner = _torch_bytes({"w": torch.zeros(2)})
    payload = pickle.dumps(SystemPayload("x"), protocol=2)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as archive:
        archive.writestr("data", b"{}")
        archive.writestr("policy.pth", inner)
        archive.writestr("extra.pkl", payload)
    scans = scan_archive(outer.getvalue())
    assert any(p.startswith("policy.pth/") and p.endswith("data.pkl") for p in scans)
    assert all(isinstance(s, PickleScan) for s in scans.values())
    assert "posix.system" in scan_globals(outer.getvalue())
    assert "torch._utils._rebuild_tensor_v2" in scan_globals(outer.getvalue())


def test_outermost_keys_and_constant_items():
    table = {"env_id": "FrozenLake-v1", "map_name": "8x8", "slippery": False, "max_steps": 99,
             "gamma": 0.95, "eval_seed": [1, 2], "nested": {"map_name": "4x4"}}
    for protocol in (2, 4, 5):
        scan = scan_pickle(pickle.dumps(table, protocol=protocol))
        assert scan.keys == tuple(table)
        assert scan.items == {"env_id": "FrozenLake-v1", "map_name": "8x8", "slippery": False, "max_steps": 99,
                              "gamma": 0.95}
    state = _torch_bytes(Policy().state_dict())
    (inner,) = scan_archive(state).values()
    assert inner.keys == ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias") and inner.items == {}


def test_nesting_and_memo_are_measured():
    deep = pickle.dumps(_nested(200), protocol=4)
    assert scan_pickle(deep).max_stack >= 200
    assert scan_pickle(pickle.dumps(["a", "b", "c"], protocol=4)).memo_entries == 4


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value
