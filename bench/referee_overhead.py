"""What the referee/player split costs: the same evaluation in one process vs refereed against a
confined player, split into player start-up and the per-call cost of the pipe.

    .venv/bin/python bench/referee_overhead.py [--repeat 3] [--agent demo_hub/kenji-rl/ppo-LunarLander-v3]

For each agent (an SB3 repo folder; default: the demo hub's LunarLander and CartPole PPO):
  in-process  `evaluator.job.execute` (warm: imports paid), the floor
  refereed    `evaluator.sandbox.referee.play`: a confined player process per evaluation
  start-up    from the player's start until it says READY (bwrap, interpreter, imports, load)
  pipe/call   (refereed - start-up - in-process) / policy calls: frames written and read,
              checked, and the process switch, per batch of N_SLOTS observations
and, with a player that answers without computing anything, the bare round trip of a frame.
Medians over `--repeat` runs; the ratios are against the in-process run measured here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluator.agents import find_agent  # noqa: E402
from evaluator.envs import resolve_env  # noqa: E402
from evaluator.job import Job, execute  # noqa: E402
from evaluator.runner import N_SLOTS, public_seeds, run_episodes  # noqa: E402
from evaluator.sandbox import confinement, referee  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1]
DEFAULT_AGENTS = ("demo_hub/kenji-rl/ppo-LunarLander-v3", "demo_hub/ada-lovelace/ppo-CartPole-v1")


class Timed(referee.RemotePlayer):
    """Notes when the player is READY and how many policy calls it answered."""

    ready_at: list[float] = []
    calls: list[int] = []

    def handshake(self, hello):
        super().handshake(hello)
        Timed.ready_at.append(time.monotonic() - self.proc.started)

    def act_rows(self, obs, rows, *, deterministic):
        out = super().act_rows(obs, rows, deterministic=deterministic)
        if self.calls == 1:
            Timed.calls.append(0)
        Timed.calls[-1] += 1
        return out


def _job(folder: Path, env_id: str) -> Job:
    files = tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()))
    fmt, agent_file = find_agent(files, repo_id=folder.name)
    n = resolve_env(env_id).n_episodes
    return Job(str(folder), fmt, agent_file, files, env_id, n, tuple(public_seeds(n)))


def _median(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _env_of(folder: Path) -> str:
    name = folder.name.split("-", 1)[1]
    return name.removesuffix("-perfect")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--agent", action="append", help="an SB3 repo folder (repeatable)")
    args = parser.parse_args()
    referee.RemotePlayer = Timed  # play() builds its RemotePlayer by this name
    conf = confinement()
    print(f"confinement: {conf.kind}; batch of {N_SLOTS} observations per policy call", file=sys.stderr)
    rows = []
    for name in args.agent or DEFAULT_AGENTS:
        folder = (PROJECT / name).resolve()
        job = _job(folder, _env_of(folder))
        execute(job)  # warm: imports and first-call costs paid once, as in a long-running worker
        local_s, outcome = _median(lambda job=job: execute(job), args.repeat)
        Timed.ready_at.clear()
        Timed.calls.clear()
        played_s, played = _median(lambda job=job: referee.play(job), args.repeat)
        assert played.episodes.returns == outcome.episodes.returns, "refereed and in-process results differ"
        steps = sum(outcome.episodes.lengths)
        calls = statistics.median(Timed.calls)
        startup = statistics.median(Timed.ready_at)
        per_call = (played_s - startup - local_s) / calls
        rows.append((folder.name, job.n_episodes, steps, int(calls), local_s, played_s, startup, per_call,
                     per_call * calls / steps))
        print(f"  {folder.name}: done", file=sys.stderr)

    # The bare wire: a player that answers zeros at once, against the same loop in-process.
    class Zeros:
        def act(self, obs, *, deterministic=True, rngs=None):
            import numpy as np

            return np.zeros(len(obs), dtype=np.int64)

    sys.path.insert(0, str(PROJECT))
    from tests.evaluator.test_referee import ZEROS, player  # the plain-Python test player

    cart = _job((PROJECT / DEFAULT_AGENTS[1]).resolve(), "CartPole-v1")
    spec = resolve_env("CartPole-v1")
    local_s, local = _median(lambda: run_episodes(Zeros(), spec, n_episodes=200), args.repeat)
    Timed.ready_at.clear()
    Timed.calls.clear()
    import dataclasses

    zero_job = dataclasses.replace(cart, n_episodes=200, seeds=tuple(public_seeds(200)), agent_format="torchscript",
                                   agent_file="agent.pt")
    referee.describe = lambda job: (spec, "none", {})  # the bare wire: no agent files to read
    played_s, _ = _median(lambda: referee.play(zero_job, player_args=player(ZEROS)), args.repeat)
    calls = statistics.median(Timed.calls)
    bare = (played_s - statistics.median(Timed.ready_at) - local_s) / calls

    print()
    print(f"{'agent':28s} {'episodes':>8s} {'steps':>7s} {'calls':>6s} {'in-process s':>12s} {'refereed s':>10s} "
          f"{'ratio':>6s} {'start-up s':>10s} {'pipe/call us':>12s} {'pipe/step us':>12s}")
    for name, n, steps, calls, local_t, played_t, startup, per_call, per_step in rows:
        print(f"{name:28s} {n:8d} {steps:7d} {calls:6d} {local_t:12.3f} {played_t:10.3f} {played_t / local_t:6.2f} "
              f"{startup:10.3f} {per_call * 1e6:12.1f} {per_step * 1e6:12.1f}")
    print(f"\nbare round trip of one frame (CartPole, zeros player, {int(calls)} calls): {bare * 1e6:.1f} us per call, "
          f"{bare / N_SLOTS * 1e6:.1f} us per observation")


if __name__ == "__main__":
    main()
