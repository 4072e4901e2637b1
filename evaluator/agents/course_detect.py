"""Which course format a downloaded agent is, and what the result records about it, decided in
the trusted process from file names and pickle opcode scans only (`evaluator.pickle_scan`):
nothing here unpickles, imports torch or decodes the agent's content.

`find_agent` answers `PENDING` for a `model.pt` (the listing cannot tell a REINFORCE module
from a CleanRL state dict); `settle` then reads the downloaded bytes' opcodes: a pickled module
(`__main__.*`, `torch.nn.*` globals) is `reinforce`, a state dict with CleanRL's names is
`cleanrl_ppo`, anything else fails as `unsupported_format` naming what was found. For a
Q-table, `settle` makes a FrozenLake env id precise from the pickle's `map_name` / `slippery`.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from evaluator.agents.base import AgentFiles
from evaluator.errors import CorruptFileError, TooLargeError, UnsafeContentError, UnsupportedFormatError
from evaluator.pickle_scan import PickleScan, ScanLimitError, is_zip, scan_archive, scan_pickle

PENDING = "torch_pickle"  # a model.pt whose kind is decided once its bytes are here
MODEL_PT = "model.pt"
QLEARNING_FILE = "q-learning.pkl"
MAX_BYTES = 64 * 1024 * 1024
_STATE_DICT_GLOBALS = frozenset({"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                                 "torch._utils._rebuild_parameter", "torch.FloatStorage", "torch.DoubleStorage",
                                 "torch.HalfStorage", "torch.BFloat16Storage"})


def _read(path: Path, name: str) -> bytes:
    try:
        if path.stat().st_size > MAX_BYTES:
            raise TooLargeError(f"{name} is {path.stat().st_size:,} bytes (limit {MAX_BYTES:,}).")
        return path.read_bytes()
    except OSError as err:
        raise CorruptFileError(f"cannot read {name}: {err}") from None


def _listed(names: list[str] | tuple[str, ...], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "") if names else "nothing"


def torch_scan(data: bytes, what: str = MODEL_PT) -> PickleScan:
    """The opcode scan of a `torch.save` zip's `data.pkl`; TorchScript and legacy files refused."""
    if not is_zip(data):
        if data[:1] == b"\x80":
            raise UnsupportedFormatError(
                f"{what} is in the legacy torch.save format (torch < 1.6): re-save it with a current torch.")
        raise CorruptFileError(f"{what} is not a torch.save file (not a zip).")
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        scans = scan_archive(data)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        if isinstance(err, ScanLimitError):
            raise TooLargeError(f"{what}: {err}") from None
        raise CorruptFileError(f"{what} is not a readable zip ({str(err)[:100]}).") from None
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise UnsupportedFormatError(
            f"{what} is a TorchScript module (code), not a pickled policy: TorchScript agents are `agent.pt`.")
    data_pkls = [p for p in scans if p.endswith("/data.pkl") and p.count("/") == 1]
    if len(data_pkls) != 1:
        raise CorruptFileError(f"{what} is not a torch.save file (no single `archive/data.pkl`).")
    scan = scans[data_pkls[0]]
    if not scan.complete:
        raise CorruptFileError(f"{what}'s data.pkl is truncated ({scan.error}).")
    return scan


def classify_model_pt(data: bytes) -> str:
    """`reinforce` or `cleanrl_ppo` for a course `model.pt`, from its opcodes only."""
    from evaluator.agents.cleanrl import looks_like_cleanrl
    from evaluator.agents.reinforce import ALLOWLIST

    scan = torch_scan(data)
    known = _STATE_DICT_GLOBALS | {f"{m}.{n}" for m, n in ALLOWLIST}
    _refuse_unlisted(MODEL_PT, tuple(g for g in scan.globals if not g.startswith(("__main__.", "torch.nn."))), known,
                     " (a course model.pt holds a Policy of Linear layers or a state dict of tensors)")
    if any(g.startswith(("__main__.", "torch.nn.")) for g in scan.globals):
        return "reinforce"
    if looks_like_cleanrl(scan.keys):
        return "cleanrl_ppo"
    raise UnsupportedFormatError(
        f"{MODEL_PT} is neither the course's REINFORCE module (a pickled `__main__.Policy`) nor a CleanRL PPO "
        f"state dict (actor.*/critic.* layers): it names {_listed(list(scan.globals))} and holds keys "
        f"{_listed(list(scan.keys), 8)}.")


def settle(agent_format: str, root: Path, agent_file: str, env_id: str | None) -> tuple[str, str | None]:
    """(format, env id) once the agent file is downloaded: `PENDING` resolved, a FrozenLake id
    made precise. Raises UnsupportedFormatError / CorruptFileError / SpaceMismatchError."""
    if agent_format == PENDING:
        return classify_model_pt(_read(root / agent_file, agent_file)), env_id
    if agent_format == "qlearning":
        from evaluator.agents.qlearning import course_env_id

        return agent_format, course_env_id(qlearning_scan(_read(root / agent_file, agent_file)), env_id)
    return agent_format, env_id


# ---------------------------------------------------------------------------------------------
# Describers (the referee's side): refuse early what the player would refuse, from the opcodes


def _refuse_unlisted(what: str, found: tuple[str, ...], allowed: set[str], hint: str) -> None:
    refused = [g for g in found if g not in allowed]
    if refused:
        raise UnsafeContentError(f"{what} refers to {_listed(refused, 5)}, not on the allowlist{hint}: refused "
                                 "without running it.")


def qlearning_scan(data: bytes) -> PickleScan:
    """The opcode scan of a `q-learning.pkl`; globals off its allowlist refused, naming them."""
    from evaluator.agents.qlearning import ALLOWLIST

    try:
        scan = scan_pickle(data)
    except ScanLimitError as err:
        raise TooLargeError(f"{QLEARNING_FILE}: {err}") from None
    _refuse_unlisted(QLEARNING_FILE, scan.globals, {f"{m}.{n}" for m, n in ALLOWLIST},
                     " (a Q-learning pickle holds only numpy arrays, numbers and plain containers)")
    if not scan.complete:
        raise CorruptFileError(f"{QLEARNING_FILE} is truncated or not a pickle ({scan.error}).")
    return scan


def describe_qlearning(files: AgentFiles) -> tuple[str, dict[str, Any]]:
    scan = qlearning_scan(_read(files.path(files.agent_file), files.agent_file))
    return "q-learning", {"pickle_protocol": scan.protocol}


def describe_reinforce(files: AgentFiles) -> tuple[str, dict[str, Any]]:
    from evaluator.agents.reinforce import ALLOWLIST, unmapped_classes

    scan = torch_scan(_read(files.path(files.agent_file), files.agent_file))
    found = unmapped_classes(scan.globals)
    if found:
        raise UnsupportedFormatError(
            f"{MODEL_PT} is a pickled module holding {_listed(found, 5)}: only the course's REINFORCE Policy "
            "(`__main__.Policy` of Linear layers fc1, fc2[, fc3], ReLU, softmax) is supported.")
    _refuse_unlisted(MODEL_PT, scan.globals, {f"{m}.{n}" for m, n in ALLOWLIST},
                     " (a REINFORCE Policy needs only its Linear layers and their tensors)")
    return "reinforce", {}


def describe_cleanrl(files: AgentFiles) -> tuple[str, dict[str, Any]]:
    scan = torch_scan(_read(files.path(files.agent_file), files.agent_file))
    _refuse_unlisted(MODEL_PT, scan.globals, set(_STATE_DICT_GLOBALS), " (a state dict holds only tensors)")
    return "ppo", {}
