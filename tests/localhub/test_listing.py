"""localhub listings (issue 13): every matching repo exactly once across `Link`-paged pages, with
filters, `full` and `cardData`; a listing costs one repo info per repo whatever the page size;
cards are parsed once per README content."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi

import localhub
from localhub import storage as storage_module


def _tree(root, n: int) -> list[str]:
    ids = []
    for i in range(n):
        env = ["CartPole-v1", "LunarLander-v2", "Acrobot-v1"][i % 3]
        repo = root / f"user{i % 7}" / f"agent-{i:03d}"
        repo.mkdir(parents=True)
        (repo / "README.md").write_text(f"---\nlibrary_name: stable-baselines3\ntags:\n- {env}\n"
                                        f"- reinforcement-learning\n---\n# agent {i}\n")
        (repo / f"ppo-{env}.zip").write_bytes(b"zip" * i)
        ids.append(f"user{i % 7}/agent-{i:03d}")
    return sorted(ids)


@pytest.fixture()
def hub(tmp_path):
    ids = _tree(tmp_path / "root", 60)
    running = localhub.serve(tmp_path / "root", state=tmp_path / "state", page_size=7)
    yield running, ids
    running.close()


def test_paged_filtered_listing_returns_each_repo_once(hub):
    running, ids = hub
    api = HfApi(endpoint=running.url, token=False)
    listed = [m.id for m in api.list_models(full=True, cardData=True)]
    assert listed == ids  # 9 pages of 7, in id order, no repeats, none missing
    cartpole = [m for m in api.list_models(filter="CartPole-v1", full=True, cardData=True)]
    assert [m.id for m in cartpole] == [i for i in ids if int(i[-3:]) % 3 == 0]
    assert all(m.sha and m.siblings and m.card_data is not None and m.last_modified for m in cartpole)
    assert sorted(m.id for m in api.list_models(filter="Acrobot-v1", author="user2")) == sorted(
        i for i in ids if i.startswith("user2/") and int(i[-3:]) % 3 == 2)
    assert len(list(api.list_models(filter="reinforcement-learning", limit=10))) == 10
    newest = [m.id for m in api.list_models(sort="lastModified", limit=60)]
    assert sorted(newest) == ids


def test_a_listing_costs_one_info_per_repo(hub, monkeypatch):
    running, ids = hub
    calls = []
    real = storage_module.Storage.info

    def counted(self, ref, commit, **kwargs):
        calls.append(ref.repo_id)
        return real(self, ref, commit, **kwargs)

    monkeypatch.setattr(storage_module.Storage, "info", counted)
    api = HfApi(endpoint=running.url, token=False)
    assert len(list(api.list_models(filter="LunarLander-v2", full=True))) == 20
    assert sorted(calls) == ids  # 60 repos scanned once over 3+ pages, not once per page


def test_cards_are_parsed_once_per_readme_content(hub, monkeypatch):
    running, ids = hub
    parsed = []
    real = storage_module.front_matter
    monkeypatch.setattr(storage_module, "front_matter", lambda text: parsed.append(1) or real(text))
    api = HfApi(endpoint=running.url, token=False)
    first = {m.id: m.card_data.to_dict() for m in api.list_models(full=True, cardData=True)}
    count = len(parsed)
    second = {m.id: m.card_data.to_dict() for m in api.list_models(full=True, cardData=True)}
    assert len(parsed) == count and first == second
    # a changed README is parsed again
    readme = running.storage.root / ids[0] / "README.md"
    readme.write_text(readme.read_text().replace("- reinforcement-learning\n", "- reinforcement-learning\n- new\n"))
    third = {m.id: m for m in api.list_models(full=True, cardData=True)}
    assert "new" in third[ids[0]].tags and len(parsed) == count + 1
