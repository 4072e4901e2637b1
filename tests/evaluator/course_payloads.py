"""Test helper: hostile and malformed course agents (Q-table pickles, REINFORCE modules, state
dicts), built here so no binary blob is committed. A payload that ever runs creates `marker`."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scripts import course_agents as ca


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + len(raw).to_bytes(4, "little") + raw


def call(func: bytes, *args: bytes) -> bytes:
    """`func(*args)` as opcodes (protocol 2): the pushed callable, a tuple, REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def touch(marker: Path) -> bytes:
    return _str(f"touch '{marker}'")


def gadgets(marker: Path) -> dict[str, bytes]:
    """Whole pickles (protocol 2) that run `touch marker` when loaded by a plain unpickler."""
    imp = call(_global("builtins", "__import__"), _str("os"))
    return {
        "getattr-gadget": b"\x80\x02" + call(call(_global("builtins", "getattr"), imp, _str("system")), touch(marker))
                          + b".",
        "attrgetter-gadget": b"\x80\x02" + call(call(call(_global("operator", "attrgetter"), _str("system")), imp),
                                                touch(marker)) + b".",
        "numpy-load": b"\x80\x02" + call(_global("numpy", "load"), _str(str(marker))) + b".",
        "torch-load": b"\x80\x02" + call(_global("torch", "load"), _str(str(marker))) + b".",
        "copyreg-reconstructor": b"\x80\x02" + call(_global("copyreg", "_reconstructor"), _global("os", "system"),
                                                    _global("builtins", "object"), touch(marker)) + b".",
        "copyreg-extension": b"\x80\x02\x82\xf0" + b"(" + touch(marker) + b"tR.",  # EXT1 240
        "hidden-stack-global": b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94" b"00" b"h\x00h\x01\x93"
                               + b"\x8c" + bytes([len(f"touch '{marker}'")]) + f"touch '{marker}'".encode()
                               + b"\x85R.",
    }


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def qtable_dict(table, env_id: str = "Taxi-v3", **extra) -> bytes:
    model = {"env_id": env_id, "max_steps": 99, "n_eval_episodes": 100, "eval_seed": [], "qtable": table, **extra}
    return pickle.dumps(model)


def qtable_cases(marker: Path) -> dict[str, bytes]:
    good = np.zeros((500, 6))
    nan = good.copy()
    nan[3, 2] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    return {
        "q-os-system": qtable_dict(_System(marker)),
        "q-builtins-exec": pickle.dumps({"env_id": "Taxi-v3", "qtable": good, "x": _Exec(marker)}, protocol=5),
        **{f"q-{name}": raw for name, raw in gadgets(marker).items()},
        "q-object-array": qtable_dict(np.array([[1, "a"]] * 500, dtype=object)),
        "q-nan-table": qtable_dict(nan),
        "q-inf-table": qtable_dict(inf),
        "q-wrong-shape": qtable_dict(np.zeros((16, 4))),
        "q-truncated": qtable_dict(good)[:-400],
    }


def zip_with(model_pt: bytes, *, data_pkl: bytes | None = None, extra: dict[str, bytes] | None = None,
             edit=None) -> bytes:
    """`model_pt` rewritten: its data.pkl replaced (or edited), members added."""
    source = zipfile.ZipFile(io.BytesIO(model_pt))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            raw = source.read(info)
            if info.filename.endswith("/data.pkl"):
                raw = data_pkl if data_pkl is not None else (edit(raw) if edit else raw)
            target.writestr(info.filename, raw)
        for name, raw in (extra or {}).items():
            target.writestr(name, raw)
    return out.getvalue()


class PolicyWithTanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(4, 8), nn.Linear(8, 2), nn.Tanh()


class PolicyWithExtraLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2)


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class PolicyWithSwish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.swish = nn.Linear(4, 8), nn.Linear(8, 2), Swish()


def _as_policy(module: nn.Module, *helpers: type) -> bytes:
    """`module` saved as a notebook's `__main__.Policy`, its helper classes as `__main__` ones."""
    import sys

    type(module).__name__ = "Policy"
    type(module).__qualname__ = "Policy"
    main = sys.modules["__main__"]
    saved = [(cls, cls.__module__) for cls in helpers]
    for cls in helpers:
        cls.__module__ = "__main__"
        setattr(main, cls.__name__, cls)
    try:
        return ca.save_as_main(module)
    finally:
        for cls, module_name in saved:
            cls.__module__ = module_name
            delattr(main, cls.__name__)


def reinforce_cases(marker: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    good = ca.save_as_main(ca.Policy(4, 2, 8))
    with_payload = ca.Policy(4, 2, 8)
    with_payload.note = _System(marker)
    state = ca.Policy(4, 2, 8).state_dict()
    extra = dict(state, **{"fc9.weight": torch.zeros(1)})
    cleanrl = ca.Agent(4, 2).state_dict()
    missing = {k: v for k, v in cleanrl.items() if k != "actor.4.bias"}
    ts = io.BytesIO()
    torch.jit.save(torch.jit.script(nn.Linear(4, 2)), ts)
    return {
        "r-os-system-attribute": ca.save_as_main(with_payload),
        **{f"r-{name}": zip_with(good, data_pkl=raw) for name, raw in gadgets(marker).items()},
        "r-extra-layer": _as_policy(PolicyWithExtraLayer()),
        "r-tanh-module": _as_policy(PolicyWithTanh()),
        "r-custom-activation": _as_policy(PolicyWithSwish(), Swish),
        "r-cuda-storage-type": zip_with(good, edit=lambda raw: raw.replace(b"ctorch\nFloatStorage\n",
                                                                           b"ctorch.cuda\nFloatStorage\n")),
        "r-truncated": good[: len(good) // 2],
        "r-state-dict-unknown": _torch(extra),
        "r-cleanrl-missing-key": _torch(missing),
        "r-cleanrl-extra-key": _torch({**cleanrl, "actor.6.weight": torch.zeros(2, 2)}),
        "r-torchscript-named-model-pt": ts.getvalue(),
        "r-legacy-format": _torch(state, _use_new_zipfile_serialization=False),
    }


def on_gpu(model_pt: bytes) -> bytes:
    """`model_pt` as if saved on a GPU: every storage located on `cuda:0`."""
    return zip_with(model_pt, edit=lambda raw: raw.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0"))


def _torch(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()
