"""Shared test set-up: an isolated HF cache, and the real agents in ../shared when present."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# huggingface_hub reads these at import: set them before any test module imports it.
_HF_HOME = tempfile.mkdtemp(prefix="hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.pop("HF_TOKEN", None)

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"
ZOO = SHARED / "agents" / "zoo"


@pytest.fixture(scope="session")
def zoo_root() -> Path:
    """`../shared/agents/zoo` (repo ids `sb3/...`); tests that need it skip when it is absent."""
    if not (ZOO / "sb3").is_dir():
        pytest.skip("../shared/agents/zoo is absent (a fresh checkout has no ../shared)")
    return ZOO


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`scripts/demo.py --once` run once per session: (its store, the finished process). The demo
    hub's repos submitted, evaluated by a queue worker with replays, ranked."""
    store = tmp_path_factory.mktemp("demo") / "store"
    env = {**os.environ, "DEMO_STORE": str(store), "PYTHONPATH": str(PROJECT)}
    run = subprocess.run([sys.executable, "scripts/demo.py", "--once"], cwd=PROJECT, env=env, capture_output=True,
                         text=True, timeout=900)
    return store, run


def _tree(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.lstat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.fixture(scope="session", autouse=True)
def shared_is_never_written():
    """No test writes into ../shared (whether it is writable or not): checked over the session."""
    if not SHARED.is_dir():
        yield
        return
    before = _tree(SHARED)
    yield
    after = _tree(SHARED)
    assert after == before, "a test wrote into ../shared: " + ", ".join(
        sorted({name for name, _ in after} ^ {name for name, _ in before})[:10])
