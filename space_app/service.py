"""What each view of the Space asks, as plain functions over a source (no gradio): the same
functions serve the UI's events, the named API endpoints and `bench/space_scale.py`.

Paging, filtering and sorting happen here on the server: a view never holds more than a page.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from evaluator.envs import resolve_env
from evaluator.errors import UnknownEnvError
from leaderboard.certify import summary
from leaderboard.compare import NotComparableError, compare
from leaderboard.ranking import SORTS
from leaderboard.units import thresholds_by_env_key

from . import render

PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
VERDICTS = ("consistent", "inflated", "unverifiable", "absent")
FAMILY_NAMES = {"classic_control": "Classic control", "box2d": "Box2D", "toy_text": "Toy text", "atari": "Atari",
                "panda": "panda-gym"}


def jsonable(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON values (timestamps ISO 8601, NaN as null, arrays as lists)."""
    if frame is None or frame.empty:
        return []
    return json.loads(frame.to_json(orient="records", date_format="iso"))


def family_of(env_key: str) -> str:
    try:
        return FAMILY_NAMES.get(resolve_env(env_key).family, resolve_env(env_key).family)
    except UnknownEnvError:
        return "Other"


def env_choices(env_keys: list[str]) -> list[tuple[str, str]]:
    """(label, env_key), grouped by family: `Box2D · LunarLander-v3`."""
    labelled = [(family_of(k), k) for k in env_keys]
    return [(f"{family} · {key}", key) for family, key in sorted(labelled)]


def threshold_text(env_key: str | None) -> str:
    lines = thresholds_by_env_key().get(env_key or "", [])
    if not lines:
        return "No course unit is certified on this env."
    return "Course pass line (score = mean − std): " + "; ".join(f"{unit} ≥ {value:g}" for unit, value in lines)


@dataclass
class Page:
    rows: pd.DataFrame  # the source's rows of this page
    total: int
    page: int  # 1-based, clamped
    pages: int
    page_size: int

    @property
    def info(self) -> str:
        if not self.total:
            return "No ranked rows match."
        first = (self.page - 1) * self.page_size + 1
        last = min(self.page * self.page_size, self.total)
        return f"Rows {first:,}–{last:,} of {self.total:,} · page {self.page:,} of {self.pages:,}"


def _clean(text: Any) -> str | None:
    text = str(text or "").strip()
    return text[:200] or None


def ranking_page(source, env_key: str | None, *, page: int = 1, page_size: int = PAGE_SIZE, search: str | None = None,
                 algo: str | None = None, verdict: str | None = None, sort: str | None = None) -> Page:
    """One page of one env's ranking; `page` beyond the last is the last page."""
    sort = sort if sort in SORTS else "score"
    verdict = verdict if verdict in VERDICTS else None
    page_size = max(1, min(int(page_size or PAGE_SIZE), MAX_PAGE_SIZE))
    page = max(1, int(page or 1))
    filters = {"search": _clean(search), "algo": _clean(algo), "verdict": verdict, "sort": sort}
    rows, total = source.page(env_key or None, limit=page_size, offset=(page - 1) * page_size, **filters)
    pages = max(1, math.ceil(total / page_size))
    if page > pages:  # a jump past the end: the last page
        page = pages
        rows, total = source.page(env_key or None, limit=page_size, offset=(page - 1) * page_size, **filters)
    return Page(rows, total, page, pages, page_size)


@dataclass
class Opened:
    row: dict[str, Any] | None
    message: str | None
    details: str
    returns_svg: str
    distribution_svg: str
    replay: str | None
    command: str


def open_row(source, env_key: str, repo_id: str) -> Opened:
    """A row opened: details, charts, replay path and reproduction command."""
    env_key, repo_id = (env_key or "").strip(), (repo_id or "").strip()
    row = source.entry(env_key, repo_id) if env_key and repo_id else None
    if row is None:
        message = f"{repo_id or '(no repo)'} has no ranked row on {env_key or '(no env)'}."
        return Opened(None, message, f"<p>{render.esc(message)}</p>", "", "", None, "")
    returns = row.get("episode_returns")
    returns = list(returns) if returns is not None else []
    command = render.reproduce_command(row) or "# private seed set: these seeds are not published"
    return Opened(row, None, render.details_html(row), render.returns_chart(returns, row.get("claim_mean_reward")),
                  render.distribution_chart(source.scores(env_key), row.get("score")), source.replay(row), command)


def compare_rows(source, env_key: str, repo_a: str, repo_b: str) -> dict[str, Any]:
    """{"ok", "message", "comparison"?}: paired comparison of two agents of one env."""
    a, b = source.entry(env_key, (repo_a or "").strip()), source.entry(env_key, (repo_b or "").strip())
    missing = [r for r, row in ((repo_a, a), (repo_b, b)) if row is None]
    if missing:
        return {"ok": False, "message": f"no ranked row on {env_key} for {', '.join(map(str, missing))}"}
    try:
        result = compare(a, b)
    except NotComparableError as err:
        return {"ok": False, "message": str(err)}
    return {"ok": True, "message": result.sentence, "comparison": result.to_dict()}


def certify_user(source, user: str) -> dict[str, Any]:
    try:
        frame = source.certification(user)
    except ValueError as err:
        return {"ok": False, "message": str(err), "parts": [], "frame": None}
    totals = summary(frame)
    message = (f"{user.strip()}: {totals['passed']} of {totals['units']} course units passed on verified scores "
               f"({totals['verifiable']} verifiable here)")
    return {"ok": True, "message": message, **totals, "parts": jsonable(frame), "frame": frame}


def user_agents(source, user: str) -> pd.DataFrame:
    try:
        return source.user_entries(user)
    except ValueError:
        return pd.DataFrame()


def request_line(request: dict[str, Any] | None) -> str:
    if not request:
        return ""
    line = (f"#{request.get('id')} {request.get('repo_id')} @ {str(request.get('revision'))[:10]} on "
            f"{request.get('env_key')}: **{request.get('status')}**")
    if request.get("error"):
        line += f" ({request.get('error_code')}: {request.get('error')})"
    return line


def requests_table(requests: list[dict[str, Any]]) -> pd.DataFrame:
    columns = ["id", "repo_id", "env_key", "status", "submitted_at", "error_code"]
    return pd.DataFrame([[r.get(c) for c in columns] for r in requests], columns=columns)
