"""How far panda-gym v1 (the RL Zoo's `PandaReach-v1`, on gym) drifted from the v3 it is aliased to.

v1 needs gym 0.21 and numpy<2, so it runs in a throwaway venv, e.g.:

    python3 -m venv /tmp/pv1 && /tmp/pv1/bin/pip install "panda-gym==1.1.1" "numpy<2" "pip<24.1" \
        "setuptools==65.5.0" "wheel<0.40" && /tmp/pv1/bin/pip install --no-build-isolation "gym==0.21.0"
    .venv/bin/python scripts/panda_drift.py --v1-python /tmp/pv1/bin/python [--episodes 50]

Both sides play the same episodes: goal i drawn from `default_rng(i)` in the task's goal range
and set on the task after the reset (the robot's reset is deterministic in both), then (a) 50
open-loop random actions from the same generator, comparing where the end effector goes, and
(b) a proportional controller (action = clip(10 * (goal - ee))), comparing the dense return over
the full 50 steps and as the protocol counts it on v3 (the episode ends at success, v3 only).
The figures are in README ("Atari, panda-gym and the RL Zoo's env wrappers").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile

import numpy as np

STEPS = 50  # both versions' time limit


def play(version: str, episodes: int) -> list[dict]:
    """One side: per episode, the open-loop end-effector path and the controller's rewards."""
    if version == "v1":
        import gym
        import panda_gym  # noqa: F401
    else:
        import gymnasium as gym
        import panda_gym  # noqa: F401
    env = gym.make(f"PandaReachDense-{version}").unwrapped
    out = []
    for i in range(episodes):
        rng = np.random.default_rng(i)
        goal = rng.uniform(env.task.goal_range_low, env.task.goal_range_high)
        actions = rng.uniform(-1.0, 1.0, (STEPS, 3))
        paths, rewards, successes = [], [], []
        for closed_loop in (False, True):
            env.reset() if version == "v1" else env.reset(seed=i)
            env.task.goal = goal.copy()
            obs = env._get_obs()
            path, rew, first_success = [], [], None
            for t in range(STEPS):
                ee = np.asarray(obs["achieved_goal"], dtype=np.float64)
                action = np.clip(10.0 * (goal - ee), -1, 1) if closed_loop else actions[t]
                result = env.step(action.astype(np.float32))
                obs, reward, info = result[0], result[1], result[-1]
                path.append([float(x) for x in obs["achieved_goal"]])
                rew.append(float(reward))
                if first_success is None and bool(info["is_success"]):
                    first_success = t
            (rewards if closed_loop else paths).append(rew if closed_loop else path)
            if closed_loop:
                successes.append(first_success)
        out.append({"path": paths[0], "rewards": rewards[0], "first_success": successes[0]})
    env.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v1-python", help="python of a venv with panda-gym 1.1.1 and gym 0.21")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--side", choices=["v1", "v3"], help=argparse.SUPPRESS)
    parser.add_argument("--to", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:  # to a file: PyBullet prints its banner on stdout
        with open(args.to, "w") as f:
            json.dump(play(args.side, args.episodes), f)
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([args.v1_python, __file__, "--side", "v1", "--episodes", str(args.episodes),
                        "--to", f"{tmp}/v1.json"], capture_output=True, check=True)
        with open(f"{tmp}/v1.json") as f:
            v1 = json.load(f)
    v3 = play("v3", args.episodes)
    diffs = [np.abs(np.array(a["path"]) - np.array(b["path"])).max(axis=1) for a, b in zip(v1, v3, strict=True)]
    gap = np.array([d.max() for d in diffs])
    apart = np.array([int(np.argmax(d > 1e-3)) if (d > 1e-3).any() else STEPS for d in diffs])
    full1 = np.array([sum(e["rewards"]) for e in v1])
    full3 = np.array([sum(e["rewards"]) for e in v3])
    protocol3 = np.array([sum(e["rewards"][: (e["first_success"] + 1 if e["first_success"] is not None else STEPS)])
                          for e in v3])
    same_success = sum(a["first_success"] == b["first_success"] for a, b in zip(v1, v3, strict=True))
    print(f"{args.episodes} episodes, same goals and actions")
    print(f"open loop: end-effector paths differ by at most {gap.max():.2e} m (median {np.median(gap):.2e}); "
          f"first step more than 1 mm apart: median {np.median(apart):.0f}, min {apart.min()} "
          f"({(apart == STEPS).sum()} paths never)")
    print(f"controller, full {STEPS} steps: v1 {full1.mean():.4f} +/- {full1.std():.4f}, "
          f"v3 {full3.mean():.4f} +/- {full3.std():.4f}, max |diff| {np.abs(full1 - full3).max():.2e}")
    print(f"controller, v3 as the protocol counts it (ends at success): {protocol3.mean():.4f} +/- "
          f"{protocol3.std():.4f}; first success at the same step in {same_success}/{args.episodes}")


if __name__ == "__main__":
    main()
