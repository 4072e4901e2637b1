"""Course certification on verified scores: which units a user passed, and the evidence.

A unit part passes when one of the user's ranked entries (a score measured here, never read from
a card) on the part's env key, in one of the formats the course asks for, has score = mean - std
at or above the threshold. A unit passes when every one of its parts does; a unit with a part
this evaluator cannot verify yet is `not verifiable`, with the reason, never passed by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .store import Store
from .units import UnitCheck, unit_checks

COLUMNS = ("unit", "env_id", "env_key", "format", "threshold", "verifiable", "best_score", "passed", "repo_id",
           "revision", "row_id", "reason")
MAX_USER_LENGTH = 96


def check_user(user: str) -> str:
    user = (user or "").strip()
    if not user or len(user) > MAX_USER_LENGTH or "/" in user or any(c.isspace() for c in user):
        raise ValueError(f"{user[:MAX_USER_LENGTH]!r} is not a Hub username: give the namespace alone, "
                         "e.g. `ada-lovelace`")
    return user


def of_user(entries: pd.DataFrame, user: str) -> pd.DataFrame:
    """The rows of `entries` whose repo is in `user`'s namespace (any case)."""
    if entries.empty:
        return entries
    prefix = user.strip().lower() + "/"
    return entries[entries["repo_id"].str.lower().str.startswith(prefix)].reset_index(drop=True)


def user_entries(store: Store, user: str) -> pd.DataFrame:
    """Every ranked entry of the repos of `user` (the namespace, any case), all env keys."""
    return of_user(store.ranking(search=user.strip() + "/"), user)


def _part_row(check: UnitCheck, entries: pd.DataFrame) -> dict[str, Any]:
    part = check.part
    row = {"unit": part.unit, "env_id": part.env_id, "env_key": check.env_key, "format": part.what,
           "threshold": check.threshold, "verifiable": check.verifiable, "best_score": None, "passed": False,
           "repo_id": None, "revision": None, "row_id": None, "reason": check.reason}
    if not check.verifiable or entries.empty:
        return row
    mine = entries[(entries["env_key"] == check.env_key) & entries["format"].isin(part.formats)]
    if mine.empty:
        row["reason"] = f"no verified {part.what} on {check.env_key} yet"
        return row
    best = mine.sort_values(["score", "mean_reward"], ascending=False, kind="stable").iloc[0]
    row.update(best_score=float(best["score"]), repo_id=best["repo_id"], revision=best["revision"],
               row_id=best["row_id"], passed=bool(best["score"] >= check.threshold))
    if not row["passed"]:
        row["reason"] = f"best verified score {best['score']:.2f} is below {check.threshold:g}"
    return row


def certification(user: str, store: Store | str | Path | None = None) -> pd.DataFrame:
    """One row per unit part (COLUMNS): the env, the format the course requires, the threshold,
    the user's best verified score there, passed or not, and the evidence row (repo, revision,
    row_id); `unit_passed` says whether the whole unit passed (every part), or None when the
    unit cannot be verified here."""
    user = check_user(user)
    if not isinstance(store, Store):
        store = Store(store)
    return certify_entries(user_entries(store, user))


def certify_entries(entries: pd.DataFrame) -> pd.DataFrame:
    """`certification` from one user's ranked entries (a store's or a published leaderboard's)."""
    frame = pd.DataFrame([_part_row(check, entries) for check in unit_checks()], columns=list(COLUMNS))
    by_unit = frame.groupby("unit", sort=False)
    verifiable = by_unit["verifiable"].transform("all")
    passed = by_unit["passed"].transform("all")
    frame["unit_passed"] = [bool(p) if v else None for p, v in zip(passed, verifiable, strict=True)]
    return frame


def summary(frame: pd.DataFrame) -> dict[str, Any]:
    """Counts over units (not parts): passed, verifiable, total."""
    units = frame.drop_duplicates("unit")
    return {"units": len(units), "verifiable": int(units["unit_passed"].notna().sum()),
            "passed": int((units["unit_passed"] == True).sum())}  # noqa: E712 (object column)
