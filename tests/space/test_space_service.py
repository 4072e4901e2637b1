"""The Space's library side without a browser: units and certification, the paired comparison,
server-side pages, the last-good-data banner and checked submissions (through localhub)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from space_helpers import PROJECT

sys.path.insert(0, str(PROJECT / "tests" / "leaderboard"))
from lb_helpers import make_result  # noqa: E402

from evaluator.agents import FORMATS  # noqa: E402
from evaluator.envs import resolve_env  # noqa: E402
from leaderboard import certification  # noqa: E402
from leaderboard.compare import NotComparableError, compare, paired_bootstrap_ci  # noqa: E402
from leaderboard.intake import MemoryRateLimit, submit_to_store  # noqa: E402
from leaderboard.store import Store  # noqa: E402
from leaderboard.units import COURSE_UNITS, check_part  # noqa: E402
from space_app import render, service  # noqa: E402
from space_app.source import StoreSource  # noqa: E402

LUNAR = "LunarLander-v3"


def lunar(repo_id: str, score: float, *, fmt: str = "sb3", seed_set: str = "public"):
    result = make_result(repo_id, "b" * 40, score=score, env_key=LUNAR, seed_set=seed_set)
    result.format = fmt
    return result


def test_unit_thresholds_come_from_the_env_table_and_support_decides_verifiability():
    parts = {(p.unit, p.env_id): check_part(p) for p in COURSE_UNITS}
    unit1 = parts[("Unit 1", "LunarLander-v2")]
    assert unit1.verifiable and unit1.env_key == LUNAR
    assert unit1.threshold == resolve_env("LunarLander-v2").unit_threshold == 200
    cleanrl = parts[("Unit 8 part 1", "LunarLander-v2")]
    assert cleanrl.env_key == LUNAR and cleanrl.threshold == -100  # a second unit on the same env
    assert cleanrl.verifiable == ("cleanrl_ppo" in FORMATS)
    pixelcopter = parts[("Unit 4", "Pixelcopter-PLE-v0")]
    assert not pixelcopter.verifiable and "Pixelcopter-PLE-v0 is not supported" in pixelcopter.reason
    soccer = parts[("Unit 7", "ML-Agents-SoccerTwos")]
    assert not soccer.verifiable and "ELO" in soccer.reason


def test_certification_passes_on_verified_scores_only(tmp_path):
    store = Store(tmp_path)
    store.record_many([lunar("Ada/ppo-LunarLander-v2", 250.0), lunar("ada/dqn-LunarLander-v2", 150.0),
                       lunar("bob/ppo-LunarLander-v2", 260.0), lunar("ada/not-sb3", 900.0, fmt="torchscript")])
    frame = certification("ada", tmp_path)
    unit1 = frame[frame["unit"] == "Unit 1"].iloc[0]
    assert unit1["passed"] and unit1["unit_passed"] is True
    assert unit1["repo_id"] == "Ada/ppo-LunarLander-v2" and unit1["best_score"] == 250.0  # any case, best row
    assert unit1["row_id"] in set(store.history()["row_id"])
    unit7 = frame[frame["unit"] == "Unit 7"].iloc[0]  # Unity builds: never verifiable here
    assert not unit7["verifiable"] and unit7["unit_passed"] is None and "not supported" in unit7["reason"]
    store.record(lunar("carol/ppo-LunarLander-v2", 150.0))
    carol = certification("carol", store)
    row = carol[carol["unit"] == "Unit 1"].iloc[0]
    assert not row["passed"] and "below 200" in row["reason"]
    with pytest.raises(ValueError, match="not a Hub username"):
        certification("ada/ppo", store)
    cli = subprocess.run([sys.executable, "-m", "leaderboard", "certify", "ada", "--store", str(tmp_path), "--json"],
                         cwd=PROJECT, capture_output=True, text=True, check=True)
    data = json.loads(cli.stdout)
    assert data["passed"] >= 1 and any(p["unit"] == "Unit 1" and p["passed"] for p in data["parts"])


def _row(repo_id: str, returns: list[float], **overrides):
    return {"repo_id": repo_id, "env_key": LUNAR, "protocol_version": 1, "seed_set": "public",
            "n_episodes": len(returns), "seeds": list(range(10_000, 10_000 + len(returns))),
            "episode_returns": returns, **overrides}


def test_paired_comparison_cancels_the_shared_episode_variance():
    rng = np.random.default_rng(0)
    base = rng.normal(100, 80, size=50)  # episodes differ a lot; A is B plus 5 on every one
    result = compare(_row("a/x", list(base + 5 + rng.normal(0, 0.5, 50))), _row("b/y", list(base)))
    assert 4.5 < result.mean_difference < 5.5 and result.ci95[0] > 4 and result.ci95[1] < 6
    assert result.a_wins >= 45 and "a/x beats b/y by" in result.sentence
    assert paired_bootstrap_ci(np.full(10, 3.0)) == (3.0, 3.0)
    flipped = compare(_row("b/y", list(base)), _row("a/x", list(base + 5)))
    assert flipped.sentence.startswith("a/x beats b/y by 5.0")
    with pytest.raises(NotComparableError, match="seed_set"):
        compare(_row("a/x", [1.0, 2.0]), _row("b/y", [1.0, 2.0], seed_set="private"))
    with pytest.raises(NotComparableError, match="different seeds"):
        compare(_row("a/x", [1.0, 2.0]), _row("b/y", [1.0, 2.0], seeds=[5, 6]))


def test_pages_are_served_and_clamped_on_the_server(tmp_path):
    store = Store(tmp_path)
    store.record_many([lunar(f"u{i:02d}/m", float(i)) for i in range(30)])
    source = StoreSource(tmp_path)
    first = service.ranking_page(source, LUNAR, page=1, page_size=10)
    assert first.total == 30 and first.pages == 3 and list(first.rows["rank"]) == list(range(1, 11))
    last = service.ranking_page(source, LUNAR, page=99, page_size=10)
    assert last.page == 3 and list(last.rows["rank"])[-1] == 30 and "Rows 21–30 of 30" in last.info
    capped = service.ranking_page(source, LUNAR, page=1, page_size=10_000, sort="DROP TABLE")
    assert len(capped.rows) == 30 and capped.page_size == service.MAX_PAGE_SIZE  # unknown sort: score
    table = render.display_table(first.rows)
    assert list(table.columns) == render.TABLE_HEADERS and len(table) == 10


def test_repo_strings_are_escaped_in_the_markup():
    row = {"repo_id": 'ev<script>il/"x', "revision": "a" * 40, "claim_verdict": "<b>inflated</b>", "rank": 1}
    table = render.display_table(__import__("pandas").DataFrame([row]))
    assert "<script>" not in "".join(map(str, table.iloc[0])) and "&lt;script&gt;" in table.iloc[0]["User"]
    assert "<b>" not in render.details_html(row)


def test_an_unreadable_store_serves_the_last_good_page_with_a_banner(tmp_path):
    store = Store(tmp_path)
    store.record_many([lunar(f"u{i}/m", float(i)) for i in range(5)])
    store.close()
    source = StoreSource(tmp_path)
    good = service.ranking_page(source, LUNAR)
    assert good.total == 5 and source.guard.banner is None
    source.store.close()
    saved = tmp_path / "saved.sqlite3"
    shutil.copy(store.db_path, saved)
    store.db_path.write_bytes(b"this is not a database" * 100)  # damaged under the running Space
    again = service.ranking_page(source, LUNAR)
    assert again.total == 5 and list(again.rows["repo_id"]) == list(good.rows["repo_id"])
    assert "cannot be read" in source.guard.banner
    source.store.close()
    shutil.copy(saved, store.db_path)
    source.store._database = None
    assert service.ranking_page(source, LUNAR).total == 5 and source.guard.banner is None
    assert sqlite3.connect(store.db_path).execute("SELECT COUNT(*) FROM evaluations").fetchone()[0] == 5


@pytest.fixture(scope="module")
def demo_hub():
    import localhub

    with localhub.serve(PROJECT / "demo_hub") as hub:
        yield hub.url


def test_submissions_are_checked_rate_limited_and_deduplicated(tmp_path, demo_hub):
    store = Store(tmp_path)
    limiter = MemoryRateLimit(limit=4, window=3600)
    outcome = submit_to_store(store, "no spaces allowed", submitter="ip:1", endpoint=demo_hub)
    assert not outcome.ok and "not a Hub model repo id" in outcome.message
    outcome = submit_to_store(store, "nobody/missing", submitter="ip:1", endpoint=demo_hub)
    assert not outcome.ok and outcome.message.startswith("not queued")
    first = submit_to_store(store, "kenji-rl/ppo-LunarLander-v3", submitter="ip:1", endpoint=demo_hub,
                            limiter=limiter)
    assert first.ok and first.message.startswith("queued as request #") and first.request["status"] == "pending"
    again = submit_to_store(store, "kenji-rl/ppo-LunarLander-v3", submitter="ip:1", endpoint=demo_hub,
                            limiter=limiter)
    assert again.ok and "already requested as #" in again.message and again.request["id"] == first.request["id"]
    assert not submit_to_store(store, "nobody/missing", submitter="ip:1", endpoint=demo_hub, limiter=limiter).ok
    limited = submit_to_store(store, "grace-h/dqn-LunarLander-v3", submitter="ip:1", endpoint=demo_hub,
                              limiter=limiter)
    assert limited.ok  # the 4th attempt of ip:1
    refused = submit_to_store(store, "baseline-bot/random-LunarLander-v3", submitter="ip:1", endpoint=demo_hub,
                              limiter=limiter)
    assert not refused.ok and "rate limit" in refused.message  # the 5th: refused before any Hub call
    from_queue = submit_to_store(store, "baseline-bot/random-LunarLander-v3", submitter="ip:1", endpoint=demo_hub,
                                 limit=2)  # a fresh process: the queue alone remembers 2 requests of ip:1
    assert not from_queue.ok and "rate limit" in from_queue.message
    other = submit_to_store(store, "baseline-bot/random-LunarLander-v3", submitter="ip:2", endpoint=demo_hub,
                            limiter=limiter)
    assert other.ok and store.queue().get(other.request["id"]).submitter == "ip:2"
    assert len(store.queue().list()) == 3  # nothing queued by the refused ones
