"""Ray with 1 vs 2 CPUs on the same 40 confined evaluations (issue 13, target 1: >= 1.5x).

40 agents are made by copying the RL Zoo agents of ../shared with nudged weights (every float
tensor of policy.pth + 1e-3 x its std, seeded: a distinct agent with a distinct sha), served by
localhub in this process, queued by a sweep, then evaluated by `worker --backend ray` (the head
in this process, a local Ray of N CPUs on 127.0.0.1, players confined as in production, no
replays). The baseline (Ray with 1 CPU) is measured in the same run; per-episode returns must be
identical across runs. `--with-local` adds the local worker (1 process) for reference.

    .venv/bin/python bench/ray_scale.py [--agents 40] [--cpus 1 2] [--with-local] [--rounds N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from bench._zoo import ZOO, zoo_missing  # noqa: E402

# The zoo agents with short evaluations (BipedalWalker's 50 x 1,600 steps would dominate).
AGENTS = ("dqn-CartPole-v1", "ppo-CartPole-v1", "qrdqn-CartPole-v1", "ppo-Acrobot-v1", "a2c-LunarLander-v2",
          "ppo-LunarLander-v2", "dqn-LunarLander-v2", "ppo-LunarLanderContinuous-v2", "sac-Pendulum-v1",
          "dqn-MountainCar-v0")


def nudged_zip(source: Path, seed: int) -> bytes:
    """The SB3 zip with policy.pth's float tensors moved by 1e-3 x their std (seeded)."""
    import torch

    out = io.BytesIO()
    generator = torch.Generator().manual_seed(seed)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "policy.pth":
                state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
                for name, tensor in state.items():
                    if tensor.is_floating_point() and tensor.numel() > 1:
                        noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                        state[name] = tensor + noise * 1e-3 * float(tensor.std())
                buffer = io.BytesIO()
                torch.save(state, buffer)
                data = buffer.getvalue()
            zout.writestr(item, data)
    return out.getvalue()


def make_hub(root: Path, n: int) -> list[str]:
    repos = []
    for k in range(n):
        name = AGENTS[k % len(AGENTS)]
        repo = root / f"bench{k:02d}" / name
        shutil.copytree(ZOO / name, repo)
        (repo / f"{name}.zip").write_bytes(nudged_zip(ZOO / name / f"{name}.zip", seed=k))
        repos.append(f"bench{k:02d}/{name}")
    return repos


def run(kind: str, cpus: int, hub_url: str, work: Path) -> dict:
    from leaderboard.ray_backend import RayOptions, ray_pool, start_ray
    from leaderboard.store import Store
    from leaderboard.sweep import SweepQuery, sweep
    from leaderboard.worker import WorkerConfig, run_pool

    store = Store(work / f"store-{kind}-{cpus}-{time.monotonic_ns()}")
    queued = sweep(store, SweepQuery(filters=()), endpoint=hub_url, token=False)
    config = WorkerConfig(endpoint=hub_url, token=False, video=False, poll_seconds=0.5)
    if kind == "ray":
        import ray

        options = RayOptions(num_cpus=cpus)
        start_ray(options)  # the cluster's start-up is timed apart
        started = time.monotonic()
        stats = ray_pool(options)(store, once=True, config=config)
        seconds = time.monotonic() - started
        ray.shutdown()
    else:
        started = time.monotonic()
        stats = run_pool(store, concurrency=cpus, once=True, config=config)
        seconds = time.monotonic() - started
    history = store.history()
    returns = {row.repo_id: list(row.episode_returns) if row.episode_returns is not None else row.error_code
               for row in history.itertuples()}
    for row in history.itertuples():
        if row.status != "finished":
            print(f"{kind} {cpus}: {row.repo_id} failed: {row.error_code}: {row.error}", file=sys.stderr)
    steps = int(sum(sum(row.episode_lengths) for row in history.itertuples() if row.episode_lengths is not None))
    return {"kind": kind, "cpus": cpus, "queued": queued.queued, "finished": stats.finished, "failed": stats.failed,
            "seconds": seconds, "steps": steps, "returns": returns}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=40)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--with-local", action="store_true")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the runs this many times and keep each one's median (a shared machine's "
                             "load drifts: alternating spreads it over both)")
    args = parser.parse_args()
    if zoo_missing():
        return 2
    import localhub

    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        repos = make_hub(work / "hub", args.agents)
        hub = localhub.serve(work / "hub", state=work / "state")
        runs = [("local", 1)] if args.with_local else []
        runs += [("ray", c) for c in args.cpus]
        rounds: dict[tuple[str, int], list[dict]] = {key: [] for key in runs}
        for _ in range(args.rounds):
            for kind, cpus in runs:
                result = run(kind, cpus, hub.url, work)
                print(f"{kind} {cpus}: {result['finished']} finished, {result['failed']} failed in "
                      f"{result['seconds']:.1f} s", file=sys.stderr)
                rounds[(kind, cpus)].append(result)
        results = [sorted(found, key=lambda r: r["seconds"])[(len(found) - 1) // 2] for found in rounds.values()]
        for result, found in zip(results, rounds.values(), strict=True):
            result["all"] = ", ".join(f"{r['seconds']:.0f}" for r in found)
            result["returns_stable"] = all(r["returns"] == found[0]["returns"] for r in found)
        base = next(r for r in results if r["kind"] == "ray" and r["cpus"] == min(args.cpus))
        print(f"\n{len(repos)} agents (nudged copies of {len(AGENTS)} RL Zoo agents), confined players, no replays; "
              f"baseline: Ray with {base['cpus']} CPU, this run; median of {args.rounds} alternated round(s)\n")
        print("| backend | CPUs | evaluations | failed | env steps | wall s (median) | every round s | agents/hour "
              "| vs baseline | returns = baseline |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in results:
            same = r["returns"] == base["returns"] and r["returns_stable"]
            print(f"| {r['kind']} | {r['cpus']} | {r['finished'] + r['failed']} | {r['failed']} | {r['steps']:,} | "
                  f"{r['seconds']:.1f} | {r['all']} | {3600 * (r['finished'] + r['failed']) / r['seconds']:,.0f} | "
                  f"{base['seconds'] / r['seconds']:.2f}x | {'yes' if same else 'NO'} |")
        print(json.dumps({f"{r['kind']}-{r['cpus']}": round(r["seconds"], 1) for r in results}), file=sys.stderr)
        hub.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
