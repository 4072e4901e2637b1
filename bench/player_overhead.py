"""Player start-up, per-job overhead and replay cost (issue 15): cold players vs warm ones.

    .venv/bin/python bench/player_overhead.py [--agent ppo-CartPole-v1] [--repeat 5]

  zygote start     a warm player's zygote from launch to ready (interpreter, imports, the load
                   rehearsal): paid once per zygote, i.e. once per `EVALUATOR_WARM_JOBS` jobs
  cold job         a 1-episode evaluation of an RL Zoo agent on a fresh confined player (what
                   every evaluation paid before issue 15): start-up + load + one episode
  warm job         the same on a warm player: fork, jail, files over the socket, load, episode
  replay           the same agent's full protocol with and without its replay (episode 0
                   rendered and encoded by the referee)
CPU seconds are the referee's (this process) plus the player's (/proc before a cold player is
killed: bench/cold_cpu.py; the zygote's wait4 for warm jobs); medians of `--repeat`; ratios against the cold job
measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._zoo import zoo_agent, zoo_missing  # noqa: E402
from evaluator.job import Job, single_thread  # noqa: E402
from evaluator.sandbox import referee, warm  # noqa: E402


def timed_play(job: Job, mode: str) -> tuple[float, float]:
    """(wall s, CPU s of referee + player) of one play."""
    from bench.cold_cpu import ColdPlayerCpu

    os.environ[warm.ENABLED_ENV] = "1" if mode == "warm" else "0"
    warm.pool().last_job_cpu = None
    wall, cpu = time.perf_counter(), time.process_time()
    with ColdPlayerCpu() as cold:
        referee.play(job)
    player = warm.pool().last_job_cpu if mode == "warm" else cold.seconds
    return time.perf_counter() - wall, time.process_time() - cpu + (player or 0.0)


def median_of(repeat: int, fn) -> tuple[float, float]:
    runs = [fn() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="ppo-CartPole-v1")
    parser.add_argument("--replay-agent", default="ppo-LunarLander-v2")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if zoo_missing():
        return 2
    single_thread()

    starts = []
    for _ in range(max(1, args.repeat // 2)):
        wall = time.perf_counter()
        warm.Zygote().close()
        starts.append(time.perf_counter() - wall)
    one = zoo_agent(args.agent).job(1)
    timed_play(one, "warm")  # this process's warm player started
    cold = median_of(args.repeat, lambda: timed_play(one, "cold"))
    hot = median_of(args.repeat, lambda: timed_play(one, "warm"))
    full = zoo_agent(args.replay_agent).job()
    video = Path(tempfile.mkdtemp(prefix="bench-replay-")) / "replay.mp4"
    plain = median_of(max(1, args.repeat // 2), lambda: timed_play(full, "warm"))
    filmed = median_of(max(1, args.repeat // 2), lambda: timed_play(replace(full, video_path=str(video)), "warm"))
    print(f"\nmedians of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| what | wall s | CPU s (referee + player) | vs cold job (wall) |")
    print("|---|---|---|---|")
    print(f"| zygote start (once per {warm.max_jobs()} jobs) | {statistics.median(starts):.2f} | - | - |")
    print(f"| cold job: {args.agent}, 1 episode | {cold[0]:.2f} | {cold[1]:.2f} | 1.00x |")
    print(f"| warm job: {args.agent}, 1 episode | {hot[0]:.2f} | {hot[1]:.2f} | {cold[0] / hot[0]:.1f}x faster |")
    print(f"| {args.replay_agent}, {full.n_episodes} episodes, no replay (warm) | {plain[0]:.2f} | "
          f"{plain[1]:.2f} | - |")
    print(f"| the same with its replay | {filmed[0]:.2f} | {filmed[1]:.2f} | replay: +{filmed[0] - plain[0]:.2f} s "
          f"wall, +{filmed[1] - plain[1]:.2f} s CPU, {video.stat().st_size / 1e6:.1f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
