"""What a queue worker says while it works: one line per request on stderr (repo, env, status,
score or error code, seconds) and, on a terminal, a progress bar (tqdm) for long runs."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RequestReport:
    request_id: int
    repo_id: str
    env_key: str
    status: str  # finished, failed, pending (to retry) or lost (the lease was lost)
    score: float | None
    error_code: str | None
    seconds: float

    @classmethod
    def of(cls, request: Any, status: Any, result: Any, seconds: float) -> RequestReport:
        return cls(request.id, request.repo_id, request.env_key, "lost" if status is None else str(status),
                   getattr(result, "score", None), getattr(result, "error_code", None), seconds)

    def line(self) -> str:
        if self.status == "finished" and self.score is not None:
            outcome = f"score {self.score:.2f}"
        else:
            outcome = self.error_code or ("lease lost: another worker takes it" if self.status == "lost" else "-")
        return (f"#{self.request_id} {self.repo_id} on {self.env_key}: {self.status} {outcome} "
                f"({self.seconds:.1f} s)")


class Progress:
    """Prints each RequestReport (unless quiet) above a progress bar (only on a terminal)."""

    def __init__(self, *, total: int | None = None, quiet: bool = False, stream: Any = None):
        from tqdm import tqdm

        self.quiet, self.stream = quiet, stream or sys.stderr
        self.bar = tqdm(total=total, unit="request", file=self.stream, dynamic_ncols=True,
                        disable=True if quiet else None, leave=False)

    def __call__(self, report: RequestReport) -> None:
        if not self.quiet:
            self.bar.write(report.line(), file=self.stream)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class SweepBar:
    """A sweep's progress bar on stderr (tqdm: rate, and an ETA when the expected number of
    repos is known), with the running counts; silent when quiet or not on a terminal."""

    def __init__(self, *, quiet: bool = False, stream: Any = None):
        from tqdm import tqdm

        self.bar = tqdm(unit="repo", file=stream or sys.stderr, dynamic_ncols=True, disable=True if quiet else None,
                        leave=False, desc="sweep")
        self.shown = 0

    def total(self, expected: int | None) -> None:
        self.bar.total = expected
        self.bar.refresh()

    def __call__(self, report: Any) -> None:
        self.bar.update(report.listed - self.shown)
        self.shown = report.listed
        if report.listed % 50 == 0:
            self.bar.set_postfix(queued=report.queued, known=report.known, skipped=sum(report.skipped.values()),
                                 refresh=False)

    def close(self) -> None:
        self.bar.close()
