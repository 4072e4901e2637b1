"""Compare two agents on the same seeds: paired per-episode differences and a paired bootstrap CI.

Under the protocol every agent of an env key plays the same seeded episodes (same protocol
version, seed set and episode count), so episode i of agent A and episode i of agent B start
from the same state: their difference removes the env's own variance from the comparison. The
CI is a percentile bootstrap of the mean difference, resampling episode indices jointly (the
pairs stay together), seeded like the protocol's own bootstrap so it reads the same every time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from evaluator.runner import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

MATCHED = ("env_key", "protocol_version", "seed_set", "n_episodes")


class NotComparableError(ValueError):
    """The two rows did not play the same episodes."""


@dataclass(frozen=True)
class Comparison:
    a: str  # repo id of A
    b: str
    env_key: str
    n_episodes: int
    mean_difference: float  # mean of A - B per episode
    ci95: tuple[float, float]  # paired bootstrap CI of the mean difference
    a_wins: int  # episodes where A scored more
    b_wins: int
    ties: int
    differences: list[float]

    @property
    def sentence(self) -> str:
        low, high = self.ci95
        if low > 0:
            verdict = f"{self.a} beats {self.b} by {self.mean_difference:.1f} [{low:.1f}, {high:.1f}]"
        elif high < 0:
            verdict = f"{self.b} beats {self.a} by {-self.mean_difference:.1f} [{-high:.1f}, {-low:.1f}]"
        else:
            verdict = (f"no clear winner: {self.a} minus {self.b} is {self.mean_difference:.1f} "
                       f"[{low:.1f}, {high:.1f}], an interval that holds 0")
        return f"{verdict} (95% paired bootstrap CI over {self.n_episodes} shared episodes)"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci95": list(self.ci95), "sentence": self.sentence}


def paired_bootstrap_ci(differences: np.ndarray, *, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile 95% CI of the mean of `differences`, resampling indices (vectorised)."""
    n = differences.size
    if np.ptp(differences) == 0:
        return float(differences[0]), float(differences[0])
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _value(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    return value.item() if hasattr(value, "item") else value


def compare(a: Mapping[str, Any], b: Mapping[str, Any]) -> Comparison:
    """Compare two result rows (store or leaderboard.parquet rows: `episode_returns`, `seeds`
    optional). Raises NotComparableError, naming what differs, unless they played the same
    episodes."""
    for name in MATCHED:
        if _value(a, name) != _value(b, name):
            raise NotComparableError(
                f"not the same episodes: {name} is {_value(a, name)!r} for {a.get('repo_id')} and "
                f"{_value(b, name)!r} for {b.get('repo_id')}; compare agents of one env key, protocol version, "
                "seed set and episode count")
    seeds_a, seeds_b = a.get("seeds"), b.get("seeds")
    if seeds_a is not None and seeds_b is not None and len(seeds_a) and len(seeds_b) \
            and list(seeds_a) != list(seeds_b):
        raise NotComparableError("not the same episodes: the two rows list different seeds")
    returns_a = np.asarray(a.get("episode_returns") if a.get("episode_returns") is not None else [], dtype=float)
    returns_b = np.asarray(b.get("episode_returns") if b.get("episode_returns") is not None else [], dtype=float)
    if returns_a.size == 0 or returns_a.shape != returns_b.shape:
        raise NotComparableError("per-episode returns are missing or of different lengths: nothing to pair")
    differences = returns_a - returns_b
    return Comparison(
        a=str(a.get("repo_id")), b=str(b.get("repo_id")), env_key=str(_value(a, "env_key")),
        n_episodes=int(differences.size), mean_difference=float(differences.mean()),
        ci95=paired_bootstrap_ci(differences), a_wins=int((differences > 0).sum()),
        b_wins=int((differences < 0).sum()), ties=int((differences == 0).sum()),
        differences=[float(d) for d in differences])
