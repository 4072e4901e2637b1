"""One evaluation, end to end: repo id -> pinned snapshot -> safe load -> seeded episodes ->
`EvalResult`. Any failure becomes a `failed` result with a reason; nothing raises out."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from . import errors, provenance
from .agents import CODE_BEARING
from .drift import drift_notes
from .envs import resolve_env
from .hub import RepoSnapshot, check_repo_id, fetch
from .job import Job, JobOutcome
from .pickle_report import scan_repo
from .result import STATUS_FAILED, STATUS_FINISHED, ClaimResult, EvalResult
from .runner import (
    PRIVATE,
    PRIVATE_SALT_ENV,
    PROTOCOL_VERSION,
    EpisodeResults,
    SeedSet,
    _action_secret,
    private_seeds,
    public_seeds,
)
from .stats import DEFAULT_CLAIMED_N, claim_verdict, summarize
from .text import clean_text

log = logging.getLogger(__name__)


def _run_part(job: Job, progress: Callable[[int, int], None] | None = None) -> JobOutcome:
    """One job (or one part of one): refereed here against its own confined player."""
    from .sandbox.referee import play

    return play(job, progress=progress)


def _choose_seeds(n: int):
    """The private seed set when the deployment sets a salt, else the public one."""
    if os.environ.get(PRIVATE_SALT_ENV):
        return private_seeds(n)
    return public_seeds(n)


def _split(n: int, parts: int) -> list[list[int]]:
    size = -(-n // parts)
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def run_job(job: Job, *, processes: int = 1,
            progress: Callable[[int, int], None] | None = None) -> JobOutcome:
    """Run all episodes against one player, or split over `processes` players at once (the
    replay, if any, with the first part); per-episode results are the same either way. A
    code-bearing agent may keep state between calls, so it is always played by one player in
    the canonical order, whatever `processes` says. A crash, hang or OOM of any part raises
    its typed EvaluationError."""
    if job.agent_format in CODE_BEARING:
        processes = 1
    if processes <= 1:
        return _run_part(job, progress)
    chunks = _split(job.n_episodes, processes)
    jobs = [replace(job, episode_indices=tuple(chunk), video_path=job.video_path if i == 0 else None)
            for i, chunk in enumerate(chunks)]
    done = [0] * len(jobs)
    lock = threading.Lock()

    def part_progress(i: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None

        def report(n: int, _total: int) -> None:
            with lock:
                done[i] = n
                progress(sum(done), job.n_episodes)
        return report

    # Threads only wait on the sandbox processes, which do the work.
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = [pool.submit(_run_part, part, part_progress(i)) for i, part in enumerate(jobs)]
        outcomes = [f.result() for f in futures]
    merged = outcomes[0]
    merged.episodes = EpisodeResults.merge(o.episodes for o in outcomes)
    return merged


def evaluate(repo_id: str, *, revision: str | None = None, env_id: str | None = None,
             episodes: int | None = None, processes: int = 1, cache_dir: Path | None = None,
             endpoint: str | None = None, token: str | bool | None = None, video_path: Path | None = None,
             progress: Callable[[int, int], None] | None = None, seeds: SeedSet | None = None) -> EvalResult:
    """Evaluate one repo under protocol v1. Never raises for a bad agent or input: the result
    says `failed`, with `error_code` and an `error` that says what to do.

    With `video_path`, the replay of episode 0 is recorded there (mp4); `result.video` is that
    path as given (a store rewrites it relative to itself), `result.video_error` says why not.

    `seeds` (at least as many as the episodes): the seed set chosen by the caller, e.g. a head
    that keeps the private salt and hands remote workers only the seeds; default: the private set
    when this process has the salt, else the public one."""
    result = EvalResult(
        repo_id=repo_id, protocol_version=PROTOCOL_VERSION,
        evaluator_version=provenance.evaluator_version(), versions=provenance.versions(),
        platform=provenance.platform_id(),
    )
    if episodes is not None and episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    snapshot: RepoSnapshot | None = None
    try:
        repo_id = result.repo_id = check_repo_id(repo_id)
        snapshot = fetch(repo_id, revision, cache_dir=cache_dir, endpoint=endpoint, token=token)
        _report_pickles(result, snapshot)  # what PPO.load & co would import: read, never run
        result.revision, result.format = snapshot.sha, snapshot.agent_format
        result.algo = snapshot.algo
        requested = env_id or snapshot.env_id
        result.env_id = snapshot.env_id or requested  # as the repo states it (DESIGN.md)
        if not requested:
            raise errors.UnknownEnvError(
                f"{repo_id} does not say which env it plays (no model-index dataset, env tag or env id in "
                "its name): pass --env ENV_ID")
        spec = resolve_env(requested)
        result.eval_env_id, result.eval_env_kwargs, result.env_key = (
            spec.eval_env_id, dict(spec.eval_env_kwargs), spec.env_key)
        n = episodes or spec.n_episodes
        if seeds is None:
            seeds = _choose_seeds(n)
        elif len(seeds) < n:
            raise ValueError(f"{len(seeds)} seeds given for {n} episodes")
        else:
            seeds = SeedSet(seeds.name, tuple(seeds.seeds[:n]), getattr(seeds, "action_key", None))
        key = _action_secret(seeds)
        job = Job(str(snapshot.root), snapshot.agent_format, snapshot.agent_file, snapshot.files,
                  requested, n, tuple(seeds), video_path=str(video_path) if video_path else None,
                  seed_set=seeds.name, action_key=key.hex() if key else None)
        result.seed_set = seeds.name  # failed rows too: a private row's seeds are never published
        try:
            outcome = run_job(job, processes=processes, progress=progress)
        except errors.EvaluationError as err:
            if seeds.name != PRIVATE:
                raise
            # What a player says, or how its episodes went wrong, can carry what it saw (its
            # observations, hence the seeds): on the private set only the code is kept.
            raise errors.EvaluationError(
                f"the agent failed ({err.code.value}) on the private seed set; the details are withheld because "
                "they could reveal the private seeds. Reproduce the failure on the public seeds: python -m "
                f"evaluator evaluate {repo_id} --revision {snapshot.sha}", code=err.code) from None
        measured = outcome.episodes
        result.algo = outcome.algo
        result.video, result.video_error = outcome.video, outcome.video_error
        result.notes = drift_notes(spec.env_key, outcome.details.get("sb3_version"))
        result.seed_set = PRIVATE if seeds.name == PRIVATE else measured.seed_set
        result.deterministic = measured.deterministic  # a property of (env family, format)
        stats = summarize(measured.returns)
        result.n_episodes = n
        result.seeds = list(measured.seeds)
        result.episode_returns = list(measured.returns)
        result.episode_lengths = list(measured.lengths)
        result.mean_reward, result.std_reward = stats["mean_reward"], stats["std_reward"]
        result.score, result.iqm, result.ci95 = stats["score"], stats["iqm"], stats["ci95"]
        result.ranked = episodes in (None, spec.n_episodes) and _same_env(env_id, snapshot.env_id)
        result.status = STATUS_FINISHED
    except errors.EvaluationError as err:
        _fail(result, err.code, str(err))
    except MemoryError:
        _fail(result, errors.ErrorCode.MEMORY_LIMIT, "the agent ran out of memory while loading or acting")
    except Exception as err:  # a bug of ours or a library's: still a failed row, never a crash
        log.exception("internal error while evaluating %s", repo_id)
        _fail(result, errors.ErrorCode.INTERNAL, f"internal error ({type(err).__name__}: {err}); please report it")
    result.claim = _claim(result, snapshot)
    _clean_strings(result)
    result.evaluated_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return result


def _report_pickles(result: EvalResult, snapshot: RepoSnapshot) -> None:
    """The unsafe-content report (evaluator.pickle_report); a scan that fails is logged, and the
    evaluation goes on (it never depended on the report)."""
    try:
        report = scan_repo(snapshot.root, snapshot.files)
    except Exception:  # the report is information: it must never fail an evaluation
        log.exception("pickle scan of %s failed", snapshot.repo_id)
        return
    result.pickle_imports, result.pickle_unsafe = report.imports, bool(report.unsafe)


def _clean_strings(result: EvalResult) -> None:
    """The result's free-text fields through the one sanitiser (evaluator.text), whatever path a
    repo's text took to get there: strings are sanitised where they enter (card, file names, zip
    fields, pickled names, player messages); this makes the guarantee hold for the result as a
    whole (clean_text is idempotent: clean text passes unchanged)."""
    for name in ("repo_id", "env_id", "algo", "error", "video_error"):
        value = getattr(result, name)
        if isinstance(value, str):
            setattr(result, name, clean_text(value, 200 if name != "error" else 4000))
    result.notes = [clean_text(note, 1000) for note in result.notes]
    if isinstance(result.claim.env_id, str):
        result.claim.env_id = clean_text(result.claim.env_id, 200)


def _fail(result: EvalResult, code: errors.ErrorCode, message: str) -> None:
    result.status, result.error_code, result.error = STATUS_FAILED, code.value, message
    result.ranked = False


def _same_env(override: str | None, stated: str | None) -> bool:
    """An `--env` that names the repo's own env (or an alias of it) is no override."""
    if override is None:
        return True
    try:
        return stated is not None and resolve_env(override).env_key == resolve_env(stated).env_key
    except errors.UnknownEnvError:
        return False


def _claim(result: EvalResult, snapshot: RepoSnapshot | None) -> ClaimResult:
    claim = snapshot.claim if snapshot else None
    if claim is None:
        return ClaimResult(verdict="absent")
    if claim.mean_reward is None:  # a number no float holds: no claim, and the result says why
        if claim.note:
            result.notes = [*result.notes, claim.note]
        return ClaimResult(verdict="absent", env_id=claim.env_id)
    n_claimed = snapshot.claimed_episodes or DEFAULT_CLAIMED_N
    same_env = claim.env_id is None or (result.env_key is not None and _env_key(claim.env_id) == result.env_key)
    claim_spec = _spec(result.env_key or claim.env_id or snapshot.env_id)
    verdict = claim_verdict(
        result.mean_reward, result.std_reward, result.n_episodes, claim.mean_reward, claim.std_reward,
        n_claimed, failed=result.status != STATUS_FINISHED, same_env=same_env,
        bounds=claim_spec.return_bounds if claim_spec else None)
    return ClaimResult(claim.mean_reward, claim.std_reward, n_claimed, verdict, claim.env_id)


def _spec(env_id: str | None):
    try:
        return resolve_env(env_id) if env_id else None
    except errors.UnknownEnvError:
        return None


def _env_key(env_id: str) -> str | None:
    spec = _spec(env_id)
    return spec.env_key if spec else None
