"""Helpers of the Space tests (importable: conftest.py is not)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
SCREENSHOTS = Path(os.environ.get("SPACE_SCREENSHOTS") or Path(tempfile.gettempdir()) /
                   "rl-leaderboard-space-screenshots")
SYNTHETIC_REPOS = 60  # synthetic CartPole rows besides the demo's: three pages of 25


def screenshot(tab, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=True)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer in {timeout} s")


def make_hub(root: Path) -> Path:
    """The demo hub, plus: a new agent of a new user, a repo without an agent, a gated repo."""
    shutil.copytree(PROJECT / "demo_hub", root)
    source = root / "ada-lovelace" / "ppo-CartPole-v1"
    fresh = root / "new-user" / "ppo-CartPole-v1"
    shutil.copytree(source, fresh)
    (root / "empty-user" / "no-agent").mkdir(parents=True)
    (root / "empty-user" / "no-agent" / "README.md").write_text("---\ntags:\n- CartPole-v1\n---\n# nothing here\n")
    gated = root / "secret-user" / "ppo-CartPole-v1"
    shutil.copytree(source, gated)
    card = (gated / "README.md").read_text()
    (gated / "README.md").write_text(card.replace("---\n", "---\ngated: auto\n", 1))
    return root


def add_synthetic_rows(store_dir: Path) -> None:
    """SYNTHETIC_REPOS CartPole rows below the demo agents (2 episodes each: not comparable to them)."""
    sys.path.insert(0, str(PROJECT / "tests" / "leaderboard"))
    from lb_helpers import make_result

    from leaderboard.store import Store

    store = Store(store_dir)
    rows = []
    for i in range(SYNTHETIC_REPOS):
        result = make_result(f"synth-{i:03d}/dqn-CartPole-v1", f"{i:040x}", score=float(10 + i), mean=float(20 + i))
        result.algo = "dqn"
        rows.append(result)
    store.record_many(rows)
    store.close()
