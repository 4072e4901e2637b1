"""`EvalResult`, schema version 1: the one document an evaluation produces (DESIGN.md).

Every key is always present (null where unknown, e.g. on failure). Unknown keys read from a
newer producer are kept in `extra` and written back, so old readers survive new fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

SCHEMA_VERSION = 1
STATUS_FINISHED = "finished"
STATUS_FAILED = "failed"


@dataclass
class ClaimResult:
    mean_reward: float | None = None
    std_reward: float | None = None
    n_episodes: int | None = None
    verdict: str = "absent"  # consistent | inflated | unverifiable | absent
    env_id: str | None = None  # the env the card's claim is for (extension of the DESIGN schema)


@dataclass
class EvalResult:
    # identity
    schema_version: int = SCHEMA_VERSION
    repo_id: str | None = None
    revision: str | None = None
    env_id: str | None = None
    eval_env_id: str | None = None
    eval_env_kwargs: dict[str, Any] | None = None
    env_key: str | None = None
    algo: str | None = None
    format: str | None = None
    protocol_version: int | None = None
    seed_set: str | None = None
    # measurement
    n_episodes: int | None = None
    seeds: list[int] | None = None
    episode_returns: list[float] | None = None
    episode_lengths: list[int] | None = None
    mean_reward: float | None = None
    std_reward: float | None = None
    score: float | None = None
    iqm: float | None = None
    ci95: list[float] | None = None
    ranked: bool = False
    deterministic: bool | None = None  # greedy actions, or sampled per episode (extension of the DESIGN schema)
    notes: list[str] = field(default_factory=list)  # e.g. known env drift (extension of the DESIGN schema)
    # claim
    claim: ClaimResult = field(default_factory=ClaimResult)
    # outcome
    status: str = STATUS_FAILED
    error_code: str | None = None
    error: str | None = None
    video: str | None = None
    video_error: str | None = None  # why a requested replay is missing (extension of the DESIGN schema)
    # unsafe-content report (extension of the DESIGN schema; evaluator.pickle_report): the globals the
    # repo's pickles would import if loaded the usual way (scanned, never loaded), and whether any is
    # outside the benign list. None: not scanned (the repo was never downloaded).
    pickle_imports: list[str] | None = None
    pickle_unsafe: bool | None = None
    # provenance
    evaluated_at: str | None = None
    evaluator_version: str | None = None
    versions: dict[str, str] | None = None
    platform: str | None = None
    # keys this version does not know, kept for the round trip
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status == STATUS_FINISHED

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        claim = values.get("claim")
        if isinstance(claim, dict):
            claim_known = {f.name for f in fields(ClaimResult)}
            values["claim"] = ClaimResult(**{k: v for k, v in claim.items() if k in claim_known})
        else:
            values["claim"] = ClaimResult()
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    def comparable(self) -> dict[str, Any]:
        """Every field but the two that may differ between two runs of the same key."""
        data = self.to_dict()
        data.pop("evaluated_at")
        data.pop("video")
        data.pop("video_error")
        return data
