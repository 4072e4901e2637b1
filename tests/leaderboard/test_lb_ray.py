"""The Ray backend (issue 13), on a local Ray of at most 2 CPUs bound to 127.0.0.1: results
identical to the local worker's (every per-episode return) whatever the number of Ray CPUs, the
replay back at the head; a Ray worker process killed mid-task (the request is retried by the
queue and recorded once); the head killed and restarted (nothing lost, nothing doubled).

Ray is an optional extra: without it these tests skip, saying so (`make test` installs it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from lb_helpers import PROJECT, cli_env, run_cli

import localhub
from leaderboard.store import Store

pytest.importorskip("ray", reason="Ray is an optional extra: pip install -c constraints.txt -r requirements-ray.txt "
                                  "(make test installs it)")

pytestmark = pytest.mark.slow

DEMO = PROJECT / "demo_hub"
# Quick demo agents: a deterministic SB3 PPO, a Q-table, a stochastic REINFORCE policy (action seeds).
REPOS = ("ada-lovelace/ppo-CartPole-v1", "mei-tanaka/q-Taxi-v3", "olu-ade/Reinforce-CartPole-v1")
SLOW_REPO = "kenji-rl/ppo-LunarLander-v3"  # long enough to be killed mid-task


@pytest.fixture()
def hub(tmp_path):
    root = tmp_path / "hub"
    for repo in (*REPOS, SLOW_REPO):
        shutil.copytree(DEMO / repo, root / repo)
    running = localhub.serve(root, state=tmp_path / "state")
    yield SimpleNamespace(url=running.url)
    running.close()


def _submit(store: Path, hub_url: str, repos) -> None:
    for repo in repos:
        run_cli("submit", repo, "--store", str(store), hub_url=hub_url, check=True)


def _rows(store: Path) -> dict[str, dict]:
    history = Store(store).history()
    assert history["repo_id"].is_unique, "a request was recorded twice"
    return {row["repo_id"]: row for row in history.to_dict("records")}


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _ray_processes() -> list[int]:
    """The Ray worker processes running an evaluation task of THIS test's local Ray (descendants
    of this process: its raylet's children), never another run's on the same machine."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if not cmdline.startswith("ray::run_evaluation"):
                continue
            pid = ancestor = int(entry.name)
            while ancestor not in (None, 0, 1, os.getpid()):
                ancestor = _parent(ancestor)
            if ancestor == os.getpid():
                found.append(pid)
    return found


def test_ray_results_are_identical_to_the_local_worker_whatever_the_cpus(hub, tmp_path):
    runs = {"local": [], "ray-1": ["--backend", "ray", "--num-cpus", "1"],
            "ray-2": ["--backend", "ray", "--num-cpus", "2"]}
    rows = {}
    for name, options in runs.items():
        store = tmp_path / name
        _submit(store, hub.url, REPOS)
        done = run_cli("worker", "--once", "--store", str(store), *options, hub_url=hub.url, timeout=600, check=True)
        assert "3 finished, 0 failed" in done.stderr, done.stderr
        rows[name] = _rows(store)
    for repo in REPOS:
        local = rows["local"][repo]
        assert local["status"] == "finished" and local["video"]
        for name in ("ray-1", "ray-2"):
            other = rows[name][repo]
            for key in ("revision", "env_key", "seed_set", "seeds", "episode_returns", "episode_lengths",
                        "score", "mean_reward", "std_reward", "iqm", "ci95", "claim_verdict", "ranked"):
                assert json.dumps(_plain(other[key])) == json.dumps(_plain(local[key])), (name, repo, key)
            replay = tmp_path / name / other["video"]  # the replay came back to the head with the result
            assert replay.is_file() and replay.stat().st_size > 1000


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def test_a_killed_ray_task_process_is_retried_by_the_queue_and_recorded_once(hub, tmp_path):
    from leaderboard.ray_backend import RayOptions, ray_pool
    from leaderboard.worker import WorkerConfig

    store = tmp_path / "store"
    _submit(store, hub.url, [SLOW_REPO])
    reports, stop, killed = [], threading.Event(), []
    config = WorkerConfig(lease_seconds=30, poll_seconds=0.2, endpoint=hub.url, video=False,
                          queue_options={"backoff_seconds": 0.5})
    head = threading.Thread(target=lambda: reports.append(ray_pool(RayOptions(num_cpus=2))(
        store, config=config, stop=stop, report=reports.append)))
    head.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            pids = _ray_processes()
            if pids:
                time.sleep(2.0)  # into the evaluation: the player is running episodes
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                killed.extend(pids)
            time.sleep(0.1)
        assert killed, "no Ray task process showed up"
        queue = Store(store).queue()
        while time.monotonic() < deadline and queue.list()[0].status.value != "finished":
            time.sleep(0.5)
    finally:
        stop.set()
        head.join(timeout=300)
    (request,) = Store(store).queue().list()
    assert request.status.value == "finished" and request.attempts == 2, request
    lost = [r for r in reports[:-1] if r.error_code == "worker_lost"]
    assert len(lost) == 1 and lost[0].status == "pending"
    assert [r.status for r in reports[:-1] if r.error_code != "worker_lost"] == ["finished"]
    stats = reports[-1]
    assert (stats.finished, stats.retried) == (1, 1)
    assert list(_rows(store)) == [SLOW_REPO]


def test_a_killed_head_resumes_from_the_queue_on_restart(hub, tmp_path):
    store = tmp_path / "store"
    repos = (*REPOS, SLOW_REPO)
    _submit(store, hub.url, repos)
    args = [sys.executable, "-m", "leaderboard", "worker", "--store", str(store), "--backend", "ray",
            "--num-cpus", "2", "--lease", "8", "--poll", "0.2", "--no-video"]
    head = subprocess.Popen(args, env=cli_env(hub.url), cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        counts = {}
        while time.monotonic() < deadline:
            counts = Store(store).queue().counts()
            if counts["finished"] >= 1 and counts["running"] >= 1:
                break
            time.sleep(0.2)
        assert counts.get("running"), f"no request was running when the head should be killed: {counts}"
        head.kill()  # SIGKILL: no lease given back, no cleanup
        head.wait(timeout=60)
    finally:
        with_group = head.pid
        try:
            os.killpg(with_group, signal.SIGKILL)  # the local Ray it started, if anything outlived it
        except ProcessLookupError:
            pass
    before = Store(store).queue().counts()
    assert before["running"] >= 1 and before["finished"] < len(repos)
    time.sleep(8.5)  # the dead head's leases expire
    done = run_cli("worker", "--once", "--store", str(store), "--backend", "ray", "--num-cpus", "2", "--no-video",
                   hub_url=hub.url, timeout=600, check=True)
    requests = Store(store).queue().list()
    assert [r.status.value for r in requests] == ["finished"] * len(repos), done.stderr
    assert any(r.attempts == 2 for r in requests)  # a request the dead head held ran again
    assert sorted(_rows(store)) == sorted(repos)  # each recorded once
