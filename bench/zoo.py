"""Throughput of full-protocol evaluations on real agents: what re-evaluating the community costs.

    .venv/bin/python bench/zoo.py [--root ../shared/agents/zoo] [--limit N]

Serves ROOT with localhost's localhub and, for each repo, times (a) the agent work in this
process (`evaluator.job.execute`, imports already paid: the floor) and (b) the full
`evaluator.evaluate.evaluate` path (Hub fetch + a sandbox process per evaluation). Prints per
agent seconds and env steps, then totals, the sandboxed/in-process ratio, and agents per hour.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import localhub  # noqa: E402
from evaluator.evaluate import evaluate  # noqa: E402
from evaluator.hub import fetch  # noqa: E402
from evaluator.job import Job, execute  # noqa: E402
from evaluator.runner import public_seeds  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=PROJECT.parent / "shared" / "agents" / "zoo")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    if not args.root.is_dir():
        print(f"{args.root} is absent: pass --root (e.g. demo_hub)", file=sys.stderr)
        return 2
    state = Path(tempfile.mkdtemp(prefix="bench-zoo-"))
    total_in = total_full = 0.0
    total_steps = 0
    with localhub.serve(args.root, state=state / "hub") as hub:
        from huggingface_hub import HfApi

        repos = sorted(m.id for m in HfApi(endpoint=hub.url, token=False).list_models())[: args.limit]
        print(f"{'repo':40s} {'episodes':>8s} {'steps':>8s} {'in-process s':>13s} {'sandboxed s':>12s} {'ratio':>6s}")
        for repo in repos:
            snap = fetch(repo, cache_dir=state / "cache", endpoint=hub.url, token=False)
            from evaluator.envs import resolve_env

            spec = resolve_env(snap.env_id)
            job = Job(str(snap.root), snap.agent_format, snap.agent_file, snap.files, snap.env_id,
                      spec.n_episodes, tuple(public_seeds(spec.n_episodes)))
            start = time.perf_counter()
            outcome = execute(job)
            in_process = time.perf_counter() - start
            start = time.perf_counter()
            result = evaluate(repo, cache_dir=state / "cache", endpoint=hub.url, token=False)
            full = time.perf_counter() - start
            steps = sum(outcome.episodes.lengths)
            assert result.episode_returns == outcome.episodes.returns, repo  # same numbers either way
            total_in, total_full, total_steps = total_in + in_process, total_full + full, total_steps + steps
            print(f"{repo:40s} {spec.n_episodes:8d} {steps:8d} {in_process:13.2f} {full:12.2f} "
                  f"{full / in_process:6.1f}")
    print(f"total: {len(repos)} agents, {total_steps} env steps; in-process {total_in:.1f} s "
          f"({total_steps / total_in:.0f} steps/s), full path {total_full:.1f} s; ratio {total_full / total_in:.2f}; "
          f"{3600 * len(repos) / total_full:.0f} agents/hour on one core of this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
