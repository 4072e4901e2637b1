"""Agents that attack from inside the player (TorchScript runs code there): none of them can
change a recorded score other than through its actions."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluator.envs import resolve_env
from evaluator.evaluate import run_job
from evaluator.job import Job, execute
from evaluator.runner import public_seeds, run_episodes
from evaluator.sandbox import referee

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*"),
]

# What the old sandbox child would have run had it imported it: scan for the result channel
# and write a perfect score on it.
FORGERY = b"""
import json, os
doc = {"algo": "ppo", "format": "torchscript", "details": {}, "video": None, "video_error": None,
       "episodes": {"returns": [500.0] * 100, "lengths": [500] * 100}}
for fd in range(1, 64):
    try:
        os.write(fd, json.dumps(doc).encode())
    except OSError:
        pass
os._exit(0)
"""


class TSZeros(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], dtype=torch.long)


class TSWritesModules(torch.nn.Module):
    """Writes Python modules wherever it can on its first call, then always pushes left."""

    def __init__(self, paths: list[str]) -> None:
        super().__init__()
        self.payload = torch.tensor(list(FORGERY), dtype=torch.uint8)
        self.paths = paths
        self.done = False
        self.written = 0  # read back, so TorchScript keeps the writes (it drops unused pure calls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.done:
            for path in self.paths:
                t = torch.from_file(path, shared=True, size=self.payload.numel(), dtype=torch.uint8)
                t.copy_(self.payload)
                self.written += int(t[0])
            self.done = True
        return torch.zeros(x.shape[0], dtype=torch.long)


class TSFills(torch.nn.Module):
    """Writes `count` files of `size` bytes on its first call."""

    def __init__(self, prefix: str, count: int, size: int) -> None:
        super().__init__()
        self.prefix, self.count, self.size = prefix, count, size
        self.done = False
        self.written = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.done:
            for i in range(self.count):
                t = torch.from_file(self.prefix + str(i), shared=True, size=self.size, dtype=torch.uint8)
                t.fill_(7)
                self.written += int(t[-1])
            self.done = True
        return torch.zeros(x.shape[0], dtype=torch.long)


class TSStateful(torch.nn.Module):
    """Balances, but flips its action on every third call: its score depends on the call order."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.0, 0.0], [0.0, 0.0], [-1.0, 1.0], [-1.0, 1.0]]))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        actions = (x @ self.w).argmax(dim=1)
        if self.calls % 3 == 0:
            actions = 1 - actions
        return actions


def _folder(tmp_path: Path, name: str, module: torch.nn.Module) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    torch.jit.save(torch.jit.script(module), str(folder / "agent.pt"))
    os.chmod(folder / "agent.pt", 0o644)
    return folder


def _job(folder: Path, n: int = 5, env: str = "CartPole-v1") -> Job:
    return Job(str(folder), "torchscript", "agent.pt", ("agent.pt",), env, n, tuple(public_seeds(n)))


def test_modules_written_onto_sys_path_never_answer_for_the_referee(tmp_path):
    paths = ["/tmp/yaml.py", "/tmp/json.py", "/tmp/numpy.py", "/tmp/sitecustomize.py", "/tmp/evaluator.py"]
    attacker = referee.play(_job(_folder(tmp_path, "attacker", TSWritesModules(paths))))
    honest = referee.play(_job(_folder(tmp_path, "honest", TSZeros())))
    assert attacker.episodes.returns == honest.episodes.returns
    assert max(attacker.episodes.returns) < 20  # always pushing left: about 9
    for path in paths:
        assert not Path(path).exists() or b"os.write(fd" not in Path(path).read_bytes()


def test_filling_the_disk_or_the_file_table_stays_inside_the_player(tmp_path):
    """The player's only writable place is its private, size-capped tmpfs: 512 MB of data or
    100,000 files end the evaluation at its cap (a file takes a page: at most 16,384 files),
    and nothing reaches the host's disk."""
    from evaluator import errors

    before = shutil.disk_usage(tmp_path).free
    for name, module in (("big", TSFills("/tmp/fill-", 64, 8 << 20)), ("many", TSFills("/tmp/f", 100_000, 1))):
        with pytest.raises(errors.InvalidActionError, match="No space left on device"):
            referee.play(_job(_folder(tmp_path, name, module), 2))
    assert not any(Path("/tmp").glob("fill-*")) and not Path("/tmp/f16000").exists()
    assert shutil.disk_usage(tmp_path).free > before - (64 << 20)


def test_a_stateful_agent_scores_the_same_whatever_the_split(tmp_path):
    """The rule: a code-bearing agent is played by one player in the canonical order."""
    job = _job(_folder(tmp_path, "stateful", TSStateful()), 12)
    one, two = run_job(job, processes=1), run_job(job, processes=2)
    assert one.episodes.returns == two.episodes.returns
    assert len(set(one.episodes.returns)) > 1  # the state matters to its score


def test_data_only_weights_that_produce_nan_actions_fail_as_invalid_action(tmp_path):
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=64, seed=0, device="cpu")
    with torch.no_grad():  # finite weights whose output overflows to inf - inf = NaN
        model.policy.action_net.weight.fill_(3e38)
        model.policy.action_net.weight[:, ::2] = -3e38
        model.policy.mlp_extractor.policy_net[0].bias.fill_(10.0)
    model.save(tmp_path / "ppo-Pendulum-v1.zip")
    (tmp_path / "ppo-Pendulum-v1.zip").chmod(0o644)
    job = Job(str(tmp_path), "sb3", "ppo-Pendulum-v1.zip", ("ppo-Pendulum-v1.zip",), "Pendulum-v1", 2,
              tuple(public_seeds(2)))
    from evaluator import errors

    with pytest.raises(errors.InvalidActionError, match="NaN or infinite"):
        referee.play(job)


def test_data_only_players_split_and_in_process_all_agree(tmp_path):
    """Data-only formats are stateless: refereed with 1 or 2 players or run in-process, the
    per-episode returns are identical, replay included."""
    from stable_baselines3 import PPO

    PPO("MlpPolicy", "CartPole-v1", n_steps=64, seed=3, device="cpu").save(tmp_path / "ppo-CartPole-v1.zip")
    (tmp_path / "ppo-CartPole-v1.zip").chmod(0o644)
    job = Job(str(tmp_path), "sb3", "ppo-CartPole-v1.zip", ("ppo-CartPole-v1.zip",), "CartPole-v1", 10,
              tuple(public_seeds(10)), video_path=str(tmp_path / "replay.mp4"))
    local, one = execute(replace(job, video_path=None)), run_job(job, processes=1)
    two = run_job(replace(job, video_path=None), processes=2)
    assert local.episodes.returns == one.episodes.returns == two.episodes.returns
    assert one.video and Path(one.video).stat().st_size > 1000


def test_stochastic_draws_do_not_depend_on_the_split():
    """A stochastic policy draws from per-episode generators seeded one way from the episode's
    seed, for live rows only: any split of the episodes gives the same returns."""

    class Coin:
        def act(self, obs, *, deterministic=True, rngs=None):
            assert not deterministic and len(rngs) == 8
            return np.array([r.integers(2) if r is not None else 0 for r in rngs], dtype=np.int64)

    spec = replace(resolve_env("CartPole-v1"), deterministic=False)
    whole = run_episodes(Coin(), spec, n_episodes=12)
    parts = [run_episodes(Coin(), spec, n_episodes=12, episode_indices=chunk)
             for chunk in ([0, 5, 7], [11, 1, 2, 3], [4, 6, 8, 9, 10])]
    by_index = {i: r for p in parts for i, r in zip(p.episode_indices, p.returns, strict=True)}
    assert [by_index[i] for i in range(12)] == whole.returns
    assert len(set(whole.returns)) > 1
