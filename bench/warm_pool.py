"""Agents per minute on all cores, warm players vs cold ones (issue 15, target 2: >= 75/min).

    .venv/bin/python bench/warm_pool.py [--agents 40] [--concurrency 2] [--modes cold warm]

40 agents are made by copying four RL Zoo agents of ../shared (LunarLander PPO, DQN, A2C and
CartPole PPO) under new names with their weights nudged (`bench/ray_scale.nudged_zip`: every
float tensor moved by 1e-3 x its std, seeded by the copy's number: no two files alike), served
by localhub in this process, submitted by repo id (`leaderboard.submit.check_submission` and the
queue, as `leaderboard submit` does), then drained by `run_pool` (`leaderboard worker
--concurrency N --once`), players confined, no replays. The baseline, cold players
(EVALUATOR_WARM_PLAYERS=0: a fresh confined process per evaluation), is measured in the same
run; the per-episode returns of both must be identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from bench._zoo import ZOO, zoo_missing  # noqa: E402
from bench.ray_scale import nudged_zip  # noqa: E402

MIX = ("ppo-LunarLander-v2", "dqn-LunarLander-v2", "a2c-LunarLander-v2", "ppo-CartPole-v1")


def make_hub(root: Path, n: int) -> list[str]:
    repos = []
    for k in range(n):
        name = MIX[k % len(MIX)]
        repo = root / f"copy{k:02d}" / name
        shutil.copytree(ZOO / name, repo)
        (repo / f"{name}.zip").write_bytes(nudged_zip(ZOO / name / f"{name}.zip", seed=1000 + k))
        repos.append(f"copy{k:02d}/{name}")
    return repos


def run(mode: str, repos: list[str], hub_url: str, work: Path, concurrency: int) -> dict:
    from leaderboard.store import Store
    from leaderboard.submit import check_submission
    from leaderboard.worker import WorkerConfig, run_pool

    os.environ["EVALUATOR_WARM_PLAYERS"] = "1" if mode == "warm" else "0"  # inherited by the workers
    store = Store(work / f"store-{mode}")
    queue = store.queue()
    for repo in repos:
        found = check_submission(repo, endpoint=hub_url)
        queue.submit(found.repo_id, found.revision, found.env_key, env_id=found.env_id,
                     commit_date=found.commit_date, submitter="bench")
    config = WorkerConfig(endpoint=hub_url, token=False, video=False, poll_seconds=0.2)
    load = os.getloadavg()[0]
    started = time.monotonic()
    stats = run_pool(store, concurrency=concurrency, once=True, config=config)
    seconds = time.monotonic() - started
    history = store.history()
    returns = {row.repo_id: [float(r).hex() for r in row.episode_returns] for row in history.itertuples()
               if row.episode_returns is not None}
    steps = int(sum(sum(row.episode_lengths) for row in history.itertuples() if row.episode_lengths is not None))
    return {"mode": mode, "finished": stats.finished, "failed": stats.failed, "seconds": seconds, "steps": steps,
            "returns": returns, "load": load}


def cpu_per_agent(mode: str, repos: list[str], hub_url: str, work: Path) -> float:
    """CPU seconds per evaluation, referee plus player, the agents evaluated one after another
    in this process: a figure the machine's other load moves much less than wall time. A cold
    player's CPU is read from /proc before it is killed (bench/cold_cpu.py); a warm job's fork is
    measured by its zygote (wait4). Downloads are done once beforehand, as a worker's cache would hold them."""
    from bench.cold_cpu import ColdPlayerCpu
    from evaluator.evaluate import evaluate
    from evaluator.sandbox import warm

    os.environ["EVALUATOR_WARM_PLAYERS"] = "1" if mode == "warm" else "0"
    cache = work / f"cache-{mode}"
    evaluate(repos[0], endpoint=hub_url, cache_dir=cache, token=False)  # a warm player started, imports paid
    total = 0.0
    for repo in repos:
        before = time.process_time()
        warm.pool().last_job_cpu = None
        with ColdPlayerCpu() as cold:
            result = evaluate(repo, endpoint=hub_url, cache_dir=cache, token=False)
        player = cold.seconds if mode == "cold" else (warm.pool().last_job_cpu or 0.0)
        total += time.process_time() - before + player
        assert result.status == "finished", (repo, result.error)
    return total / len(repos)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--modes", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    args = parser.parse_args()
    if zoo_missing():
        return 2
    import localhub

    work = Path(tempfile.mkdtemp(prefix="warm-bench-"))
    try:
        repos = make_hub(work / "hub", args.agents)
        with localhub.serve(work / "hub", state=work / "state") as hub:
            results = []
            for mode in args.modes:
                result = run(mode, repos, hub.url, work, args.concurrency)
                print(f"{mode}: {result['finished']} finished, {result['failed']} failed in {result['seconds']:.1f} s",
                      file=sys.stderr)
                result["cpu"] = cpu_per_agent(mode, repos, hub.url, work)
                results.append(result)
        base = results[0]
        print(f"\n{len(repos)} agents (nudged copies of {', '.join(MIX)}), one worker with concurrency "
              f"{args.concurrency} on {os.cpu_count()} cores, confined players, no replays; baseline: "
              f"{base['mode']} players, this run\n")
        cores = os.cpu_count() or 1
        print("| players | evaluations | failed | env steps | wall s | agents/minute (wall) | vs baseline | load avg "
              "| CPU s per agent | agents/minute if CPU-bound on all cores | vs baseline | returns = baseline |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            n = r["finished"] + r["failed"]
            print(f"| {r['mode']} | {n} | {r['failed']} | {r['steps']:,} | {r['seconds']:.1f} | "
                  f"{60 * n / r['seconds']:.1f} | {base['seconds'] / r['seconds']:.2f}x | {r['load']:.1f} | "
                  f"{r['cpu']:.2f} | {60 * cores / r['cpu']:.1f} | {base['cpu'] / r['cpu']:.2f}x | "
                  f"{'yes' if r['returns'] == base['returns'] else 'NO'} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
