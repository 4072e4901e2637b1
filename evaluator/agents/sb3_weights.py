"""`policy.pth` of an SB3 zip, read as data: torch's weights-only loader, then structural checks
(dense CPU float tensors really backed by their bytes, a bounded total) before any value is
read, then names and shapes against the rebuilt policy. Split from `sb3.py` (one concern)."""

from __future__ import annotations

import io
import math
import pickle  # safe: only for pickle.UnpicklingError, raised by torch's weights-only loader
from collections.abc import Mapping

import torch
from torch import nn

from evaluator.errors import (
    CorruptFileError,
    EvaluationError,
    InvalidWeightsError,
    TooLargeError,
    UnsafeContentError,
)

MAX_POLICY_PARAMS = 20_000_000  # ~80 MB of float32; Atari DQN (net + target) is ~3.4M



MAX_STATE_ELEMENTS = MAX_POLICY_PARAMS  # all tensors of policy.pth together
_WEIGHT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def _check_tensor(key: str, tensor: torch.Tensor) -> int:
    """Refuse anything but a plain dense CPU float tensor whose data is really in the file;
    return its element count. Nothing here reads or allocates the tensor's values."""
    if type(tensor) not in (torch.Tensor, nn.Parameter):
        raise CorruptFileError(f"policy.pth: `{key}` is a {type(tensor).__name__}, not a plain tensor.")
    if (
        tensor.layout != torch.strided
        or tensor.is_meta
        or tensor.device.type != "cpu"
        or tensor.is_quantized
        or tensor.is_nested
    ):
        raise CorruptFileError(
            f"policy.pth: `{key}` is not a dense CPU tensor (layout {tensor.layout}, device "
            f"{tensor.device}); SB3 saves plain tensors."
        )
    if tensor.dtype not in _WEIGHT_DTYPES:
        raise InvalidWeightsError(f"policy.pth: `{key}` has dtype {tensor.dtype}, expected floats.")
    if tensor.dim() > 8:
        raise CorruptFileError(f"policy.pth: `{key}` has {tensor.dim()} dimensions.")
    numel = math.prod(int(n) for n in tensor.shape)
    if numel * tensor.element_size() > tensor.untyped_storage().nbytes():
        # e.g. `torch.zeros(1).expand(100000, 100000)`: a few bytes on disk, 40 GB once read
        raise CorruptFileError(
            f"policy.pth: `{key}` has shape {tuple(tensor.shape)} but only "
            f"{tensor.untyped_storage().nbytes()} bytes of data (a broadcast view, not saved weights)."
        )
    return numel


def _is_out_of_memory(exc: BaseException) -> bool:
    """torch reports a failed CPU allocation as a RuntimeError: it is the memory limit, not the file."""
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)[:500]


def check_weight_values(state: Mapping[str, torch.Tensor]) -> None:
    """Every weight is finite (call after the structural checks of `load_state_dict_bytes`)."""
    try:
        for key, tensor in state.items():
            if not bool(torch.isfinite(tensor).all()):
                raise InvalidWeightsError(
                    f"policy.pth: `{key}` holds NaN or infinite values; the agent's training diverged."
                )
    except EvaluationError:
        raise
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
        if _is_out_of_memory(exc):
            raise MemoryError(str(exc)[:300]) from exc
        raise CorruptFileError(f"policy.pth: its weights cannot be read: {str(exc)[:300]}") from exc


def load_state_dict_bytes(raw: bytes, *, check_values: bool = True) -> dict[str, torch.Tensor]:
    """`policy.pth` through torch's weights-only unpickler: tensors and containers, nothing else.

    Each value must be a dense CPU float tensor backed by as many bytes as its shape needs, and
    all of them together at most MAX_STATE_ELEMENTS, before any value is looked at. With
    `check_values=False` the finiteness check is left to `check_weight_values` (the loader runs
    it after `fit_state_dict` has checked the shapes)."""
    try:
        state = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:  # safe: torch's weights-only refusal, nothing unpickled here
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise UnsafeContentError(
                f"policy.pth holds more than tensors (refused by torch's weights-only loader): {str(exc)[:300]}"
            ) from exc
        raise CorruptFileError(f"policy.pth is not a readable PyTorch file: {str(exc)[:300]}") from exc
    except MemoryError:
        raise
    except (
        RuntimeError, ValueError, EOFError, OSError, KeyError, AttributeError, TypeError, IndexError,
        NotImplementedError, OverflowError, RecursionError, UnicodeDecodeError,
    ) as exc:  # fmt: skip
        if _is_out_of_memory(exc):
            raise MemoryError(str(exc)[:300]) from exc
        raise CorruptFileError(f"policy.pth is not a readable PyTorch file: {str(exc)[:300]}") from exc
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CorruptFileError("policy.pth is not a state dict (a mapping of names to tensors).")
    try:
        total = sum(_check_tensor(key, tensor) for key, tensor in state.items())
    except EvaluationError:
        raise
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as exc:
        raise CorruptFileError(f"policy.pth holds a tensor that cannot be inspected: {str(exc)[:300]}") from exc
    if total > MAX_STATE_ELEMENTS:
        raise TooLargeError(
            f"policy.pth holds {total:,} weights (limit {MAX_STATE_ELEMENTS:,}); refused before reading them."
        )
    state = dict(state)
    if check_values:
        check_weight_values(state)
    return state


# sb3-contrib < 2.0's ARSLinearPolicy held a bare Linear as `action_net` (Box and Discrete alike);
# the current class wraps it in a Sequential. Same weights, other names.
_LEGACY_ARS_KEYS = {"action_net.weight": "action_net.0.weight", "action_net.bias": "action_net.0.bias"}


def legacy_key_names(family: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with the names of older library versions mapped to the current ones."""
    if family != "ars" or not any(k in state for k in _LEGACY_ARS_KEYS):
        return state
    return {_LEGACY_ARS_KEYS.get(k, k): v for k, v in state.items()}


def fit_state_dict(policy: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Check names and shapes against the rebuilt module before copying anything.

    Modules registered under several names (SB3 2.x `pi_features_extractor`, an alias of
    `features_extractor` that 1.x zips lack) are filled from whichever name the zip has."""
    expected = policy.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for key, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(key)
    state = dict(state)
    for keys in groups.values():
        present = [k for k in keys if k in state]
        if present and len(present) < len(keys):
            for key in keys:
                state.setdefault(key, state[present[0]])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise InvalidWeightsError(
            "policy.pth does not fit the policy the zip describes"
            + (f"; missing {missing[:5]}" if missing else "")
            + (f"; unexpected {unexpected[:5]}" if unexpected else "")
            + (f"; shapes differ: {wrong[:5]}" if wrong else "")
        )
    return state
