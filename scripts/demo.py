"""`make demo`: the offline demo, end to end, through the same commands a user runs.

1. localhub serves the project's demo hub (demo_hub/: agents of made-up users, one of whom
   over-claims) as a Hugging Face Hub;
2. every repo on it is submitted by repo id (`python -m leaderboard submit REPO`);
3. a queue worker evaluates the queue (`python -m leaderboard worker --once`): seeded episodes
   in sandbox processes, a replay per agent;
4. the ranking is printed from the store (`python -m leaderboard show`), with each card's verdict.

The store is `.demo_store/` (recreated on each run); set DEMO_STORE to put it elsewhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


def main() -> int:
    from huggingface_hub import HfApi

    store = Path(os.environ.get("DEMO_STORE") or PROJECT / ".demo_store")
    shutil.rmtree(store, ignore_errors=True)
    state = Path(tempfile.mkdtemp(prefix="localhub-demo-"))
    with localhub.serve(PROJECT / "demo_hub", state=state) as hub:
        repos = sorted(m.id for m in HfApi(endpoint=hub.url, token=False).list_models())
        print(f"localhub serves demo_hub/ at {hub.url}: {len(repos)} agent repos", flush=True)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(state / "hf-home"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(PROJECT)}
        env.pop("HF_TOKEN", None)
        common = ["--store", str(store)]
        for repo in repos:
            line = leaderboard("submit", repo, *common, env=env).stdout.strip().splitlines()
            print(f"  submitted {repo}: {line[-1] if line else ''}", flush=True)
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
