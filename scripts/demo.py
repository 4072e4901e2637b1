"""`make demo`: the offline demo, end to end, through the same commands a user runs.

1. localhub serves the project's demo hub (demo_hub/: agents of made-up users, one of whom
   over-claims) as a Hugging Face Hub;
2. every repo on it is submitted by repo id (`python -m leaderboard submit REPO`);
3. a queue worker evaluates the queue (`python -m leaderboard worker`): seeded episodes in
   sandboxed players, a replay per agent;
4. the Space (`python -m space_app`) serves the store on http://127.0.0.1:7860 while rows arrive;
   a repo id typed into its Submit form is checked against localhub and evaluated by that worker.
   Ctrl-C stops everything the demo started.

`--once` keeps the old mode: evaluate everything, print the ranking (`python -m leaderboard
show`) and exit (what tests/test_demo.py runs). The store is `.demo_store/` (recreated on each
run); set DEMO_STORE to put it elsewhere, DEMO_PORT for another port.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import localhub  # noqa: E402


def leaderboard(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "leaderboard", *args]
    proc = subprocess.run(command, env=env, cwd=PROJECT, text=True, capture_output=True)
    if check and proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"demo: `{' '.join(command[2:])}` exited {proc.returncode}")
    return proc


def _stop(processes: list[subprocess.Popen]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 15
    for proc in processes:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()


def serve(store: Path, env: dict, port: int) -> int:
    """Worker and Space in the background until Ctrl-C or SIGTERM (or until one of them dies)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)  # also when started in the background (SIGINT ignored there)
    signal.signal(signal.SIGTERM, interrupt)
    common = ["--store", str(store)]
    worker = subprocess.Popen([sys.executable, "-m", "leaderboard", "worker", "--concurrency", "1", "--poll", "1",
                               *common], cwd=PROJECT, env=env, start_new_session=True)
    space = subprocess.Popen([sys.executable, "-m", "space_app", *common, "--host", "127.0.0.1", "--port", str(port)],
                             cwd=PROJECT, env=env, start_new_session=True)
    print(f"\nThe Space: http://127.0.0.1:{port}  (rows appear as the worker finishes them; Ctrl-C stops the demo)",
          flush=True)
    try:
        while worker.poll() is None and space.poll() is None:
            time.sleep(0.5)
        print("demo: " + ("the worker" if worker.poll() is not None else "the Space") + " stopped", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: stopping the worker, the Space and localhub", flush=True)
        return 0
    finally:
        _stop([worker, space])


def main(argv: list[str] | None = None) -> int:
    from huggingface_hub import HfApi

    parser = argparse.ArgumentParser(description="the offline demo")
    parser.add_argument("--once", action="store_true", help="evaluate everything, print the ranking and exit")
    args = parser.parse_args(argv)
    store = Path(os.environ.get("DEMO_STORE") or PROJECT / ".demo_store")
    shutil.rmtree(store, ignore_errors=True)
    state = Path(tempfile.mkdtemp(prefix="localhub-demo-"))
    with localhub.serve(PROJECT / "demo_hub", state=state) as hub:
        repos = sorted(m.id for m in HfApi(endpoint=hub.url, token=False).list_models())
        print(f"localhub serves demo_hub/ at {hub.url}: {len(repos)} agent repos", flush=True)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(state / "hf-home"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(PROJECT), "GRADIO_ANALYTICS_ENABLED": "False"}
        env.pop("HF_TOKEN", None)
        common = ["--store", str(store)]
        for repo in repos:
            line = leaderboard("submit", repo, *common, env=env).stdout.strip().splitlines()
            print(f"  submitted {repo}: {line[-1] if line else ''}", flush=True)
        if not args.once:
            return serve(store, env, int(os.environ.get("DEMO_PORT") or 7860))
        print("queue worker evaluating (50 seeded episodes per agent, sandboxed, with replays)...", flush=True)
        worker = leaderboard("worker", "--once", "--concurrency", "2", *common, env=env, check=False)
        if worker.returncode != 0:
            sys.stderr.write(worker.stderr)
        print(leaderboard("requests", *common, env=env).stdout)
        print(leaderboard("show", *common, env=env).stdout)
    print(f"store: {store} (leaderboard.sqlite3, replays/); "
          f"`python -m leaderboard show --store {store} --json` for every field")
    return worker.returncode


if __name__ == "__main__":
    sys.exit(main())
