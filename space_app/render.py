"""What the Space draws from rows: the leaderboard page as a display table, a row's details, its
provenance and reproduction command, and two small SVG charts (per-episode returns against the
claim; the env's score distribution with this agent marked). Plain functions of data, no
gradio: every string from a repo is escaped here (rows are data, never markup).
"""

from __future__ import annotations

import html
import math
import os
from typing import Any
from urllib.parse import quote

import pandas as pd

VERDICT_COLOURS = {"consistent": "#1a7f37", "inflated": "#cf222e", "unverifiable": "#9a6700", "absent": "#57606a"}
TABLE_HEADERS = ["Rank", "User", "Model", "Algorithm", "Score", "Mean ± std", "IQM [95% CI]", "Episodes", "Claim",
                 "Revision", "Evaluated"]
TABLE_TYPES = ["number", "html", "html", "str", "number", "str", "str", "number", "html", "str", "str"]


def hub_url() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _fmt(value: Any, digits: int = 2) -> str:
    number = _num(value)
    return "–" if number is None else f"{number:,.{digits}f}"


def _round(value: Any, digits: int = 2) -> float | None:
    number = _num(value)
    return None if number is None else round(number, digits)


def _date(value: Any) -> str:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return str(pd.Timestamp(value).strftime("%Y-%m-%d"))


def badge(verdict: Any) -> str:
    verdict = str(verdict) if verdict else "absent"
    colour = VERDICT_COLOURS.get(verdict, "#57606a")
    return (f'<span class="verdict verdict-{esc(verdict)}" style="background:{colour};color:#fff;'
            f'padding:1px 8px;border-radius:10px;font-size:0.85em">{esc(verdict)}</span>')


def user_link(repo_id: str) -> str:
    user = str(repo_id).split("/", 1)[0]
    return f'<a href="?user={quote(user)}" class="user-link">{esc(user)}</a>'


def model_link(repo_id: str, revision: Any) -> str:
    name = str(repo_id).split("/", 1)[-1]
    target = f"{hub_url()}/{quote(str(repo_id))}/tree/{quote(str(revision or 'main'))}"
    return f'<a href="{esc(target)}" target="_blank" rel="noopener">{esc(name)}</a>'


def display_table(page: pd.DataFrame) -> pd.DataFrame:
    """The page's rows as the leaderboard's columns (TABLE_HEADERS)."""
    rows = []
    for row in page.to_dict("records"):
        ci = row.get("ci95")
        ci_text = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci is not None and len(ci) == 2 else ""
        rows.append([
            int(row["rank"]) if _num(row.get("rank")) is not None else None,
            user_link(row["repo_id"]), model_link(row["repo_id"], row.get("revision")), esc(row.get("algo") or "–"),
            _round(row.get("score")), f"{_fmt(row.get('mean_reward'))} ± {_fmt(row.get('std_reward'))}",
            f"{_fmt(row.get('iqm'))}{ci_text}", int(row["n_episodes"]) if _num(row.get("n_episodes")) else None,
            badge(row.get("claim_verdict")), str(row.get("revision") or "")[:7], _date(row.get("evaluated_at")),
        ])
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def reproduce_command(row: dict[str, Any]) -> str | None:
    """The command that reproduces a public-seed row bit for bit; None for private seeds."""
    if row.get("seed_set") != "public":
        return None
    command = f"python -m evaluator evaluate {row['repo_id']} --revision {row.get('revision')}"
    env_id = row.get("env_id") or row.get("env_key")
    if env_id and "[" not in str(env_id):
        command += f" --env {env_id}"
    return command


def pickle_html(row: dict[str, Any]) -> str:
    """The unsafe-content report of a row (evaluator.pickle_report): what loading the repo the
    usual way would import, read opcode by opcode, never run."""
    import json

    extra = row.get("extra")
    try:
        extra = json.loads(extra) if isinstance(extra, str) else (extra or {})
    except ValueError:
        extra = {}
    imports = row.get("pickle_imports", extra.get("pickle_imports"))
    if not isinstance(imports, list):
        return "not scanned"
    if not (row.get("pickle_unsafe", extra.get("pickle_unsafe"))):
        return f"{len(imports)} globals named, all on the benign list"
    from evaluator.pickle_report import loader_call, unsafe_imports

    risky = unsafe_imports(str(name) for name in imports) or ["a global outside the benign list"]
    return (f"<b>⚠ loading this repo with <code>{esc(loader_call(row.get('format'), row.get('algo')))}</code> "
            f"would run {esc(', '.join(risky[:8]))}</b> (scanned here, never run)")


def details_html(row: dict[str, Any]) -> str:
    """A row opened: its numbers, its claim and its provenance."""
    versions = row.get("versions")
    if isinstance(versions, str):
        import json

        try:
            versions = json.loads(versions)
        except ValueError:
            versions = None
    version_text = ", ".join(f"{esc(k)} {esc(v)}" for k, v in sorted((versions or {}).items())) or "–"
    claimed = _num(row.get("claim_mean_reward")) is not None
    claim = (f"{_fmt(row.get('claim_mean_reward'))} ± {_fmt(row.get('claim_std_reward'))} "
             f"over {row.get('claim_n_episodes') or '?'} episodes" if claimed else "no claim found in the card")
    items = [
        ("Rank", f"#{esc(row.get('rank'))} on {esc(row.get('env_key'))}"),
        ("Score (mean − std)", _fmt(row.get("score"))),
        ("Mean ± std", f"{_fmt(row.get('mean_reward'))} ± {_fmt(row.get('std_reward'))}"),
        ("Claim", f"{esc(claim)} {badge(row.get('claim_verdict'))}"),
        ("Algorithm / format", f"{esc(row.get('algo'))} / {esc(row.get('format'))}"),
        ("Revision", f"<code>{esc(row.get('revision'))}</code>"),
        ("Seed set", esc(row.get("seed_set"))),
        ("Protocol version", esc(row.get("protocol_version"))),
        ("Evaluated", esc(row.get("evaluated_at"))),
        ("Evaluator", esc(row.get("evaluator_version"))),
        ("Libraries", version_text),
        ("Platform", esc(row.get("platform") or "–")),
        ("Pickles", pickle_html(row)),
    ]
    body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{k}</th><td>{v}</td></tr>" for k, v in items)
    title = f"{user_link(row['repo_id'])} / {model_link(row['repo_id'], row.get('revision'))}"
    return f'<div class="row-details"><h3>{title}</h3><table>{body}</table></div>'


def _svg(width: int, height: int, body: str, label: str) -> str:
    return (f'<svg role="img" aria-label="{esc(label)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
            f'style="background:#fff;border:1px solid #d0d7de">{body}</svg>')


def returns_chart(returns: list[float], claim_mean: Any = None, *, width: int = 560, height: int = 220) -> str:
    """Per-episode returns as dots, their mean as a line, the claimed mean as a dashed red line."""
    values = [float(v) for v in returns or []]
    if not values:
        return "<p>No per-episode returns in this row.</p>"
    claim = _num(claim_mean)
    low, high = min(values + ([claim] if claim is not None else [])), max(values + ([claim] if claim else []))
    span = (high - low) or 1.0
    pad, n = 30, len(values)

    def y(v: float) -> float:
        return height - pad - (v - low) / span * (height - 2 * pad)

    def x(i: int) -> float:
        return pad + (i + 0.5) * (width - 2 * pad) / n

    dots = "".join(f'<circle class="episode" cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="#0969da"/>'
                   for i, v in enumerate(values))
    mean = sum(values) / n
    body = dots + (f'<line x1="{pad}" x2="{width - pad}" y1="{y(mean):.1f}" y2="{y(mean):.1f}" stroke="#0969da"/>'
                   f'<text x="{width - pad}" y="{y(mean) - 4:.1f}" text-anchor="end" font-size="11">'
                   f'measured mean {mean:.2f}</text>')
    if claim is not None:
        body += (f'<line class="claim" x1="{pad}" x2="{width - pad}" y1="{y(claim):.1f}" y2="{y(claim):.1f}" '
                 f'stroke="#cf222e" stroke-dasharray="6 4"/><text x="{pad}" y="{y(claim) - 4:.1f}" font-size="11" '
                 f'fill="#cf222e">claimed mean {claim:.2f}</text>')
    body += (f'<text x="{pad}" y="{height - 8}" font-size="11">episode 1 … {n}</text>'
             f'<text x="4" y="14" font-size="11">{high:.1f}</text><text x="4" y="{height - pad}" font-size="11">'
             f'{low:.1f}</text>')
    return _svg(width, height, body, "per-episode returns against the claim")


def distribution_chart(scores: list[float], mine: Any, *, bins: int = 30, width: int = 560,
                       height: int = 160) -> str:
    """A histogram of the env's ranked scores, this agent's score marked."""
    values = [float(s) for s in scores or [] if _num(s) is not None]
    if not values:
        return "<p>No ranked scores for this env yet.</p>"
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / span * bins), bins - 1)] += 1
    top, pad = max(counts), 20
    bar_w = (width - 2 * pad) / bins
    bars = "".join(
        f'<rect x="{pad + i * bar_w:.1f}" y="{height - pad - c / top * (height - 2 * pad):.1f}" '
        f'width="{max(bar_w - 1, 1):.1f}" height="{c / top * (height - 2 * pad):.1f}" fill="#8c959f"/>'
        for i, c in enumerate(counts) if c)
    marked = _num(mine)
    if marked is not None:
        mx = pad + (marked - low) / span * (width - 2 * pad)
        bars += (f'<line class="this-agent" x1="{mx:.1f}" x2="{mx:.1f}" y1="{pad / 2}" y2="{height - pad}" '
                 f'stroke="#cf222e" stroke-width="2"/><text x="{mx + 3:.1f}" y="{pad}" font-size="11" '
                 f'fill="#cf222e">this agent</text>')
    bars += (f'<text x="{pad}" y="{height - 4}" font-size="11">{low:.1f}</text>'
             f'<text x="{width - pad}" y="{height - 4}" font-size="11" text-anchor="end">{high:.1f}</text>')
    return _svg(width, height, bars, f"score distribution of {len(values)} agents")


def differences_chart(differences: list[float], *, width: int = 560, height: int = 180) -> str:
    """Paired per-episode differences (A − B) as bars around zero."""
    if not differences:
        return ""
    top = max(abs(d) for d in differences) or 1.0
    pad, n = 20, len(differences)
    mid = height / 2
    bar_w = (width - 2 * pad) / n
    bars = "".join(
        f'<rect class="difference" x="{pad + i * bar_w:.1f}" y="{min(mid, mid - d / top * (mid - pad)):.1f}" '
        f'width="{max(bar_w - 1, 1):.1f}" height="{abs(d) / top * (mid - pad):.1f}" '
        f'fill="{"#1a7f37" if d > 0 else "#cf222e"}"/>' for i, d in enumerate(differences))
    bars += f'<line x1="{pad}" x2="{width - pad}" y1="{mid}" y2="{mid}" stroke="#57606a"/>'
    return _svg(width, height, bars, "paired per-episode differences")


def certification_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in frame.to_dict("records"):
        state = ("passed" if row["passed"] else "not verifiable yet" if not row["verifiable"] else "not passed")
        threshold = _num(row.get("threshold"))
        rows.append([row["unit"], row["env_id"], row["format"], "–" if threshold is None else f"≥ {threshold:g}",
                     _fmt(row.get("best_score")), state, row.get("repo_id") or "–", row.get("reason") or ""])
    return pd.DataFrame(rows, columns=["Unit", "Env", "Format", "Threshold", "Best verified score", "Status",
                                       "Evidence", "Why"])
