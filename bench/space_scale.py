"""The Space's server-side cost at community scale: what one click costs with 1,000,000 rows.

    .venv/bin/python bench/space_scale.py [--rows 1000000] [--store DIR] [--keep]

Builds (or reuses, with --store) a store of synthetic rows like bench/store_scale.py's (50
episodes each, 20 environments, 30,000 users with 2 repos each), then times the functions the
Space's events call (space_app.service over a StoreSource): the first page of an env, a search
by user substring, a page jump to the last page, and opening a row (the entry, its charts, the
env's score distribution, provenance), each the median of 20 calls, against a baseline measured
in the same run: the same questions asked of pandas over the whole history (what a Space that
loads everything into a DataFrame would do). Target (issue 9): each under 300 ms at 1,000,000
rows. Progress on stderr, the table on stdout.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_scale import ENVS, N_USERS, rows  # noqa: E402

from leaderboard.ranking import rank  # noqa: E402
from leaderboard.store import Store  # noqa: E402
from space_app import service  # noqa: E402
from space_app.source import StoreSource  # noqa: E402

TARGET_MS = 300.0


def median_ms(fn, repeat: int = 20) -> float:
    times = []
    for i in range(repeat):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def build(store: Store, target: int) -> None:
    with store.database.read() as db:
        have = db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    rng = random.Random(20240601 + have)
    while have < target:
        count = min(50_000, target - have)
        store.record_many(list(rows(rng, have, count)))
        have += count
        print(f"  {have:,} rows", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--store", type=Path, help="store folder (reused, grown to --rows; default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pandas baseline (it needs ~10 GB)")
    args = parser.parse_args()
    root = args.store or Path(tempfile.mkdtemp(prefix="space-scale-"))
    try:
        store = Store(root)
        print(f"store {root}: growing to {args.rows:,} rows ...", file=sys.stderr, flush=True)
        build(store, args.rows)
        source = StoreSource(root)
        env = ENVS[3]
        total = service.ranking_page(source, env).total
        users = [f"user{random.Random(i).randrange(N_USERS):05d}" for i in range(20)]
        top = service.ranking_page(source, env, page_size=20).rows["repo_id"].tolist()
        ours = {
            "first page of an env": median_ms(lambda i: service.ranking_page(source, ENVS[i % len(ENVS)])),
            "search by user substring": median_ms(lambda i: service.ranking_page(source, None, search=users[i])),
            "jump to the last page": median_ms(lambda i: service.ranking_page(source, ENVS[i % len(ENVS)],
                                                                             page=10**9)),
            "open a row": median_ms(lambda i: service.open_row(source, env, top[i % len(top)])),
        }
        baseline: dict[str, float] = {}
        if not args.no_baseline:
            print("baseline: the whole history in pandas ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            history = store.history()
            load_ms = (time.perf_counter() - start) * 1000
            baseline = {
                "first page of an env": median_ms(lambda i: rank(history, env_key=ENVS[i % len(ENVS)]).head(25), 3),
                "search by user substring": median_ms(lambda i: history[history["repo_id"].str.contains(users[i])],
                                                      3),
            }
            baseline["load the history"] = load_ms
        with store.database.read() as db:
            n = db.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
        print(f"\n{n:,} rows in the history; {total:,} ranked entries in {env}\n")
        print("| click | space_app (median of 20) | pandas over the history (baseline) | ratio | target |")
        print("|---|---|---|---|---|")
        for name, ms in ours.items():
            base = baseline.get(name)
            ratio = f"{base / ms:,.0f}x faster" if base else "–"
            verdict = "ok" if ms < TARGET_MS else "MISSED"
            print(f"| {name} | {ms:,.1f} ms | {f'{base:,.0f} ms' if base else '–'} | {ratio} | "
                  f"< {TARGET_MS:.0f} ms: {verdict} |")
        if "load the history" in baseline:
            print(f"| (baseline only) load the history | – | {baseline['load the history']:,.0f} ms | – | – |")
        return 0 if all(ms < TARGET_MS for ms in ours.values()) else 1
    finally:
        if args.store is None and not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
