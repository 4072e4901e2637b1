"""The leaderboard store at community scale: how writes and the Space's reads cost as the history
grows to 1,000, 100,000 and 1,000,000 synthetic rows.

    .venv/bin/python bench/store_scale.py [--sizes 1000,100000,1000000] [--store DIR] [--keep]

Rows: 50 episodes each, 20 environments, 30,000 users with 2 repos each on average (60,000 repos,
several revisions and re-evaluations each), built with `Store.record_many` in bulk (the growth
to each size is timed: record_many rows/s); then, at that size: `record()` per row (the mean of
200 single-row writes on top), a ranking page of 100 for one env, a search by user substring
(all envs, one page), `count()` of one env, and the database size. Targets (issue 8): record()
at 1,000,000 rows within 2x of its cost at 1,000; a page and a search under 100 ms at 1,000,000
rows; record_many at least 5,000 rows/s. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluator.result import ClaimResult, EvalResult  # noqa: E402
from leaderboard.store import Store  # noqa: E402

N_ENVS, N_USERS, REPOS_PER_USER, EPISODES = 20, 30_000, 2, 50
ENVS = [f"Env{i:02d}-v1" for i in range(N_ENVS)]
ALGOS = ("ppo", "dqn", "a2c", "sac")


def synthetic(rng: random.Random, index: int) -> tuple[EvalResult, str]:
    """One evaluation of a random repo (its user, env and algo fixed by the repo)."""
    repo = rng.randrange(N_USERS * REPOS_PER_USER)
    user, env = repo // REPOS_PER_USER, ENVS[repo % N_ENVS]
    revision = f"{repo:08x}{rng.randrange(6):032x}"
    base = rng.uniform(-100, 300)
    returns = [base + rng.gauss(0, 20) for _ in range(EPISODES)]
    mean = sum(returns) / EPISODES
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / EPISODES)
    result = EvalResult(
        repo_id=f"user{user:05d}/{ALGOS[repo % 4]}-{env}-{repo}", revision=revision, env_id=env, eval_env_id=env,
        eval_env_kwargs={}, env_key=env, algo=ALGOS[repo % 4], format="sb3", protocol_version=1, seed_set="public",
        n_episodes=EPISODES, seeds=list(range(10_000, 10_000 + EPISODES)), episode_returns=returns,
        episode_lengths=[rng.randrange(100, 1000) for _ in range(EPISODES)], mean_reward=mean, std_reward=std,
        score=mean - std, iqm=mean, ci95=[mean - 5, mean + 5], ranked=True,
        claim=ClaimResult(mean + rng.uniform(-10, 10), std, 10, rng.choice(["consistent", "inflated"])),
        status="finished", evaluated_at=f"2025-{1 + index % 12:02d}-{1 + index % 28:02d}T{index % 24:02d}:"
                                        f"{index // 24 % 60:02d}:{index // 1440 % 60:02d}Z",
        evaluator_version="0.1.0", versions={"python": "3.11", "torch": "2.13.0"}, platform="linux-x86_64")
    return result, f"2024-{1 + int(revision[-1], 16) % 12:02d}-01T00:00:00Z"


def rows(rng: random.Random, start: int, count: int) -> Iterator[tuple[EvalResult, str]]:
    for index in range(start, start + count):
        yield synthetic(rng, index)


def timed(fn, repeat: int) -> float:
    """Mean milliseconds per call."""
    start = time.perf_counter()
    for i in range(repeat):
        fn(i)
    return (time.perf_counter() - start) * 1000 / repeat


def db_megabytes(store: Store) -> float:
    files = [store.db_path, Path(str(store.db_path) + "-wal")]
    return sum(f.stat().st_size for f in files if f.exists()) / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--store", type=Path, help="store folder (default: a temporary one, deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the store folder")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = args.store or Path(tempfile.mkdtemp(prefix="store-scale-"))
    with tempfile.TemporaryDirectory(prefix="store-warmup-") as warm:  # first-call costs (imports,
        Store(warm).record_many(list(rows(random.Random(1), 0, 200)))  # caches) are not per-row costs
    store, rng, have, table = Store(root), random.Random(20240601), 0, []
    try:
        for size in sizes:
            grow = size - have
            print(f"growing to {size:,} rows with record_many ...", file=sys.stderr, flush=True)
            spent, done = 0.0, 0
            for chunk_start in range(have, size, 50_000):
                count = min(50_000, size - chunk_start)
                chunk = list(rows(rng, chunk_start, count))  # generating rows is not timed
                start = time.perf_counter()
                store.record_many(chunk)
                spent += time.perf_counter() - start
                done += count
                print(f"  {chunk_start + count:,} rows ({done / spent:,.0f} rows/s)", file=sys.stderr, flush=True)
            bulk = grow / spent
            have = size
            singles = list(rows(rng, 10**9 + size, 200))
            record_ms = timed(lambda i, s=singles: store.record(s[i][0], commit_date=s[i][1]), len(singles))
            have_rows = size + len(singles)
            page_ms = timed(lambda i: store.ranking(ENVS[i % N_ENVS], limit=100), 20)
            users = [f"user{rng.randrange(N_USERS):05d}"[:-1] for _ in range(20)]  # ~10 users each: user1234x
            search_ms = timed(lambda i, u=users: store.ranking(search=u[i], limit=100), 20)
            hits = statistics.mean(store.count(search=u) for u in users)
            count_ms = timed(lambda i: store.count(ENVS[i % N_ENVS]), 20)
            table.append((size, have_rows, record_ms, bulk, page_ms, search_ms, hits, count_ms, db_megabytes(store)))
            print(f"  measured at {have_rows:,} rows", file=sys.stderr, flush=True)
    finally:
        store.close()
        if not args.keep and args.store is None:
            shutil.rmtree(root, ignore_errors=True)
    print("| rows in the history | `record()` per row | `record_many` | ranking page of 100 (one env) "
          "| search by user substring (all envs) | `count()` (one env) | database size |")
    print("|---|---|---|---|---|---|---|")
    for size, _, record_ms, bulk, page_ms, search_ms, hits, count_ms, size_mb in table:
        print(f"| {size:,} | {record_ms:.2f} ms | {bulk:,.0f} rows/s | {page_ms:.1f} ms | {search_ms:.1f} ms "
              f"({hits:.0f} hits) | {count_ms:.2f} ms | {size_mb:,.1f} MB |")
    if len(table) > 1:
        first, last = table[0], table[-1]
        print(f"\nrecord() at {last[0]:,} rows / at {first[0]:,} rows: {last[2] / first[2]:.2f}x (target <= 2x); "
              f"page {last[4]:.1f} ms, search {last[5]:.1f} ms (target < 100 ms); "
              f"record_many >= {min(r[3] for r in table):,.0f} rows/s (target >= 5,000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
