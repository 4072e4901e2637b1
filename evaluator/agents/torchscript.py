"""TorchScript agents (`agent.pt`, the Open RL Leaderboard contract).

The file is a `torch.jit.save`d module whose `forward(obs)` takes a batch of observations as a
float32 tensor `(batch, *obs_shape)` and returns actions: for a Discrete space an integer tensor
`(batch,)` or logits `(batch, n)` (argmax taken); for a Box space `(batch, *action_shape)`.

A TorchScript module is code (its methods run in torch's interpreter, `__setstate__` at load), so
it is loaded ONLY inside a player process (`evaluator.sandbox.player`) under the full
confinement: `load_torchscript` refuses unless the player allowed it, the process carries
`EVALUATOR_SANDBOX=1`, and it has no network interface but loopback. Outputs are checked here
(tensor, shape, dtype, finite) and by the referee (inside the space).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from evaluator.agents.base import AgentFiles, LoadedAgent
from evaluator.errors import (
    CorruptFileError,
    InvalidActionError,
    MemoryLimitError,
    SpaceMismatchError,
    TooLargeError,
    UnsafeContentError,
)

MAX_AGENT_BYTES = 512 * 1024 * 1024
_allowed = False


def allow_code_bearing_formats() -> None:
    """Called by the player (`evaluator.sandbox.player`) only, once it is confined."""
    global _allowed
    _allowed = True


def _network_interfaces() -> list[str]:
    try:
        return [name for _, name in socket.if_nameindex()]
    except OSError:
        return []


def check_confined() -> None:
    """Raise UnsafeContentError unless this process is a sandbox process without network."""
    if not _allowed or os.environ.get("EVALUATOR_SANDBOX") != "1":
        raise UnsafeContentError(
            "agent.pt is a TorchScript module, i.e. code: it is only ever loaded inside a player process "
            "(evaluator.sandbox.player), and this process is not one. Evaluate through `evaluate()` / the CLI.")
    outside = [name for name in _network_interfaces() if name != "lo"]
    if outside:
        raise UnsafeContentError(
            "agent.pt is a TorchScript module, i.e. code, and this sandbox has network interfaces "
            f"({', '.join(outside)}): refused. Install bubblewrap (scripts/install_system_deps.sh) "
            "or allow `unshare --net`.")


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return "can't allocate memory" in text or "out of memory" in text or "bad_alloc" in text


class TorchScriptPolicy:
    def __init__(self, module: Any, observation_space: gym.Space, action_space: gym.Space) -> None:
        self.module = module
        self.observation_space = observation_space
        self.action_space = action_space

    def act(self, obs: np.ndarray, *, deterministic: bool = True, rngs: Any = None) -> np.ndarray:
        """`forward(obs)`'s actions; the module decides how it acts (its own code), so `rngs`
        is not used."""
        import torch

        batch = np.asarray(obs)
        x = torch.as_tensor(batch, dtype=torch.float32)
        try:
            with torch.no_grad():
                out = self.module(x)
        except MemoryError as err:
            raise MemoryLimitError(f"agent.pt ran out of memory in forward(): {str(err)[:300]}") from err
        except Exception as err:  # the module's own code failed (TorchScript raises RuntimeError)
            if _is_oom(err):
                raise MemoryLimitError(f"agent.pt ran out of memory in forward(): {str(err)[:300]}") from err
            # TorchScript puts its own traceback first: the reason is on the last lines.
            reason = " ".join(line.strip() for line in str(err).strip().splitlines()[-2:] if line.strip())
            raise InvalidActionError(
                f"agent.pt's forward() failed instead of returning actions: {type(err).__name__}: "
                f"{reason[-600:]}") from None
        if not isinstance(out, torch.Tensor):
            raise InvalidActionError(
                f"agent.pt's forward() returned a {type(out).__name__}, expected a tensor of actions")
        return self._to_actions(out.detach().cpu(), len(batch))

    def _to_actions(self, out: Any, n: int) -> np.ndarray:
        import torch

        space = self.action_space
        shape = tuple(out.shape)
        if out.dtype.is_floating_point and not bool(torch.isfinite(out).all()):
            raise InvalidActionError(f"agent.pt returned NaN or infinite actions (output shape {shape})")
        if isinstance(space, gym.spaces.Discrete):
            if shape == (n,):
                if out.dtype.is_floating_point or out.dtype == torch.bool:
                    if out.dtype == torch.bool or not bool((out == out.round()).all()):
                        raise InvalidActionError(
                            f"agent.pt returned non-integer actions of dtype {out.dtype} for Discrete({space.n}); "
                            f"return integer actions (batch,) or logits (batch, {space.n})")
                return out.to(torch.int64).numpy() + 0  # runner checks the range
            if shape == (n, int(space.n)):
                return (out.argmax(dim=1).numpy() + int(space.start)).astype(np.int64)
            raise InvalidActionError(
                f"agent.pt returned a tensor of shape {shape} for a batch of {n}: expected actions ({n},) or "
                f"logits ({n}, {space.n}) for Discrete({space.n})")
        if isinstance(space, gym.spaces.Box):
            if shape != (n, *space.shape):
                raise InvalidActionError(
                    f"agent.pt returned a tensor of shape {shape} for a batch of {n}: expected ({n}, "
                    f"{', '.join(map(str, space.shape))}) for the action space {space}")
            if not (out.dtype.is_floating_point or out.dtype in (torch.int32, torch.int64)):
                raise InvalidActionError(f"agent.pt returned actions of dtype {out.dtype}, expected floats")
            return out.to(torch.float64).numpy()
        raise SpaceMismatchError(f"TorchScript agents support Discrete and Box action spaces, not {space}")


def describe_torchscript(files: AgentFiles) -> tuple[str, dict[str, Any]]:
    """(algo, details) on the trusted side: the algorithm from the model card, the file's size."""
    try:
        size = os.path.getsize(files.path(files.agent_file))
    except OSError as err:
        raise CorruptFileError(f"Cannot read {files.agent_file}: {err}") from err
    return _card_algo(files), {"file_bytes": size}


def _card_algo(files: AgentFiles) -> str:
    if not files.has("README.md"):
        return "unknown"
    try:
        from evaluator.card import front_matter, infer_algo

        text = Path(files.path("README.md")).read_text(encoding="utf-8", errors="replace")
        algo = infer_algo(front_matter(text[: 1 << 20]))
    except Exception:
        return "unknown"
    return str(algo).lower()[:64] if algo else "unknown"


def load_torchscript(files: AgentFiles, observation_space: gym.Space, action_space: gym.Space) -> LoadedAgent:
    """Load `agent.pt` with `torch.jit.load` (inside a sandbox process only)."""
    check_confined()
    if not isinstance(action_space, (gym.spaces.Discrete, gym.spaces.Box)):
        raise SpaceMismatchError(f"TorchScript agents support Discrete and Box action spaces, not {action_space}")
    path = files.path(files.agent_file)
    try:
        size = os.path.getsize(path)
    except OSError as err:
        raise CorruptFileError(f"Cannot read {files.agent_file}: {err}") from err
    if size > MAX_AGENT_BYTES:
        raise TooLargeError(f"{files.agent_file} is {size:,} bytes (limit {MAX_AGENT_BYTES:,}).")
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except MemoryError as err:
        raise MemoryLimitError(f"loading {files.agent_file} ran out of memory") from err
    except Exception as err:  # torch raises RuntimeError / ValueError for anything it cannot read
        if _is_oom(err):
            raise MemoryLimitError(f"loading {files.agent_file} ran out of memory: {str(err)[:300]}") from err
        raise CorruptFileError(
            f"{files.agent_file} is not a loadable TorchScript module (save it with "
            f"`torch.jit.save(torch.jit.script(model), 'agent.pt')`): {str(err).strip()[:400]}") from err
    module.eval()
    return LoadedAgent(TorchScriptPolicy(module, observation_space, action_space), "unknown", "torchscript",
                       {"file_bytes": size})
