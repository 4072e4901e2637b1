"""Helpers of the Space tests (importable: conftest.py is not)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SCREENSHOTS = Path(os.environ.get("SPACE_SCREENSHOTS") or Path(tempfile.gettempdir()) /
                   "rl-leaderboard-space-screenshots")
SYNTHETIC_REPOS = 60  # synthetic CartPole rows besides the demo's: three pages of 25


def screenshot(tab, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path

PROJECT = Path(__file__).resolve().parents[2]
