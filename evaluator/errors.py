"""Typed evaluation errors: each carries its `error_code` and an exit code, and its message
says what was wrong and what to do (Gymnasium's `errors` module is the model)."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The `error_code` values of a failed `EvalResult` (a public contract: extend, never rename)."""

    REPO_NOT_FOUND = "repo_not_found"
    INVALID_REPO_ID = "invalid_repo_id"  # not `namespace/name`: nothing was asked of the Hub
    REVISION_NOT_FOUND = "revision_not_found"
    GATED_REPO = "gated_repo"
    NO_AGENT = "no_agent"
    UNSUPPORTED_FORMAT = "unsupported_format"
    UNSAFE_CONTENT = "unsafe_content"
    CORRUPT_FILE = "corrupt_file"
    UNKNOWN_ENV = "unknown_env"
    SPACE_MISMATCH = "space_mismatch"
    INVALID_WEIGHTS = "invalid_weights"
    INVALID_ACTION = "invalid_action"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    HUB_UNAVAILABLE = "hub_unavailable"
    SANDBOX_CRASH = "sandbox_crash"  # the sandbox process died (a signal, an abort) without a result
    INVALID_OUTPUT = "invalid_output"  # the sandbox process answered something that is not a valid result
    INTERNAL = "internal_error"


class ExitCode:
    """Process exit codes of every command (DESIGN.md): queue workers retry only TRANSIENT."""

    OK = 0
    FAILED = 1
    USAGE = 2
    TRANSIENT = 3


class EvaluationError(Exception):
    """Base class: the agent or the input is at fault; the evaluation ends as `failed`."""

    code: ErrorCode = ErrorCode.INTERNAL
    exit_code: int = ExitCode.FAILED

    def __init__(self, message: str, *, code: ErrorCode | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class RepoNotFoundError(EvaluationError, LookupError):
    code = ErrorCode.REPO_NOT_FOUND


class InvalidRepoIdError(EvaluationError, ValueError):
    """Not a Hub model repo id (`namespace/name`)."""

    code = ErrorCode.INVALID_REPO_ID


class RevisionNotFoundError(EvaluationError, LookupError):
    code = ErrorCode.REVISION_NOT_FOUND


class GatedRepoError(EvaluationError, PermissionError):
    code = ErrorCode.GATED_REPO


class NoAgentError(EvaluationError, LookupError):
    code = ErrorCode.NO_AGENT


class UnsupportedFormatError(EvaluationError, ValueError):
    code = ErrorCode.UNSUPPORTED_FORMAT


class UnsafeContentError(EvaluationError, ValueError):
    """The repo asks for something outside the allowlists (a class, a global, a tag)."""

    code = ErrorCode.UNSAFE_CONTENT


class CorruptFileError(EvaluationError, ValueError):
    code = ErrorCode.CORRUPT_FILE


class UnknownEnvError(EvaluationError, ValueError):
    code = ErrorCode.UNKNOWN_ENV


class SpaceMismatchError(EvaluationError, ValueError):
    code = ErrorCode.SPACE_MISMATCH


class InvalidWeightsError(EvaluationError, ValueError):
    code = ErrorCode.INVALID_WEIGHTS


class InvalidActionError(EvaluationError, ValueError):
    code = ErrorCode.INVALID_ACTION


class TooLargeError(EvaluationError, ValueError):
    code = ErrorCode.TOO_LARGE


class EvalTimeoutError(EvaluationError, TimeoutError):
    code = ErrorCode.TIMEOUT


class MemoryLimitError(EvaluationError, MemoryError):
    code = ErrorCode.MEMORY_LIMIT


class SandboxCrashError(EvaluationError, ChildProcessError):
    """The sandbox process ended without a result (killed by a signal, aborted, crashed)."""

    code = ErrorCode.SANDBOX_CRASH


class InvalidOutputError(EvaluationError, ValueError):
    """The sandbox process's answer is not a valid result (garbage, too large, wrong lengths)."""

    code = ErrorCode.INVALID_OUTPUT


class HubUnavailableError(EvaluationError, ConnectionError):
    """Transient: the Hub did not answer. The only class a queue worker retries."""

    code = ErrorCode.HUB_UNAVAILABLE
    exit_code = ExitCode.TRANSIENT
