"""Deployed as a Hugging Face Space: the layout `space_app.deploy` writes, run as it is against a
localhub dataset the head published to; driven through its named API with gradio_client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from space_helpers import free_port, make_hub, wait_http

pytestmark = pytest.mark.slow

DATASET = "leaderboard-org/results"


def test_the_space_layout_serves_a_published_dataset_and_writes_requests(demo_run, tmp_path):
    from gradio_client import Client
    from huggingface_hub import HfApi

    import localhub
    from leaderboard.publish import Publisher
    from leaderboard.store import Store
    from space_app.deploy import write_layout

    store_dir, demo = demo_run
    assert demo.returncode == 0, demo.stderr[-2000:]
    store = tmp_path / "store"
    shutil.copytree(store_dir, store)
    with localhub.serve(make_hub(tmp_path / "hub"), state=tmp_path / "hub-state") as hub:
        Publisher(Store(store), DATASET, endpoint=hub.url, create=True).publish()
        layout = write_layout(tmp_path / "space", DATASET)
        meta = (layout / "README.md").read_text()
        assert "sdk: gradio" in meta and "app_file: app.py" in meta
        assert "torch" not in (layout / "requirements.txt").read_text()  # the Space never loads an agent
        port = free_port()
        env = {**os.environ, "HF_ENDPOINT": hub.url, "GRADIO_SERVER_NAME": "127.0.0.1",
               "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HOME": str(tmp_path / "hf"),
               "PYTHONPATH": str(layout)}
        env.pop("HF_TOKEN", None)
        app = subprocess.Popen([sys.executable, "app.py"], cwd=layout, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/", app)
            client = Client(url, verbose=False)
            expected = Store(store).ranking("LunarLander-v3")
            page = client.predict("LunarLander-v3", 1, 25, "", "", "", "score", api_name="/rankings")
            assert page["total"] == len(expected)
            assert [r["repo_id"] for r in page["rows"]] == list(expected["repo_id"])
            assert page["rows"][0]["episode_returns"] and page["rows"][0]["rank"] == 1
            found = client.predict("ada-lov", "", 25, api_name="/search")
            assert {r["repo_id"] for r in found["rows"]} == {"ada-lovelace/ppo-CartPole-v1",
                                                            "ada-lovelace/a2c-CartPole-v1"}
            versus = client.predict("LunarLander-v3", "kenji-rl/ppo-LunarLander-v3", "grace-h/dqn-LunarLander-v3",
                                    api_name="/compare")
            assert versus["ok"] and versus["comparison"]["n_episodes"] == 50
            cert = client.predict("kenji-rl", api_name="/certification")
            assert cert["ok"] and any(p["unit"] == "Unit 1" and p["passed"] for p in cert["parts"])
            refused = client.predict("empty-user/no-agent", "", api_name="/submit")
            assert not refused["ok"] and "No agent found" in refused["message"]
            before = set(HfApi(endpoint=hub.url).list_repo_files(DATASET, repo_type="dataset"))
            queued = client.predict("new-user/ppo-CartPole-v1", "", api_name="/submit")
            assert queued["ok"], queued
            files = set(HfApi(endpoint=hub.url).list_repo_files(DATASET, repo_type="dataset")) - before
            assert len(files) == 1 and next(iter(files)).startswith("requests/")
            report = Publisher(Store(store), DATASET, endpoint=hub.url).publish()  # the head ingests it
            assert report.requests_ingested == 1
            assert [r.repo_id for r in Store(store).queue().list(status="pending")] == ["new-user/ppo-CartPole-v1"]
        finally:
            app.terminate()
            app.wait(timeout=15)
