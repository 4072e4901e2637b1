"""The leaderboard: the results store (SQLite as the system of record, a pandas API), the
ranking, the request queue, the queue workers and the Hub dataset publication. It calls the
evaluator; the evaluator never calls it (except `python -m evaluator evaluate --store`, lazily).

Modules: `store` (the Store facade and the store folder), `db` (the database: schema,
connections, errors, backups), `rows` (the row schema, EvalResult <-> row <-> DataFrame),
`codec` (compact per-episode lists), `history` (append-only rows and their events), `ranking`
(the rule and its maintained table), `replays` (replay files and their disk cap), `migrate`
(from the parquet store of the previous version), `queue` (requests), `submit` (validate a repo
id before queueing), `worker` (queue workers), `progress` (their report), `publish` (the Hub
dataset), `export` (files for analysis), `units` (the course's units), `certify` (course
certification on verified scores: `leaderboard.certification(user)`), `__main__` (the CLI).
"""


def __getattr__(name: str):
    """`leaderboard.certification(user, store=None)`, imported on first use (importing the
    package stays free of pandas and SQLite)."""
    if name == "certification":
        from .certify import certification

        return certification
    raise AttributeError(f"module 'leaderboard' has no attribute {name!r}")
