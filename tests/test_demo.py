"""`make demo` end to end: every demo repo is submitted, evaluated by a queue worker and ranked;
the over-claiming card is flagged `inflated`, every honest one `consistent`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_demo_ranks_every_repo_and_flags_the_over_claimer(demo_run):
    store, demo = demo_run
    env = {**os.environ, "PYTHONPATH": str(PROJECT)}
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "== LunarLander-v3 ==" in demo.stdout and "== CartPole-v1 ==" in demo.stdout
    show = subprocess.run([sys.executable, "-m", "leaderboard", "show", "--store", str(store),
                           "--json"], cwd=PROJECT, env=env, capture_output=True, text=True, check=True)
    rows = {row["repo_id"]: row for row in json.loads(show.stdout)}
    repos = {f"{ns.name}/{repo.name}" for ns in (PROJECT / "demo_hub").iterdir() if ns.is_dir()
             and not ns.name.startswith(".") for repo in ns.iterdir() if repo.is_dir()}
    assert set(rows) == repos
    verdicts = {repo: row["claim"]["verdict"] for repo, row in rows.items()}
    assert verdicts.pop("hype-master/ppo-CartPole-v1-perfect") == "inflated"
    assert verdicts.pop("quick-win/ppo-LunarLander-v2") == "inflated"  # the course-format over-claimer
    assert set(verdicts.values()) == {"consistent"}, verdicts
    assert rows["kenji-rl/ppo-LunarLander-v3"]["score"] >= 200
    assert all(row["video"] and (store / row["video"]).stat().st_size > 0 for row in rows.values())
