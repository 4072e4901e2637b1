"""The Space under test: the demo's results (evaluated once per session by `scripts/demo.py
--once`) plus synthetic rows for paging, served by `python -m space_app` on 127.0.0.1 with a
live queue worker and a localhub holding the demo repos and a few more (a new agent, a repo with
no agent, a gated one). Browser tests drive Debian's chromium through Playwright; they skip,
saying why, when either is missing. Screenshots go to $SPACE_SCREENSHOTS (default: the
`rl-leaderboard-space-screenshots` folder of the system's temporary directory)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from space_helpers import add_synthetic_rows, free_port, make_hub, wait_http

PROJECT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def space(demo_run, tmp_path_factory):
    """(base URL, store folder, hub URL) of a running Space with a live worker."""
    import localhub

    store_source, demo = demo_run
    if demo.returncode != 0:
        pytest.fail(f"scripts/demo.py --once failed:\n{demo.stdout[-2000:]}\n{demo.stderr[-2000:]}")
    base = tmp_path_factory.mktemp("space")
    store = base / "store"
    shutil.copytree(store_source, store)
    from leaderboard.store import Store

    left = {k: v for k, v in Store(store).queue().counts().items() if k in ("pending", "running") and v}
    if left:  # the live worker below would change the rankings under the tests
        pytest.fail(f"scripts/demo.py --once left requests unfinished: {left}")
    add_synthetic_rows(store)
    hub = localhub.serve(make_hub(base / "hub"), state=base / "hub-state")
    port = free_port()
    env = {**os.environ, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(PROJECT), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HOME": str(base / "hf-home"), "RL_SPACE_REFRESH": "3600"}  # no board refresh racing the clicks
    env.pop("HF_TOKEN", None)
    log = (base / "space.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "space_app", "--store", str(store), "--port", str(port)],
                              cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "leaderboard", "worker", "--store", str(store), "--poll", "0.5",
                               "-v"], cwd=PROJECT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/", server)
        yield url, store, hub.url
    finally:
        for proc in (server, worker):
            proc.terminate()
        for proc in (server, worker):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        hub.close()
        log.close()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs it as root (scripts/install_system_deps.sh)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (requirements-dev.txt)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, space):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(30_000)
    yield tab
    context.close()

