"""REINFORCE agents of the Deep RL course (unit 4): `model.pt` = `torch.save(policy)`, a whole
pickled `nn.Module` of the notebook's class `__main__.Policy`.

Loaded WITHOUT that class: `__main__.Policy` and `torch.nn.Linear` map to stand-ins that only
collect state, the `fc1`, `fc2`[, `fc3`] weights are rebuilt as tensors on the CPU
(`evaluator.agents.torch_pickle`), and the course's architecture is computed from them:
ReLU after every layer but the last, softmax out (`F.softmax(x, dim=1)`), actions sampled as
`Categorical(probs).sample()` does, per episode (`course_policies`). A module with other layers,
other submodules (a custom activation, a Sequential) or hooks does not map exactly and is refused
as `unsupported_format`, naming what was found; anything outside torch.nn / `__main__` is
`unsafe_content`. What the class's `forward` computed is not in the file: the course's is assumed.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from evaluator.agents.base import AgentFiles, LoadedAgent
from evaluator.agents.course_policies import CategoricalMLP, check_chain, check_spaces
from evaluator.agents.pickle_numpy import NUMPY_ALLOWLIST, ScalarRecord
from evaluator.agents.torch_pickle import MAX_TORCH_BYTES, TENSOR_ALLOWLIST, open_torch_zip, read_bounded
from evaluator.errors import CorruptFileError, UnsupportedFormatError
from evaluator.pickle_scan import scan_pickle
from evaluator.restricted_pickle import StandIn, restricted_load
from evaluator.text import clean_text

WHAT = "model.pt"
LAYER_NAMES = (("fc1", "fc2"), ("fc1", "fc2", "fc3"))


class PolicyRecord(StandIn):
    """Stands for the notebook's `__main__.Policy`."""


class LinearRecord(StandIn):
    """Stands for `torch.nn.Linear`."""


# Numpy scalars (and `_codecs.encode`, protocol 2's bytes) too: the notebook builds
# `nn.Linear(h_size, env.action_space.n)`, and gymnasium's `n` is a numpy int, pickled into the
# layer's `out_features`.
ALLOWLIST: dict[tuple[str, str], Any] = {
    **TENSOR_ALLOWLIST,
    **{key: value for key, value in NUMPY_ALLOWLIST.items() if key[1] in ("scalar", "dtype", "encode")},
    ("__main__", "Policy"): PolicyRecord,
    ("torch.nn.modules.linear", "Linear"): LinearRecord,
    ("builtins", "set"): set,
}
_ALLOWED_NAMES = {f"{m}.{n}" for m, n in ALLOWLIST}
_MODULE_STATE = frozenset({
    "training", "_parameters", "_buffers", "_non_persistent_buffers_set", "_backward_pre_hooks",
    "_backward_hooks", "_is_full_backward_hook", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
    "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks", "_modules",
})
_PLAIN = (int, float, str, bool, type(None), ScalarRecord)


def unmapped_classes(globals_: list[str] | tuple[str, ...]) -> list[str]:
    """Module classes the pickle names that have no stand-in (a custom activation, a Sequential)."""
    return [g for g in globals_ if g not in _ALLOWED_NAMES and (g.startswith(("torch.nn.", "__main__.")))]


def _module_state(record: Any, name: str) -> dict[str, Any]:
    """A module record's `__dict__`, checked: no hooks, no buffers, no unknown objects."""
    state = record.state
    if not isinstance(state, dict):
        raise CorruptFileError(f"{WHAT}: `{name}` has no module state.")
    for key, value in state.items():
        if not isinstance(key, str):
            raise CorruptFileError(f"{WHAT}: `{name}` has a non-string attribute.")
        if key in _MODULE_STATE:
            if value and (key == "_buffers" or "hooks" in key):
                raise UnsupportedFormatError(f"{WHAT}: `{name}` has {key} set: not the course's module.")
        elif not isinstance(value, _PLAIN):
            raise UnsupportedFormatError(
                f"{WHAT}: `{name}` holds `{clean_text(key, 40)}`, a {type(value).__name__}: not the course's Policy "
                "(Linear layers fc1, fc2[, fc3] only).")
    return state


def read_reinforce(data: bytes) -> list[tuple[str, Any, Any]]:
    """[(layer name, weight, bias)] of the pickled Policy, as CPU float32 tensors."""
    archive = open_torch_zip(data, WHAT)
    found = unmapped_classes(scan_pickle(archive.pickle).globals)
    if found:
        raise UnsupportedFormatError(
            f"{WHAT} is a pickled module holding {', '.join(found[:5])}: only the course's REINFORCE Policy "
            "(`__main__.Policy` of Linear layers fc1, fc2[, fc3], ReLU, softmax) is supported.")
    root = restricted_load(archive.pickle, ALLOWLIST, what=WHAT, max_bytes=MAX_TORCH_BYTES,
                           persistent_load=archive.persistent_load,
                           hint=" (a REINFORCE Policy needs only its Linear layers and their tensors)")
    if not isinstance(root, PolicyRecord):
        raise UnsupportedFormatError(f"{WHAT} does not hold a `__main__.Policy` module.")
    state = _module_state(root, "Policy")
    if state.get("_parameters"):
        raise UnsupportedFormatError(f"{WHAT}: the Policy has parameters of its own besides its layers.")
    modules = state.get("_modules")
    if not isinstance(modules, dict):
        raise CorruptFileError(f"{WHAT}: the Policy has no submodules.")
    names = tuple(modules)
    if names not in LAYER_NAMES or not all(isinstance(m, LinearRecord) for m in modules.values()):
        kinds = ", ".join(f"{clean_text(k, 40)}: {type(v).__name__.replace('Record', '')}"
                          for k, v in list(modules.items())[:6])
        raise UnsupportedFormatError(
            f"{WHAT}: the Policy's layers are ({kinds}); the course's are Linear fc1, fc2 or fc1, fc2, fc3.")
    layers = []
    for name, linear in modules.items():
        params = _module_state(linear, name).get("_parameters")
        if not isinstance(params, dict) or "weight" not in params or set(params) - {"weight", "bias"}:
            raise CorruptFileError(f"{WHAT}: layer `{name}` is not a plain Linear layer.")
        if _module_state(linear, name).get("_modules"):
            raise UnsupportedFormatError(f"{WHAT}: layer `{name}` has submodules.")
        weight = archive.materialize(params["weight"], f"{name}.weight")
        bias = params.get("bias")
        bias = archive.materialize(bias, f"{name}.bias") if bias is not None else None
        layers.append((name, weight, bias))
    return layers


def _forward(layers: list[tuple[str, Any, Any]]):
    import torch
    from torch.nn import functional

    def forward(x: torch.Tensor) -> torch.Tensor:
        for i, (_name, weight, bias) in enumerate(layers):
            x = functional.linear(x, weight, bias)
            if i < len(layers) - 1:
                x = functional.relu(x)
        return functional.softmax(x, dim=1)

    return forward


def load_reinforce(files: AgentFiles, observation_space: gym.Space, action_space: gym.Space) -> LoadedAgent:
    """The course's REINFORCE policy from `model.pt`, for the env's spaces; nothing from the repo runs."""
    n_inputs, n_actions = check_spaces("A REINFORCE policy", observation_space, action_space)
    layers = read_reinforce(read_bounded(files, MAX_TORCH_BYTES))
    check_chain(WHAT, layers, n_inputs, n_actions)
    details = {"layers": [[name, list(weight.shape)] for name, weight, _ in layers]}
    return LoadedAgent(CategoricalMLP(_forward(layers), WHAT), "reinforce", "reinforce", details)

