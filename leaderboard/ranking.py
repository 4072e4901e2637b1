"""The ranking rule (DESIGN.md), kept in a maintained table so that a page is an index scan.

Per `env_key`: finished, ranked rows that were not taken down; of each repo the newest evaluated
revision by commit date (a revision's commit date is the latest known for it, from any of its
rows; a revision without one counts as oldest; among the rows of one revision, the latest
evaluation); ordered by score descending, then mean descending, then repo id ascending. An
unranked or failed evaluation, of a newer commit or of the same one, never hides a repo's ranked
one. SQLite has no indexed views: every write or takedown calls `refresh_repo` (`refresh_repos`
for a batch), which recomputes the entries of that repo (all its env keys, since a commit date
may arrive later from a row of another env). `rank()` is the same rule over a DataFrame, the
reference the tests hold the table to.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pandas as pd

from evaluator.result import STATUS_FINISHED

# The columns a leaderboard shows, in order (data keys; the app maps them to labels).
DISPLAY_COLUMNS = ("rank", "env_key", "repo_id", "revision", "score", "mean_reward", "std_reward", "iqm",
                   "ci95", "n_episodes", "algo", "claim_mean_reward", "claim_std_reward", "claim_verdict",
                   "seed_set", "commit_date", "evaluated_at", "video")
# sort name -> ORDER BY within one env (each backed by an index of the ranking table)
SORTS = {
    "score": "score DESC, mean_reward DESC, repo_id",
    "mean_reward": "mean_reward DESC, repo_id",
    "iqm": "iqm DESC, repo_id",
    "evaluated_at": "evaluated_at DESC, repo_id",
    "commit_date": "commit_date DESC, repo_id",
    "repo_id": "repo_id",
}
MIN_INDEXED_SEARCH = 3  # the trigram index answers substrings of 3+ characters; shorter ones scan


def rank(rows: pd.DataFrame, *, env_key: str | None = None) -> pd.DataFrame:
    """Ranked rows (one per repo and env_key) with a 1-based `rank` column per env_key, from a
    history DataFrame (the reference implementation of the rule)."""
    if rows.empty:
        return rows.assign(rank=pd.Series(dtype="Int64"))
    known = rows.groupby(["repo_id", "revision"], dropna=False)["commit_date"].transform("max")
    rows = rows.assign(commit_date=known)
    keep = (rows["status"] == STATUS_FINISHED) & rows["ranked"].fillna(False).astype(bool)
    keep &= rows["removed_at"].isna() & rows["score"].notna()
    if env_key is not None:
        keep &= rows["env_key"] == env_key
    rows = rows[keep]
    newest = rows.sort_values(["commit_date", "evaluated_at", "recorded_at"], na_position="first", kind="stable")
    newest = newest.drop_duplicates(subset=["env_key", "repo_id"], keep="last")
    ordered = newest.sort_values(["env_key", "score", "mean_reward", "repo_id"],
                                 ascending=[True, False, False, True], kind="stable").reset_index(drop=True)
    ordered.insert(0, "rank", (ordered.groupby("env_key").cumcount() + 1).astype("Int64"))
    return ordered


# ---------------------------------------------------------------- the maintained table


def _newest_key(row: tuple) -> tuple:
    seq, commit_date, evaluated_at, recorded_at = row[0], row[-3], row[-2], row[-1]
    return (commit_date is not None, commit_date or 0, evaluated_at is not None, evaluated_at or 0,
            recorded_at is not None, recorded_at or 0, seq)


_REFRESH_COLUMNS = ("seq, revision, env_key, status, ranked, score, mean_reward, iqm, algo, claim_verdict, "
                    "commit_date, evaluated_at, recorded_at")
_UPSERT = ("INSERT INTO ranking (env_key, repo_id, seq, score, mean_reward, iqm, evaluated_at, commit_date, algo, "
           "claim_verdict) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (env_key, repo_id) DO UPDATE SET "
           "seq = excluded.seq, score = excluded.score, mean_reward = excluded.mean_reward, iqm = excluded.iqm, "
           "evaluated_at = excluded.evaluated_at, commit_date = excluded.commit_date, algo = excluded.algo, "
           "claim_verdict = excluded.claim_verdict")


def _best(rows: list[tuple], events: list[tuple]) -> dict[str, tuple]:
    """The ranked row of each env key of one repo (the rule above), from its evaluation rows
    (`_REFRESH_COLUMNS`) and its takedown events (upto_seq, row_seq)."""
    cutoff = max((upto for upto, row_seq in events if row_seq is None), default=0)
    hidden = {row_seq for upto, row_seq in events if row_seq is not None and upto >= row_seq}
    commit: dict[Any, int] = {}
    for row in rows:
        if row[10] is not None:
            commit[row[1]] = max(commit.get(row[1], row[10]), row[10])
    best: dict[str, tuple] = {}
    for row in rows:
        seq, revision, env_key, status, ranked, score = row[:6]
        if status != STATUS_FINISHED or not ranked or score is None or env_key is None:
            continue
        if seq <= cutoff or seq in hidden:
            continue
        row = (*row[:10], commit.get(revision), row[11], row[12])
        if env_key not in best or _newest_key(row) > _newest_key(best[env_key]):
            best[env_key] = row
    return best


def _apply(db: sqlite3.Connection, repo_id: str, best: dict[str, tuple], existing: dict[str, str]) -> None:
    """Bring one repo's ranking entries from `existing` (env_key -> "seq:commit_date") to `best`."""
    gone = [(env_key, repo_id) for env_key in set(existing) - set(best)]
    if gone:
        db.executemany("DELETE FROM ranking WHERE env_key = ? AND repo_id = ?", gone)
    upserts = []
    for env_key, row in best.items():
        seq, _, _, _, _, score, mean, iqm, algo, verdict, commit_date, evaluated_at, _ = row
        if existing.get(env_key) != f"{seq}:{'' if commit_date is None else commit_date}":
            upserts.append((env_key, repo_id, seq, score, mean, iqm, evaluated_at, commit_date, algo, verdict))
    if upserts:
        db.executemany(_UPSERT, upserts)


def refresh_repo(db: sqlite3.Connection, repo_id: str) -> None:
    """Recompute the ranking entries of one repo (inside the caller's write transaction)."""
    rows = db.execute(f"SELECT {_REFRESH_COLUMNS} FROM evaluations WHERE repo_id = ?", (repo_id,)).fetchall()
    events = db.execute("SELECT upto_seq, row_seq FROM takedowns WHERE repo_id = ?", (repo_id,)).fetchall()
    existing = dict(db.execute("SELECT env_key, seq || ':' || COALESCE(commit_date, '') FROM ranking "
                               "WHERE repo_id = ?", (repo_id,)).fetchall())
    _apply(db, repo_id, _best(rows, events), existing)


def refresh_repos(db: sqlite3.Connection, repo_ids: set[str]) -> None:
    """`refresh_repo` for many repos at once (a bulk write): three joined reads for the whole
    batch instead of three queries per repo; the same rule, the same result."""
    repo_ids = {r for r in repo_ids if r is not None}
    if len(repo_ids) <= 1:
        for repo_id in repo_ids:
            refresh_repo(db, repo_id)
        return
    db.execute("CREATE TEMP TABLE IF NOT EXISTS refresh_batch (repo_id TEXT PRIMARY KEY)")
    db.execute("DELETE FROM temp.refresh_batch")
    db.executemany("INSERT INTO temp.refresh_batch VALUES (?)", [(r,) for r in repo_ids])
    rows: dict[str, list] = {r: [] for r in repo_ids}
    events: dict[str, list] = {r: [] for r in repo_ids}
    existing: dict[str, dict] = {r: {} for r in repo_ids}
    prefixed = ", ".join(f"e.{c.strip()}" for c in _REFRESH_COLUMNS.split(","))
    for repo_id, *row in db.execute(f"SELECT b.repo_id, {prefixed} FROM temp.refresh_batch b "
                                    "JOIN evaluations e ON e.repo_id = b.repo_id"):
        rows[repo_id].append(tuple(row))
    for repo_id, upto, row_seq in db.execute("SELECT b.repo_id, t.upto_seq, t.row_seq FROM temp.refresh_batch b "
                                             "JOIN takedowns t ON t.repo_id = b.repo_id"):
        events[repo_id].append((upto, row_seq))
    for repo_id, env_key, state in db.execute("SELECT b.repo_id, r.env_key, r.seq || ':' || "
                                              "COALESCE(r.commit_date, '') FROM temp.refresh_batch b "
                                              "JOIN ranking r ON r.repo_id = b.repo_id"):
        existing[repo_id][env_key] = state
    for repo_id in repo_ids:
        _apply(db, repo_id, _best(rows[repo_id], events[repo_id]), existing[repo_id])
    db.execute("DELETE FROM temp.refresh_batch")


def _filters(env_key: str | None, search: str | None, algo: str | None, verdict: str | None) -> tuple[str, list]:
    where, args = [], []
    if env_key is not None:
        where.append("env_key = ?")
        args.append(env_key)
    if search:
        if len(search) >= MIN_INDEXED_SEARCH:  # a case-insensitive substring, through the trigram index
            where.append("rowid IN (SELECT rowid FROM ranking_search WHERE ranking_search MATCH ?)")
            args.append('"' + search.replace('"', '""') + '"')
        else:
            where.append("instr(lower(repo_id), lower(?)) > 0")
            args.append(search)
    if algo:
        where.append("lower(algo) = lower(?)")
        args.append(algo)
    if verdict:
        where.append("claim_verdict = ?")
        args.append(verdict)
    return (" WHERE " + " AND ".join(where)) if where else "", args


def check_sort(sort: str | None) -> str:
    sort = sort or "score"
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}: use one of {', '.join(SORTS)}")
    return sort


def page(db: sqlite3.Connection, env_key: str | None = None, *, search: str | None = None, algo: str | None = None,
         verdict: str | None = None, sort: str | None = None, limit: int | None = None,
         offset: int = 0) -> list[tuple[int, int, str | None]]:
    """(seq, rank, commit date) of the entries of one page, in order. The rank is the entry's
    place in its env's ranking whatever the filters and sort (a positional count when the page
    is the plain ranking of one env; else one range count over the score index per entry)."""
    sort = check_sort(sort)
    where, args = _filters(env_key, search, algo, verdict)
    order = SORTS[sort] if env_key is not None else f"env_key, {SORTS[sort]}"
    query = f"SELECT seq, env_key, score, mean_reward, repo_id, commit_date FROM ranking{where} ORDER BY {order}"
    if limit is not None or offset:
        query += " LIMIT ? OFFSET ?"
        args += [-1 if limit is None else int(limit), int(offset)]
    entries = db.execute(query, args).fetchall()
    plain_ranking = sort == "score" and not (search or algo or verdict)
    out, previous = [], None
    for seq, env, score, mean, repo_id, commit_date in entries:
        if plain_ranking and previous is not None and previous[0] == env:
            place = previous[1] + 1
        elif plain_ranking and env_key is not None:
            place = offset + 1
        else:
            place = _place(db, env, score, mean, repo_id)
        previous = (env, place)
        out.append((seq, place, commit_date))
    return out


def _place(db: sqlite3.Connection, env_key: str, score: float, mean: float | None, repo_id: str) -> int:
    ahead = db.execute("SELECT COUNT(*) FROM ranking WHERE env_key = ? AND score > ?", (env_key, score)).fetchone()[0]
    ahead += db.execute("SELECT COUNT(*) FROM ranking WHERE env_key = ? AND score = ? AND (mean_reward > ? OR "
                        "(mean_reward = ? AND repo_id < ?))", (env_key, score, mean, mean, repo_id)).fetchone()[0]
    return ahead + 1


def count(db: sqlite3.Connection, env_key: str | None = None, *, search: str | None = None, algo: str | None = None,
          verdict: str | None = None) -> int:
    where, args = _filters(env_key, search, algo, verdict)
    return db.execute(f"SELECT COUNT(*) FROM ranking{where}", args).fetchone()[0]


def entry(db: sqlite3.Connection, env_key: str, repo_id: str) -> tuple[int, int, str | None] | None:
    """(seq, rank, commit date) of one repo's entry in one env's ranking; None when unranked."""
    found = db.execute("SELECT seq, score, mean_reward, commit_date FROM ranking WHERE env_key = ? AND repo_id = ?",
                       (env_key, repo_id)).fetchone()
    if found is None:
        return None
    seq, score, mean, commit_date = found
    return seq, _place(db, env_key, score, mean, repo_id), commit_date


def scores(db: sqlite3.Connection, env_key: str) -> list[float]:
    """Every ranked score of one env (its distribution across agents), best first."""
    return [r[0] for r in db.execute("SELECT score FROM ranking WHERE env_key = ? ORDER BY score DESC", (env_key,))]


def algos(db: sqlite3.Connection, env_key: str | None = None) -> list[str]:
    """The algorithms ranked (in one env), lower-cased: the choices of an algorithm filter."""
    where, args = ("WHERE env_key = ?", [env_key]) if env_key else ("", [])
    return [r[0] for r in db.execute(f"SELECT DISTINCT lower(algo) FROM ranking {where} ORDER BY 1", args)
            if r[0] is not None]


def env_keys(db: sqlite3.Connection) -> list[str]:
    return [r[0] for r in db.execute("SELECT DISTINCT env_key FROM ranking ORDER BY env_key")]
