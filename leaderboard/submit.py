"""Check a submission before it is queued: a well-formed repo id, a repo that exists and is
readable, an agent file in it, an env the evaluator knows; pin the revision to its commit sha
and read that commit's date (the ranking's "newest revision")."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evaluator import errors
from evaluator.agents import find_agent
from evaluator.card import infer_env_id
from evaluator.envs import resolve_env
from evaluator.errors import InvalidRepoIdError  # noqa: F401  (re-exported: the one check lives in evaluator.hub)
from evaluator.hub import MAX_SIDE_FILE_BYTES, check_repo_id, download_file, hub_errors, listed_files, read_card
from evaluator.text import clean_text

from .store import iso


@dataclass(frozen=True)
class Submission:
    repo_id: str
    revision: str  # the commit sha
    env_key: str
    env_id: str | None  # the --env override, None when the repo's own env is used
    stated_env_id: str | None  # the env the repo states
    commit_date: str | None  # ISO 8601 UTC
    agent_format: str
    agent_file: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_submission(repo_id: str, *, revision: str | None = None, env_id: str | None = None,
                     endpoint: str | None = None, token: str | bool | None = None,
                     cache_dir: Path | None = None) -> Submission:
    """Validate a submission (raises evaluator.errors.EvaluationError subclasses: their
    `exit_code` is 3 for a Hub that did not answer, else 1)."""
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(repo_id, revision, endpoint=endpoint):
        info = api.model_info(repo_id, revision=revision, files_metadata=True)
        if getattr(info, "gated", False) and token is False:
            raise errors.GatedRepoError(f"{repo_id} is gated: set HF_TOKEN with access to evaluate it")
        sizes = listed_files(info)
        agent_format, agent_file = find_agent(sorted(sizes), repo_id=repo_id)
        card: dict = {}
        if "README.md" in sizes and (sizes["README.md"] or 0) <= MAX_SIDE_FILE_BYTES:
            readme = download_file(repo_id, "README.md", info.sha, size=sizes["README.md"], limit=MAX_SIDE_FILE_BYTES,
                                   cache_dir=cache_dir, endpoint=endpoint, token=token)
            card = read_card(readme)
    stated = infer_env_id(card, [clean_text(t, 200) for t in info.tags or [] if isinstance(t, str)], repo_id)
    requested = env_id or stated
    if not requested:
        raise errors.UnknownEnvError(
            f"{repo_id} does not say which env it plays (no model-index dataset, env tag or env id in its "
            "name): submit it with --env ENV_ID")
    spec = resolve_env(requested)
    return Submission(repo_id=repo_id, revision=info.sha, env_key=spec.env_key, env_id=env_id,
                      stated_env_id=stated, commit_date=iso(info.last_modified), agent_format=agent_format,
                      agent_file=agent_file)


def commit_date(repo_id: str, revision: str, *, endpoint: str | None = None,
                token: str | bool | None = None) -> str | None:
    """The date of commit `revision` of a repo (ISO 8601 UTC), None when the Hub does not say."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision)
    except Exception:  # best effort: a row without a commit date ranks as the oldest revision
        return None
    return iso(info.last_modified)
