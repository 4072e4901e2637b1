"""Hub access for one evaluation: pin the revision to a commit sha, check sizes from the Hub's
file metadata before downloading, fetch only the files an agent needs, read the claim.

Everything goes through `huggingface_hub` (HF_ENDPOINT, HF_TOKEN, HF_HOME as usual), so the
same code runs against the real Hub and against localhub.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .agents import find_agent, settle
from .card import Claim, front_matter, infer_algo, infer_env_id, parse_claim, parse_claimed_episodes

MAX_AGENT_BYTES = 512 * 1024 * 1024  # the largest agent file we download
MAX_SIDE_FILE_BYTES = 16 * 1024 * 1024  # card, results.json, RL Zoo yml and pkl files
MAX_TOTAL_BYTES = 600 * 1024 * 1024
SIDE_FILES = ("README.md", "results.json", "config.yml", "args.yml", "env_kwargs.yml", "vec_normalize.pkl")


@dataclass
class RepoSnapshot:
    """The pinned, downloaded part of a repo that an evaluation reads."""

    repo_id: str
    sha: str
    root: Path
    files: tuple[str, ...]
    sizes: dict[str, int]
    agent_format: str
    agent_file: str
    tags: list[str] = field(default_factory=list)
    card: dict = field(default_factory=dict)
    claim: Claim | None = None
    claimed_episodes: int | None = None
    env_id: str | None = None
    algo: str | None = None


@functools.cache
def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport-level failures of whichever HTTP client this huggingface_hub uses (httpx2,
    httpx or requests, by version): all transient."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                          ("requests", ("ConnectionError", "Timeout"))):
        try:
            imported = importlib.import_module(module)
        except ImportError:
            continue
        found.extend(getattr(imported, name) for name in names if hasattr(imported, name))
    return tuple(found)


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None):
    """Turn huggingface_hub's exceptions into the evaluator's typed errors with a fix in words."""
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError as err:
        raise errors.GatedRepoError(
            f"{repo_id} is gated: accept its conditions on the Hub and set HF_TOKEN to evaluate it"
        ) from err
    except hf.RepositoryNotFoundError as err:
        raise errors.RepoNotFoundError(
            f"repo {repo_id} was not found (deleted, private, or a typo): check the repo id; "
            "for a private repo set HF_TOKEN"
        ) from err
    except hf.RevisionNotFoundError as err:
        raise errors.RevisionNotFoundError(
            f"revision {revision!r} of {repo_id} was not found: pass a branch name or a commit sha "
            "that exists"
        ) from err
    except hf.DisabledRepoError as err:
        raise errors.RepoNotFoundError(f"{repo_id} has been disabled on the Hub") from err
    except hf.RemoteEntryNotFoundError as err:
        raise errors.NoAgentError(f"a file of {repo_id} disappeared during the download: {err}") from err
    except hf.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status is None or status >= 500 or status == 429:
            raise errors.HubUnavailableError(f"the Hub answered {status} for {repo_id}: retry later") from err
        raise errors.RepoNotFoundError(f"the Hub refused access to {repo_id} ({status}): {err}") from err
    except errors.EvaluationError:
        raise
    except (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, *_network_errors()) as err:
        raise errors.HubUnavailableError(f"the Hub is unreachable ({type(err).__name__}): retry later") from err
    except OSError as err:
        raise errors.HubUnavailableError(f"network error talking to the Hub: {err}") from err


def _check_size(path: str, size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise errors.TooLargeError(
            f"{path} is {size:,} bytes, over the {limit:,}-byte limit for this kind of file: "
            "the evaluator refuses it before downloading"
        )


def fetch(repo_id: str, revision: str | None = None, *, cache_dir: Path | None = None,
          endpoint: str | None = None, token: str | bool | None = None) -> RepoSnapshot:
    """Resolve `revision` to a sha, size-check, and download the agent and its side files."""
    from huggingface_hub import HfApi, hf_hub_download

    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, revision):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        if getattr(info, "gated", False) and token is False:
            raise errors.GatedRepoError(f"{repo_id} is gated: set HF_TOKEN with access to evaluate it")
        sha = info.sha
        sizes = {s.rfilename: s.size for s in info.siblings or []}
        agent_format, agent_file = find_agent(sorted(sizes), repo_id=repo_id)
        _check_size(agent_file, sizes.get(agent_file), MAX_AGENT_BYTES)
        wanted = [agent_file] + [f for f in SIDE_FILES if f in sizes and f != agent_file]
        for name in wanted[1:]:
            _check_size(name, sizes.get(name), MAX_SIDE_FILE_BYTES)
        total = sum(sizes.get(name) or 0 for name in wanted)
        _check_size("the agent's files", total, MAX_TOTAL_BYTES)
        root = None
        for name in wanted:
            local = Path(hf_hub_download(repo_id, name, revision=sha, cache_dir=cache_dir,
                                         endpoint=endpoint, token=token))
            _check_size(name, local.stat().st_size, MAX_AGENT_BYTES)
            root = local.parents[len(Path(name).parts) - 1]
    card = {}
    if "README.md" in wanted:
        card = front_matter((root / "README.md").read_text(encoding="utf-8", errors="replace"))
    results_json = (root / "results.json").read_bytes() if "results.json" in wanted else None
    tags = list(info.tags or [])
    # A course model.pt is told REINFORCE from CleanRL by its opcodes; a FrozenLake id made precise.
    agent_format, env_id = settle(agent_format, root, agent_file, infer_env_id(card, tags, repo_id))
    return RepoSnapshot(
        repo_id=repo_id, sha=sha, root=root, files=tuple(wanted), sizes=sizes,
        agent_format=agent_format, agent_file=agent_file, tags=tags, card=card,
        claim=parse_claim(card), claimed_episodes=parse_claimed_episodes(results_json),
        env_id=env_id, algo=infer_algo(card),
    )
