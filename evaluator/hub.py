"""Hub access for one evaluation: pin the revision to a commit sha, check sizes from the Hub's
file metadata before downloading, fetch only the files an agent needs, read the claim.

Everything goes through `huggingface_hub` (HF_ENDPOINT, HF_TOKEN, HF_HOME as usual), so the
same code runs against the real Hub and against localhub.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .agents import find_agent, settle
from .card import (
    MAX_CARD_CHARS,
    Claim,
    front_matter,
    infer_algo,
    infer_env_id,
    parse_claim,
    parse_claimed_episodes,
    parse_results_claim,
)
from .text import clean_text, is_clean

log = logging.getLogger(__name__)

MAX_AGENT_BYTES = 512 * 1024 * 1024  # the largest agent file we download
MAX_SIDE_FILE_BYTES = 16 * 1024 * 1024  # card, results.json, RL Zoo yml and pkl files
MAX_TOTAL_BYTES = 600 * 1024 * 1024
SIDE_FILES = ("README.md", "results.json", "config.yml", "args.yml", "env_kwargs.yml", "vec_normalize.pkl")


_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_PART}/{_PART}$")


def check_repo_id(repo_id: str) -> str:
    """`repo_id` stripped, or InvalidRepoIdError (before anything is asked of the Hub)."""
    repo_id = (repo_id or "").strip() if isinstance(repo_id, str) else ""
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise errors.InvalidRepoIdError(
            f"{clean_text(repo_id, 200)!r} is not a Hub model repo id: expected `namespace/name` (letters, digits, "
            "'-', '_', '.'; e.g. sb3/ppo-CartPole-v1)")
    return repo_id


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


def endpoint_url(endpoint: str | None = None) -> str:
    """The Hub URL a request goes to: `endpoint`, else HF_ENDPOINT (read by huggingface_hub)."""
    from huggingface_hub import constants

    return (endpoint or constants.ENDPOINT).rstrip("/")


def _server_says(err: BaseException) -> str:
    """The first line of a Hub error, sanitised and short (never a raw response dump)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return clean_text(first, 200)


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None, *, endpoint: str | None = None):
    """Turn huggingface_hub's exceptions into the evaluator's typed errors with a fix in words;
    the transient ones name the endpoint that was tried (HF_ENDPOINT)."""
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError as err:
        raise errors.GatedRepoError(
            f"{repo_id} is gated: accept its conditions on the Hub and set HF_TOKEN to evaluate it"
        ) from err
    except hf.RepositoryNotFoundError as err:
        raise errors.RepoNotFoundError(
            f"repo {repo_id} was not found on {endpoint_url(endpoint)} (deleted, private, or a typo): check the "
            "repo id; for a private repo set HF_TOKEN"
        ) from err
    except hf.RevisionNotFoundError as err:
        raise errors.RevisionNotFoundError(
            f"revision {clean_text(revision, 100)!r} of {repo_id} was not found: pass a branch name or a commit sha "
            "that exists"
        ) from err
    except hf.DisabledRepoError as err:
        raise errors.RepoNotFoundError(f"{repo_id} has been disabled on the Hub") from err
    except hf.RemoteEntryNotFoundError as err:
        raise errors.NoAgentError(f"a file of {repo_id} disappeared during the download ({_server_says(err)})") from err
    except hf.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        where = endpoint_url(endpoint)
        if status is None or status >= 500 or status == 429:
            raise errors.HubUnavailableError(
                f"the Hub at {where} answered {status} for {repo_id}: retry later (HF_ENDPOINT sets the Hub URL)"
            ) from err
        if status == 404:
            raise errors.RepoNotFoundError(
                f"repo {repo_id} was not found on {where} (HTTP 404): check the repo id") from err
        raise errors.RepoNotFoundError(
            f"the Hub at {where} refused access to {repo_id} (HTTP {status}: {_server_says(err)})") from err
    except errors.EvaluationError:
        raise
    except (hf.LocalEntryNotFoundError, hf.OfflineModeIsEnabled, *_network_errors()) as err:
        raise errors.HubUnavailableError(
            f"the Hub at {endpoint_url(endpoint)} is unreachable ({type(err).__name__}): retry later, or point "
            "HF_ENDPOINT at a Hub that answers") from err
    except OSError as err:
        raise errors.HubUnavailableError(
            f"network error talking to the Hub at {endpoint_url(endpoint)}: {_server_says(err)}") from err


def _check_size(path: str, size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise errors.TooLargeError(
            f"{path} is {size:,} bytes, over the {limit:,}-byte limit for this kind of file: "
            "the evaluator refuses it before downloading"
        )


class _CappedFile:
    """A binary file that refuses to grow past `limit` bytes (a download of unknown size)."""

    def __init__(self, fh, name: str, limit: int):
        self.fh, self.name, self.limit, self.written = fh, name, limit, 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise errors.TooLargeError(
                f"{self.name} is over the {self.limit:,}-byte limit for this kind of file (the Hub did not say its "
                "size; the download was stopped there)")
        return self.fh.write(data)

    def __getattr__(self, name: str):
        return getattr(self.fh, name)


def _file_metadata(url: str, token: str | bool | None):
    from huggingface_hub import get_hf_file_metadata

    return get_hf_file_metadata(url, token=token)


def _snapshot_dir(repo_id: str, sha: str, cache_dir: Path | None) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    base = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return base / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / sha


def _stream_capped(url: str, target: Path, name: str, limit: int, token: str | bool | None) -> Path:
    """Download `url` to `target` (atomically), refusing more than `limit` bytes."""
    import tempfile

    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".incomplete")
    try:
        with open(fd, "wb") as fh:
            http_get(url, _CappedFile(fh, name, limit), headers=build_hf_headers(token=token))
        Path(tmp).replace(target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def download_file(repo_id: str, name: str, sha: str, *, size: int | None, limit: int,
                  cache_dir: Path | None = None, endpoint: str | None = None,
                  token: str | bool | None = None) -> Path:
    """One file of a pinned revision, never more than `limit` bytes: the size the Hub states
    (listing, else the file's HEAD) is checked before downloading; a file whose size nobody
    states is streamed into the snapshot folder with the cap; a file of known size is fetched with
    one GET into the snapshot folder (no HEAD per file: the listing's one call gave every size,
    and a sha never changes content). Call inside `hub_errors`."""
    from huggingface_hub import hf_hub_download, hf_hub_url

    _check_size(name, size, limit)
    if size is not None:  # the listing said its size: one GET, no HEAD (the sha pins the content)
        target = _snapshot_dir(repo_id, sha, cache_dir).joinpath(*name.split("/"))
        if not (target.is_file() and target.stat().st_size == size):
            _stream_capped(hf_hub_url(repo_id, name, revision=sha, endpoint=endpoint), target, name, limit, token)
        if target.stat().st_size != size:
            raise errors.CorruptFileError(
                f"{name}: the Hub listed {size:,} bytes but sent {target.stat().st_size:,}; try again later")
        return target
    if size is None:
        metadata = _file_metadata(hf_hub_url(repo_id, name, revision=sha, endpoint=endpoint), token)
        _check_size(name, metadata.size, limit)
        if metadata.size is None:
            target = _snapshot_dir(repo_id, sha, cache_dir).joinpath(*name.split("/"))
            if target.is_file() and target.stat().st_size <= limit:
                return target
            return _stream_capped(metadata.location, target, name, limit, token)
    local = Path(hf_hub_download(repo_id, name, revision=sha, cache_dir=cache_dir, endpoint=endpoint, token=token))
    _check_size(name, local.stat().st_size, limit)
    return local


def read_card(path: Path) -> dict:
    """The front matter of a downloaded README, reading no more of it than a card may hold."""
    with open(path, "rb") as fh:
        head = fh.read(4 * MAX_CARD_CHARS)  # UTF-8: at most 4 bytes a character
    return front_matter(head.decode("utf-8", errors="replace"))


def fetch(repo_id: str, revision: str | None = None, *, cache_dir: Path | None = None,
          endpoint: str | None = None, token: str | bool | None = None) -> RepoSnapshot:
    """Resolve `revision` to a sha, size-check, and download the agent and its side files."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, revision, endpoint=endpoint):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        if getattr(info, "gated", False) and token is False:
            raise errors.GatedRepoError(f"{repo_id} is gated: set HF_TOKEN with access to evaluate it")
        sha = info.sha
        sizes = listed_files(info)
        agent_format, agent_file = find_agent(sorted(sizes), repo_id=repo_id)
        _check_size(agent_file, sizes.get(agent_file), MAX_AGENT_BYTES)
        wanted = [agent_file] + [f for f in SIDE_FILES if f in sizes and f != agent_file]
        for name in wanted[1:]:
            _check_size(name, sizes.get(name), MAX_SIDE_FILE_BYTES)
        total = sum(sizes.get(name) or 0 for name in wanted)
        _check_size("the agent's files", total, MAX_TOTAL_BYTES)
        root = None
        downloaded = 0
        for name in wanted:
            limit = MAX_AGENT_BYTES if name == agent_file else MAX_SIDE_FILE_BYTES
            local = download_file(repo_id, name, sha, size=sizes.get(name), limit=limit, cache_dir=cache_dir,
                                  endpoint=endpoint, token=token)
            downloaded += local.stat().st_size
            _check_size("the agent's files", downloaded, MAX_TOTAL_BYTES)
            root = local.parents[len(Path(name).parts) - 1]
    card = read_card(root / "README.md") if "README.md" in wanted else {}
    results_json = (root / "results.json").read_bytes() if "results.json" in wanted else None
    tags = [clean_text(t, 200) for t in info.tags or [] if isinstance(t, str)]
    # A course model.pt is told REINFORCE from CleanRL by its opcodes; a FrozenLake id made precise.
    agent_format, env_id = settle(agent_format, root, agent_file, infer_env_id(card, tags, repo_id))
    return RepoSnapshot(
        repo_id=repo_id, sha=sha, root=root, files=tuple(wanted), sizes=sizes,
        agent_format=agent_format, agent_file=agent_file, tags=tags, card=card,
        claim=parse_claim(card) or parse_results_claim(results_json),
        claimed_episodes=parse_claimed_episodes(results_json),
        env_id=env_id, algo=infer_algo(card),
    )


def listed_files(info) -> dict[str, int | None]:
    """{path: size or None} of a repo's listing. A name that is not clean text (control or
    invisible characters, surrogates) is left out, with a log line: no agent or side file is
    named so, and the name would otherwise reach messages, the store and terminals."""
    sizes = {}
    for sibling in info.siblings or []:
        name = sibling.rfilename
        if isinstance(name, str) and is_clean(name) and len(name) <= 1000:
            sizes[name] = sibling.size
        else:
            log.warning("ignoring a repo file with an unprintable name: %s", clean_text(str(name), 200))
    return sizes
