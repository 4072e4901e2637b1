"""Summary statistics of per-episode returns and the claim verdict (DESIGN.md, protocol v1).

Everything returned is a plain python float / str, so results are JSON-safe and identical
across runs: the bootstrap is seeded with the protocol's `BOOTSTRAP_SEED`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum

import numpy as np
from scipy import stats as _sps

from evaluator.runner import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

DEFAULT_CLAIMED_N = 10  # the course's evaluation default when results.json gives no count


class Verdict(StrEnum):
    """`claim.verdict` values (a public contract)."""

    CONSISTENT = "consistent"
    INFLATED = "inflated"
    UNVERIFIABLE = "unverifiable"
    ABSENT = "absent"


def summarize(returns: Sequence[float]) -> dict[str, float | list[float]]:
    """`mean_reward`, `std_reward` (population std, as SB3's evaluate_policy), `score` (mean −
    std, the course's ranking rule), `iqm` (25% trimmed mean) and `ci95`, a percentile
    bootstrap CI of the mean. Keys are the `EvalResult` field names."""
    x = np.asarray(returns, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("summarize needs a non-empty 1-D sequence of returns")
    if not np.all(np.isfinite(x)):
        raise ValueError("returns must be finite")
    if np.ptp(x) == 0:
        # No spread (CartPole's all-500s): exact values; scipy's bootstrap would warn and NaN.
        mean, std = float(x[0]), 0.0
        iqm, ci = mean, [mean, mean]
    else:
        mean, std = float(np.mean(x)), float(np.std(x))
        iqm = float(_sps.trim_mean(x, 0.25))
        res = _sps.bootstrap(
            (x,),
            np.mean,
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=0.95,
            method="percentile",
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
        ci = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    return {
        "mean_reward": mean,
        "std_reward": std,
        "score": mean - std,
        "iqm": iqm,
        "ci95": ci,
    }


def inflation_margin(
    measured_std: float, n: int, claimed_mean: float, claimed_std: float | None = None,
    claimed_n: int | None = None,
) -> float:
    """How far the claimed mean may exceed the measured one before it is `inflated`:
    3·√(s²/n + S²/N) + 0.01·max(|M|, 1). Missing S counts as 0, missing N as 10."""
    s = float(measured_std)
    S = 0.0 if claimed_std is None or not math.isfinite(claimed_std) else abs(float(claimed_std))
    N = DEFAULT_CLAIMED_N if claimed_n is None or claimed_n <= 0 else int(claimed_n)
    if n <= 0:
        raise ValueError("the measured episode count must be positive")
    M = float(claimed_mean)
    return 3.0 * math.sqrt(s * s / n + S * S / N) + 0.01 * max(abs(M), 1.0)


def claim_verdict(
    measured_mean: float | None,
    measured_std: float | None,
    n: int | None,
    claimed_mean: float | None,
    claimed_std: float | None = None,
    claimed_n: int | None = None,
    *,
    failed: bool = False,
    same_env: bool = True,
    bounds: tuple[float, float] | None = None,
) -> str:
    """`absent` without a claim; `unverifiable` if the claim is for another env or the evaluation
    failed; with the achievable return `bounds` of the env known, a claimed mean outside them is
    `inflated` and a claimed std wider than their span `unverifiable`; `unverifiable` when the
    margin is not a finite number; `inflated` iff M − m > `inflation_margin`; else `consistent`
    (under-claiming too)."""
    if claimed_mean is None or not math.isfinite(claimed_mean):
        return Verdict.ABSENT.value
    if failed or not same_env or measured_mean is None or measured_std is None or not n:
        return Verdict.UNVERIFIABLE.value
    if bounds is not None:
        low, high = bounds
        if not low <= claimed_mean <= high:
            return Verdict.INFLATED.value
        if claimed_std is not None and (not math.isfinite(claimed_std) or abs(claimed_std) > high - low):
            return Verdict.UNVERIFIABLE.value
    margin = inflation_margin(measured_std, n, claimed_mean, claimed_std, claimed_n)
    if not math.isfinite(margin):
        return Verdict.UNVERIFIABLE.value
    if float(claimed_mean) - float(measured_mean) > margin:
        return Verdict.INFLATED.value
    return Verdict.CONSISTENT.value
