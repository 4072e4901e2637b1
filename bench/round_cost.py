"""Where a refereed run's CPU goes, round by round (issue 15, target 1's gap).

    .venv/bin/python bench/round_cost.py [--agent ppo-LunarLander-v2] [--repeat 5]

One RL Zoo agent of ../shared, the 50-episode protocol. The run's actor calls (one per round:
a window has as many rounds as its longest episode) are recorded once, then timed (CPU
seconds, the least of `--repeat`):
  env alone          the env stepped with the agent's recorded actions (bench/throughput.py's)
  calls, warm        the run's actor calls (LocalActor, lean and fused) replayed back to back
  calls, in a run    the same calls inside the in-process runner, envs stepped between them
  calls, in a player the same calls inside a forked player answering over pipes (the player's
                     code, unconfined: only the process boundary differs), their thread CPU
  round trip         a bare frame of the run's size there and back between two processes, both
                     sides' CPU (bench/referee_overhead.py has the confined player's)
  refereed           the real path: referee plus warm confined player (bench/throughput.py)
and the ratio to the env alone a run would reach if its calls cost what they cost warm and
nothing else but the round trips did: what is left beyond that is the cost of coming back to
code whose caches another process (the envs, on this VM another guest) has since used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench._zoo import zoo_agent, zoo_missing  # noqa: E402
from bench.throughput import cpu, recorded_actions, refereed, replay  # noqa: E402
from evaluator.actors import LocalActor  # noqa: E402
from evaluator.agents import load_agent  # noqa: E402
from evaluator.agents.base import AgentFiles  # noqa: E402
from evaluator.envs import make_env, resolve_env  # noqa: E402
from evaluator.job import single_thread  # noqa: E402
from evaluator.runner import Rows, run_episodes  # noqa: E402


class TimedActor(LocalActor):
    """A LocalActor that keeps each call's rows (to replay them) and the thread CPU of its calls."""

    def __init__(self, policy, record: bool = False) -> None:
        super().__init__(policy)
        self.calls: list[tuple[np.ndarray, Rows]] = [] if record else None
        self.seconds = 0.0

    def act_rows(self, obs, rows, *, deterministic):
        if self.calls is not None:
            positions = None if rows.positions is None else rows.positions.copy()
            self.calls.append((np.array(obs), Rows(rows.live.copy(), rows.started.copy(), rows.action_seeds.copy(),
                                                   positions)))
        start = time.thread_time()
        out = super().act_rows(obs, rows, deterministic=deterministic)
        self.seconds += time.thread_time() - start
        return out


def calls_in_player(policy, calls: list, rows: int) -> float:
    """Thread CPU of the recorded calls answered by a forked player over two pipes (the obs
    frame and the action frame of the run's sizes), read and written as the player does."""
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the player: read a frame, act, answer; report its calls' CPU at the end
        os.close(down_w), os.close(up_r)
        actor = TimedActor(policy)
        frame = bytearray(calls[0][0].nbytes + rows)
        for obs, call in calls:
            os.readv(down_r, [frame])
            actions = actor.act_rows(obs, call, deterministic=True)
            os.write(up_w, np.ascontiguousarray(actions, dtype=np.int64).tobytes())
        os.write(up_w, np.float64(actor.seconds).tobytes())
        os._exit(0)
    os.close(down_r), os.close(up_w)
    for obs, _ in calls:
        os.write(down_w, obs.tobytes() + bytes(rows))
        os.read(up_r, 8 * rows)
    seconds = float(np.frombuffer(os.read(up_r, 8), dtype=np.float64)[0])
    os.waitpid(pid, 0)
    os.close(down_w), os.close(up_r)
    return seconds


def round_trips(frame_bytes: int, answer_bytes: int, n: int) -> float:
    """CPU seconds of both processes for `n` bare round trips of these frame sizes."""
    down_r, down_w = os.pipe()
    up_r, up_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        buffer = bytearray(frame_bytes)
        answer = bytes(answer_bytes)
        for _ in range(n):
            got = 0
            while got < frame_bytes:
                got += os.readv(down_r, [memoryview(buffer)[got:]])
            os.write(up_w, answer)
        os._exit(0)
    frame = bytes(frame_bytes)
    start = time.process_time()
    for _ in range(n):
        os.write(down_w, frame)
        got = 0
        while got < answer_bytes:
            got += len(os.read(up_r, answer_bytes - got))
    mine = time.process_time() - start
    _, _, usage = os.wait4(pid, 0)
    for fd in (down_r, down_w, up_r, up_w):
        os.close(fd)
    return mine + usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="ppo-LunarLander-v2")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if zoo_missing():
        return 2
    single_thread()
    zoo = zoo_agent(args.agent)
    spec = resolve_env(zoo.env_id)
    job = zoo.job()
    n, seeds = job.n_episodes, list(job.seeds)
    env = make_env(spec)
    policy = load_agent(zoo.agent_format, AgentFiles(zoo.root, zoo.agent_file, zoo.files), env.observation_space,
                        env.action_space).policy
    env.close()
    episodes = recorded_actions(policy, spec, seeds)
    recorder = TimedActor(policy, record=True)
    result = run_episodes(recorder, spec, n_episodes=n)
    calls, steps = recorder.calls, sum(result.lengths)
    rows = len(calls[0][1].live)
    refereed(job)  # a warm player started

    def warm_calls() -> float:
        actor = LocalActor(policy)
        return cpu(lambda: [actor.act_rows(obs, call, deterministic=True) for obs, call in calls])[0]

    def run_calls() -> float:
        actor = TimedActor(policy)
        run_episodes(actor, spec, n_episodes=n)
        return actor.seconds

    obs_bytes = calls[0][0].nbytes + 9 * rows + 8
    measured = {name: [] for name in ("env", "warm", "run", "player", "trip", "refereed")}
    for k in range(args.repeat):
        print(f"round {k + 1}/{args.repeat}", file=sys.stderr)
        measured["env"].append(cpu(lambda: replay(spec, seeds, episodes))[0])
        measured["warm"].append(warm_calls())
        measured["run"].append(run_calls())
        measured["player"].append(calls_in_player(policy, calls, rows))
        measured["trip"].append(round_trips(obs_bytes, 8 + 8 * rows, len(calls)))
        measured["refereed"].append(refereed(job)[0])
    best = {name: min(values) for name, values in measured.items()}
    env_s, rounds = best["env"], len(calls)
    floor = env_s + best["warm"] + best["trip"]
    print(f"\n{args.agent}, {n} episodes, {steps:,} steps, {rounds:,} rounds of {rows} rows; least of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| what | CPU s | per round | vs warm calls |")
    print("|---|---|---|---|")
    print(f"| env alone | {env_s:.3f} | - | - |")
    for name, label in (("warm", "actor calls, back to back (warm)"), ("run", "the same calls in the in-process run"),
                        ("player", "the same calls in a player process (pipes)")):
        print(f"| {label} | {best[name]:.3f} | {best[name] / rounds * 1e6:.0f} us | {best[name] / best['warm']:.2f}x |")
    print(f"| bare round trips, both processes | {best['trip']:.3f} | {best['trip'] / rounds * 1e6:.0f} us | - |")
    print(f"| refereed, warm confined player (all of it) | {best['refereed']:.3f} | - | - |")
    print(f"\nrefereed / env alone: {env_s / best['refereed']:.2f}x; with calls at their warm cost and nothing but "
          f"the round trips besides: {env_s / floor:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
