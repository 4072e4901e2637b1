"""A sweep over synthetic repos on localhub: discovery and queueing, no evaluation (issue 13,
target 3: 1,000 repos in under a minute).

The repos look like the course's: a card with env tags and a model-index claim, an agent zip
named `{algo}-{env}.zip` (empty: a sweep reads names, never contents), plus a share of repos a
sweep must skip (no agent, an ML-Agents build, an env outside the table, gated). Measured: the
first sweep (everything queued), the second (nothing queued: resumable), and the listing alone
(huggingface_hub's `list_models(full=True, cardData=True)` through localhub's Link-paged pages)
as the baseline of the same run.

    .venv/bin/python bench/sweep_scale.py [--repos 1000] [--page-size 100]
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
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ENVS = ("CartPole-v1", "LunarLander-v2", "Acrobot-v1", "MountainCar-v0", "Taxi-v3", "Pendulum-v1")


def card(env_id: str, library: str = "stable-baselines3", extra: str = "") -> str:
    return (f"---\nlibrary_name: {library}\n{extra}tags:\n- {env_id}\n- deep-reinforcement-learning\n"
            f"- reinforcement-learning\n- {library}\nmodel-index:\n- name: PPO\n  results:\n  - task:\n"
            f"      type: reinforcement-learning\n    dataset:\n      name: {env_id}\n      type: {env_id}\n"
            f"    metrics:\n    - type: mean_reward\n      value: 100.00 +/- 10.00\n---\n# PPO on {env_id}\n")


def make_hub(root: Path, n: int) -> dict[str, int]:
    """n repos; every 20th has no agent, ML-Agents, an unknown env or is gated (5 % each)."""
    kinds = {"agent": 0, "no_agent": 0, "unsupported_format": 0, "unknown_env": 0, "gated": 0}
    for i in range(n):
        env = ENVS[i % len(ENVS)]
        repo = root / f"student{i % 317:03d}" / f"ppo-{env}-{i:05d}"
        repo.mkdir(parents=True)
        kind = ("no_agent", "unsupported_format", "unknown_env", "gated")[i // 20 % 4] if i % 20 == 19 else "agent"
        kinds[kind] += 1
        if kind == "no_agent":
            (repo / "README.md").write_text(card(env))
        elif kind == "unsupported_format":
            (repo / "Huggy.onnx").write_bytes(b"onnx")
            (repo / "README.md").write_text(card("Huggy", library="ml-agents"))
        elif kind == "unknown_env":
            (repo / "ppo-Pixelcopter-PLE-v0.zip").write_bytes(b"PK\x05\x06" + bytes(18))
            (repo / "README.md").write_text(card("Pixelcopter-PLE-v0"))
        else:
            (repo / f"ppo-{env}.zip").write_bytes(b"PK\x05\x06" + bytes(18))
            (repo / "README.md").write_text(card(env, extra="gated: auto\n" if kind == "gated" else ""))
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", type=int, default=1000)
    parser.add_argument("--page-size", type=int, default=100)
    args = parser.parse_args()

    from huggingface_hub import HfApi

    import localhub
    from leaderboard.store import Store
    from leaderboard.sweep import SweepQuery, sweep

    work = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        kinds = make_hub(work / "hub", args.repos)
        hub = localhub.serve(work / "hub", state=work / "state", page_size=args.page_size)
        store = Store(work / "store")
        rows = []
        started = time.monotonic()
        listed = sum(1 for _ in HfApi(endpoint=hub.url, token=False).list_models(
            filter="reinforcement-learning", full=True, cardData=True))
        base = time.monotonic() - started
        rows.append(("listing only (baseline: list_models full + cardData)", listed, "-", "-", base))
        for name in ("first sweep", "second sweep (resumed: nothing new)"):
            started = time.monotonic()
            report = sweep(store, SweepQuery(), endpoint=hub.url, token=False)
            rows.append((name, report.listed, report.queued, sum(report.skipped.values()),
                         time.monotonic() - started))
            if report.looked_up:
                print(f"warning: {report.looked_up} per-repo look-ups", file=sys.stderr)
        hub.close()
        print(f"\n{args.repos:,} synthetic repos on localhub (pages of {args.page_size}); expected: "
              f"{kinds['agent']:,} queued, {args.repos - kinds['agent']} skipped ({kinds})\n")
        print("| run | repos listed | queued | skipped | seconds | repos/s | vs listing only |")
        print("|---|---|---|---|---|---|---|")
        for name, n, queued, skipped, seconds in rows:
            print(f"| {name} | {n:,} | {queued} | {skipped} | {seconds:.1f} | {n / seconds:,.0f} | "
                  f"{seconds / base:.2f}x |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
