"""Serving the real RL Zoo agents in ../shared (read-only): 13 repos, byte-identical zips."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi, hf_hub_download

import localhub

pytestmark = pytest.mark.shared


def test_zoo_lists_13_repos_and_serves_zips_byte_identical(zoo_root, tmp_path):
    before = sorted(p.name for p in zoo_root.iterdir())
    with localhub.serve(zoo_root, state=tmp_path / "state") as hub:
        api = HfApi(endpoint=hub.url)
        repos = sorted(m.id for m in api.list_models(author="sb3"))
        assert len(repos) == 13
        assert repos == sorted(f"sb3/{p.name}" for p in (zoo_root / "sb3").iterdir())
        for repo_id in repos:
            name = repo_id.split("/")[1]
            local = zoo_root / "sb3" / name / f"{name}.zip"
            downloaded = Path(hf_hub_download(repo_id, f"{name}.zip", cache_dir=tmp_path / "cache",
                                              endpoint=hub.url))
            assert hashlib.sha256(downloaded.read_bytes()).digest() == hashlib.sha256(local.read_bytes()).digest()
        lunar = [m.id for m in api.list_models(filter="LunarLander-v2")]
        assert sorted(lunar) == ["sb3/a2c-LunarLander-v2", "sb3/dqn-LunarLander-v2", "sb3/ppo-LunarLander-v2"]
    assert sorted(p.name for p in zoo_root.iterdir()) == before  # nothing written into ../shared


def test_default_state_dir_of_a_read_only_root_is_outside_it(zoo_root, tmp_path, monkeypatch):
    """On a read-only copy of a zoo repo made here: never on ../shared itself, whose permissions
    vary (writable, the default state dir would be created inside it)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = tmp_path / "zoo"
    shutil.copytree(zoo_root / "sb3" / "ppo-CartPole-v1", root / "sb3" / "ppo-CartPole-v1")
    paths = [root, *root.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        with localhub.serve(root) as hub:
            assert hub.storage.state.is_relative_to(tmp_path / "xdg")
            assert HfApi(endpoint=hub.url).model_info("sb3/ppo-CartPole-v1").sha
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == sorted(p.relative_to(root) for p in paths[1:])
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
